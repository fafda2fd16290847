"""The label column a table model was trained with is ignored when scoring: the very CSV it was trained on
scores, as a CSV body, as named JSON rows and in a batch job, with the scores of the same rows without it;
the answer then says how well the scores separate the labels' classes (AUROC, as scikit-learn computes it).
Any other unknown column is still refused. The rule for which label is an anomaly is the training side's.

Against a real server process serving a package the training code made from that CSV."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from service import labels
from service.batch.config import BatchConfig
from service.batch.jobs import run_job
from tests.service.labelled import ANOMALOUS, FEATURES, LABEL, MODEL, NORMAL, table, train, write_csv
from tests.service.servers import running_server
from training.data import load_dataset, normal_mask

CSV = {"content-type": "text/csv"}
SCORE = f"/models/{MODEL}/score"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return train(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The labelled package, and beside it a copy whose manifest records no label column (`nolabel`)."""
    models, _ = trained
    served = tmp_path_factory.mktemp("served")
    shutil.copytree(models / MODEL, served / MODEL)
    shutil.copytree(models / MODEL / "1", served / "nolabel" / "1")
    manifest = json.loads((served / "nolabel" / "1" / "manifest.json").read_text())
    manifest["name"] = "nolabel"
    manifest["training"]["data"]["label_column"] = manifest["training"]["config"]["label_column"] = None
    (served / "nolabel" / "1" / "manifest.json").write_text(json.dumps(manifest))
    with running_server(served, served.parent / "server.log") as client:
        yield client


def post(server: httpx.Client, path: str, status: int = 200, **request: Any) -> dict[str, Any]:
    answer = server.post(path, **request)
    assert answer.status_code == status, answer.text
    return answer.json()


def training_rows(path: Path) -> tuple[list[dict[str, str]], np.ndarray, list[str]]:
    """The training CSV's rows as objects of its cells, its features as float32, and its labels."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    x = np.array([[float(row[name]) for name in FEATURES] for row in rows], dtype=np.float32)
    return rows, x, [row[LABEL] for row in rows]


@pytest.mark.e2e
def test_the_training_csv_scores_as_its_features_alone(
    server: httpx.Client, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, data = trained
    _, x, y = training_rows(data)
    bare = write_csv(tmp_path / "bare.csv", x, None).read_bytes()
    expected = post(server, SCORE, content=bare, headers=CSV)
    assert "labels" not in expected  # rows without the label column: the answer as it always was
    assert expected["scores"] == post(server, SCORE, json={"inputs": x.tolist()})["scores"]

    answer = post(server, SCORE, content=data.read_bytes(), headers=CSV)

    assert answer["scores"] == expected["scores"] and answer["is_anomaly"] == expected["is_anomaly"]
    is_anomaly = np.array(y) == ANOMALOUS
    assert answer["labels"] == {
        "column": LABEL,
        "normal": int((~is_anomaly).sum()),
        "anomalous": int(is_anomaly.sum()),
        "unlabelled": 0,
        "auroc": pytest.approx(roc_auc_score(is_anomaly, answer["scores"]), abs=1e-12),
        "note": None,
    }
    assert answer["labels"]["auroc"] > 0.8  # the model tells the classes apart: the number means something


@pytest.mark.e2e
def test_named_rows_with_the_label_score_as_without_it_on_every_route(
    server: httpx.Client, trained: tuple[Path, Path]
) -> None:
    _, data = trained
    cells, x, y = training_rows(data)
    named = [{name: float(row[name]) for name in row if name != LABEL} | {LABEL: row[LABEL]} for row in cells]
    without = [{name: value for name, value in row.items() if name != LABEL} for row in named]

    for operation, field in (("score", "scores"), ("encode", "latents"), ("reconstruct", "reconstructions")):
        path = f"/models/{MODEL}/{operation}"
        expected = post(server, path, json={"inputs": without})
        answer = post(server, path, json={"inputs": named})
        assert answer[field] == expected[field], operation
    answer = post(server, SCORE, json={"inputs": named})
    assert answer["scores"] == post(server, SCORE, json={"inputs": x.tolist()})["scores"]
    assert answer["labels"]["auroc"] == pytest.approx(roc_auc_score(np.array(y) == ANOMALOUS, answer["scores"]))
    one = post(server, SCORE, json={"inputs": named[0]})  # a single row, not in a list
    assert one["scores"] == answer["scores"][:1] and one["labels"]["note"].startswith("no AUROC: too few")


@pytest.mark.e2e
def test_labels_may_be_numbers_empty_or_missing(server: httpx.Client, trained: tuple[Path, Path]) -> None:
    _, data = trained
    cells, x, _ = training_rows(data)
    rows: list[dict[str, Any]] = [{name: float(row[name]) for name in FEATURES} for row in cells[:30]]
    rows[0][LABEL] = None
    rows[1][LABEL] = ""
    rows[2][LABEL] = 1.0  # not the normal label "B": an anomaly
    answer = post(server, SCORE, json={"inputs": rows})  # rows 3.. have no label at all
    assert answer["labels"] == {
        "column": LABEL,
        "normal": 0,
        "anomalous": 1,
        "unlabelled": 29,
        "auroc": None,
        "note": f"no AUROC: too few normal and anomalous rows to estimate it (at least {labels.MIN_PER_CLASS} of each)",
    }
    assert answer["scores"] == post(server, SCORE, json={"inputs": x[:30].tolist()})["scores"]


# id, request, status, message
# fmt: off
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("csv: a typo beside the label", {"content": f"{LABEL},{','.join(FEATURES[:-1])},symetry\nB,{'1,' * 7}1",
     "headers": CSV}, "the CSV header must name each feature once: missing ['symmetry'], unknown ['symetry']"),
    ("csv: an unknown column beside the label", {"content": f"{LABEL},{','.join(FEATURES)},id\nB,{'1,' * 8}7",
     "headers": CSV}, "the CSV header must name each feature once: missing [], unknown ['id']"),
    ("csv: the label twice", {"content": f"{LABEL},{','.join(FEATURES)},{LABEL}\nB,{'1,' * 8}B", "headers": CSV},
     "the CSV header must name each feature once: missing [], unknown []"),
    ("csv: a line without its label", {"content": f"{LABEL},{','.join(FEATURES)}\n{'1,' * 7}1", "headers": CSV},
     "CSV line 2 has 8 values; the header has 9 columns"),
    ("json: an unknown field beside the label", {"json": {"inputs": [dict.fromkeys(FEATURES, 1.0) | {LABEL: "B",
     "sex": 1}]}}, f"inputs: row 0 has unknown ['sex']; the features are {FEATURES}"),
    ("json: a label that is a list", {"json": {"inputs": [dict.fromkeys(FEATURES, 1.0) | {LABEL: ["B"]}]}},
     f"inputs: row 0's {LABEL!r} must be a string, number or null"),
]
# fmt: on


@pytest.mark.e2e
@pytest.mark.parametrize(("request_", "message"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_other_columns_are_still_refused(server: httpx.Client, request_: dict[str, Any], message: str) -> None:
    answer = post(server, SCORE, status=422, **request_)
    assert answer["error"]["message"] == message
    assert server.get("/readyz").status_code == 200


@pytest.mark.e2e
def test_a_model_without_a_label_column_refuses_one(server: httpx.Client, trained: tuple[Path, Path]) -> None:
    _, data = trained
    answer = post(server, "/models/nolabel/score", status=422, content=data.read_bytes(), headers=CSV)
    assert answer["error"]["message"] == (
        f"the CSV header must name each feature once: missing [], unknown ['{LABEL}']"
    )


def test_a_batch_job_on_the_training_csv_gives_the_service_scores(trained: tuple[Path, Path], tmp_path: Path) -> None:
    models, data = trained
    config = BatchConfig(model=str(models / MODEL), input=str(data), output=str(tmp_path / "out"), progress=False)
    run_job(config)
    _, x, _ = training_rows(data)
    bare = write_csv(tmp_path / "bare.csv", x, None)
    run_job(BatchConfig(model=str(models / MODEL), input=str(bare), output=str(tmp_path / "bare"), progress=False))
    scores = pq.read_table(tmp_path / "out").column("score").to_pylist()
    assert scores == pq.read_table(tmp_path / "bare").column("score").to_pylist()


def test_auroc_equals_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, size=500).astype(np.float32)  # many ties
    is_anomaly = rng.random(500) < 0.2
    assert labels.auroc(scores, is_anomaly) == pytest.approx(roc_auc_score(is_anomaly, scores), abs=1e-12)


# cells of the label column as a CSV holds them, the normal label, expected anomalies (None: labels say nothing)
# fmt: off
RULES: list[tuple[list[str], str | None, list[bool] | None]] = [
    (["B", "M", "B", "X"], "B", [False, True, False, True]),
    (["0", "1", "1", "0"], None, [False, True, True, False]),
    (["0.0", "1.0", "1.0"], None, [False, True, True]),
    (["true", "false", "true"], None, [True, False, True]),
    (["1", "2", "3", "2"], "2", [True, False, True, False]),
    (["1.0", "2.0", "2.5"], "2", [True, False, True]),
    (["1", "2", "3"], None, None),
    (["a", "b", "a"], None, None),
    (["7", "x7", "7"], "7", [False, True, False]),
]
# fmt: on


@pytest.mark.parametrize(("cells", "normal", "expected"), RULES)
def test_the_service_reads_labels_as_training_does(
    tmp_path: Path, cells: list[str], normal: str | None, expected: list[bool] | None
) -> None:
    """The cells as text (what a CSV body or the page sends) against training.data's reading of the same CSV."""
    path = tmp_path / "rows.csv"
    path.write_text("f,label\n" + "".join(f"{i},{cell}\n" for i, cell in enumerate(cells)))
    dataset = load_dataset(path, "label")
    mask = normal_mask(dataset, normal)
    served = labels.anomalous(cells, normal)
    assert (None if mask is None else (~mask).tolist()) == (None if served is None else served.tolist()) == expected


def test_too_few_of_a_class_gives_a_note_not_a_number() -> None:
    x, y = table(rows=60, anomalies=9)
    scores = x.sum(axis=1)
    found = labels.separation(scores, y, LABEL, NORMAL)
    assert (found.normal, found.anomalous, found.auroc) == (51, 9, None)
    assert found.note == f"no AUROC: too few anomalous rows to estimate it (at least {labels.MIN_PER_CLASS} of each)"
    unknown = labels.separation(scores, y, LABEL, None)  # B/M without a normal label: no rule says which is which
    assert unknown.auroc is None and unknown.note is not None and "not 0/1 anomaly flags" in unknown.note
