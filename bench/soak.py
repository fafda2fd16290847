"""`make soak`: the service under mixed traffic for a while (10 minutes by default), watching its memory.

One `python -m service` on the committed models with its default settings; wrk processes side by side for
the whole run, each on one kind of request: 1-row JSON scores, 64-row .npy reconstructions of the
convolutional model, V2 infer with percentiles and top features, PNG uploads, and malformed bodies (400s).
The service's resident memory is sampled every few seconds; the growth is the last sample less the one
at the end of the warm-up (the first tenth of the run, at most a minute), when caches and arenas have
filled. Results: reports/soak/soak.json and soak.png (memory over time).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LUA, ROOT, _rss_mb, _start_service  # bench/ is scripts, not a package

GROWTH_TARGET_MB = 50
BOUNDARY = "soakboundary"


@dataclass(frozen=True)
class Traffic:
    name: str
    path: str
    body: bytes
    content_type: str
    connections: int
    accept: str | None = None


@dataclass
class Outcome:
    name: str
    requests: int
    rps: float
    p99_ms: float
    socket_errors: int
    non_2xx: int


def traffic(rng: np.random.Generator) -> list[Traffic]:
    pixels = rng.integers(0, 256, size=(64, 28, 28)).astype(np.float32)
    npy = io.BytesIO()
    np.save(npy, pixels)
    png = io.BytesIO()
    Image.fromarray(pixels[0].astype(np.uint8)).save(png, format="PNG")
    upload = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    cardio = rng.normal(size=(4, 21)).round(4).tolist()
    v2 = {
        "inputs": [{"name": "x", "shape": [4, 21], "datatype": "FP32", "data": cardio}],
        "outputs": [{"name": n} for n in ("score", "percentile", "top_features", "top_features_share")],
        "parameters": {"top_features": 3},
    }
    return [
        Traffic("1-row JSON score", "/models/mnist-dense/score", json.dumps({"inputs": pixels[:1].tolist()}).encode(),
                "application/json", 8),
        Traffic("64-row .npy reconstruct, conv", "/models/mnist-conv/reconstruct", npy.getvalue(),
                "application/x-npy", 2, accept="application/x-npy"),
        Traffic("V2 infer, percentiles, top features", "/v2/models/cardio/infer", json.dumps(v2).encode(),
                "application/json", 2),
        Traffic("PNG upload score", "/models/mnist-conv/score", upload,
                f"multipart/form-data; boundary={BOUNDARY}", 1),
        Traffic("malformed JSON (400)", "/score", b'{"inputs": [[1, 2,', "application/json", 1),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=600, help="how long the traffic runs")
    parser.add_argument("--port", type=int, default=8299, help="where the service listens (make soak PORT=...)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "soak")
    args = parser.parse_args()
    args.model, args.service_args = "mnist-dense", ""

    server, startup = _start_service(args)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            if (rss := _rss_mb(server.pid, "VmRSS")) is not None:
                samples.append((round(time.monotonic() - started, 1), rss))
            stop.wait(5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            outcomes = _run_traffic(traffic(np.random.default_rng(0)), args.port, args.seconds, Path(folder))
    finally:
        stop.set()
        sampler.join()
        server.terminate()
        server.wait(timeout=40)
    _report(args, startup, samples, outcomes)


def _run_traffic(kinds: list[Traffic], port: int, seconds: int, folder: Path) -> list[Outcome]:
    running = []
    for i, kind in enumerate(kinds):
        body = folder / f"body{i}"
        body.write_bytes(kind.body)
        env = os.environ | {"BODY": str(body), "CTYPE": kind.content_type}
        if kind.accept:
            env["ACCEPT"] = kind.accept
        command = ["wrk", "-t1", f"-c{kind.connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA)]
        command.append(f"http://127.0.0.1:{port}{kind.path}")
        running.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    print(f"{len(kinds)} kinds of traffic for {seconds} s ...", flush=True)
    outcomes = []
    for kind, process in zip(kinds, running, strict=True):
        output, _ = process.communicate()
        values = dict(re.findall(r"(\w+)=([\d.]+)", next(line for line in output.splitlines() if "RESULT" in line)))
        outcomes.append(
            Outcome(kind.name, int(values["n"]), float(values["rps"]), float(values["p99_ms"]),
                    int(values["sockerr"]), int(values["non2xx"]))
        )  # fmt: skip
    return outcomes


def _report(
    args: argparse.Namespace, startup: dict, samples: list[tuple[float, float]], outcomes: list[Outcome]
) -> None:
    warm_until = min(60.0, args.seconds / 10)
    after_warm_up = [rss for t, rss in samples if t >= warm_until]
    baseline = after_warm_up[0] if after_warm_up else samples[0][1]
    growth = round(samples[-1][1] - baseline, 1)
    result = {
        "seconds": args.seconds,
        "startup": startup,
        "traffic": [asdict(o) for o in outcomes],
        "rss_mb": {"after_warm_up": baseline, "end": samples[-1][1], "peak": max(r for _, r in samples)},
        "rss_growth_mb": growth,
        "target": {"rss_growth_below_mb": GROWTH_TARGET_MB, "met": growth < GROWTH_TARGET_MB},
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    _chart(samples, warm_until, args.out / "soak.png")
    for o in outcomes:
        print(f"  {o.name:<38} {o.requests:>9,} requests {o.rps:>8,.0f}/s  p99 {o.p99_ms:8.1f} ms  "
              f"socket errors {o.socket_errors}  non-2xx {o.non_2xx}")  # fmt: skip
    print(f"resident memory: {baseline} MB after warm-up, {samples[-1][1]} MB at the end: growth {growth} MB "
          f"(target < {GROWTH_TARGET_MB} MB: {'met' if growth < GROWTH_TARGET_MB else 'NOT met'})")  # fmt: skip
    print(f"wrote {args.out / 'soak.json'} and soak.png")


def _chart(samples: list[tuple[float, float]], warm_until: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([t / 60 for t, _ in samples], [r for _, r in samples], color="tab:blue")
    ax.axvline(warm_until / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title("python -m service under mixed traffic")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
