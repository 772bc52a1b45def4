"""``python -m fl_training evaluate``: a model scored on IDX files, preprocessed as the model records."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fl_training.__main__ import main
from fl_training.datasets import load_dataset
from fl_training.idx import IDXFileError, load_images_and_labels, read_idx
from fl_training.model_io import load_model, save_model
from fl_training.preprocessing import DESKEW, dataset_features, record_preprocessing


def write_idx(path: Path, array: np.ndarray, gzipped: bool = False) -> Path:
    """MNIST's format: two zero bytes, 0x08 (unsigned bytes), the number of dimensions, big-endian sizes."""
    array = np.asarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory) -> tuple[Path, Path]:
    """mnist-5k's 1,000 test images and labels as gzipped IDX files."""
    folder = tmp_path_factory.mktemp("idx")
    dataset = load_dataset("mnist-5k")
    images = write_idx(folder / "t10k-images-idx3-ubyte.gz", dataset.X_test.reshape(-1, 28, 28), gzipped=True)
    labels = write_idx(folder / "t10k-labels-idx1-ubyte.gz", dataset.y_test, gzipped=True)
    return images, labels


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A model trained on raw pixels and one trained on deskewed pixels (recording it)."""
    folder = tmp_path_factory.mktemp("models")
    dataset = load_dataset("mnist-5k")
    raw = LogisticRegression(max_iter=60).fit(dataset.X_train / 255, dataset.y_train)
    deskewed = LogisticRegression(max_iter=60).fit(
        dataset_features(dataset, DESKEW)[0] / 255, dataset.y_train
    )
    for model in (raw, deskewed):
        model.coef_ = model.coef_ / 255  # takes 0-255 pixels, as the project's models do
    return {
        "raw": save_model(raw, folder / "raw.skops"),
        "deskew": save_model(record_preprocessing(deskewed, DESKEW), folder / "deskew.skops"),
    }


def _run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in args else None), captured.err


def test_idx_files_read_back_gzipped_or_not(tmp_path):
    dataset = load_dataset("mnist-5k")
    images = dataset.X_test[:7].reshape(-1, 28, 28)
    plain = write_idx(tmp_path / "images", images)
    zipped = write_idx(tmp_path / "images.gz", images, gzipped=True)
    np.testing.assert_array_equal(read_idx(plain), images.astype(np.uint8))
    np.testing.assert_array_equal(read_idx(zipped), images.astype(np.uint8))
    labels = write_idx(tmp_path / "labels", dataset.y_test[:7])
    X, y, shape = load_images_and_labels(zipped, labels)
    assert shape == (28, 28) and X.shape == (7, 784)
    np.testing.assert_array_equal(X, dataset.X_test[:7])
    np.testing.assert_array_equal(y, dataset.y_test[:7])


def test_bad_idx_files_are_refused_with_what_to_pass(tmp_path):
    dataset = load_dataset("mnist-5k")
    images = write_idx(tmp_path / "images", dataset.X_test[:5].reshape(-1, 28, 28))
    labels = write_idx(tmp_path / "labels", dataset.y_test[:4])
    with pytest.raises(IDXFileError, match="5 images but labels 4 labels"):
        load_images_and_labels(images, labels)
    with pytest.raises(IDXFileError, match="not images"):
        load_images_and_labels(labels, labels)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(IDXFileError, match="truncated"):
        read_idx(truncated)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(IDXFileError, match="not an IDX file"):
        read_idx(tmp_path / "notes.txt")
    with pytest.raises(IDXFileError, match="does not exist"):
        read_idx(tmp_path / "missing.gz")


def test_a_raw_model_and_a_deskewing_model_each_get_their_own_accuracy_on_the_same_files(
    mnist_files, models, capsys
):
    images, labels = mnist_files
    dataset = load_dataset("mnist-5k")
    X_deskewed = dataset_features(dataset, DESKEW)[1]
    results = {}
    for name, path in models.items():
        code, result, err = _run(
            capsys, "--model", str(path), "--images", str(images), "--labels", str(labels), "--json"
        )
        assert code == 0, err
        results[name] = result
    raw_model, deskew_model = load_model(models["raw"]), load_model(models["deskew"])
    assert results["raw"]["preprocessing"] == "none" and results["deskew"]["preprocessing"] == DESKEW
    assert results["raw"]["samples"] == results["deskew"]["samples"] == 1000
    assert results["raw"]["accuracy"] == pytest.approx(raw_model.score(dataset.X_test, dataset.y_test))
    assert results["deskew"]["accuracy"] == pytest.approx(deskew_model.score(X_deskewed, dataset.y_test))
    # Fed raw pixels, the deskewing model would score otherwise: the CLI did deskew for it.
    assert deskew_model.score(dataset.X_test, dataset.y_test) != pytest.approx(results["deskew"]["accuracy"])


def test_evaluate_refuses_images_of_another_size_and_missing_files(mnist_files, models, tmp_path, capsys):
    digits = load_dataset("digits")
    small = write_idx(tmp_path / "small", digits.X_test[:5].reshape(-1, 8, 8))
    labels = write_idx(tmp_path / "labels", digits.y_test[:5])
    code, _, err = _run(
        capsys, "--model", str(models["raw"]), "--images", str(small), "--labels", str(labels)
    )
    assert code == 2 and "8×8" in err and "784 features" in err
    code, _, err = _run(
        capsys,
        "--model",
        str(tmp_path / "none.skops"),
        "--images",
        str(mnist_files[0]),
        "--labels",
        str(mnist_files[1]),
    )
    assert code == 2 and "does not exist" in err
