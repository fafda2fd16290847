"""Hostile bodies against a server with one worker: how long each holds the event loop (the slowest /healthz
answer while it is refused), what the worker's memory does, and the answer's status. Results go to a JSON
file and a PNG chart.

    python bench/hostile.py [--models-dir models] [--repeat 5] [--case CSV] [--out reports/hardening]

Run it from another checkout to measure an older commit the same way (`--server-root ../old`): the
server is that checkout's `python -m service`, the bodies and the probe are this script's."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
BIG = 15 * 1024 * 1024
FEATURES = 21  # models/cardio
IMAGE = 784  # models/mnist-conv


def bodies() -> dict[str, tuple[str, bytes, str]]:
    row = [0.5] * FEATURES
    tensor = b'{"name":"x","shape":[1],"datatype":"FP32","data":[0]}'
    image = {"name": "x", "shape": [1, 28, 28, 1], "datatype": "FP32", "data": [0] * IMAGE}
    return {
        "JSON, 15 MB of one-value rows": (
            "/models/cardio/score",
            b'{"inputs": [' + b",".join([b"[0]"] * (BIG // 4)) + b"]}",
            "application/json",
        ),
        "JSON, a pad field of 100k zeros": (
            "/models/mnist-conv/score",
            orjson.dumps({"inputs": [[0] * IMAGE], "pad": [0] * 100_000}),
            "application/json",
        ),
        "CSV, 15 MB of 1 lines": ("/models/cardio/score", b"1\n" * (BIG // 2), "text/csv"),
        "CSV, 15 MB of valid rows": (
            "/models/cardio/score",
            (",".join(["0.5"] * FEATURES) + "\n").encode() * (BIG // (4 * FEATURES)),
            "text/csv",
        ),
        "V2, 15 MB of inputs": (
            "/v2/models/cardio/infer",
            b'{"inputs":[' + b",".join([tensor] * (BIG // (len(tensor) + 1))) + b"]}",
            "application/json",
        ),
        "V2, a parameter of 100k zeros": (
            "/v2/models/mnist-conv/infer",
            orjson.dumps({"inputs": [image], "parameters": {"pad": [0] * 100_000}}),
            "application/json",
        ),
        "JSON, 2,000 rows and 15 MB of string": (
            "/models/cardio/score",
            orjson.dumps({"inputs": [row] * 2000, "pad": " " * (BIG - 100_000)}),
            "application/json",
        ),
    }


@contextmanager
def server(root: Path, models_dir: Path, port: int) -> Iterator[tuple[int, str]]:
    log = open(f"/tmp/hostile-{port}.log", "wb")  # noqa: SIM115  # closed below, after the process
    env = os.environ | {"AE_PROVIDERS": "CPUExecutionProvider", "AE_WORKERS": "1", "AE_GRPC_PORT": "0"}
    command = [sys.executable, "-m", "service", "--port", str(port), "--models-dir", str(models_dir.resolve())]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield process.pid, url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def worker(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid  # the arbiter's one worker, or the process itself


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Probe(threading.Thread):
    """/healthz every 10 ms, and the worker's RSS, until stopped: the slowest answer and the highest RSS."""

    def __init__(self, url: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.url, self.pid, self.slowest, self.peak, self.stop = url, pid, 0.0, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.TimeoutException):  # counted as the minute it waited
                    client.get("/healthz")
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.peak = max(self.peak, rss(self.pid))
                time.sleep(0.01)


def measure(url: str, pid: int, repeat: int, cases: list[str]) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, (path, body, media) in bodies().items():
            if cases and not any(case in name for case in cases):
                continue
            before = rss(pid)
            probe = Probe(url, pid)
            probe.start()
            started, statuses = time.perf_counter(), set()
            for _ in range(repeat):
                try:
                    statuses.add(client.post(path, content=body, headers={"content-type": media}).status_code)
                except httpx.TimeoutException:
                    statuses.add(0)  # no answer within two minutes
            elapsed = (time.perf_counter() - started) / repeat
            probe.stop.set()
            probe.join()
            time.sleep(1)
            results[name] = {
                "body_mb": round(len(body) / 2**20, 2),
                "statuses": sorted(statuses),
                "seconds_per_request": round(elapsed, 3),
                "slowest_healthz_ms": round(probe.slowest * 1000, 1),
                "rss_before_mb": round(before / 2**20),
                "rss_peak_mb": round(probe.peak / 2**20),
                "rss_after_mb": round(rss(pid) / 2**20),
            }
            print(name, results[name], flush=True)
    return results


def chart(results: dict[str, dict[str, dict[str, object]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.6 * len(names) + 1.5))
    for offset, (label, rows) in enumerate(results.items()):
        positions = [i + 0.4 * offset for i in range(len(names))]
        axes[0].barh(positions, [float(rows[n]["slowest_healthz_ms"]) for n in names], height=0.4, label=label)  # type: ignore[arg-type]
        axes[1].barh(positions, [float(rows[n]["rss_after_mb"]) for n in names], height=0.4, label=label)  # type: ignore[arg-type]
    for axis, title in zip(
        axes, ("slowest /healthz while refused (ms, log)", "worker RSS afterwards (MB)"), strict=True
    ):
        axis.set_title(title)
        axis.set_yticks([i + 0.2 for i in range(len(names))], names if axis is axes[0] else [""] * len(names))
        axis.legend()
    axes[0].set_xscale("log")
    axes[0].axvline(100, color="grey", linestyle="--")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--server-root", type=Path, action="append", default=[], help="checkouts to compare")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "hardening")
    parser.add_argument("--case", action="append", default=[], help="only the bodies whose name holds this")
    args = parser.parse_args()
    results = {}
    for index, root in enumerate([ROOT, *args.server_root]):
        git = ["git", "-C", str(root), "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True)
        label = f"{root.name} at {commit.stdout.strip() or 'an unknown commit'}"
        with server(root, args.models_dir, args.port + index) as (pid, url):
            results[label] = measure(url, worker(pid), args.repeat, args.case)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, args.out / "hostile.png")


if __name__ == "__main__":
    main()
