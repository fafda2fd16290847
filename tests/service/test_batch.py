"""python -m service.batch with the local engine: the answers equal the service's /score and /encode for the
same rows (Parquet, CSV, .npy and an image folder), passthrough columns are kept, bad input is named by
file and row, and a failed job leaves nothing behind."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from service.batch.config import BatchConfig
from service.batch.errors import BatchError
from service.batch.jobs import run_job
from tests.service.conftest import IMAGE_SHAPE, TABULAR_FEATURES

pytestmark = pytest.mark.anyio

ROWS = 300
ALL = "score,percentile,is_anomaly,top_features,z,reconstruction"
TOP = 2


def tabular(rows: int = ROWS, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(rows, TABULAR_FEATURES)) + 3.0).astype(np.float32)
    features = {f"f{i}": x[:, i] for i in range(TABULAR_FEATURES)}
    return pa.table({"id": pa.array([f"row-{i}" for i in range(rows)]), **features, "day": np.arange(rows) % 7})


def features_of(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(f"f{i}").to_numpy() for i in range(TABULAR_FEATURES)]).astype(np.float32)


def write_images(folder: Path, count: int, seed: int = 3) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=IMAGE_SHAPE, dtype=np.uint8)
        size = IMAGE_SHAPE if i % 2 else (12, 10)  # some are resized, as uploads of another size are
        path = folder / f"img-{i:03d}.png"
        Image.fromarray(pixels).resize(size[::-1]).save(path)
        paths.append(path)
    return paths


def job(model_dir: Path, source: Path, output: Path, **flags: Any) -> BatchConfig:
    settings: dict[str, Any] = {"model": str(model_dir), "input": str(source), "output": str(output), "progress": False}
    return BatchConfig(**(settings | {"batch_rows": 64, "workers": 2} | flags))


async def service_answers(
    client: httpx.AsyncClient, model: str, x: np.ndarray | None = None, files: list[Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """/score (with top_features) and /encode of the same rows, as JSON or as uploaded files."""
    if files is None:
        assert x is not None
        scored = await client.post(f"/models/{model}/score", json={"inputs": x.tolist(), "top_features": TOP})
        encoded = await client.post(f"/models/{model}/encode", json={"inputs": x.tolist()})
    else:
        scored = await client.post(f"/models/{model}/score", files=files, data={"top_features": str(TOP)})
        encoded = await client.post(f"/models/{model}/encode", files=files)
    assert scored.status_code == encoded.status_code == 200, (scored.text, encoded.text)
    return scored.json(), encoded.json()


def assert_equal_to_service(
    results: pa.Table, scored: dict[str, Any], encoded: dict[str, Any], names: list[str]
) -> None:
    close = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(results.column("score").to_numpy(), scored["scores"], **close)
    np.testing.assert_allclose(results.column("percentile").to_numpy(), scored["percentiles"], **close)
    assert results.column("is_anomaly").to_pylist() == scored["is_anomaly"]
    latents = np.column_stack([results.column(f"z_{i}").to_numpy() for i in range(len(encoded["latents"][0]))])
    np.testing.assert_allclose(latents, encoded["latents"], **close)
    for rank in range(TOP):
        named = [
            row[rank].get("feature") or ",".join(map(str, row[rank].get("region", [])))
            for row in scored["top_features"]
        ]
        column = "feature" if "feature" in scored["top_features"][0][0] else "region"
        assert results.column(f"top_{rank + 1}_{column}").to_pylist() == named
        shares = [row[rank]["share"] for row in scored["top_features"]]
        np.testing.assert_allclose(results.column(f"top_{rank + 1}_share").to_numpy(), shares, **close)
    reconstructions = np.asarray(scored.get("reconstructions", []))
    if names:
        got = np.column_stack([results.column(f"x_hat_{name}").to_numpy() for name in names])
        assert got.shape[1] == len(names)
    else:
        got = np.stack(results.column("x_hat").to_numpy(zero_copy_only=False))
    assert got.shape[0] == results.num_rows
    if reconstructions.size:
        np.testing.assert_allclose(got, reconstructions.reshape(len(got), -1), **close)


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    table = tabular()
    pq.write_table(table.slice(0, 200), tmp_path / "part-a.parquet", row_group_size=50)
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(table.slice(0, 120), folder / "a.parquet", row_group_size=50)
    pq.write_table(table.slice(120), folder / "b.parquet", row_group_size=50)
    (folder / "_SUCCESS").write_text("")  # Spark's and Arrow's markers are not data
    pacsv.write_csv(table, tmp_path / "rows.csv")
    np.save(tmp_path / "rows.npy", features_of(table))
    np.savez(tmp_path / "rows.npz", X=features_of(table), y=np.zeros(ROWS))
    return tmp_path


@pytest.mark.parametrize("source", ["parquet", "rows.csv"])
async def test_tables_equal_the_service(
    client: httpx.AsyncClient, models_dir: Path, datasets: Path, source: str
) -> None:
    output = datasets / "out"
    summary = run_job(job(models_dir / "tab", datasets / source, output, outputs=ALL, passthrough="id,day"))
    results = pq.read_table(output)
    table = tabular()
    assert summary.rows == results.num_rows == ROWS
    assert results.column("id").to_pylist() == table.column("id").to_pylist()
    assert results.column("day").to_pylist() == table.column("day").to_pylist()
    scored, encoded = await service_answers(client, "tab", features_of(table))
    assert_equal_to_service(results, scored, encoded, [str(i) for i in range(TABULAR_FEATURES)])
    assert summary.anomalies == sum(scored["is_anomaly"])
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["rows"] == ROWS and sum(part["rows"] for part in manifest["parts"]) == ROWS
    assert manifest["model"] == {"name": "tab", "version": 2}  # a model folder: its highest version


async def test_reconstructions_equal_the_service(client: httpx.AsyncClient, models_dir: Path, datasets: Path) -> None:
    run_job(job(models_dir / "tab" / "1", datasets / "rows.npy", datasets / "out", outputs="reconstruction"))
    response = await client.post("/models/tab/versions/1/reconstruct", json={"inputs": features_of(tabular()).tolist()})
    got = pq.read_table(datasets / "out")
    x_hat = np.column_stack([got.column(f"x_hat_{i}").to_numpy() for i in range(TABULAR_FEATURES)])
    np.testing.assert_allclose(x_hat, response.json()["reconstructions"], rtol=1e-4, atol=1e-5)


async def test_image_folder_equals_uploads(client: httpx.AsyncClient, models_dir: Path, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images" / "nested", 9)
    output = tmp_path / "out"
    run_job(job(models_dir / "conv", tmp_path / "images", output, outputs=ALL, top_features=TOP))
    results = pq.read_table(output)
    assert results.column("path").to_pylist() == [str(path) for path in paths]
    uploads = [("file", (path.name, path.read_bytes(), "image/png")) for path in paths]
    scored, encoded = await service_answers(client, "conv", files=uploads)
    reconstruct = await client.post("/models/conv/reconstruct", files=uploads)
    scored["reconstructions"] = reconstruct.json()["reconstructions"]
    assert_equal_to_service(results, scored, encoded, [])


async def test_arrays_and_csv_parts(client: httpx.AsyncClient, models_dir: Path, datasets: Path) -> None:
    for source in ("rows.npy", "rows.npz"):
        output = datasets / f"out-{source}"
        run_job(job(models_dir / "tab", datasets / source, output, outputs="score,z", format="csv", part_rows=100))
        parts = sorted(output.glob("part-*.csv"))
        assert len(parts) == 3  # a new part once one holds part_rows
        results = pa.concat_tables(pacsv.read_csv(part) for part in parts)
        scored, encoded = await service_answers(client, "tab", features_of(tabular()))
        np.testing.assert_allclose(results.column("score").to_numpy(), scored["scores"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(results.column("z_1").to_numpy(), np.asarray(encoded["latents"])[:, 1], rtol=1e-4)


def test_latents_as_one_list_column(models_dir: Path, datasets: Path) -> None:
    run_job(job(models_dir / "tab", datasets / "rows.npy", datasets / "out", outputs="z", vectors="list"))
    column = pq.read_table(datasets / "out").column("z")
    assert pa.types.is_fixed_size_list(column.type) and column.type.list_size == 2


def test_model_by_name_and_version(models_dir: Path, datasets: Path) -> None:
    run_job(job(models_dir, datasets / "rows.npy", datasets / "out", model="tab", version=1, models_dir=models_dir))
    assert json.loads((datasets / "out" / "_manifest.json").read_text())["model"] == {"name": "tab", "version": 1}


def test_process_workers_give_the_same_numbers(models_dir: Path, datasets: Path) -> None:
    flags: dict[str, Any] = {"outputs": "score,z", "passthrough": "id,day"}
    run_job(job(models_dir / "tab", datasets / "parquet", datasets / "threads", **flags))
    run_job(job(models_dir / "tab", datasets / "parquet", datasets / "processes", parallelism="process", **flags))
    assert pq.read_table(datasets / "threads").equals(pq.read_table(datasets / "processes"))


def bad_csv(path: Path) -> Path:
    table = tabular(rows=150)
    text = io.BytesIO()
    pacsv.write_csv(table, text)
    lines = text.getvalue().decode().splitlines()
    cells = lines[1 + 137].split(",")
    cells[3] = "oops"
    lines[1 + 137] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: bad_csv(d / "bad.csv"), "bad.csv, row 137: column 'f2' holds 'oops', not a number"),
        (lambda d: _with_nan(d / "nan.parquet", row=77), "nan.parquet, row 77: holds NaN"),
        (lambda d: _broken_image(d / "images"), "img-004.png: the file is not a readable PNG, JPEG or BMP image"),
        (lambda d: _file(d / "notes.txt"), "notes.txt: not a dataset file"),
    ],
    ids=["csv-text", "parquet-nan", "image", "unknown-file"],
)
def test_bad_input_is_named_and_nothing_is_written(models_dir: Path, tmp_path: Path, make: Any, message: str) -> None:
    source = make(tmp_path)
    model = models_dir / ("conv" if source.name == "images" else "tab")
    output = tmp_path / "out"
    with pytest.raises(BatchError) as raised:
        run_job(job(model, source, output, passthrough="" if source.name == "images" else "id,day"))
    assert message in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def _with_nan(path: Path, row: int) -> Path:
    table = tabular()
    values = table.column("f1").to_numpy().copy()
    values[row] = np.nan
    pq.write_table(table.set_column(2, "f1", pa.array(values)), path, row_group_size=50)
    return path


def _broken_image(folder: Path) -> Path:
    paths = write_images(folder, 6)
    paths[4].write_bytes(b"not an image")
    return folder


def _file(path: Path) -> Path:
    path.write_text("hello")
    return path


def test_existing_output_is_kept_unless_overwrite(models_dir: Path, datasets: Path) -> None:
    output = datasets / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep")
    with pytest.raises(BatchError, match="exists"):
        run_job(job(models_dir / "tab", datasets / "rows.npy", output))
    # --overwrite replaces an earlier job's output only: this folder is not one.
    with pytest.raises(BatchError, match="not the output of an earlier job"):
        run_job(job(models_dir / "tab", datasets / "rows.npy", output, overwrite=True))
    assert sorted(p.name for p in output.iterdir()) == ["mine.txt"]
    (output / "mine.txt").unlink()
    output.rmdir()
    run_job(job(models_dir / "tab", datasets / "rows.npy", output))
    run_job(job(models_dir / "tab", datasets / "rows.npy", output, overwrite=True))
    assert sorted(p.name for p in output.iterdir()) == ["_manifest.json", "part-00000.parquet"]


def test_the_output_never_holds_the_input(models_dir: Path, tmp_path: Path) -> None:
    """Writing over the input's folder (or one above it) with --overwrite deleted the data."""
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(tabular(), data / "rows.parquet")
    for output in (data, tmp_path):
        with pytest.raises(BatchError, match="holds the input"):
            run_job(job(models_dir / "tab", data, output, overwrite=True, passthrough="id,day"))
    assert (data / "rows.parquet").exists()


def test_sigterm_removes_the_temporary_output(models_dir: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.concat_tables([tabular()] * 4000), rows)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "service.batch", "--model", str(models_dir / "tab"), "--input", str(rows)]
    command += ["--output", str(output), "--passthrough", "id,day", "--batch-rows", "16"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("out.tmp-*/part-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "interrupted; nothing was written" in err
    assert not output.exists() and not list(tmp_path.glob("out.tmp-*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"passthrough": "nope"}, "no passthrough column 'nope'"),
        ({"passthrough": ""}, "6 numeric columns besides the passthrough ones (not numbers: id); tab takes 5"),
        ({"outputs": "z", "vectors": "list", "format": "csv"}, "CSV parts cannot hold list columns"),
        ({"device": "cuda"}, "--device cuda needs onnxruntime-gpu and a CUDA device"),
        ({"engine": "ray", "input": "rows.npz"}, "needs --engine local"),
    ],
)
def test_refused_before_any_work(models_dir: Path, datasets: Path, flags: dict[str, Any], message: str) -> None:
    source = datasets / flags.pop("input", "rows.csv")
    with pytest.raises(BatchError) as raised:
        run_job(job(models_dir / "tab", source, datasets / "out", **({"passthrough": "id,day"} | flags)))
    assert message in str(raised.value)
    assert not list(datasets.glob("out*"))


def test_command_line(models_dir: Path, datasets: Path) -> None:
    """The module runs as a command: the summary on success, the file and row on failure (exit status 1)."""
    command = [sys.executable, "-m", "service.batch", "--model", str(models_dir / "tab"), "--no-progress"]
    done = subprocess.run(
        [*command, "--input", str(datasets / "rows.csv"), "--output", str(datasets / "out"), "--passthrough", "id,day"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"{ROWS} rows" in done.stderr and "rows/s" in done.stderr
    bad = subprocess.run(
        [
            *command,
            "--input",
            str(bad_csv(datasets / "bad.csv")),
            "--output",
            str(datasets / "out2"),
            "--passthrough",
            "id,day",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert (
        "bad.csv, row 137: column 'f2' holds 'oops', not a number (id='row-137', day=4); nothing was written"
        in bad.stderr
    )
    assert not (datasets / "out2").exists()
