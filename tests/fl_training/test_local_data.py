"""A participant's drawings file: written by the app, read by their own Flower client, refused if tampered."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fl_training import local_data
from fl_training.__main__ import main as cli
from fl_training.datasets import load_dataset
from fl_training.local_data import DrawingsFileError, load_drawings, save_drawings, split_drawings

MNIST = load_dataset("mnist-5k")


def _some(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    return MNIST.X_train[:n], MNIST.y_train[:n]


def test_a_drawings_file_round_trips_and_splits_the_same_way_everywhere(tmp_path):
    X, y = _some()
    path = save_drawings(tmp_path / "mine.npz", X, y, MNIST)
    X2, y2 = load_drawings(path, MNIST)
    assert X2.dtype == np.uint8 and np.array_equal(X2, X.astype(np.uint8)) and np.array_equal(y2, y)
    first, second = split_drawings(X2, y2), split_drawings(X2, y2)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert len(first[3]) == round(12 * local_data.DRAWINGS_VALIDATION_FRACTION)
    (tmp_path / "exported.npz").write_bytes(local_data.drawings_bytes(X, y, MNIST))
    assert np.array_equal(load_drawings(tmp_path / "exported.npz", MNIST)[1], y)


def _rezip(path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("case", ["missing", "not a zip", "extra entry", "pickled", "other dataset",
                                  "bad labels", "pixels out of range", "too large", "too few"])
def test_a_tampered_or_foreign_file_is_refused_with_what_to_do(tmp_path, case):
    path = tmp_path / "mine.npz"
    X, y = _some()
    if case == "not a zip":
        path.write_bytes(b"not a zip at all" * 10)
    elif case == "extra entry":
        save_drawings(path, X, y, MNIST)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("evil.npy", b"x")
    elif case == "pickled":
        buffer = io.BytesIO()
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        good = io.BytesIO()
        np.save(good, np.array("mnist-5k"))
        ys = io.BytesIO()
        np.save(ys, y)
        _rezip(path, {"X.npy": buffer.getvalue(), "y.npy": ys.getvalue(), "dataset.npy": good.getvalue()})
    elif case == "other dataset":
        digits = load_dataset("digits")
        save_drawings(path, digits.X_train[:5], digits.y_train[:5], digits)
    elif case == "bad labels":
        np.savez(path, X=X, y=y + 20, dataset=np.array("mnist-5k"))
    elif case == "pixels out of range":
        np.savez(path, X=X.astype(np.float64) * 10, y=y, dataset=np.array("mnist-5k"))
    elif case == "too large":
        path.write_bytes(bytes(local_data.MAX_DRAWINGS_FILE_BYTES + 1))
    elif case == "too few":
        np.savez(path, X=X[:1], y=y[:1], dataset=np.array("mnist-5k"))
    with pytest.raises(DrawingsFileError) as refused:
        load_drawings(path, MNIST)
    assert "drawing" in str(refused.value).lower() or "label" in str(refused.value).lower()


def test_join_checks_the_file_on_the_participants_side_before_any_supernode_starts(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert cli(["join", "--superlink", "127.0.0.1:9092", "--drawings", str(bad)]) == 2
    assert "Export your drawings from the app again" in capsys.readouterr().err
    good = save_drawings(tmp_path / "good.npz", *_some(), MNIST)
    assert cli(["join", "--superlink", "127.0.0.1:9092", "--drawings", str(good), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "12 drawings checked" in printed and f"drawings='{good}'" in printed


def test_a_reference_client_reads_the_dataset_rows_its_file_names(tmp_path):
    from fl_training.config import TrainingConfig
    from fl_training.preprocessing import dataset_features, run_preprocessing
    from fl_training.task import client_data, is_reference_client

    rows = np.arange(100, 140)
    local_data.save_reference(local_data.reference_file(tmp_path, 1), rows, MNIST)
    save_drawings(local_data.client_file(tmp_path, 0), *_some(), MNIST)
    cfg = TrainingConfig(dataset="mnist-5k", num_clients=2, client_data=str(tmp_path))
    X_train, y_train, X_val, y_val = client_data(cfg, 1)
    features = dataset_features(MNIST, run_preprocessing("mnist-5k", cfg.deskew))[0][rows]
    expected = split_drawings(features, MNIST.y_train[rows])
    assert np.array_equal(X_train, expected[0]) and np.array_equal(y_val, expected[3])
    assert len(y_train) + len(y_val) == 40
    assert is_reference_client(cfg, 1) and not is_reference_client(cfg, 0)


@pytest.mark.parametrize("case", ["beyond the split", "negative", "other dataset", "not a reference file"])
def test_a_reference_file_naming_rows_it_cannot_is_refused(tmp_path, case):
    path = tmp_path / "reference-3.npz"
    if case == "other dataset":
        local_data.save_reference(path, np.arange(10), load_dataset("digits"))
    elif case == "not a reference file":
        save_drawings(path, *_some(), MNIST)
    else:
        rows = np.array([0, len(MNIST.y_train)]) if case == "beyond the split" else np.array([-1, 2])
        with open(path, "wb") as out:
            np.savez(out, rows=rows, dataset=np.array(MNIST.name))
    with pytest.raises(DrawingsFileError, match="reference"):
        local_data.load_reference(path, MNIST)
