"""A client's own labelled images in a file only that client reads: drawings instead of a partition.

A participant of a class draws digits; the app (or the participant, on their own
machine) keeps them as a drawings file: ``.npz`` with ``X`` (n × n_features,
uint8, the raw pixels of an image dataset, prepared like its images), ``y`` (n
labels) and ``dataset`` (the dataset whose features these are). A Flower client
whose node config names such a file (``drawings``), or whose run names a folder
of them (``client_data``, one file per partition), trains on it instead of a
partition of the dataset; the server still scores every round on the dataset's
own test split. Reading a file never runs code (``allow_pickle=False``), and a
file that is too large, tampered with or made for other features is refused
with a message that says what to do.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from fl_training.datasets import Dataset

#: Largest drawings file read: 2,000 drawings of 784 pixels, compressed or not, fit well within it.
MAX_DRAWINGS_FILE_BYTES = 2 * 1024 * 1024
#: Most drawings one file may hold (a participant draws tens; this bounds what a client loads).
MAX_DRAWINGS_PER_FILE = 2000
#: Share of a participant's drawings kept for their own evaluation (the room's held-back drawings).
DRAWINGS_VALIDATION_FRACTION = 0.2
#: Fewest drawings a client needs: at least one to train on and one held back.
MIN_DRAWINGS = 2
#: The entries of a drawings file, exactly.
ENTRIES = ("X.npy", "y.npy", "dataset.npy")


class DrawingsFileError(ValueError):
    """A drawings file cannot be used; the message says why and what to do."""


def client_file(folder: str | os.PathLike, partition_id: int) -> Path:
    """Where a run's folder of drawings keeps partition ``partition_id``'s file."""
    return Path(folder) / f"client-{int(partition_id)}.npz"


def reference_file(folder: str | os.PathLike, partition_id: int) -> Path:
    """Where a run's folder keeps a reference client's file: which of the dataset's own training
    images it holds (:func:`save_reference`), trained on like drawings but left out of the
    clients' evaluation (which then scores the drawings only)."""
    return Path(folder) / f"reference-{int(partition_id)}.npz"


def save_reference(path: str | os.PathLike, rows: np.ndarray, dataset: Dataset) -> Path:
    """Write a reference client's file: row numbers of ``dataset``'s training split, not pixels.

    The client reads those rows from the dataset its process has already prepared
    (deskewed once per process), instead of preparing the same images every round.
    """
    rows = _checked_rows(np.asarray(rows), dataset, Path(path).name)
    with open(path, "wb") as out:
        np.savez(out, rows=rows, dataset=np.array(dataset.name))
    return Path(path)


def load_reference(path: str | os.PathLike, dataset: Dataset) -> np.ndarray:
    """The training rows a reference client's file names (:func:`save_reference`), checked.

    Raises
    ------
    DrawingsFileError
        If the file is missing, not a reference file, made for another dataset, or names
        rows outside the dataset's training split.
    """
    path = Path(path)
    limit = len(dataset.y_train) * 8 + 4096
    if not path.is_file() or path.stat().st_size > limit:
        raise DrawingsFileError(f"{path.name} is missing or larger than a reference client's file.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if sorted(data.files) != ["dataset", "rows"]:
                raise DrawingsFileError(f"{path.name} holds {sorted(data.files)}: not a reference file.")
            rows, made_for = data["rows"], str(data["dataset"])
    except DrawingsFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise DrawingsFileError(f"{path.name} is not a reference client's file ({exc}).") from exc
    if made_for != dataset.name:
        raise DrawingsFileError(f"{path.name} names rows of {made_for!r}; this run trains {dataset.name!r}.")
    return _checked_rows(rows, dataset, path.name)


def _checked_rows(rows: np.ndarray, dataset: Dataset, name: str) -> np.ndarray:
    if (rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer)
            or not MIN_DRAWINGS <= len(rows) <= len(dataset.y_train)
            or rows.min() < 0 or rows.max() >= len(dataset.y_train)):
        raise DrawingsFileError(
            f"{name}: a reference client holds {MIN_DRAWINGS} to {len(dataset.y_train)} row numbers of "
            f"{dataset.name}'s training split, each from 0 to {len(dataset.y_train) - 1}."
        )
    return rows.astype(np.int64)


def partition_file(folder: str | os.PathLike, partition_id: int) -> tuple[Path, bool]:
    """Partition ``partition_id``'s file in a run's folder, and whether it is a reference client's."""
    reference = reference_file(folder, partition_id)
    if reference.is_file():
        return reference, True
    return client_file(folder, partition_id), False


def save_drawings(path: str | os.PathLike, X: np.ndarray, y: np.ndarray, dataset: Dataset) -> Path:
    """Write drawings as a file a client (here or on a participant's machine) can train on.

    Parameters
    ----------
    path : path-like
        Where to write (``.npz``).
    X : ndarray of shape (n, n_features)
        Raw pixels, within the dataset's feature range.
    y : ndarray of shape (n,)
        Labels among the dataset's classes.
    dataset : Dataset
        The image dataset the drawings were prepared like.

    Returns
    -------
    Path
        The file written.
    """
    X, y = _checked(np.asarray(X), np.asarray(y), dataset)
    path = Path(path)
    with open(path, "wb") as out:
        np.savez_compressed(out, X=X, y=y, dataset=np.array(dataset.name))
    return path


def drawings_bytes(X: np.ndarray, y: np.ndarray, dataset: Dataset) -> bytes:
    """The same file as :func:`save_drawings`, in memory (for a download)."""
    X, y = _checked(np.asarray(X), np.asarray(y), dataset)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=X, y=y, dataset=np.array(dataset.name))
    return buffer.getvalue()


def load_drawings(path: str | os.PathLike, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a drawings file.

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_drawings` (or exported from the app).
    dataset : Dataset
        The dataset the run trains for: the file must have been made for it.

    Returns
    -------
    X : ndarray of shape (n, n_features), uint8
    y : ndarray of shape (n,), int64

    Raises
    ------
    DrawingsFileError
        If the file is missing, too large, not a drawings file, made for
        another dataset, or holds values outside the dataset's ranges.
    """
    path = Path(path)
    if not path.is_file():
        raise DrawingsFileError(f"No drawings file at {path}: export your drawings from the app first.")
    size = path.stat().st_size
    if size > MAX_DRAWINGS_FILE_BYTES:
        raise DrawingsFileError(
            f"{path.name} is {size:,} bytes; a drawings file holds at most {MAX_DRAWINGS_FILE_BYTES:,}. "
            "Export your drawings from the app again."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(archive.namelist())
            unpacked = sum(info.file_size for info in archive.infolist())
        if names != sorted(ENTRIES):
            raise DrawingsFileError(f"{path.name} holds {names}, not a drawings export ({list(ENTRIES)}).")
        if unpacked > MAX_DRAWINGS_PER_FILE * (dataset.n_features + 16) + 4096:
            raise DrawingsFileError(
                f"{path.name} unpacks to {unpacked:,} bytes: more than a drawings file holds."
            )
        with np.load(path, allow_pickle=False) as data:
            X, y, made_for = data["X"], data["y"], str(data["dataset"])
    except DrawingsFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise DrawingsFileError(
            f"{path.name} is not a drawings file the app exported ({exc.__class__.__name__}: {exc}). "
            "Export your drawings from the app again."
        ) from exc
    if made_for != dataset.name:
        raise DrawingsFileError(
            f"{path.name} holds drawings for {made_for!r}; this run trains {dataset.name!r}."
        )
    return _checked(X, y, dataset)


def _checked(X: np.ndarray, y: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    if dataset.image_shape is None:
        raise DrawingsFileError(f"{dataset.name} is tabular: drawings are for image datasets.")
    if X.ndim != 2 or X.shape[1] != dataset.n_features or y.shape != (len(X),):
        raise DrawingsFileError(
            f"Drawings must be {dataset.n_features} pixels each with one label each; got X {X.shape}, "
            f"y {y.shape}."
        )
    if not MIN_DRAWINGS <= len(X) <= MAX_DRAWINGS_PER_FILE:
        raise DrawingsFileError(
            f"A drawings file holds {MIN_DRAWINGS} to {MAX_DRAWINGS_PER_FILE} drawings; "
            f"this one has {len(X)}."
        )
    if not (np.issubdtype(X.dtype, np.number) and np.issubdtype(y.dtype, np.integer)):
        raise DrawingsFileError("Drawings must be numbers, with whole-number labels.")
    if not np.all(np.isfinite(X)) or X.min() < 0 or X.max() > float(np.max(dataset.feature_high)):
        raise DrawingsFileError(
            f"Drawing pixels must lie in 0..{float(np.max(dataset.feature_high)):g} ({dataset.name}'s range)."
        )
    if not np.isin(y, dataset.classes).all():
        raise DrawingsFileError(f"Labels must be among {', '.join(map(str, dataset.classes))}.")
    return np.rint(X).astype(np.uint8), y.astype(np.int64)


def split_drawings(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """A participant's drawings into training and held-back parts (the same split everywhere).

    :data:`DRAWINGS_VALIDATION_FRACTION` of them, at least one, is held back for
    the client's own evaluation; the choice depends only on the drawings' order,
    so the app can score any model on exactly the held-back drawings.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
    """
    n = len(y)
    n_val = max(1, int(round(n * DRAWINGS_VALIDATION_FRACTION)))
    order = np.random.default_rng(n).permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]
