from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.training.conftest import tiny_images, write_idx
from training.data import DataError, load_dataset, select_normal


def test_idx_gzip_with_labels_next_to_it(image_idx: Path) -> None:
    data = load_dataset(image_idx)
    assert data.kind == "image"
    assert data.x.shape == (120, 8, 8) and data.x.dtype == np.float32
    assert data.y is not None and set(np.unique(data.y)) == {0, 1}
    assert len(data.sha256) == 64


def test_raw_idx_without_labels(tmp_path: Path) -> None:
    images, _ = tiny_images(rows=5)
    data = load_dataset(write_idx(tmp_path / "images-idx3-ubyte", images))
    assert data.y is None
    np.testing.assert_array_equal(data.x, images.astype(np.float32))


def test_npz_npy_csv_parquet_agree(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "a.npz", X=x, y=y)
    np.save(tmp_path / "a.npy", x)
    (tmp_path / "a.csv").write_text(
        "f0,label,f1,f2\n" + "".join(f"{r[0]},{label},{r[1]},{r[2]}\n" for r, label in zip(x, y, strict=True))
    )
    pq.write_table(pa.table({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "label": y}), tmp_path / "a.parquet")
    for name, label_column in [("a.npz", None), ("a.npy", None), ("a.csv", "label"), ("a.parquet", "label")]:
        data = load_dataset(tmp_path / name, label_column)
        np.testing.assert_array_equal(data.x, x.astype(np.float32), err_msg=name)
        assert data.kind == "tabular"
    assert load_dataset(tmp_path / "a.csv", "label").feature_names == ["f0", "f1", "f2"]


def _write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    else:
        np.save(path, content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "label_column", "message"),
    [
        ("missing.npz", None, None, "missing.npz: no such file"),
        ("empty.npy", np.zeros((0, 3)), None, "empty.npy: no data"),
        ("nan.npy", np.array([[1.0, np.nan]]), None, "nan.npy: NaN or infinite value at row 0, feature 1"),
        ("inf.csv", "a,b\n1,2\n3,inf\n", None, "inf.csv: NaN or infinite value at row 1, column 'b'"),
        ("text.csv", "a,b\n1,x\n2,y\n", None, "text.csv: column 'b' is not numeric"),
        ("gap.csv", "a,b\n1,\n2,3\n", None, "gap.csv: column 'b' has 1 empty values"),
        ("ragged.csv", "a,b\n1,2\n3\n", None, "ragged.csv: cannot parse CSV"),
        ("header.csv", "a,b\n", None, "header.csv: no data rows"),
        ("nolabel.csv", "a,b\n1,2\n", "c", "nolabel.csv: no column 'c'"),
        ("nox.npz", {"Y": np.zeros((2, 2))}, None, "nox.npz: no array 'X'"),
        ("vector.npy", np.zeros(5), None, "vector.npy: no data (shape (5,))"),
        ("words.npy", np.array([["a", "b"]]), None, "words.npy: features must be numeric"),
        ("data.txt", "1,2\n", None, "data.txt: unknown format"),
        ("junk.npy", "not numpy", None, "junk.npy: not a plain numeric numpy array"),
    ],
)
def test_bad_data_is_named(tmp_path: Path, name: str, content: object, label_column: str | None, message: str) -> None:
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_dataset(path, label_column)
    assert str(caught.value).startswith(str(tmp_path / message.split(":")[0])), str(caught.value)
    assert message.split(": ", 1)[1] in str(caught.value)


def test_ragged_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ragged.npy"
    np.save(path, np.array([np.zeros(2), np.zeros(3)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="ragged, object or corrupt"):
        load_dataset(path)


def test_normal_label_selects_rows_and_unknown_label_fails(tabular_npz: Path) -> None:
    data = load_dataset(tabular_npz)
    assert select_normal(data, "0").sum() == 400
    with pytest.raises(DataError, match="no row has label '7'"):
        select_normal(data, "7")
    with pytest.raises(DataError, match="is not a number"):
        select_normal(data, "cat")
