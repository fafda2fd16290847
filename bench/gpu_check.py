"""The GPU check (../shared/gpu/README.md), run on a machine with an NVIDIA GPU and onnxruntime-gpu.

For every committed model, through the service's own ModelRuntime with the providers its default settings
pick: the provider each graph got, answers equal to the CPU's, and rows/s at batch 1 and 1,024 on the GPU
beside the CPU. On the scorer graph alone it also times what I/O binding and CUDA graphs change: inputs
already on the device (no host-to-device copy) and a captured CUDA graph replayed per batch.

    python bench/gpu_check.py [--models-dir models] [--seconds 1.5] [--out reports/gpu]

Writes OUT/gpu_check.json and OUT/gpu_check.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.repository import Repository  # noqa: E402
from service.runtime import ModelRuntime, SessionConfig  # noqa: E402
from service.settings import Settings  # noqa: E402

BATCHES = (1, 1024)
# TF32 matmuls on the GPU (onnxruntime's default) round inputs to 10-bit mantissas, about 1e-3 relative.
TOLERANCE = 1e-2


def main() -> None:
    args = _parse()
    settings = Settings(models_dir=args.models_dir)
    providers = settings.execution_providers()  # what the service asks for with its defaults
    report: dict[str, Any] = {
        "device": _gpu_name(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "service_default_providers": providers,
        "cpu_threads": settings.onnxruntime_threads(),
        "tolerance": TOLERANCE,
        "models": {},
    }
    print(json.dumps({k: v for k, v in report.items() if k != "models"}), flush=True)
    repository = Repository(args.models_dir)
    for folder in sorted(repository.scan().packages.values(), key=lambda f: f.key):
        config = {"providers": tuple(providers), "intra_op_threads": settings.onnxruntime_threads()}
        gpu = ModelRuntime(repository.read(folder), SessionConfig(**config))
        cpu = ModelRuntime(repository.read(folder), SessionConfig(**config | {"providers": ("CPUExecutionProvider",)}))
        gpu.load()
        cpu.load()
        x = _rows(gpu, max(BATCHES))
        result = {
            "providers": gpu.providers,
            "agreement": _agreement(cpu, gpu, x),
            "runtime_rows_per_s": {
                name: {n: _rows_per_s(partial(rt.score, x[:n]), n, args.seconds) for n in BATCHES}
                for name, rt in (("cpu", cpu), ("gpu", gpu))
            },
        }
        if "CUDAExecutionProvider" in ort.get_available_providers():
            scorer = folder.path / gpu.manifest.graphs["scorer"].file
            result["scorer_graph_rows_per_s"] = _graph_variants(scorer, x, args)
            result["score_max_diff_relative_by_tf32"] = _tf32_effect(scorer, x)
        report["models"][folder.label] = result
        print(folder.label, json.dumps(result), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    _chart(report, args.out / "gpu_check.png")
    print(f"wrote {args.out / 'gpu_check.json'}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per variant and batch size")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu")
    return parser.parse_args()


def _gpu_name() -> str:
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no nvidia-smi"


def _rows(runtime: ModelRuntime, n: int) -> np.ndarray:
    """Rows spread over the box the model was trained on, in raw units."""
    offset, scale = runtime.manifest.normalisation()
    u = np.random.default_rng(0).random((n, *runtime.manifest.row_shape))
    return (offset + scale * u).astype(np.float32)


def _agreement(cpu: ModelRuntime, gpu: ModelRuntime, x: np.ndarray) -> dict[str, Any]:
    """Largest differences between the GPU's and the CPU's answers on the same rows: scores relative to
    themselves, reconstructions and latents relative to the range the CPU's answers span."""
    want, got = cpu.score(x), gpu.score(x)
    pairs = {
        "score": (want.score, got.score),
        "x_hat": (want.x_hat, got.x_hat),
        "z": (cpu.encode(x)[0], gpu.encode(x)[0]),
    }
    found: dict[str, Any] = {}
    for name, (a, b) in pairs.items():
        scale = np.abs(a) if name == "score" else float(a.max() - a.min())
        found[f"{name}_max_abs_diff"] = float(np.max(np.abs(a - b)))
        found[f"{name}_max_diff_relative"] = float(np.max(np.abs(a - b) / np.maximum(scale, 1e-12)))
    found["within_tolerance"] = all(found[f"{name}_max_diff_relative"] <= TOLERANCE for name in pairs)
    found["same_verdicts"] = bool(
        np.array_equal(want.score > cpu.manifest.score.threshold, got.score > gpu.manifest.score.threshold)
    )
    return found


def _tf32_effect(graph: Path, x: np.ndarray) -> dict[str, float]:
    """The scorer graph's largest relative score difference from the CPU with TF32 matmuls (onnxruntime's
    default on the GPU) and without."""
    want = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(["score"], {"x": x})[0]
    found = {}
    for tf32 in ("1", "0"):
        cuda = [("CUDAExecutionProvider", {"use_tf32": tf32}), "CPUExecutionProvider"]
        got = ort.InferenceSession(str(graph), providers=cuda).run(["score"], {"x": x})[0]
        found[f"use_tf32={tf32}"] = float(np.max(np.abs(got - want) / np.abs(want)))
    return found


def _rows_per_s(run: Callable[[], object], rows: int, seconds: float) -> float:
    run()
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        run()
        runs += 1
    return round(runs * rows / elapsed, 1)


def _graph_variants(graph: Path, x: np.ndarray, args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """The scorer graph on CUDA: plain run (numpy in and out, as the service does), I/O binding with the
    input already on the device, and a CUDA graph replayed with the batch copied in and the answers out."""
    cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
    plain = ort.InferenceSession(str(graph), providers=cuda)
    found: dict[str, dict[int, Any]] = {"plain": {}, "iobinding_on_device": {}, "cuda_graph": {}}
    for n in BATCHES:
        batch = np.ascontiguousarray(x[:n])
        found["plain"][n] = _rows_per_s(lambda b=batch: plain.run(None, {"x": b}), n, args.seconds)

        binding = plain.io_binding()
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for output in plain.get_outputs():
            binding.bind_output(output.name, "cuda")
        found["iobinding_on_device"][n] = _rows_per_s(lambda b=binding: plain.run_with_iobinding(b), n, args.seconds)

        try:
            found["cuda_graph"][n] = _cuda_graph_rows_per_s(graph, batch, args.seconds)
        except Exception as exc:  # onnxruntime refuses graphs with nodes it cannot capture; report why
            found.setdefault("cuda_graph_error", {})[n] = str(exc)[:300]
    return found


def _cuda_graph_rows_per_s(graph: Path, batch: np.ndarray, seconds: float) -> float:
    # A CUDA graph replays fixed device addresses, so inputs and outputs are bound once and refreshed in place.
    session = ort.InferenceSession(
        str(graph), providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    )
    x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
    outputs = {
        o.name: ort.OrtValue.ortvalue_from_shape_and_type(_shape(o.shape, len(batch), batch), np.float32, "cuda", 0)
        for o in session.get_outputs()
    }
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", x)
    for name, value in outputs.items():
        binding.bind_ortvalue_output(name, value)

    def run() -> None:
        x.update_inplace(batch)
        session.run_with_iobinding(binding)
        for value in outputs.values():
            value.numpy()

    run()  # the capture
    return _rows_per_s(run, len(batch), seconds)


def _shape(declared: list[Any], n: int, batch: np.ndarray) -> list[int]:
    """An output's shape: the batch axis is n; the rest follows the input's row shape where symbolic."""
    if len(declared) == 1:
        return [n]
    return [n, *batch.shape[1:]]


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(BATCHES), figsize=(11, 4))
    for ax, n in zip(axes, BATCHES, strict=True):
        series = {
            "CPU (service runtime)": [report["models"][m]["runtime_rows_per_s"]["cpu"][n] for m in models],
            "GPU (service runtime)": [report["models"][m]["runtime_rows_per_s"]["gpu"][n] for m in models],
            "GPU, CUDA graph": [
                report["models"][m].get("scorer_graph_rows_per_s", {}).get("cuda_graph", {}).get(n, 0) for m in models
            ],
        }
        width = 0.8 / len(series)
        for i, (label, values) in enumerate(series.items()):
            ax.bar([j + i * width for j in range(len(models))], values, width, label=label)
        ax.set_xticks([j + width for j in range(len(models))], models)
        ax.set_yscale("log")
        ax.set_title(f"score, batch {n}: rows/s")
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['device']}, onnxruntime {report['onnxruntime']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
