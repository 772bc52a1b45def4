"""The image pipeline's last step, run by every data owner: deskewing, and which models need it.

A linear model reads each pixel on its own, so a slanted 1 and an upright 1 are
different inputs to it. Deskewing (LeCun et al., 1998) removes the slant: it
shears the image so that the ink's second-order moments show no correlation
between rows and columns, and puts the ink's centre of mass at the image's
centre. It runs in the clear, on the data owner's side: each Flower client on
its own images, the FHE client before it quantizes and encrypts, so the server
still sees only ciphertexts and the circuit is unchanged.

A model records the preprocessing its inputs need (:func:`record_preprocessing`,
the attribute :data:`MODEL_ATTRIBUTE`, saved in its ``.skops`` file); every path
that feeds it raw features calls :func:`model_inputs` (or :func:`preprocess` with
the name a deployment recorded). A model without the record takes raw features.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from fl_training.datasets import Dataset, load_dataset

#: No preprocessing: the model takes the dataset's raw features.
RAW = "none"
#: Moment-based deskewing of each image (image datasets only).
DESKEW = "deskew"
#: Every preprocessing a model or a deployment may record.
PREPROCESSINGS: tuple[str, ...] = (RAW, DESKEW)
#: The attribute of a fitted LogisticRegression that records its preprocessing (saved with it by skops).
MODEL_ATTRIBUTE = "preprocessing_"
#: Datasets whose training deskews when a run asks for it (``TrainingConfig.deskew``). Measured on the
#: central baseline (README, "Deskewing"): mnist-5k 0.911 → 0.936; the 8 × 8 digits 0.956 → 0.953,
#: their pixels are too coarse (and already centred in a 32 × 32 bitmap) for deskewing to help.
DESKEWED_DATASETS: tuple[str, ...] = ("mnist-5k", "mnist")


class PreprocessingError(ValueError):
    """A preprocessing name that is unknown, or that a dataset, model or deployment cannot use."""


def check_preprocessing(name: object) -> str:
    """Return ``name`` if it is one of :data:`PREPROCESSINGS`.

    Raises
    ------
    PreprocessingError
        Naming the preprocessings there are.
    """
    if not isinstance(name, str) or name not in PREPROCESSINGS:
        raise PreprocessingError(
            f"Unknown preprocessing {str(name)[:40]!r}; this version knows {', '.join(PREPROCESSINGS)}. "
            "Update the demo on this side, or use a model trained on raw features."
        )
    return name


def check_applies(name: object, image_shape: Sequence[int] | None) -> str:
    """Return ``name`` if it is known and applies to inputs of ``image_shape`` (``None``: tabular).

    Raises
    ------
    PreprocessingError
        If it is unknown, or deskews tabular features.
    """
    check_preprocessing(name)
    if name == DESKEW and image_shape is None:
        raise PreprocessingError(
            "Deskewing works on images only, but these inputs are tabular; "
            "use a model trained on raw features."
        )
    return name


def deskew_images(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Deskew each image by its second-order moments, its centre of mass moved to the centre.

    Parameters
    ----------
    images : ndarray of shape (n, height * width)
        Raw pixels, ``0`` (background) and up (ink).
    shape : (height, width)
        Each image's shape.

    Returns
    -------
    ndarray of shape (n, height * width)
        The deskewed images. Bilinear interpolation mixes neighbouring pixels, so
        every value stays within the image's own range; a blank image stays blank.
    """
    height, width = (int(s) for s in shape)
    flat = np.asarray(images, dtype=np.float64).reshape(-1, height * width)
    rows, cols = np.mgrid[:height, :width]
    rows, cols = rows.reshape(-1).astype(np.float64), cols.reshape(-1).astype(np.float64)
    mass = flat.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    mean_row, mean_col = flat @ rows / safe, flat @ cols / safe
    d_row, d_col = rows[None, :] - mean_row[:, None], cols[None, :] - mean_col[:, None]
    var_row = (flat * d_row**2).sum(axis=1) / safe
    cov = (flat * d_row * d_col).sum(axis=1) / safe
    slant = np.where(var_row > 0, cov / np.where(var_row > 0, var_row, 1.0), 0.0)
    centre = np.array([height / 2.0, width / 2.0])
    out = np.zeros_like(flat)
    for i in np.flatnonzero(mass > 0):
        # Output pixel o reads input pixel shear @ o + offset; the output's centre reads the centre of mass.
        shear = np.array([[1.0, 0.0], [slant[i], 1.0]])
        offset = np.array([mean_row[i], mean_col[i]]) - shear @ centre
        image = flat[i].reshape(height, width)
        out[i] = ndimage.affine_transform(image, shear, offset=offset, order=1, mode="constant").reshape(-1)
    return out


def preprocess(X: np.ndarray, preprocessing: str, image_shape: Sequence[int] | None) -> np.ndarray:
    """Apply ``preprocessing`` to raw features: the one implementation every path calls.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or (n_features,)
        Raw features.
    preprocessing : str
        One of :data:`PREPROCESSINGS`.
    image_shape : (height, width) or None
        The images' shape, ``None`` for tabular features.

    Returns
    -------
    ndarray of float64, the shape of ``X``
        What the model takes.

    Raises
    ------
    PreprocessingError
        If ``preprocessing`` is unknown or needs images that these features are not.
    """
    check_applies(preprocessing, image_shape)
    X = np.asarray(X, dtype=np.float64)
    if preprocessing == RAW:
        return X
    if X.shape[-1] != int(np.prod(image_shape)):
        raise PreprocessingError(
            f"Deskewing needs {image_shape[0]}×{image_shape[1]} images ({int(np.prod(image_shape))} pixels), "
            f"got {X.shape[-1]} features."
        )
    return deskew_images(X, image_shape).reshape(X.shape)


def run_preprocessing(dataset_name: str, deskew: bool) -> str:
    """The preprocessing a training run on ``dataset_name`` uses: deskewing if asked and it helps there."""
    return DESKEW if deskew and dataset_name in DESKEWED_DATASETS else RAW


@lru_cache(maxsize=8)
def _dataset_features(name: str, preprocessing: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = load_dataset(name)
    out = []
    for X in (dataset.X_train, dataset.X_test):
        X = preprocess(X, preprocessing, dataset.image_shape)
        X = np.array(X)
        X.setflags(write=False)
        out.append(X)
    return out[0], out[1]


def dataset_features(dataset: Dataset, preprocessing: str) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's training and test features after ``preprocessing``, computed once per process.

    Returns
    -------
    X_train, X_test : ndarray
        Read-only, row for row the dataset's ``X_train`` and ``X_test``.
    """
    check_applies(preprocessing, dataset.image_shape)
    return _dataset_features(dataset.name, preprocessing)


def model_preprocessing(model: Any) -> str:
    """The preprocessing a model's inputs need: its record, or raw features if it has none.

    Raises
    ------
    PreprocessingError
        If the model records a preprocessing this version does not know.
    """
    return check_preprocessing(getattr(model, MODEL_ATTRIBUTE, RAW))


def record_preprocessing(model: Any, preprocessing: str) -> Any:
    """Record on ``model`` the preprocessing its inputs need (saved with it); returns ``model``."""
    setattr(model, MODEL_ATTRIBUTE, check_preprocessing(preprocessing))
    return model


def model_inputs(model: Any, X: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Raw features of ``dataset`` turned into what ``model`` takes (its recorded preprocessing)."""
    return preprocess(X, model_preprocessing(model), dataset.image_shape)
