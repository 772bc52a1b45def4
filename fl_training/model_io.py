"""Saving and loading the trained model.

The project's format is skops: loading it never runs code, and we accept only
an explicit allow-list of estimator types. Pickle is written only on explicit
request (compatibility with older demos' ``model.pkl``) and is never read from
untrusted sources.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

#: Estimators a model file may contain. A linear classifier is all the FHE
#: side needs; anything else is refused before it is used.
ALLOWED_MODEL_TYPES: tuple[type, ...] = (LogisticRegression,)

MODEL_FORMATS = ("skops", "pickle")


class ModelFileError(ValueError):
    """A model file cannot be used: wrong format, unsafe content or wrong type."""


def save_model(model: LogisticRegression, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``model`` to ``path``.

    Parameters
    ----------
    model : LogisticRegression
        A fitted model.
    path : path-like
        Destination. The format follows the suffix (``.skops`` or ``.pkl``)
        unless ``fmt`` is given.
    fmt : {"skops", "pickle"}, optional
        Force a format. Pickle exists only for compatibility; prefer skops.

    Returns
    -------
    Path
        The written file.
    """
    import skops.io as sio

    path = Path(path)
    fmt = fmt or ("pickle" if path.suffix in {".pkl", ".pickle"} else "skops")
    if fmt not in MODEL_FORMATS:
        raise ValueError(f"Unknown model format {fmt!r}; use one of {MODEL_FORMATS}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "skops":
        sio.dump(model, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(model, fh)
    return path


def load_model(path: str | os.PathLike, *, allow_pickle: bool = False) -> LogisticRegression:
    """Load a model file safely.

    Parameters
    ----------
    path : path-like
        A ``.skops`` file. Its content is checked against an allow-list
        before anything is built from it: loading runs no code.
    allow_pickle : bool, default=False
        Also accept pickle files. Unpickling runs arbitrary code: only for
        files you created yourself, never for uploads.

    Returns
    -------
    LogisticRegression
        The fitted model.

    Raises
    ------
    ModelFileError
        If the file is not a skops file, holds types outside the allow-list,
        or is not a fitted linear classifier.
    """
    import skops.io as sio

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # skops files are zip archives
        if not allow_pickle:
            raise ModelFileError(
                f"{path.name} is not a skops file. Pickle/joblib files are refused because "
                "loading them runs code; save your model with skops.io.dump(model, 'model.skops')."
            )
        with open(path, "rb") as fh:
            model = pickle.load(fh)  # noqa: S301 - explicit opt-in for the caller's own files
    else:
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:
            raise ModelFileError(f"{path.name} is not a valid skops file: {exc}") from exc
        if untrusted:
            raise ModelFileError(
                f"{path.name} contains types outside the allow-list: {', '.join(untrusted)}. "
                "Only a scikit-learn LogisticRegression can be used."
            )
        try:
            model = sio.load(path, trusted=False)
        except Exception as exc:
            raise ModelFileError(f"{path.name} could not be loaded: {exc}") from exc
    check_model(model)
    return model


def check_model(model: object, n_features: int | None = None, classes=None) -> None:
    """Raise :class:`ModelFileError` unless ``model`` is a usable fitted classifier.

    Parameters
    ----------
    model : object
        The candidate.
    n_features : int, optional
        Required number of input features.
    classes : array-like, optional
        Required label set.
    """
    if not isinstance(model, ALLOWED_MODEL_TYPES):
        names = ", ".join(t.__name__ for t in ALLOWED_MODEL_TYPES)
        raise ModelFileError(f"Expected a fitted {names}, got {type(model).__name__}.")
    coef = getattr(model, "coef_", None)
    if coef is None or not hasattr(model, "classes_"):
        raise ModelFileError("The model is not fitted: call fit() before saving it.")
    if not np.all(np.isfinite(coef)) or not np.all(np.isfinite(model.intercept_)):
        raise ModelFileError("The model's weights contain NaN or infinity.")
    if n_features is not None and coef.shape[1] != n_features:
        raise ModelFileError(
            f"The model expects {coef.shape[1]} features, but the dataset has {n_features}. "
            "Pick the dataset the model was trained on."
        )
    if classes is not None and not np.array_equal(np.asarray(model.classes_), np.asarray(classes)):
        raise ModelFileError(
            f"The model predicts classes {list(model.classes_)}, but the dataset has "
            f"{list(np.asarray(classes))}. Pick the dataset the model was trained on."
        )
