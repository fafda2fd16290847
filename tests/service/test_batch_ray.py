"""python -m service.batch --engine ray on a local Ray of 2 CPUs (started once for the module): the same
answers as the local engine and the service, passthrough columns kept, bad input named, nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from service.batch.errors import BatchError
from service.batch.jobs import run_job
from tests.service.test_batch import ALL, ROWS, bad_csv, features_of, job, service_answers, tabular, write_images

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def ray_job(*args: Any, **flags: Any) -> Any:
    return job(*args, engine="ray", **({"workers": 1} | flags))


def in_order(table: pa.Table, key: str) -> pa.Table:
    # Ray Data does not keep the input's order unless asked; the rows are compared by their key.
    return table.sort_by(key)


@pytest.mark.parametrize("kind", ["parquet", "csv"])
async def test_tables_equal_the_local_engine_and_the_service(
    client: httpx.AsyncClient, models_dir: Path, tmp_path: Path, kind: str
) -> None:
    table = tabular()
    source = tmp_path / "data"
    source.mkdir()
    for i, start in enumerate((0, 100, 200)):
        part = table.slice(start, 100)
        if kind == "parquet":
            pq.write_table(part, source / f"{i}.parquet")
        else:
            pacsv.write_csv(part, source / f"{i}.csv")
    flags = {"outputs": ALL, "passthrough": "id,day"}
    run_job(job(models_dir / "tab", source, tmp_path / "local", **flags))
    summary = run_job(ray_job(models_dir / "tab", source, tmp_path / "ray", **flags))
    local = pq.read_table(tmp_path / "local")
    distributed = in_order(pq.read_table(tmp_path / "ray"), "id")
    assert summary.rows == ROWS
    assert distributed.select(local.column_names).equals(in_order(local, "id"))
    scored, _ = await service_answers(client, "tab", features_of(table))
    by_id = dict(zip(table.column("id").to_pylist(), scored["scores"], strict=True))
    want = [by_id[key] for key in distributed.column("id").to_pylist()]
    np.testing.assert_allclose(distributed.column("score").to_numpy(), want, rtol=1e-4, atol=1e-5)


async def test_image_folder_equals_uploads(client: httpx.AsyncClient, models_dir: Path, tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 7)
    run_job(ray_job(models_dir / "conv", tmp_path / "images", tmp_path / "ray", outputs="score,z"))
    results = in_order(pq.read_table(tmp_path / "ray"), "path")
    assert results.column("path").to_pylist() == [str(path) for path in paths]
    uploads = [("file", (path.name, path.read_bytes(), "image/png")) for path in paths]
    scored, encoded = await service_answers(client, "conv", files=uploads)
    np.testing.assert_allclose(results.column("score").to_numpy(), scored["scores"], rtol=1e-4, atol=1e-5)
    latents = np.column_stack([results.column(f"z_{i}").to_numpy() for i in range(3)])
    np.testing.assert_allclose(latents, encoded["latents"], rtol=1e-4, atol=1e-5)


def test_bad_row_is_named_and_nothing_is_written(models_dir: Path, tmp_path: Path) -> None:
    source = bad_csv(tmp_path / "bad.csv")
    with pytest.raises(BatchError) as raised:
        run_job(ray_job(models_dir / "tab", source, tmp_path / "out", passthrough="id,day"))
    message = f"a row of the dataset: column 'f2' holds 'oops', not a number (path='{source}', id='row-137', day=4)"
    assert message in str(raised.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]
