-- wrk script: POST the file named by $BODY with $CTYPE (and $ACCEPT, $XSHAPE, $HNAME: $HVALUE when set); print one RESULT line.
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/json"
if os.getenv("ACCEPT") then wrk.headers["Accept"] = os.getenv("ACCEPT") end
if os.getenv("XSHAPE") then wrk.headers["X-Shape"] = os.getenv("XSHAPE") end
if os.getenv("HNAME") then wrk.headers[os.getenv("HNAME")] = os.getenv("HVALUE") end
local f = assert(io.open(os.getenv("BODY"), "rb")); wrk.body = f:read("*a"); f:close()
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f sockerr=%d non2xx=%d n=%d\n",
    s.requests / (s.duration / 1e6), lat:percentile(50) / 1000, lat:percentile(90) / 1000, lat:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status, s.requests))
end
