"""gRPC load benchmark (issue 23): the service's ModelInfer with raw contents against MLServer's gRPC and
against the service's own HTTP V2 binary, plus REST JSON against V2 JSON, side by side in one run.

    python bench/grpc_bench.py [--seconds 5] [--rounds 3] [--mlserver-venv /tmp/mls]

The load generators are not Python: h2load (Debian's nghttp2-client) replays one framed ModelInferRequest
(a 0 byte, its 4-byte big-endian length, the message) over HTTP/2, and wrk (one thread, bench/post.lua)
posts the HTTP bodies. h2load counts an HTTP 200 as a success even when the gRPC status (a trailer) is an
error, so each gRPC run is checked three ways: one call from a real gRPC client before it must answer OK
with the right scores (the service's: equal to its REST /score; MLServer's: equal to onnxruntime in this
process on the peer model), every answer must carry the response's bytes (the run's DATA bytes divided by
one response's framed length), and the service's own error counter (/metrics) must not grow.

MLServer is the shared peer (../shared/peers/mlserver_ort: V2 model `peer`, input x FP32 [n, 784], output
score [n]) started from its own virtual environment (`python3 -m venv /tmp/mls && /tmp/mls/bin/pip install
mlserver onnxruntime`); without it, or without torch to export the peer model, its rows are skipped with a
note. Each scenario's servers are loaded in turn, the order reversed every other round (on this machine
whichever runs first after a switch is slower), and the report gives every run, each
server's median over the rounds, and each target's median over the rounds of that round's ratio.
Results: reports/grpc/results.json and reports/grpc/throughput.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import orjson
from run import JSON, LUA, ROOT, V2_BINARY, _process_tree, _start_service, _v2_body, _wrk_env  # bench/: scripts

from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"
PEERS = ROOT.parent / "shared" / "peers"
PEER_MODEL = "peer"  # the V2 model name the MLServer peer serves
OURS_GRPC, MLSERVER_GRPC, OURS_V2_BINARY = "service gRPC raw", "MLServer gRPC raw", "service HTTP V2 binary"
ECHO = "grpcio alone (constant answer)"  # bench/grpc_echo.py: the ceiling of a Python gRPC server here
REST_JSON, V2_JSON = "service REST JSON", "service HTTP V2 JSON"


@dataclass(frozen=True)
class Target:
    name: str
    tool: str  # h2load (gRPC) or wrk (HTTP)
    connections: int
    streams: int = 1  # concurrent streams per connection (h2load -m)


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    targets: tuple[Target, ...]


SCENARIOS = [
    Scenario(
        "1 row, 64 streams",
        1,
        (
            Target(OURS_GRPC, "h2load", 4, 16),
            Target(MLSERVER_GRPC, "h2load", 4, 16),
            Target(OURS_V2_BINARY, "wrk", 64),
            Target(ECHO, "h2load", 4, 16),
        ),
    ),
    Scenario(
        "64 rows, 4 streams",
        64,
        (Target(OURS_GRPC, "h2load", 4), Target(MLSERVER_GRPC, "h2load", 4), Target(OURS_V2_BINARY, "wrk", 4)),
    ),
    Scenario("1-row JSON, 64 conn", 1, (Target(REST_JSON, "wrk", 64), Target(V2_JSON, "wrk", 64))),
    Scenario("64-row JSON, 4 conn", 64, (Target(REST_JSON, "wrk", 4), Target(V2_JSON, "wrk", 4))),
]


@dataclass
class Run:
    scenario: str
    target: str
    round: int
    load: str  # the load generator's concurrency, as its flags say it
    rps: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int  # answers that were not the right response: non-2xx, socket errors, gRPC errors
    cpu_us_per_request: float  # the server's processes' CPU time (user + system) over the requests answered


@dataclass
class Grpc:
    """A gRPC endpoint under load: where it is, the request it is sent, and what it must answer."""

    port: int
    model: str
    x: np.ndarray
    expected: np.ndarray  # the scores of x
    frame: Path  # the framed request h2load replays
    pids: list[int]  # the server's processes (with their children)
    response_bytes: int = 0  # one framed response, measured by the check before each run


@dataclass
class Peer:
    process: subprocess.Popen[bytes]
    endpoint: Callable[[np.ndarray, Path], Grpc]  # its gRPC endpoint for given rows


def main() -> None:
    args = _parse()
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y {'nghttp2-client' if tool == 'h2load' else 'wrk'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    x = np.random.default_rng(0).integers(0, 256, size=(64, 784)).astype(np.float32)  # MNIST-like pixels
    http_port, grpc_port = _free_port(), _free_port()
    args.port, args.service_args = http_port, f"{args.service_args} --grpc-port {grpc_port}".strip()
    server, _ = _start_service(args)
    peer, note = _start_mlserver(args, folder)
    base = f"http://127.0.0.1:{http_port}"
    echoes: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        endpoints = {
            (OURS_GRPC, rows): _ours(base, grpc_port, args.model, x[:rows], folder, server.pid) for rows in (1, 64)
        }
        if peer:
            endpoints |= {(MLSERVER_GRPC, rows): peer.endpoint(x[:rows], folder) for rows in (1, 64)}
        echoes, endpoints[ECHO, 1] = _start_echoes(endpoints[OURS_GRPC, 1], folder)
        bodies = _http_bodies(x, folder)
        for scenario in SCENARIOS:
            for round_ in range(args.rounds):
                targets = scenario.targets if round_ % 2 == 0 else scenario.targets[::-1]
                for target in targets:
                    if target.tool == "wrk":
                        url = base + ("/score" if target.name == REST_JSON else f"/v2/models/{args.model}/infer")
                        body = bodies[target.name, scenario.rows]
                        run = _wrk_run(scenario, target, round_, url, body, args.seconds, server.pid)
                    elif (target.name, scenario.rows) in endpoints:
                        endpoint = endpoints[target.name, scenario.rows]
                        metrics = base if target.name == OURS_GRPC else None
                        run = _h2load_run(scenario, target, round_, endpoint, args.seconds, metrics)
                    else:
                        continue  # MLServer, skipped
                    runs.append(run)
                    print(_line(run), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=15)
        for process in [*echoes, *([peer.process] if peer else [])]:
            _stop(process)
    summary = _summary(runs)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "model": args.model,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "mlserver": note,
        "scenarios": [asdict(s) for s in SCENARIOS],
        "runs": [asdict(r) for r in runs],
        "summary": summary,
        "targets": _targets(runs),
    }
    (out / "results.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _chart(summary, out / "throughput.png")
    print(orjson.dumps(report["targets"], option=orjson.OPT_INDENT_2).decode())
    print(f"MLServer: {note}\nwrote {out / 'results.json'} and {out / 'throughput.png'}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist-dense")
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run (after 1 s of warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server in each scenario")
    parser.add_argument("--service-args", default="", help="extra `python -m service` flags (none: the defaults)")
    parser.add_argument("--mlserver-venv", type=Path, default=Path("/tmp/mls"), help="where MLServer is installed")
    parser.add_argument("--peers", type=Path, default=PEERS, help="the shared peers (mlserver_ort, make_peer_model.py)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "grpc"))
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- the servers -------------------------------------------------------------------------------------------


def _ours(base: str, port: int, model: str, x: np.ndarray, folder: Path, pid: int) -> Grpc:
    """The service's ModelInfer on x, expected to answer what its REST /score answers for the same rows."""
    answer = httpx.post(f"{base}/score", json={"inputs": x.tolist()}, timeout=30).raise_for_status().json()
    return Grpc(port, model, x, np.asarray(answer["scores"], np.float32), _frame(model, x, folder), [pid])


def _start_echoes(ours: Grpc, folder: Path) -> tuple[list[subprocess.Popen[bytes]], Grpc]:
    """bench/grpc_echo.py, one copy per service worker on one port, answering the service's own answer to
    `ours` (so it passes the same checks): grpcio's cost per call without the service's work."""
    answer = folder / "answer.pb"
    answer.write_bytes(_check(ours).SerializeToString())
    port, workers = _free_port(), min(len(os.sched_getaffinity(0)), 4)  # as many as the service's default
    command = [sys.executable, str(Path(__file__).with_name("grpc_echo.py")), str(port), str(answer)]
    echoes = [subprocess.Popen(command, start_new_session=True) for _ in range(workers)]
    endpoint = Grpc(port, ours.model, ours.x, ours.expected, ours.frame, [echo.pid for echo in echoes])
    deadline = time.monotonic() + 30
    while True:
        try:
            _check(endpoint)
            return echoes, endpoint
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _start_mlserver(args: argparse.Namespace, folder: Path) -> tuple[Peer | None, str]:
    """The MLServer peer (or None), and a note on it: its version, or why it is skipped."""
    mlserver = args.mlserver_venv / "bin" / "mlserver"
    if not mlserver.exists():
        return (
            None,
            f"skipped: no {mlserver} (python3 -m venv /tmp/mls && /tmp/mls/bin/pip install mlserver onnxruntime)",
        )
    onnx = folder / "peer.onnx"
    export = subprocess.run(
        [sys.executable, str(args.peers / "make_peer_model.py"), str(onnx)], capture_output=True, text=True
    )
    if export.returncode != 0:
        return (
            None,
            f"skipped: the peer model's export failed (it needs torch: make install-train): {export.stderr[-300:]}",
        )
    port = next(
        p for p in iter(lambda: random.randrange(20000, 29000), None) if all(_bindable(p + k) for k in (0, 1000, 2000))
    )
    env = os.environ | {"PATH": f"{mlserver.parent}:{os.environ['PATH']}"}
    log = (folder / "mlserver.log").open("wb")
    process = subprocess.Popen(
        [str(args.peers / "mlserver_ort" / "serve.sh"), str(port), str(onnx)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])

    def endpoint(x: np.ndarray, folder: Path) -> Grpc:
        expected = session.run(["score"], {"x": x})[0].reshape(-1)
        return Grpc(port + 1000, PEER_MODEL, x, expected, _frame(PEER_MODEL, x, folder), [process.pid])

    deadline = time.monotonic() + 120
    probe = endpoint(np.zeros((1, 784), np.float32), folder)
    while True:
        try:
            _check(probe)
            break
        except (grpc.RpcError, AssertionError) as error:
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                return None, f"skipped: MLServer did not answer ({error}); see {folder / 'mlserver.log'}"
            time.sleep(1)
    version = subprocess.run([str(mlserver), "--version"], capture_output=True, text=True).stdout.split()[-1]
    print(f"MLServer {version} serving gRPC on {port + 1000}", flush=True)
    return Peer(process, endpoint), f"MLServer {version}, gRPC on port {port + 1000}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stops a server started in its own process group (serve.sh execs MLServer, which has workers)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


# --- requests and checks -----------------------------------------------------------------------------------


def _request(model: str, x: np.ndarray) -> pb.ModelInferRequest:
    """ModelInfer for the score alone (what the MLServer peer answers), x as raw little-endian FP32."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[tensor],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="score")],
        raw_input_contents=[np.ascontiguousarray(x, "<f4").tobytes()],
    )


def _frame(model: str, x: np.ndarray, folder: Path) -> Path:
    """The request as a gRPC message on the wire (uncompressed): the file h2load sends as each body."""
    message = _request(model, x).SerializeToString()
    path = folder / f"{model}-{len(x)}.grpc"
    path.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)
    return path


def _check(endpoint: Grpc) -> pb.ModelInferResponse:
    """One call from grpcio: it must answer OK with the expected scores; notes one framed answer's length."""
    with grpc.insecure_channel(f"127.0.0.1:{endpoint.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(_request(endpoint.model, endpoint.x), timeout=30)
    [output] = [o for o in response.outputs if o.name == "score"]
    index = list(response.outputs).index(output)
    if response.raw_output_contents:
        scores = np.frombuffer(response.raw_output_contents[index], "<f4")
    else:
        scores = np.asarray(output.contents.fp32_contents, np.float32)
    assert scores.size == len(endpoint.x), f"{scores.size} scores for {len(endpoint.x)} rows"
    np.testing.assert_allclose(scores, endpoint.expected, rtol=1e-4, atol=1e-6)
    endpoint.response_bytes = 5 + response.ByteSize()
    return response


# --- the load generators -----------------------------------------------------------------------------------


def _h2load_run(
    scenario: Scenario, target: Target, round_: int, endpoint: Grpc, seconds: int, metrics: str | None
) -> Run:
    """h2load replaying the framed request for `seconds` after a second of warm-up. `metrics`: the
    service's base URL, whose gRPC error counter must not grow during the run."""
    _check(endpoint)
    url = f"http://127.0.0.1:{endpoint.port}{METHOD}"
    flags = [f"-c{target.connections}", f"-m{target.streams}", "-d", str(endpoint.frame)]
    flags += ["-H", "content-type: application/grpc", "-H", "te: trailers", url]
    subprocess.run(["h2load", "-D1", *flags], capture_output=True, check=True)  # warm-up
    errors_before, cpu_before = _grpc_errors(metrics) if metrics else 0, _cpu_seconds(endpoint.pids)
    with tempfile.NamedTemporaryFile(suffix=".tsv") as log:
        output = subprocess.run(
            ["h2load", f"-D{seconds}", "--log-file", log.name, *flags], capture_output=True, text=True, check=True
        ).stdout
        durations = [int(line.split("\t")[2]) for line in Path(log.name).read_text().splitlines() if line]
    cpu = _cpu_seconds(endpoint.pids) - cpu_before
    server_errors = (_grpc_errors(metrics) - errors_before) if metrics else 0
    done, data = int(_found(r"(\d+) done", output)), int(_found(r"\((\d+)\) data", output))
    failed = sum(int(_found(rf"(\d+) {kind}", output)) for kind in ("failed", "errored", "timeout"))
    answered = data // endpoint.response_bytes  # the answers that carried a whole response
    rps = float(_found(r"finished in [\d.]+s, ([\d.]+) req/s", output))
    p50, p99 = np.percentile(durations, [50, 99]) / 1000 if durations else (float("nan"),) * 2
    return Run(
        scenario=scenario.name,
        target=target.name,
        round=round_,
        load=f"h2load -c{target.connections} -m{target.streams}",
        rps=rps,
        rows_per_s=rps * scenario.rows,
        p50_ms=round(float(p50), 3),
        p99_ms=round(float(p99), 3),
        requests=done,
        failures=failed + max(done - answered, 0) + server_errors,
        cpu_us_per_request=round(cpu / done * 1e6, 1) if done else float("nan"),
    )


def _found(pattern: str, text: str) -> str:
    """The first group of `pattern` in h2load's summary."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"h2load's output has no {pattern!r}: {text[-500:]}")
    return match[1]


def _grpc_errors(base: str) -> int:
    """The service's gRPC answers other than OK and cancelled (499: h2load ending mid-call), from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = r'^ae_request_errors_total\{[^}]*protocol="grpc"[^}]*status="(\d+)"[^}]*\} ([\d.e+]+)$'
    return sum(int(float(count)) for status, count in re.findall(pattern, text, re.MULTILINE) if status != "499")


def _http_bodies(x: np.ndarray, folder: Path) -> dict[tuple[str, int], tuple[Path, dict[str, str], str]]:
    """Each HTTP target's body file, extra headers and media type, by (target, rows)."""
    bodies = {}
    for rows in (1, 64):
        forms = {
            REST_JSON: (orjson.dumps({"inputs": x[:rows].tolist()}), {}, JSON),
            V2_JSON: (*_v2_body(x[:rows], binary=False), JSON),
            OURS_V2_BINARY: (*_v2_body(x[:rows], binary=True), V2_BINARY),
        }
        for name, (body, headers, media) in forms.items():
            path = folder / f"{name.replace(' ', '-')}-{rows}"
            path.write_bytes(body)
            bodies[name, rows] = (path, headers, media)
    return bodies


def _wrk_run(
    scenario: Scenario,
    target: Target,
    round_: int,
    url: str,
    body: tuple[Path, dict[str, str], str],
    seconds: int,
    pid: int,
) -> Run:
    """wrk (bench/post.lua) for `seconds` after a second of warm-up."""
    path, headers, media = body
    env = _wrk_env(media, (path, headers))
    command = ["wrk", "-t1", f"-c{target.connections}", "--timeout", "10s", "-s", str(LUA), url]
    subprocess.run([*command, "-d1s"], env=env, capture_output=True, check=True)  # warm-up
    cpu_before = _cpu_seconds([pid])
    output = subprocess.run([*command, f"-d{seconds}s"], env=env, capture_output=True, text=True, check=True).stdout
    cpu = _cpu_seconds([pid]) - cpu_before
    values = dict(re.findall(r"(\w+)=([\d.]+)", next(line for line in output.splitlines() if "RESULT" in line)))
    rps = float(values["rps"])
    return Run(
        scenario=scenario.name,
        target=target.name,
        round=round_,
        load=f"wrk -t1 -c{target.connections}",
        rps=rps,
        rows_per_s=rps * scenario.rows,
        p50_ms=float(values["p50_ms"]),
        p99_ms=float(values["p99_ms"]),
        requests=int(values["n"]),
        failures=int(values["sockerr"]) + int(values["non2xx"]),
        cpu_us_per_request=round(cpu / int(values["n"]) * 1e6, 1) if int(values["n"]) else float("nan"),
    )


def _cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of the processes and their descendants (/proc/PID/stat), those that ended
    included once reaped."""
    ticks = 0
    for member in [member for pid in pids for member in _process_tree(pid)]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += sum(int(fields[k]) for k in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the report --------------------------------------------------------------------------------------------


def _line(run: Run) -> str:
    return (
        f"  {run.scenario:<20} {run.target:<24} round {run.round}  {run.rps:>8,.0f} req/s {run.rows_per_s:>9,.0f} "
        f"rows/s  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms  CPU {run.cpu_us_per_request:6.0f} us/req  "
        f"failures {run.failures}  ({run.load})"
    )


MEDIANS = ("rps", "rows_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")


def _summary(runs: list[Run]) -> list[dict[str, Any]]:
    """Each (scenario, target)'s median over its rounds (one slow round on a shared machine moves a mean
    far), with every round's req/s."""
    summary = []
    for key in dict.fromkeys((r.scenario, r.target) for r in runs):
        group = [r for r in runs if (r.scenario, r.target) == key]
        summary.append(
            {
                "scenario": key[0],
                "target": key[1],
                "load": group[0].load,
                **{k: round(float(np.median([getattr(r, k) for r in group])), 2) for k in MEDIANS},
                "rounds_rps": [r.rps for r in group],
                "requests": sum(r.requests for r in group),
                "failures": sum(r.failures for r in group),
            }
        )
    return summary


def _targets(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Issue 23's targets: the median over rounds of each round's ratio (the two ran seconds apart, so under
    about the same load from the machine's other work)."""
    found = {(r.scenario, r.target, r.round): r for r in runs}

    def ratio(scenario: Scenario, ours: str, theirs: str, goal: float | None, key: str = "rps") -> dict[str, Any]:
        rounds = sorted({r.round for r in runs})
        pairs = [(found.get((scenario.name, ours, n)), found.get((scenario.name, theirs, n))) for n in rounds]
        ratios = [getattr(a, key) / getattr(b, key) for a, b in pairs if a and b]
        if not ratios:
            return {"met": None, "note": f"{theirs} not measured"}
        value = float(np.median(ratios))
        met = None if goal is None else value >= goal
        return {"ratio": round(value, 3), "rounds": [round(r, 3) for r in ratios], "goal": goal, "met": met}

    one, many, json_one, json_many = SCENARIOS
    return {
        "1 row: gRPC req/s >= 3x MLServer's gRPC": ratio(one, OURS_GRPC, MLSERVER_GRPC, 3),
        "64 rows: gRPC rows/s >= 2.5x MLServer's gRPC": ratio(many, OURS_GRPC, MLSERVER_GRPC, 2.5),
        "64 rows: gRPC rows/s >= HTTP V2 binary's": ratio(many, OURS_GRPC, OURS_V2_BINARY, 1),
        "1 row: V2 JSON within 10% of REST JSON": ratio(json_one, V2_JSON, REST_JSON, 0.9),
        "64 rows: V2 JSON within 10% of REST JSON": ratio(json_many, V2_JSON, REST_JSON, 0.9),
        "1 row: gRPC against HTTP V2 binary (no goal)": ratio(one, OURS_GRPC, OURS_V2_BINARY, None),
        "1 row: gRPC against grpcio alone (no goal)": ratio(one, OURS_GRPC, ECHO, None),
        "1 row: grpcio alone against MLServer's gRPC (no goal)": ratio(one, ECHO, MLSERVER_GRPC, None),
        "1 row: CPU per request, MLServer's gRPC over ours (no goal)": ratio(
            one, MLSERVER_GRPC, OURS_GRPC, None, "cpu_us_per_request"
        ),
        "1 row: CPU per request, ours over grpcio alone's (no goal)": ratio(
            one, OURS_GRPC, ECHO, None, "cpu_us_per_request"
        ),
        "64 rows: CPU per request, MLServer's gRPC over ours (no goal)": ratio(
            many, MLSERVER_GRPC, OURS_GRPC, None, "cpu_us_per_request"
        ),
    }


def _chart(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SCENARIOS), figsize=(15, 4.8))
    for axis, scenario in zip(axes, SCENARIOS, strict=True):
        shown = [m for m in summary if m["scenario"] == scenario.name]
        names = [m["target"].replace("service ", "").replace(" raw", "").replace(" (", "\n(") for m in shown]
        values = [m["rows_per_s"] for m in shown]
        bars = axis.bar(range(len(shown)), values, color=[f"C{i}" for i in range(len(shown))])
        axis.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8)
        axis.set_xticks(range(len(shown)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
        axis.set_title(scenario.name, fontsize=10)
        axis.set_ylabel("rows/s" if axis is axes[0] else None)
    figure.suptitle(
        "gRPC ModelInfer, HTTP V2 and REST, dense MNIST autoencoder, 2 cores (h2load and wrk on the same machine)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
