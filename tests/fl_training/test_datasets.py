import urllib.error

import numpy as np
import pytest

from fl_training import datasets
from fl_training.datasets import DatasetUnavailableError, load_dataset


@pytest.mark.parametrize(
    "name, n_features, n_classes, high",
    [("mnist-5k", 784, 10, 255.0), ("digits", 64, 10, 16.0), ("breast-cancer", 30, 2, None)],
)
def test_offline_datasets_return_raw_features_and_a_fixed_split(name, n_features, n_classes, high):
    d = load_dataset(name)
    assert d.X_train.shape[1] == d.X_test.shape[1] == n_features
    assert d.n_classes == n_classes
    assert d.y_train.dtype.kind == "i" and set(np.unique(d.y_test)) == set(d.classes)
    if high is not None:  # images: raw pixel values, not scaled
        assert d.X_train.min() == 0 and d.X_train.max() == high
    # Fixed split: a fresh load (no cache) gives the same test samples.
    again = datasets._LOADERS[name](None)
    np.testing.assert_array_equal(again.X_test, d.X_test)
    assert not d.X_train.flags.writeable


def test_mnist_5k_is_the_real_subset_with_500_images_per_class():
    d = load_dataset("mnist-5k")
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]))
    assert counts.tolist() == [500] * 10
    assert d.image_shape == (28, 28) and len(d.X_test) == 1000


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="mnist-5k"):
        load_dataset("cifar")


def test_full_mnist_offline_suggests_the_offline_subset(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)
    with pytest.raises(DatasetUnavailableError, match="mnist-5k") as refused:
        datasets._load_mnist(tmp_path)
    assert str(tmp_path) not in str(refused.value)  # a visitor reads it: no path of the host


def test_only_full_mnist_needs_a_download_until_it_is_cached(tmp_path):
    assert datasets.needs_download("mnist", tmp_path)
    assert not any(datasets.needs_download(n, tmp_path) for n in ("mnist-5k", "digits", "breast-cancer"))
    cached = tmp_path / "openml" / "openml.org" / "data" / "v1" / "download"
    cached.mkdir(parents=True)
    (cached / "52667.gz").write_bytes(b"")  # where scikit-learn's fetch_openml keeps the download
    assert not datasets.needs_download("mnist", tmp_path)
