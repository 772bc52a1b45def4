"""Saving, loading and checking model files.

The project's format is skops: loading it never runs code. Before anything is
built from a file, :func:`audit_model_file` reads its table of contents and
schema and refuses anything but a small archive describing a plain
LogisticRegression (:data:`ALLOWED_SKOPS_TYPES`). Pickle is written only on
explicit request (compatibility with older demos' ``model.pkl``) and is never
read from untrusted sources.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from concurrency.imports import import_once
from fl_training.datasets import DATASET_NAMES, Dataset, DatasetUnavailableError, load_dataset
from fl_training.preprocessing import MODEL_ATTRIBUTE, PreprocessingError, check_applies, model_preprocessing

#: Estimators a model file may contain. A linear classifier is all the FHE
#: side needs; anything else is refused before it is used.
ALLOWED_MODEL_TYPES: tuple[type, ...] = (LogisticRegression,)

MODEL_FORMATS = ("skops", "pickle")

#: Largest model file read (the app's upload limit; an MNIST model is ~70 kB).
MAX_MODEL_FILE_BYTES = 5 * 1024 * 1024
#: What a model file may unpack to. A LogisticRegression for the largest
#: dataset here (784 features, 10 classes) is schema.json + 4 arrays, ~72 kB.
MAX_MODEL_UNPACKED_BYTES = 4 * 1024 * 1024
MAX_MODEL_ENTRIES = 16
#: Its schema.json is ~8.4 kB whatever the dataset. Parsing JSON costs up to
#: ~21x its size in memory (``[[],[],...]``), so this bound is what keeps an
#: upload's audit within a few MB.
MAX_SCHEMA_BYTES = 64 * 1024
#: Objects a schema may describe (a LogisticRegression: a few dozen).
MAX_SCHEMA_NODES = 1_000

#: The one class a model file may instantiate.
MODEL_CLASS = "sklearn.linear_model._logistic.LogisticRegression"
#: Every type a .skops file may name (``module.Class``): the model class and
#: the plain containers, numbers, strings and arrays its fitted state is made
#: of. skops's own default list trusts every scikit-learn estimator and more;
#: this one is the explicit, smaller list a LogisticRegression needs.
ALLOWED_SKOPS_TYPES = frozenset({
    MODEL_CLASS,
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
    "builtins.float", "builtins.bool", "builtins.NoneType",
    "numpy.ndarray", "numpy.int32", "numpy.int64", "numpy.float32", "numpy.float64",
})
#: How skops may rebuild them: no functions, methods, partials, reduce calls,
#: random states or arbitrary objects.
ALLOWED_SKOPS_LOADERS = frozenset({
    "ObjectNode", "DictNode", "ListNode", "TupleNode", "JsonNode", "TypeNode", "NdArrayNode", "CachedNode",
})
#: Datasets that need a download, and the offline dataset with the same
#: features and classes (not downloaded just to word an error message).
_SAME_SHAPE_AS = {"mnist": "mnist-5k"}

_SKOPS_HINT = "save a fitted scikit-learn LogisticRegression with skops.io.dump(model, 'model.skops')"
#: Why a file that is not a zip archive is refused; ``{name}`` is the file's name.
PICKLE_REFUSED = (
    "{name} is not a skops file. Pickle/joblib files are refused because loading them runs code; "
    + _SKOPS_HINT + "."
)


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
        The written file (complete, or not there at all).

    Raises
    ------
    OSError
        If it cannot be written (a full disk); nothing is left behind.
    """
    (sio,) = import_once("skops.io")

    path = Path(path)
    fmt = fmt or ("pickle" if path.suffix in {".pkl", ".pickle"} else "skops")
    if fmt not in MODEL_FORMATS:
        raise ValueError(f"Unknown model format {fmt!r}; use one of {MODEL_FORMATS}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written next to its destination, then renamed: a full disk leaves no half-written model.
    partial = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "skops":
            sio.dump(model, partial)
        else:
            with open(partial, "wb") as fh:
                pickle.dump(model, fh)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_model(path: str | os.PathLike, *, allow_pickle: bool = False) -> LogisticRegression:
    """Load a model file safely.

    Parameters
    ----------
    path : path-like
        A ``.skops`` file. It is audited by :func:`audit_model_file` before
        anything is built from it, and loading runs no code.
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
        is too large, or is not a fitted linear classifier.
    """

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if allow_pickle and head != b"PK\x03\x04":
        with open(path, "rb") as fh:
            model = pickle.load(fh)  # noqa: S301 - explicit opt-in for the caller's own files
    else:
        schema = audit_model_file(path)
        try:
            model = _build_from_schema(path, schema)
        except Exception as exc:
            raise ModelFileError(f"{path.name} could not be loaded: {exc}") from exc
    check_model(model)
    return model


def _build_from_schema(path: Path, schema: dict[str, Any]) -> Any:
    """What ``skops.io.load`` does, from the schema the audit already parsed (parsed once).

    skops 0.5 (pinned in requirements.txt) reads and parses schema.json again
    in ``load``; its tree API takes the parsed schema instead. Its own audit
    still runs, against the same allow-list.
    """
    # skops's first import, from whichever thread loads a model first, under the one import lock.
    audit, utils = import_once("skops.io._audit", "skops.io._utils")

    with zipfile.ZipFile(path) as archive:
        tree = audit.get_tree(schema, utils.LoadContext(src=archive))
        audit.audit_tree(tree, sorted(ALLOWED_SKOPS_TYPES))
        return tree.construct()


def check_model(model: object) -> None:
    """Refuse anything but a fitted classifier with finite weights and a preprocessing this version knows.

    Whether it fits a dataset is :func:`check_model_fits`'s question.

    Parameters
    ----------
    model : object
        The candidate.

    Raises
    ------
    ModelFileError
        If it is not an allowed type, not fitted, has NaN or infinite weights, or records
        an unknown preprocessing.
    """
    if not isinstance(model, ALLOWED_MODEL_TYPES):
        names = ", ".join(t.__name__ for t in ALLOWED_MODEL_TYPES)
        raise ModelFileError(f"Expected a fitted {names}, got {type(model).__name__}.")
    coef = getattr(model, "coef_", None)
    if coef is None or not hasattr(model, "classes_"):
        raise ModelFileError("The model is not fitted: call fit() before saving it.")
    if not np.all(np.isfinite(coef)) or not np.all(np.isfinite(model.intercept_)):
        raise ModelFileError("The model's weights contain NaN or infinity.")
    try:
        model_preprocessing(model)
    except PreprocessingError as exc:
        raise ModelFileError(f"The model's {MODEL_ATTRIBUTE} is not usable: {exc}") from exc


# --------------------------------------------------------------------------
# Auditing a file before anything is built from it
# --------------------------------------------------------------------------


def _megabytes(n_bytes: int) -> str:
    if n_bytes < 2**20:
        return f"{n_bytes / 1024:.1f} KB ({n_bytes:,} bytes)"
    return f"{n_bytes / 2**20:.1f} MB ({n_bytes:,} bytes)"


def _skops_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every node of a skops schema (iteratively: a deep file cannot exhaust the stack)."""
    stack, seen = [schema], 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                seen += 1
                if seen > MAX_SCHEMA_NODES:
                    raise ModelFileError(
                        f"The model file describes more than {MAX_SCHEMA_NODES:,} objects; "
                        f"a LogisticRegression needs a few dozen: {_SKOPS_HINT}."
                    )
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _read_schema(archive: zipfile.ZipFile, name: str) -> Any:
    """Parse ``schema.json`` after reading at most :data:`MAX_SCHEMA_BYTES` of it."""
    with archive.open("schema.json") as fh:
        raw = fh.read(MAX_SCHEMA_BYTES + 1)
    if len(raw) > MAX_SCHEMA_BYTES:
        raise ModelFileError(
            f"{name}'s schema.json is larger than {_megabytes(MAX_SCHEMA_BYTES)}; a LogisticRegression's "
            f"is about 8 KB: {_SKOPS_HINT}."
        )
    return json.loads(raw)


def audit_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Refuse a model file unless it is a small skops archive naming allowed types only.

    Only the archive's table of contents and its ``schema.json`` are read
    (each within the bounds a LogisticRegression needs: :data:`MAX_MODEL_ENTRIES`,
    :data:`MAX_MODEL_UNPACKED_BYTES`, :data:`MAX_SCHEMA_BYTES`,
    :data:`MAX_SCHEMA_NODES`): no object is built and no code runs. Pickle
    and joblib files are refused outright, since unpickling runs code.

    skops reads an archive entry once per schema node that names it, so what
    loading would read is counted too: every entry may be named once, and the
    sum over the naming nodes of their entries' sizes may not exceed
    :data:`MAX_MODEL_UNPACKED_BYTES` (a 4 KB file naming one 3.9 MB entry 590
    times would otherwise make skops read ~2.3 GB).

    Parameters
    ----------
    path : path-like
        The file, e.g. an upload.

    Returns
    -------
    dict
        The parsed schema, for :func:`load_model` to build from (it is parsed once).

    Raises
    ------
    ModelFileError
        Saying what is wrong with the file and how to save a usable one.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(
            f"{path.name} is {_megabytes(size)}; model files may be at most "
            f"{_megabytes(MAX_MODEL_FILE_BYTES)} (a LogisticRegression takes kilobytes)."
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" or not zipfile.is_zipfile(path):  # skops files are zip archives
        raise ModelFileError(PICKLE_REFUSED.format(name=path.name))
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            # What ZipFile.read(name) unpacks (for a name repeated in the archive, its last entry).
            entry_sizes = {entry.filename: entry.file_size for entry in entries}
            unpacked = sum(entry.file_size for entry in entries)
            if len(entries) > MAX_MODEL_ENTRIES or unpacked > MAX_MODEL_UNPACKED_BYTES:
                raise ModelFileError(
                    f"{path.name} unpacks to {len(entries)} files and {_megabytes(unpacked)}; "
                    f"a model file may hold at most {MAX_MODEL_ENTRIES} files and "
                    f"{_megabytes(MAX_MODEL_UNPACKED_BYTES)}."
                )
            schema = _read_schema(archive, path.name)
    except KeyError:
        raise ModelFileError(
            f"{path.name} has no schema.json, so it is not a skops file: {_SKOPS_HINT}."
        ) from None
    except (zipfile.BadZipFile, ValueError, RecursionError, OSError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"{path.name} is not a valid skops file ({exc.__class__.__name__}): {_SKOPS_HINT}."
        ) from exc
    if not isinstance(schema, dict):
        raise ModelFileError(f"{path.name}'s schema.json does not describe an object: {_SKOPS_HINT}.")
    refused = set()
    named: Counter[str] = Counter()  # archive entry → nodes naming it (skops reads it once for each)
    for node in _skops_nodes(schema):
        if "file" in node:
            named[_named_entry(node["file"], entry_sizes, path.name)] += 1
        loader = node.get("__loader__")
        if loader == "CachedNode":  # a reference to an object described elsewhere in the file
            continue
        name = f"{node.get('__module__')}.{node.get('__class__')}"
        if loader not in ALLOWED_SKOPS_LOADERS:
            refused.add(f"{name} (as {loader})")
        elif name not in ALLOWED_SKOPS_TYPES or (loader == "ObjectNode") != (name == MODEL_CLASS):
            refused.add(name)
    if refused:
        listed = ", ".join(sorted(refused)[:5]) + (" …" if len(refused) > 5 else "")
        raise ModelFileError(
            f"{path.name} contains types outside the allow-list: {listed}. Only a plain "
            f"LogisticRegression is accepted: {_SKOPS_HINT}."
        )
    _check_reads(named, entry_sizes, path.name)
    return schema


def _named_entry(name: Any, entry_sizes: dict[str, int], file_name: str) -> str:
    """The archive entry a schema node names in its ``file`` key (an array's ``.npy``)."""
    if not isinstance(name, str) or name not in entry_sizes:
        raise ModelFileError(
            f"{file_name}'s schema.json names an array file {str(name)[:80]!r} that the archive does not "
            f"hold, so it is not a usable skops file: {_SKOPS_HINT}."
        )
    return name


def _check_reads(named: Counter[str], entry_sizes: dict[str, int], file_name: str) -> None:
    """Refuse a schema whose loading would read more than :data:`MAX_MODEL_UNPACKED_BYTES`, or an entry twice.

    Checked in this order so that a file naming a large entry many times is
    told how much it would read; any entry named twice is refused after that
    (a LogisticRegression names each of its arrays once).
    """
    reads = sum(entry_sizes[name] * count for name, count in named.items())
    if reads > MAX_MODEL_UNPACKED_BYTES:
        raise ModelFileError(
            f"{file_name}'s schema.json names its array files {named.total():,} times, so loading it would "
            f"read {_megabytes(reads)}; loading a model file may read at most "
            f"{_megabytes(MAX_MODEL_UNPACKED_BYTES)}, each array once: {_SKOPS_HINT}."
        )
    repeated = sorted((name for name, count in named.items() if count > 1), key=lambda n: -named[n])
    if repeated:
        listed = ", ".join(f"{name!r} ({named[name]} times)" for name in repeated[:3])
        listed += " …" if len(repeated) > 3 else ""
        raise ModelFileError(
            f"{file_name}'s schema.json names the same array file more than once: {listed}; skops would "
            f"read it once per mention, and a LogisticRegression names each array once: {_SKOPS_HINT}."
        )


# --------------------------------------------------------------------------
# Does a model fit a dataset?
# --------------------------------------------------------------------------


def _describe_classes(classes: np.ndarray) -> str:
    values = list(np.asarray(classes).tolist())
    if (
        len(values) > 2
        and all(isinstance(v, int) for v in values)
        and values == list(range(values[0], values[0] + len(values)))
    ):
        return f"{values[0]}–{values[-1]}"
    shown = ", ".join(str(v) for v in values[:12])
    return shown + (", …" if len(values) > 12 else "")


def datasets_fitting(n_features: int, classes: Any) -> list[str]:
    """Names of the demo's datasets with exactly these features and classes.

    Parameters
    ----------
    n_features : int
        Number of input features.
    classes : array-like
        Label set.

    Returns
    -------
    list of str
        Matching dataset names (datasets that need a download are matched
        through an offline dataset of the same shape, never downloaded).
    """
    classes = np.asarray(classes)
    fits = []
    for name in DATASET_NAMES:
        try:
            dataset = load_dataset(_SAME_SHAPE_AS.get(name, name))
        except DatasetUnavailableError:
            continue
        if dataset.n_features == n_features and np.array_equal(dataset.classes, classes):
            fits.append(name)
    return fits


def check_model_fits(model: Any, dataset: Dataset) -> None:
    """Refuse a model whose features or classes are not the dataset's, naming those that fit.

    Parameters
    ----------
    model : LogisticRegression
        A fitted model (already checked by :func:`check_model`).
    dataset : Dataset
        The dataset it is meant for.

    Raises
    ------
    ModelFileError
        With the model's and the dataset's shapes and the datasets it would fit.
    """
    n_features = int(np.atleast_2d(model.coef_).shape[1])
    classes = np.asarray(model.classes_)
    try:
        check_applies(model_preprocessing(model), dataset.image_shape)
    except PreprocessingError as exc:
        raise ModelFileError(f"The model does not fit {dataset.name}: {exc}") from exc
    if n_features != dataset.n_features:
        problem = f"The model expects {n_features} features, but the dataset has {dataset.n_features}"
    elif not np.array_equal(classes, dataset.classes):
        problem = (f"The model predicts classes {_describe_classes(classes)}, but the dataset has "
                   f"{_describe_classes(dataset.classes)}")
    else:
        return
    shape = f"{n_features} features, classes {_describe_classes(classes)}"
    fits = datasets_fitting(n_features, classes)
    if fits:
        advice = (f"The model ({shape}) fits {' or '.join(fits)}: select that dataset and press the "
                  f"button again, or upload a model trained on {dataset.name}'s raw features.")
    else:
        offline = [load_dataset(name) for name in DATASET_NAMES if name not in _SAME_SHAPE_AS]
        shapes = "; ".join(
            f"{d.name}: {d.n_features} features, classes {_describe_classes(d.classes)}" for d in offline
        )
        advice = (f"No dataset of this demo fits the model ({shape}); they are {shapes}. Upload a "
                  "LogisticRegression trained on the raw features of one of them.")
    raise ModelFileError(f"{problem} ({dataset.name}). {advice}")
