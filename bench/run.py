"""Load benchmark: the service on a committed model, other servers with the same bodies, and in-process
onnxruntime (the limit), side by side in one run. Results go to a JSON file and a PNG chart.

    python bench/run.py [--seconds 6] [--compare NAME=URL[@SCENARIOS]] ...

`--compare naive=http://127.0.0.1:8101/score` loads another server (by default the REST JSON scenarios 1 and 2:
the peers speak JSON); `@2` limits it to scenario 2, so one name can point at differently configured servers
per scenario, and `mlserver=http://127.0.0.1:8105/v2/models/peer/infer@5,6` loads a V2 server with the V2
scenarios' bodies (flat JSON tensors asking for the score output).
wrk is Debian's package (apt-get install wrk); it runs with one thread on the same machine.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("post.lua")
JSON, NPY = "application/json", "application/x-npy"
V2_BINARY = "application/octet-stream"  # a V2 infer request with binary tensors (tritonclient's default)
V2_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Scenario:
    number: int
    rows: int
    media: str
    connections: int
    protocol: str = "rest"  # rest: POST /score; v2: POST /v2/models/MODEL/infer (JSON or binary tensors)

    @property
    def name(self) -> str:
        kind = {JSON: "JSON", NPY: ".npy", V2_BINARY: "binary"}[self.media]
        protocol = "V2 " if self.protocol == "v2" else ""
        return f"{self.number}: {self.rows}-row {protocol}{kind}, {self.connections} conn"


SCENARIOS = [
    Scenario(1, 1, JSON, 64),
    Scenario(2, 64, JSON, 4),
    Scenario(3, 64, NPY, 4),
    Scenario(4, 1024, NPY, 2),
    Scenario(5, 1, JSON, 64, "v2"),
    Scenario(6, 64, JSON, 4, "v2"),
    Scenario(7, 64, V2_BINARY, 4, "v2"),
]


@dataclass
class Target:
    name: str
    url: str
    scenarios: set[int] = field(
        default_factory=lambda: {s.number for s in SCENARIOS if s.media == JSON and s.protocol == "rest"}
    )


@dataclass
class Measurement:
    scenario: int
    target: str
    rps: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    mean_batch_rows: float | None = None


def main() -> None:
    args = _parse()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(1024, 784)).astype(np.float32)  # MNIST-like pixels, sent flat
    bodies = _bodies(rows, Path(tempfile.mkdtemp(prefix="bench-")))

    scorer = args.models_dir / args.model / "1" / "scorer.onnx"
    print(f"in-process onnxruntime on {scorer}, one intra-op thread ...", flush=True)
    inprocess = {n: _inprocess_rows_per_s(scorer, rows[:n].reshape(n, 28, 28), args.ort_seconds) for n in (1, 64, 1024)}
    print("  " + ", ".join(f"batch {n}: {r:,.0f} rows/s" for n, r in inprocess.items()), flush=True)

    server, startup = _start_service(args)
    service = Target("service", f"http://127.0.0.1:{args.port}", {s.number for s in SCENARIOS})
    paths = {"rest": "/score", "v2": f"/v2/models/{args.model}/infer"}
    targets = [service, *args.compare]
    results: list[Measurement] = []
    try:
        for scenario in SCENARIOS:
            for target in targets:
                if scenario.number not in target.scenarios:
                    continue
                before = _batch_rows(args.port) if target is service else None
                url = target.url + paths[scenario.protocol] if target is service else target.url
                result = _wrk(target.name, url, scenario, bodies[scenario.number], args.seconds)
                if before is not None:
                    after = _batch_rows(args.port)
                    runs = after[1] - before[1]
                    result.mean_batch_rows = (after[0] - before[0]) / runs if runs else None
                results.append(result)
                print(_line(scenario, result), flush=True)
        overload = _overload(args.port, bodies, args.seconds) + _contention(args.port, bodies, args.seconds)
        tracing = _tracing_cost(args, server, bodies)
        monitoring = _monitoring_cost(args, bodies, server)
        startup["rss_peak_mb"] = _rss_mb(server.pid, "VmHWM")  # each process's peak, summed: an upper bound
    finally:
        server.terminate()
        server.wait(timeout=10)

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "onnxruntime": ort.__version__},
        "model": args.model,
        "service_args": args.service_args,
        "seconds_per_run": args.seconds,
        "startup": startup,
        "inprocess_rows_per_s": inprocess,
        "scenarios": [asdict(s) | {"name": s.name} for s in SCENARIOS],
        "results": [asdict(r) for r in results],
        "overload": overload,
        "tracing": tracing,
        "monitoring": monitoring,
        "targets": _targets(results, inprocess, startup)
        | {f"overload: {o['name']}: {o['target']}": {"met": o["met"]} for o in overload},
    }
    (out / "results.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    _chart(results, inprocess, out / "throughput.png")
    print(json.dumps(report["startup"]), "\n" + json.dumps(report["targets"], indent=2))
    print(f"wrote {out / 'results.json'} and {out / 'throughput.png'}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist-dense")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--seconds", type=int, default=6, help="wrk duration per scenario and server")
    parser.add_argument("--ort-seconds", type=float, default=2.0, help="in-process timing per batch size")
    parser.add_argument("--service-args", default="", help="extra `python -m service` flags (none: the defaults)")
    parser.add_argument("--compare", type=_target, action="append", default=[], metavar="NAME=URL[@1,2]")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    return parser.parse_args()


def _target(spec: str) -> Target:
    name, _, rest = spec.partition("=")
    url, _, numbers = rest.partition("@")
    if not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL[@SCENARIOS], got {spec!r}")
    return Target(name, url, {int(n) for n in numbers.split(",")}) if numbers else Target(name, url)


def _bodies(rows: np.ndarray, folder: Path) -> dict[int, tuple[Path, dict[str, str]]]:
    """Each scenario's body file and the extra headers wrk sends with it."""
    bodies = {}
    for scenario in SCENARIOS:
        x = rows[: scenario.rows]
        path = folder / f"scenario{scenario.number}"
        headers: dict[str, str] = {}
        if scenario.protocol == "v2":
            body, headers = _v2_body(x, binary=scenario.media == V2_BINARY)
        elif scenario.media == JSON:
            body = orjson.dumps({"inputs": x.tolist()})
        else:
            buffer = io.BytesIO()
            np.save(buffer, x)
            body = buffer.getvalue()
        path.write_bytes(body)
        bodies[scenario.number] = (path, headers)
    return bodies


def _v2_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A V2 infer request for the score alone (what the MLServer peer answers): flat JSON data, as MLServer
    takes it, or the binary tensor extension, as tritonclient sends it."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    output = {"name": "score"}
    if not binary:
        return orjson.dumps({"inputs": [tensor | {"data": x.ravel().tolist()}], "outputs": [output]}), {}
    data = np.ascontiguousarray(x, "<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps({"inputs": [tensor], "outputs": [output | {"parameters": {"binary_data": True}}]})
    return header + data, {V2_HEADER: str(len(header))}


def _inprocess_rows_per_s(scorer: Path, x: np.ndarray, seconds: float) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(scorer), sess_options=options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {"x": x})
        runs += 1
    return runs * len(x) / elapsed


def _start_service(
    args: argparse.Namespace, port: int | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, float | None]]:
    """The service as `args` say, on `port` (else args.port), with `env` added to the environment."""
    port = args.port if port is None else port
    if port != args.port:  # a copy beside the service serves HTTP only: the service holds the gRPC port
        env = {"AE_GRPC_PORT": "0", **(env or {})}
    command = [sys.executable, "-m", "service", "--port", str(port), "--models-dir", str(args.models_dir)]
    command += ["--default-model", args.model, "--log-level", "warning", *args.service_args.split()]
    started = time.perf_counter()
    # HTTP only: gRPC's default port may be taken by a service already running (bench/grpc_bench.py loads it).
    server = subprocess.Popen(command, cwd=ROOT, env=os.environ | {"AE_GRPC_PORT": "0"} | (env or {}))
    deadline = started + 60
    while time.perf_counter() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            sys.exit(f"the service exited with {server.returncode}")
        time.sleep(0.02)
    else:
        server.kill()
        sys.exit("the service was not ready within 60 s")
    ready = time.perf_counter() - started
    startup = {
        "ready_s": round(ready, 3),
        "processes": len(_process_tree(server.pid)),
        "rss_ready_mb": _rss_mb(server.pid, "VmRSS"),
        "pss_ready_mb": _pss_mb(server.pid),
    }
    print(
        f"service ready in {ready:.2f} s, {startup['processes']} processes, {startup['pss_ready_mb']} MB resident "
        f"(PSS: pages shared by the forked workers counted once; RSS summed: {startup['rss_ready_mb']} MB)",
        flush=True,
    )
    return server, startup


def _process_tree(pid: int) -> list[int]:
    """pid and its descendants (the service's forked workers)."""
    found = [pid]
    for parent in found:
        children = Path(f"/proc/{parent}/task/{parent}/children")
        if children.exists():
            found += [int(child) for child in children.read_text().split()]
    return found


def _rss_mb(pid: int, field: str) -> float | None:
    """A /proc status field (VmRSS, VmHWM) summed over the process and its workers."""
    return _summed_mb(pid, "status", field)


def _pss_mb(pid: int) -> float | None:
    """Proportional set size over the process tree: each shared page split among the processes sharing it,
    so the sum is the memory the service really holds."""
    return _summed_mb(pid, "smaps_rollup", "Pss")


def _summed_mb(pid: int, file: str, field: str) -> float | None:
    total = 0
    for member in _process_tree(pid):
        path = Path(f"/proc/{member}/{file}")
        match = re.search(rf"^{field}:\s+(\d+) kB", path.read_text(), re.MULTILINE) if path.exists() else None
        total += int(match.group(1)) if match else 0
    return round(total / 1024, 1) if total else None


def _batch_rows(port: int) -> tuple[float, float]:
    """Sum and count of the scorer's batch-size histogram, summed over models."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    found = {part: 0.0 for part in ("sum", "count")}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            part = sample.name.removeprefix("ae_batch_rows_")
            if part in found and sample.name != part and sample.labels.get("graph") == "scorer":
                found[part] += sample.value
    return found["sum"], found["count"]


def _wrk(name: str, url: str, scenario: Scenario, body: tuple[Path, dict[str, str]], seconds: float) -> Measurement:
    values = _wrk_values(url, _wrk_env(scenario.media, body), scenario.connections, seconds)
    rps = float(values["rps"])
    return Measurement(
        scenario=scenario.number,
        target=name,
        rps=rps,
        rows_per_s=rps * scenario.rows,
        p50_ms=float(values["p50_ms"]),
        p99_ms=float(values["p99_ms"]),
        errors=int(values["sockerr"]) + int(values["non2xx"]),
        requests=int(values["n"]),
    )


def _wrk_env(media: str, body: tuple[Path, dict[str, str]]) -> dict[str, str]:
    path, headers = body
    env = os.environ | {"BODY": str(path), "CTYPE": media}
    if media == NPY:
        env["ACCEPT"] = NPY
    for header, value in headers.items():  # post.lua sends one extra header
        env |= {"HNAME": header, "HVALUE": value}
    return env


def _wrk_values(url: str, env: dict[str, str], connections: int, seconds: float) -> dict[str, str]:
    """wrk's RESULT line (bench/post.lua) after a one-second warm-up."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    subprocess.run([*command[:3], "-d1s", *command[4:]], env=env, capture_output=True, check=True)  # warm-up
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=([\d.]+)", next(line for line in output.splitlines() if "RESULT" in line)))


# Overload (the hardening issue): more than the service can compute, with its default settings. Answers must
# come back within 2 s at the 99th percentile, without socket errors; what cannot be computed in time is
# refused at once with 503 and Retry-After.
OVERLOAD = [
    ("1-row JSON, 1,024 connections", "/score", 1, 1024),
    ("1,024-row .npy to mnist-conv, 64 connections", "/models/mnist-conv/score", 4, 64),
]
OVERLOAD_P99_MS = 2000


def _overload(port: int, bodies: dict[int, tuple[Path, dict[str, str]]], seconds: float) -> list[dict[str, Any]]:
    results = []
    for name, path, scenario, connections in OVERLOAD:
        media = next(s.media for s in SCENARIOS if s.number == scenario)
        values = _wrk_values(f"http://127.0.0.1:{port}{path}", _wrk_env(media, bodies[scenario]), connections, seconds)
        requests, refused = int(values["n"]), int(values["non2xx"])
        result: dict[str, Any] = {
            "name": name,
            "requests": requests,
            "rps": float(values["rps"]),
            "p50_ms": float(values["p50_ms"]),
            "p99_ms": float(values["p99_ms"]),
            "socket_errors": int(values["sockerr"]),
            "refused_share": round(refused / requests, 3) if requests else None,
        }
        result["target"] = f"p99 <= {OVERLOAD_P99_MS} ms, no socket error"
        result["met"] = result["p99_ms"] <= OVERLOAD_P99_MS and result["socket_errors"] == 0
        print(
            f"  overload: {name:<46} p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
            f"socket errors {result['socket_errors']}  refused {result['refused_share']:.1%}",
            flush=True,
        )
        results.append(result)
    return results


# Contention (hardening II): /score (scenario 1's body and connections) alone, then while other clients take
# the same workers' time with requests that should cost them little: it must keep CONTENTION_KEEP of its
# requests/s.
CONTENTION_KEEP = 0.7
# One-element rows of 15 characters: a JSON body of 15 MB, under the body limit (16 MiB), refused (413) for
# its rows (the limit is 1,024).
REFUSABLE_ROWS = 1_000_000


def _contention(port: int, bodies: dict[int, tuple[Path, dict[str, str]]], seconds: int) -> list[dict[str, Any]]:
    base = f"http://127.0.0.1:{port}"
    score_env = _wrk_env(JSON, bodies[1])
    refusable = b'{"inputs":[' + b",".join([b"[0.0000000001]"] * REFUSABLE_ROWS) + b"]}"
    # Each runs a second before /score's run and its warm-up, and a second after.
    others = [
        ("8 connections flooding GET /metrics", lambda: _flood(f"{base}/metrics", 8, seconds + 3)),
        ("2 clients sending 15 MB bodies (413)", lambda: _senders(f"{base}/score", refusable, 2, seconds + 3)),
    ]
    results = []
    for name, start in others:
        # Alone just before, each time: a run right after another starts slower, and the machine's load drifts.
        alone = _wrk_values(f"{base}/score", score_env, SCENARIOS[0].connections, seconds)
        with start() as answers:
            time.sleep(1)
            during = _wrk_values(f"{base}/score", score_env, SCENARIOS[0].connections, seconds)
        kept = float(during["rps"]) / float(alone["rps"])
        result: dict[str, Any] = {
            "name": f"1-row JSON while {name}",
            "rps_alone": float(alone["rps"]),
            "rps": float(during["rps"]),
            "kept": round(kept, 3),
            "p99_ms_alone": float(alone["p99_ms"]),
            "p99_ms": float(during["p99_ms"]),
            "socket_errors": int(during["sockerr"]),
            "others_answers": answers,
            "target": f"/score keeps >= {CONTENTION_KEEP:.0%} of its req/s",
            "met": kept >= CONTENTION_KEEP and int(during["sockerr"]) == 0,
        }
        print(
            f"  contention: {result['name']:<58} {result['rps_alone']:7,.0f} -> {result['rps']:7,.0f} req/s "
            f"({kept:.0%})  p99 {result['p99_ms_alone']:6.1f} -> {result['p99_ms']:6.1f} ms  others' answers {answers}",
            flush=True,
        )
        results.append(result)
    return results


# Tracing (issue 24): scenario 1 on the service as started (tracing off) and on a second copy on the next port
# with tracing on at 100% sampling, exporting OTLP/HTTP to a receiver in this process that takes the spans
# and drops them; the two are loaded in turn, twice, since the machine's load drifts.
TRACING_ROUNDS = 2


def _tracing_cost(
    args: argparse.Namespace, server: subprocess.Popen[bytes], bodies: dict[int, tuple[Path, dict[str, str]]]
) -> dict[str, Any]:
    env = _wrk_env(JSON, bodies[1])
    rps: dict[str, list[float]] = {"off": [], "on": []}
    cpu_us: dict[str, list[float]] = {"off": [], "on": []}  # the service's CPU time per request: load-proof
    with _otlp_sink() as (endpoint, received):
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
        traced, _ = _start_service(args, args.port + 1, otel)
        ports = {"off": args.port, "on": args.port + 1}
        servers = {"off": _process_tree(server.pid), "on": _process_tree(traced.pid)}
        try:
            for _ in range(TRACING_ROUNDS):
                for name, port in ports.items():
                    measured = _one_row_round(args, env, port, servers[name])
                    rps[name].append(measured[0])
                    cpu_us[name].append(measured[1])
        finally:
            traced.terminate()
            traced.wait(timeout=10)
    off, on = (sum(rps[name]) / len(rps[name]) for name in ("off", "on"))
    cpu_off, cpu_on = (sum(cpu_us[name]) / len(cpu_us[name]) for name in ("off", "on"))
    result = {
        "rps_off": rps["off"],
        "rps_on": rps["on"],
        "cost": round(1 - on / off, 3),
        "cpu_us_per_request_off": cpu_us["off"],
        "cpu_us_per_request_on": cpu_us["on"],
        "exports": dict(received),
    }
    print(
        f"  tracing: 1-row JSON, {SCENARIOS[0].connections} conn: {off:7,.0f} req/s off, {on:7,.0f} on at 100% "
        f"sampling ({result['cost']:.1%} less); CPU per request {cpu_off:.0f} us off, {cpu_on:.0f} us on; "
        f"{received['requests']} OTLP exports, {received['bytes']:,} bytes",
        flush=True,
    )
    return result


def _one_row_round(
    args: argparse.Namespace, env: dict[str, str], port: int, processes: list[int]
) -> tuple[float, float]:
    """Scenario 1's load on the service at `port`: its req/s, and the CPU time `processes` spent per request."""
    before = _cpu_s(processes)
    values = _wrk_values(f"http://127.0.0.1:{port}/score", env, SCENARIOS[0].connections, args.seconds)
    # The requests of wrk's one-second warm-up count too: about one second's worth.
    requests = float(values["n"]) + float(values["rps"])
    return float(values["rps"]), round((_cpu_s(processes) - before) / requests * 1e6, 1)


# Score monitoring (issue 24, docs/monitoring.md): scenario 1 on the service as started (monitoring on, the
# default) and on a copy two ports up with AE_MONITOR_WINDOW=0, loaded in turn, MONITORING_ROUNDS times each.
# Beside req/s, the CPU time the service's processes spent per request; on a busy machine both move by 10-20%
# between rounds, far more than monitoring costs, so the hook itself is timed in-process too (`hook_us`).
MONITORING_ROUNDS = 4


def _monitoring_cost(
    args: argparse.Namespace, bodies: dict[int, tuple[Path, dict[str, str]]], monitored: subprocess.Popen[bytes]
) -> dict[str, Any]:
    env = _wrk_env(JSON, bodies[1])
    rps: dict[str, list[float]] = {"on": [], "off": []}
    cpu_us: dict[str, list[float]] = {"on": [], "off": []}
    unmonitored, _ = _start_service(args, args.port + 2, {"AE_MONITOR_WINDOW": "0"})
    ports = {"on": args.port, "off": args.port + 2}
    servers = {"on": _process_tree(monitored.pid), "off": _process_tree(unmonitored.pid)}
    try:
        for round_ in range(MONITORING_ROUNDS):
            # Each goes first in turn: the second of a pair runs on a machine the first has just warmed.
            for name, port in sorted(ports.items(), reverse=bool(round_ % 2)):
                measured = _one_row_round(args, env, port, servers[name])
                rps[name].append(measured[0])
                cpu_us[name].append(measured[1])
    finally:
        unmonitored.terminate()
        unmonitored.wait(timeout=10)
    mean = {name: (sum(rps[name]) / len(rps[name]), sum(cpu_us[name]) / len(cpu_us[name])) for name in rps}
    result = {
        "rps_on": rps["on"],
        "rps_off": rps["off"],
        "cpu_us_per_request_on": cpu_us["on"],
        "cpu_us_per_request_off": cpu_us["off"],
        "cost_rps": round(1 - mean["on"][0] / mean["off"][0], 3),
        "cost_cpu": round(mean["on"][1] / mean["off"][1] - 1, 3),
        "hook_us": _monitoring_hook_us(args.models_dir / args.model / "1"),
    }
    print(
        f"  monitoring: 1-row JSON, {SCENARIOS[0].connections} conn: {mean['on'][0]:7,.0f} req/s on, "
        f"{mean['off'][0]:7,.0f} off ({result['cost_rps']:.1%} less); CPU per request {mean['on'][1]:.0f} us on, "
        f"{mean['off'][1]:.0f} us off ({result['cost_cpu']:+.1%}); the hook alone: "
        + ", ".join(f"{rows} rows {us} us" for rows, us in result["hook_us"].items()),
        flush=True,
    )
    return result


def _monitoring_hook_us(package: Path) -> dict[int, float]:
    """What service.dataplane.score adds per request for monitoring: one recorder's `record` of 1 and 64
    rows, timed in this process (the best of five runs)."""
    from service.manifest import Manifest
    from service.monitoring import DEFAULT_WINDOW, Monitoring

    manifest = Manifest.model_validate_json((package / "manifest.json").read_bytes())
    recorder = Monitoring(DEFAULT_WINDOW, None).recorder(manifest)
    assert recorder is not None, f"{package} stores no score curve"
    times = {}
    for rows in (1, 64):
        percentiles = np.random.default_rng(0).uniform(0, 100, rows).astype(np.float32)
        sq_err = np.ones((rows, *manifest.row_shape), dtype=np.float32)
        run = partial(recorder.record, percentiles, percentiles > 99, sq_err)
        times[rows] = round(min(timeit.repeat(run, number=20_000, repeat=5)) / 20_000 * 1e6, 2)
    return times


def _cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used (their threads included)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def _otlp_sink() -> Iterator[tuple[str, collections.Counter[str]]]:
    """An OTLP/HTTP endpoint that answers every export with success and keeps only counts."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: collections.Counter[str] = collections.Counter()

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received["bytes"] += len(self.rfile.read(int(self.headers.get("content-length", "0"))))
            received["requests"] += 1
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _flood(url: str, connections: int, seconds: int) -> Iterator[dict[str, int]]:
    """wrk GETting `url` from `connections` connections; on exit, its answers (`ok`) and socket errors."""
    answers: dict[str, int] = {}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
        yield answers
        output = wrk.communicate()[0]
    total = re.search(r"(\d+) requests in", output)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    answers["ok"] = (int(total[1]) if total else 0) - (int(failed[1]) if failed else 0)
    answers["socket_errors"] = sum(int(n) for n in errors.groups()) if errors else 0


@contextmanager
def _senders(url: str, body: bytes, clients: int, seconds: int) -> Iterator[dict[str, int]]:
    """`clients` threads POSTing `body` in a loop for `seconds`; on exit, their answers by status. (wrk
    stalls on a body answered before it has written it all.)"""
    answers: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds

    def send() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                try:
                    status = str(client.post(url, content=body, headers={"Content-Type": JSON}).status_code)
                except httpx.TransportError:
                    status = "socket_errors"
                answers[status] += 1

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    summary: dict[str, int] = {}
    yield summary
    for thread in threads:
        thread.join()
    summary |= answers


def _line(scenario: Scenario, r: Measurement) -> str:
    batch = f", mean batch {r.mean_batch_rows:.1f} rows" if r.mean_batch_rows else ""
    return (
        f"  {scenario.name:<26} {r.target:<10} {r.rps:>9,.0f} req/s {r.rows_per_s:>10,.0f} rows/s"
        f"  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  errors {r.errors}{batch}"
    )


def _targets(results: list[Measurement], inprocess: dict[int, float], startup: dict) -> dict[str, dict]:
    """The throughput targets (issues: throughput II, and V2 against MLServer), from this run alone."""

    def of(*scenarios: int, service: bool) -> list[Measurement]:
        return [r for r in results if r.scenario in scenarios and (r.target == "service") == service]

    checks: dict[str, dict] = {}
    ours, peers = of(1, 5, service=True), of(1, 5, service=False)
    if ours and peers:
        best, fastest = max(peers, key=lambda r: r.rps), max(ours, key=lambda r: r.rps)
        ratio = fastest.rps / best.rps
        highest_p99 = max(r.p99_ms for r in ours)
        checks["1 row: faster JSON form >= 3x the best peer's req/s, p99 below every peer's"] = {
            "ratio": round(ratio, 2),
            "p99_ms": highest_p99,
            "peers_lowest_p99_ms": min(r.p99_ms for r in peers),
            "met": ratio >= 3 and highest_p99 < min(r.p99_ms for r in peers),
        }
    ours, peers, rest = of(2, 6, service=True), of(2, 6, service=False), of(2, service=True)
    if ours and peers:
        best = max(r.rows_per_s for r in peers)
        ratio = max(r.rows_per_s for r in ours) / best
        checks["64 rows: faster JSON form >= 2.5x the best peer's rows/s"] = {
            "ratio": round(ratio, 2),
            "met": ratio >= 2.5,
        }
        if rest:
            ratio = rest[0].rows_per_s / best
            checks["64 rows: REST JSON >= 2x the best peer's rows/s"] = {"ratio": round(ratio, 2), "met": ratio >= 2}
    for scenario, batch, goal in ((3, 64, 0.6), (4, 1024, 0.85)):
        if found := of(scenario, service=True):
            ratio = found[0].rows_per_s / inprocess[batch]
            key = f"{scenario}: .npy >= {goal:.0%} of in-process onnxruntime at batch {batch}"
            checks[key] = {"ratio": round(ratio, 3), "met": ratio >= goal}
    for scenario, goal in ((5, 3), (6, 2.5)):
        ours, peers = of(scenario, service=True), of(scenario, service=False)
        if ours and peers:
            ratio = ours[0].rows_per_s / max(r.rows_per_s for r in peers)
            checks[f"{scenario}: V2 JSON >= {goal}x the V2 peer's rows/s"] = {
                "ratio": round(ratio, 2),
                "met": ratio >= goal,
            }
    binary, npy = of(7, service=True), of(3, service=True)
    if binary and npy:
        ratio = binary[0].rows_per_s / npy[0].rows_per_s
        checks["7: V2 binary >= 90% of the .npy route's rows/s"] = {"ratio": round(ratio, 3), "met": ratio >= 0.9}
    pss = startup.get("pss_ready_mb")
    checks["resident memory (PSS) < 250 MB"] = {"mb": pss, "met": pss is not None and pss < 250}
    checks["ready within 3 s"] = {"seconds": startup["ready_s"], "met": startup["ready_s"] < 3}
    return checks


def _chart(results: list[Measurement], inprocess: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.target for r in results))
    figure, axis = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / (len(names) + 1)
    labelled: set[str] = set()
    for i, name in enumerate(names):
        for j, scenario in enumerate(SCENARIOS):
            found = [r for r in results if r.target == name and r.scenario == scenario.number]
            if found:
                label = None if name in labelled else name
                labelled.add(name)
                axis.bar(j + i * width, found[0].rows_per_s, width, color=f"C{i}", label=label)
    limits = [inprocess[s.rows] for s in SCENARIOS]
    axis.bar(
        [j + len(names) * width for j in range(len(SCENARIOS))], limits, width, color="grey", label="in-process ORT"
    )
    ticks = [s.name.replace(", ", "\n") for s in SCENARIOS]
    axis.set_xticks([j + len(names) * width / 2 for j in range(len(SCENARIOS))], ticks, fontsize=8)
    axis.set_yscale("log")
    axis.set_ylabel("rows/s (log scale)")
    axis.set_title("POST /score and V2 infer, dense MNIST autoencoder, 2 cores (wrk on the same machine)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
