"""One visitor's walk through the demo, without any UI.

A :class:`DemoSession` holds what one browser session built: its model, its
compiled deployment, its keys (private key in a directory only this session
uses), its server-side key id and the last sample's ciphertexts. Every step
checks that the steps before it were done and raises :class:`StepError` with
what to do otherwise. A step that fails leaves the session as it was: results
are computed first and stored only once everything succeeded.

The FHE server is reached over HTTP through :class:`FHEServerHandle`; the
server only ever receives server.zip, evaluation keys and ciphertexts.
:class:`SessionRegistry` maps sessions to ids so that they can be wiped when
the browser tab closes, with an idle TTL as a backstop.

Nothing here imports gradio: the tab modules in :mod:`ui` are thin wrappers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fl_training.datasets import DATASET_NAMES, Dataset, DatasetUnavailableError, load_dataset
from fl_training.model_io import ModelFileError, load_model, save_model
from fl_training.task import MAX_CLIENTS, MAX_LOCAL_EPOCHS, MAX_ROUNDS, TrainingConfig

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from fhe_model.client import DecryptionResult, EncryptionResult, FHEClient, KeygenResult
    from fhe_model.developer import CompiledModel, DeploymentFiles
    from fhe_model.evaluation import EvaluationReport
    from fhe_model.http_client import FHEServerClient
    from fhe_model.http_server import LocalServer
    from fl_training.server_app import RoundRecord

logger = logging.getLogger(__name__)

#: Environment variables naming an external FHE server and its admin token.
SERVER_URL_ENV = "FHE_SERVER_URL"
ADMIN_TOKEN_ENV = "FHE_ADMIN_TOKEN"

#: A session idle for this long is wiped even if the tab never said goodbye.
DEFAULT_IDLE_TTL_SECONDS = 3600.0

#: Values the accuracy-vs-n_bits sweep compiles, and the test samples it scores.
SWEEP_N_BITS: tuple[int, ...] = (2, 3, 4, 6, 8)
SWEEP_SAMPLES = 200
SWEEP_CALIBRATION_SAMPLES = 300

#: Inputs of step ②.
INPUT_SOURCES: tuple[str, ...] = ("test sample", "drawing")

#: Largest batch of the encrypted evaluation (a few minutes on 2 cores).
MAX_EVALUATION_SAMPLES = 1000

#: Largest drawing accepted, in pixels per side (the sketchpad sends 280).
MAX_DRAWING_SIDE = 2048


class StepError(ValueError):
    """A step cannot run: a previous step is missing or a value is invalid.

    The message says what to do; the session is unchanged.
    """


# --------------------------------------------------------------------------
# Validation and formatting
# --------------------------------------------------------------------------


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """Return ``value`` as an int if it is a whole number in ``[low, high]``.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : Any
        Candidate (floats such as ``3.0`` are accepted).
    low, high : int
        Inclusive bounds.

    Returns
    -------
    int
        The value.

    Raises
    ------
    StepError
        If it is not a finite whole number within the bounds.
    """
    if not (_is_real(value) and math.isfinite(value) and int(value) == value and low <= value <= high):
        raise StepError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(value)


def real_number(name: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as a float if it is finite and in ``[low, high]``.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : Any
        Candidate.
    low, high : float
        Inclusive bounds.

    Returns
    -------
    float
        The value.

    Raises
    ------
    StepError
        If it is not a finite number within the bounds.
    """
    if not (_is_real(value) and math.isfinite(value) and low <= value <= high):
        raise StepError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def format_bytes(n_bytes: int) -> str:
    """Human-readable size that never rounds a small size to zero.

    Parameters
    ----------
    n_bytes : int
        A size in bytes.

    Returns
    -------
    str
        e.g. ``"64 bytes"``, ``"19.2 KB (19,650 bytes)"``, ``"3.1 MB (3,250,000 bytes)"``.
    """
    n = int(n_bytes)
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB ({n:,} bytes)"
    return f"{n / (1024 * 1024):.1f} MB ({n:,} bytes)"


def get_dataset(name: str) -> Dataset:
    """Load a dataset by name, turning loader errors into :class:`StepError`.

    Parameters
    ----------
    name : str
        One of :data:`fl_training.datasets.DATASET_NAMES`.

    Returns
    -------
    Dataset
        The dataset.

    Raises
    ------
    StepError
        For an unknown name or a dataset that cannot be loaded here (offline).
    """
    if name not in DATASET_NAMES:
        raise StepError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}.")
    try:
        return load_dataset(name)
    except DatasetUnavailableError as exc:
        raise StepError(str(exc)) from exc


def training_config(
    dataset: str = "mnist-5k",
    num_clients: Any = 10,
    num_rounds: Any = 5,
    partitioning: str = "iid",
    alpha: Any = 0.5,
    classes_per_client: Any = 2,
    strategy: str = "fedavg",
    local_epochs: Any = 10,
    seed: Any = 0,
    differential_privacy: bool = False,
    noise_multiplier: Any = 0.5,
    clipping_norm: Any = 5.0,
) -> TrainingConfig:
    """Build a :class:`TrainingConfig` from loosely typed UI/API values.

    Parameters
    ----------
    dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client, strategy, \
local_epochs, seed, differential_privacy, noise_multiplier, clipping_norm
        See :class:`fl_training.task.TrainingConfig`. Numbers may arrive as
        floats (``3.0``); NaN and out-of-range values are refused.

    Returns
    -------
    TrainingConfig
        A validated config.

    Raises
    ------
    StepError
        With the offending parameter's name and its valid range.
    """
    num_clients = whole_number("num_clients", num_clients, 2, MAX_CLIENTS)
    num_rounds = whole_number("num_rounds", num_rounds, 1, MAX_ROUNDS)
    local_epochs = whole_number("local_epochs", local_epochs, 1, MAX_LOCAL_EPOCHS)
    classes_per_client = whole_number("classes_per_client", classes_per_client, 1, 1000)
    seed = whole_number("seed", seed, 0, 2**32 - 1)
    alpha = real_number("alpha", alpha, 1e-3, 1e3)
    noise_multiplier = real_number("noise_multiplier", noise_multiplier, 0.0, 100.0)
    clipping_norm = real_number("clipping_norm", clipping_norm, 1e-6, 1e6)
    if not isinstance(differential_privacy, (bool, np.bool_)):
        raise StepError(f"differential_privacy must be true or false, got {differential_privacy!r}.")
    try:
        cfg = TrainingConfig(
            dataset=dataset,
            num_clients=num_clients,
            num_rounds=num_rounds,
            partitioning=partitioning,
            alpha=alpha,
            classes_per_client=classes_per_client,
            strategy=strategy,
            local_epochs=local_epochs,
            seed=seed,
            differential_privacy=bool(differential_privacy),
            noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
        )
    except ValueError as exc:
        raise StepError(str(exc)) from exc
    return cfg


def label_distribution(cfg: TrainingConfig) -> np.ndarray:
    """Each client's label counts before training, shape ``(num_clients, n_classes)``.

    Parameters
    ----------
    cfg : TrainingConfig
        The planned run.

    Returns
    -------
    ndarray of int
        Counts.

    Raises
    ------
    StepError
        If the dataset cannot be loaded or divided this way.
    """
    from fl_training.task import check_fits_dataset
    from fl_training.task import label_distribution as counts

    dataset = get_dataset(cfg.dataset)
    try:
        check_fits_dataset(cfg, dataset)
        return counts(cfg)
    except ValueError as exc:
        raise StepError(str(exc)) from exc


@lru_cache(maxsize=8)
def baseline_accuracy(dataset_name: str) -> float:
    """Test accuracy of a model trained centrally on the whole training split.

    Parameters
    ----------
    dataset_name : str
        Dataset name.

    Returns
    -------
    float
        Accuracy on the fixed test split (cached per dataset).
    """
    from fl_training.task import train_centralized

    dataset = get_dataset(dataset_name)
    model = train_centralized(dataset)
    return float(model.score(dataset.X_test, dataset.y_test))


def drawing_to_features(image: Any, dataset: Dataset) -> np.ndarray:
    """Turn a sketchpad drawing into one sample of an image dataset's raw features.

    Dark strokes on a light or transparent canvas become light strokes on a
    dark background, cropped to the drawing, centred with the dataset's usual
    margin (4 px of 28 for MNIST), downscaled to the dataset's image shape and
    scaled to its raw value range (0-255 for MNIST, 0-16 for digits).

    Parameters
    ----------
    image : ndarray, or dict with a ``"composite"`` entry, or None
        An RGB(A) or grayscale image as the sketchpad returns it.
    dataset : Dataset
        An image dataset (``image_shape`` set).

    Returns
    -------
    ndarray of shape (n_features,)
        Raw features.

    Raises
    ------
    StepError
        If the dataset is tabular, or the drawing is blank or not an image.
    """
    from PIL import Image

    if dataset.image_shape is None:
        raise StepError(
            f"{dataset.name} is tabular: drawing only works for image datasets (mnist-5k, digits). "
            "Pick a test sample instead."
        )
    if isinstance(image, dict):
        image = image.get("composite")
    if image is None:
        raise StepError("The drawing is blank: draw a digit on the sketchpad first.")
    try:
        pixels = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise StepError(
            f"Expected the drawing as an image (height × width × RGBA pixels), got {type(image).__name__}."
        ) from exc
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise StepError(
            "Expected the drawing as an image (height × width, with 1, 3 or 4 channels), "
            f"got an array of shape {pixels.shape}."
        )
    if min(pixels.shape[:2]) < 1 or max(pixels.shape[:2]) > MAX_DRAWING_SIDE:
        raise StepError(
            f"The drawing must be 1 to {MAX_DRAWING_SIDE} pixels on a side, got "
            f"{pixels.shape[0]}×{pixels.shape[1]}."
        )
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise StepError("The drawing's pixel values must be numbers from 0 to 255 (no NaN or infinity).")
    if pixels.ndim == 3:
        gray = pixels[..., :3].mean(axis=2)
        alpha = pixels[..., 3] / 255.0 if pixels.shape[2] == 4 else np.ones(gray.shape)
        ink = alpha * (255.0 - gray)
    else:
        ink = 255.0 - pixels
    if ink.max() < 32:
        raise StepError("The drawing is blank: draw a digit on the sketchpad first.")
    rows = np.flatnonzero((ink > 0.2 * ink.max()).any(axis=1))
    cols = np.flatnonzero((ink > 0.2 * ink.max()).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape)
    square = np.zeros((side, side))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop

    height, width = dataset.image_shape
    margin = height // 7 if height >= 16 else 0  # MNIST digits sit in a 20x20 box
    inner = (height - 2 * margin, width - 2 * margin)
    small = Image.fromarray(np.clip(square, 0, 255).astype(np.uint8)).resize(
        (inner[1], inner[0]), Image.Resampling.BOX
    )
    out = np.zeros((height, width))
    out[margin : margin + inner[0], margin : margin + inner[1]] = np.asarray(small, dtype=np.float64)
    if out.max() <= 0:
        raise StepError("The drawing is too faint: draw with thicker strokes.")
    high = float(np.max(dataset.feature_high))
    return (out / out.max() * high).reshape(-1)


def remove_compiled_files(compiled: CompiledModel) -> None:
    """Delete the temporary directories Concrete compiled a model into.

    Compiling leaves two (about 100 kB each): the circuit's library and its FHE
    simulator's. Concrete never deletes them, so a long-lived app must.

    Parameters
    ----------
    compiled : CompiledModel
        From :func:`fhe_model.developer.compile_model`; unusable for FHE afterwards.
    """
    from fhe_model.deployment import remove_circuit_files

    circuit = compiled.concrete_model.fhe_circuit
    for server in (circuit.server, circuit.simulator):
        remove_circuit_files(server)


# --------------------------------------------------------------------------
# Uploaded model files
# --------------------------------------------------------------------------

#: Largest model file read (the app's upload limit; an MNIST model is ~70 kB).
MAX_MODEL_FILE_BYTES = 5 * 1024 * 1024
#: Zip-bomb guards: what a model file may unpack to.
MAX_MODEL_UNPACKED_BYTES = 64 * 1024 * 1024
MAX_MODEL_ENTRIES = 256
MAX_SCHEMA_NODES = 10_000

#: The one class a model file may instantiate.
MODEL_CLASS = "sklearn.linear_model._logistic.LogisticRegression"
#: Every type an uploaded .skops file may name (``module.Class``): the model
#: class and the plain containers, numbers, strings and arrays its fitted state
#: is made of. skops's own default list trusts every scikit-learn estimator and
#: more; this one is the explicit, smaller list a LogisticRegression needs.
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


def _skops_nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every node of a skops schema (iteratively: a deep file cannot exhaust the stack)."""
    stack, seen = [schema], 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                seen += 1
                if seen > MAX_SCHEMA_NODES:
                    raise StepError(
                        f"The model file describes more than {MAX_SCHEMA_NODES:,} objects; "
                        f"a LogisticRegression needs a few dozen: {_SKOPS_HINT}."
                    )
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def audit_model_file(path: str | os.PathLike) -> None:
    """Refuse a model file unless it is a small skops archive naming allowed types only.

    Only the archive's table of contents and its ``schema.json`` are read:
    no object is built and no code runs. Pickle and joblib files are refused
    outright, since unpickling runs code.

    Parameters
    ----------
    path : path-like
        The uploaded file.

    Raises
    ------
    StepError
        Saying what is wrong with the file and how to save a usable one.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise StepError(
            f"{path.name} is {format_bytes(size)}; model files may be at most "
            f"{format_bytes(MAX_MODEL_FILE_BYTES)} (a LogisticRegression takes kilobytes)."
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04" or not zipfile.is_zipfile(path):  # skops files are zip archives
        raise StepError(
            f"{path.name} is not a skops file. Pickle/joblib files are refused because loading "
            f"them runs code; {_SKOPS_HINT}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            unpacked = sum(entry.file_size for entry in entries)
            too_big = len(entries) > MAX_MODEL_ENTRIES or unpacked > MAX_MODEL_UNPACKED_BYTES
            schema_bytes = None if too_big else archive.read("schema.json")
        schema = None if too_big else json.loads(schema_bytes)
    except KeyError:
        raise StepError(
            f"{path.name} has no schema.json, so it is not a skops file: {_SKOPS_HINT}."
        ) from None
    except (zipfile.BadZipFile, ValueError, RecursionError, OSError) as exc:
        raise StepError(
            f"{path.name} is not a valid skops file ({exc.__class__.__name__}): {_SKOPS_HINT}."
        ) from exc
    if too_big:
        raise StepError(
            f"{path.name} unpacks to {len(entries)} files and {format_bytes(unpacked)}; "
            f"a model file may hold at most {MAX_MODEL_ENTRIES} files and "
            f"{format_bytes(MAX_MODEL_UNPACKED_BYTES)}."
        )
    refused = set()
    for node in _skops_nodes(schema):
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
        raise StepError(
            f"{path.name} contains types outside the allow-list: {listed}. Only a plain "
            f"LogisticRegression is accepted: {_SKOPS_HINT}."
        )


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
        A fitted model (already checked by :func:`fl_training.model_io.check_model`).
    dataset : Dataset
        The dataset selected in the UI.

    Raises
    ------
    StepError
        With the model's and the dataset's shapes and the datasets it would fit.
    """
    n_features = int(np.atleast_2d(model.coef_).shape[1])
    classes = np.asarray(model.classes_)
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
        offline = [get_dataset(name) for name in DATASET_NAMES if name not in _SAME_SHAPE_AS]
        shapes = "; ".join(
            f"{d.name}: {d.n_features} features, classes {_describe_classes(d.classes)}" for d in offline
        )
        advice = (f"No dataset of this demo fits the model ({shape}); they are {shapes}. Upload a "
                  "LogisticRegression trained on the raw features of one of them.")
    raise StepError(f"{problem} ({dataset.name}). {advice}")


# --------------------------------------------------------------------------
# The FHE server
# --------------------------------------------------------------------------


class FHEServerHandle:
    """The FHE HTTP server the sessions use: an external one, or a local one started on demand.

    Parameters
    ----------
    url : str, optional
        An external server (``$FHE_SERVER_URL``). Without it, :meth:`start`
        runs one on 127.0.0.1 in a background thread of this process.
    admin_token : str, optional
        Bearer token for uploading deployments to the external server
        (``$FHE_ADMIN_TOKEN``); a local server gets a random one.
    """

    def __init__(self, url: str | None = None, admin_token: str | None = None):
        self._url = url.rstrip("/") if url else None
        self._admin_token = admin_token
        self._local: LocalServer | None = None
        self._client: FHEServerClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> FHEServerHandle:
        """Use ``$FHE_SERVER_URL`` / ``$FHE_ADMIN_TOKEN`` if set, else a local server.

        Returns
        -------
        FHEServerHandle
            Not started yet.
        """
        return cls(os.environ.get(SERVER_URL_ENV) or None, os.environ.get(ADMIN_TOKEN_ENV) or None)

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._client is not None

    @property
    def is_external(self) -> bool:
        """True when the server was given by URL rather than started here."""
        return self._url is not None and self._local is None

    def start(self) -> str:
        """Start the local server if needed and return the server's URL.

        Returns
        -------
        str
            Base URL.
        """
        with self._lock:
            if self._url is None:
                from fhe_model.http_server import start_local_server

                self._local = start_local_server(host="127.0.0.1", port=0)
                self._url = self._local.url
                self._admin_token = self._local.admin_token
                logger.info("FHE server started on %s", self._url)
            if self._client is None:
                from fhe_model.http_client import FHEServerClient

                self._client = FHEServerClient(self._url)
            return self._url

    @property
    def url(self) -> str:
        return self.start()

    @property
    def client(self) -> FHEServerClient:
        """A connected HTTP client, shared by all sessions (thread-safe)."""
        self.start()
        assert self._client is not None
        return self._client

    @property
    def admin_token(self) -> str:
        """Token for ``POST /deployments``.

        Raises
        ------
        StepError
            If an external server was configured without ``$FHE_ADMIN_TOKEN``.
        """
        self.start()
        if not self._admin_token:
            raise StepError(
                f"The FHE server at {self._url} needs an admin token to accept this session's "
                f"server.zip: set {ADMIN_TOKEN_ENV} (or unset {SERVER_URL_ENV} to use a local server)."
            )
        return self._admin_token

    def stop(self) -> None:
        """Close the HTTP client and stop the local server, if one was started."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._local is not None:
                self._local.stop()
                self._local = None
                self._url = None


# --------------------------------------------------------------------------
# What a session has built, one object per step
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """Test accuracy of the centrally trained model (None if it could not be trained)."""

    accuracy: float | None


@dataclass
class ModelStage:
    """A model ready to compile: trained here, or uploaded."""

    model: LogisticRegression
    dataset: str
    source: str  # "federated" or "uploaded"
    summary: dict[str, Any]
    model_file: Path


@dataclass
class CompiledStage:
    """A compiled model and its deployment files (public: no key material)."""

    compiled: CompiledModel
    files: DeploymentFiles
    server_deployment_id: str | None = None


@dataclass
class KeyStage:
    """Keys of this session: the private key stays in ``key_dir``, the server has ``key_id``."""

    client: FHEClient
    keygen: KeygenResult
    key_dir: Path
    deployment_id: str
    key_id: str
    upload_seconds: float


@dataclass
class EncryptedStage:
    """The sample that was encrypted, and its ciphertext."""

    x: np.ndarray
    label: int | None
    source: str
    sample_index: int | None
    encryption: EncryptionResult


@dataclass
class ServerStage:
    """What the server sent back."""

    ciphertext: bytes = field(repr=False)
    seconds: float = 0.0
    retried: bool = False


@dataclass
class DecryptedStage:
    """The decrypted result beside the clear model's."""

    result: DecryptionResult
    clear_prediction: int
    clear_probabilities: np.ndarray


class DemoSession:
    """Everything one visitor built, and the steps that build it.

    Parameters
    ----------
    server : FHEServerHandle
        The FHE server shared by all sessions.
    keys_root : path-like
        Parent of the sessions' private-key directories (each one ``0700``,
        random name, removed when the session closes).
    work_root : path-like, optional
        Parent of the session's directory of downloadable files (random name,
        removed when the session closes); the system temp directory by default.
    """

    def __init__(
        self,
        server: FHEServerHandle,
        keys_root: str | os.PathLike,
        work_root: str | os.PathLike | None = None,
    ):
        self.server = server
        self._keys_root = Path(keys_root)
        self._work_root = Path(work_root) if work_root is not None else None
        self._busy = threading.Lock()
        self._work_dir: Path | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._cleanup_lock = threading.Lock()
        self._wiped = False
        self.closed = False
        self.last_used = time.monotonic()
        self.model: ModelStage | None = None
        self.deployment: CompiledStage | None = None
        self.keys: KeyStage | None = None
        self.encrypted: EncryptedStage | None = None
        self.server_output: ServerStage | None = None
        self.decrypted: DecryptedStage | None = None
        self.evaluation: EvaluationReport | None = None

    # -- housekeeping ------------------------------------------------------

    _ENDED = (
        "This session has ended (the tab was closed or stayed idle too long) and its keys "
        "were deleted. Reload the page to start again."
    )

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Run one step at a time per session; refuse steps of a closed session.

        A session closed while a step runs is wiped when that step ends, so
        whatever the step built is deleted too.
        """
        if self.closed:
            raise StepError(self._ENDED)
        if not self._busy.acquire(blocking=False):
            raise StepError(
                f"Another step of this session is still running; wait for it to finish, then retry {name}."
            )
        if self.closed:  # closed between the check and the lock
            self._busy.release()
            self.close()
            raise StepError(self._ENDED)
        try:
            self.last_used = time.monotonic()
            yield
        finally:
            self.last_used = time.monotonic()
            self._busy.release()
            if self.closed:
                self.close()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def _new_public_dir(self) -> Path:
        """A fresh directory for files the visitor may download (never keys)."""
        if self._work_dir is None:
            if self._work_root is not None:
                self._work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._work_dir = Path(tempfile.mkdtemp(prefix="session-", dir=self._work_root))
        return Path(tempfile.mkdtemp(dir=self._work_dir))

    def add_cleanup(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the session is wiped (e.g. to delete a served copy of a file).

        Parameters
        ----------
        callback : callable
            Runs once; its exceptions are logged, not raised.
        """
        with self._cleanup_lock:
            if not self._wiped:
                self._cleanups.append(callback)
                return
        callback()

    def close(self) -> None:
        """Wipe the session: delete the private key, downloads and everything built.

        Safe to call more than once and from any thread. While a step runs,
        the wipe happens when that step ends (the step cannot store anything
        on a closed session that outlives it).
        """
        self.closed = True
        if not self._busy.acquire(blocking=False):
            return  # the running step calls close() again when it ends
        try:
            self._wipe()
        finally:
            self._busy.release()

    def _wipe(self) -> None:
        deployment, work_dir = self.deployment, self._work_dir
        with self._cleanup_lock:
            cleanups, self._cleanups, self._wiped = self._cleanups, [], True
        self._drop_keys()
        self.model = self.deployment = None
        self.encrypted = self.server_output = self.decrypted = self.evaluation = None
        self._work_dir = None
        self._retire_deployment(deployment)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        for callback in cleanups:
            try:
                callback()
            except Exception:  # one failed cleanup must not stop the others
                logger.exception("session cleanup failed")

    def _forget_on_server(self, what: str, call: Callable[[], None]) -> None:
        """Best effort: the server drops it at its TTL anyway."""
        from fhe_model.http_client import FHEServerError

        if not self.server.started:  # stopped at shutdown: nothing to tell, nothing to restart
            return
        try:
            call()
        except (FHEServerError, StepError) as exc:
            if getattr(exc, "status_code", None) != 404:
                logger.warning("could not remove %s from the FHE server: %s", what, exc)

    def _drop_keys(self) -> None:
        """Delete the private key and ask the server to forget the evaluation keys."""
        keys, self.keys = self.keys, None
        if keys is None:
            return
        shutil.rmtree(keys.key_dir, ignore_errors=True)
        self._forget_on_server("evaluation keys", lambda: self.server.client.delete_keys(keys.key_id))

    def _retire_deployment(self, stage: CompiledStage | None) -> None:
        """Free what a replaced or wiped deployment holds.

        That is Concrete's compiled circuits, the deployment files, and the
        server's copy (with any evaluation keys for it).
        """
        if stage is None:
            return
        remove_compiled_files(stage.compiled)
        self._remove_public_dir(stage.files.directory)
        if stage.server_deployment_id is not None:
            deployment_id, stage.server_deployment_id = stage.server_deployment_id, None
            self._forget_on_server(
                "a deployment",
                lambda: self.server.client.delete_deployment(deployment_id, self.server.admin_token),
            )

    def _remove_public_dir(self, path: Path) -> None:
        """Delete the public directory holding ``path`` (only inside this session's work dir)."""
        work_dir = self._work_dir
        if work_dir is None or work_dir not in path.parents:
            return
        directory = path
        while directory.parent != work_dir:
            directory = directory.parent
        shutil.rmtree(directory, ignore_errors=True)

    def _replace_model(self, stage: ModelStage) -> None:
        previous = self.model
        self.model = stage
        if previous is not None:
            self._remove_public_dir(previous.model_file)
        self._clear_after_model()

    def _clear_after_model(self) -> None:
        deployment, self.deployment = self.deployment, None
        self._drop_keys()
        self._retire_deployment(deployment)
        self._clear_after_keys()

    def _clear_after_keys(self) -> None:
        self.encrypted = None
        self.evaluation = None
        self._clear_after_encryption()

    def _clear_after_encryption(self) -> None:
        self.server_output = None
        self.decrypted = None

    # -- requirements, named after the step that provides them -----------

    def _require_model(self) -> ModelStage:
        if self.model is None:
            raise StepError(
                "No model yet: train one in tab 1 (Federated training → Start training) "
                "or upload a .skops model there first."
            )
        return self.model

    def _require_deployment(self) -> CompiledStage:
        if self.deployment is None:
            self._require_model()
            raise StepError("The model is not compiled yet: run tab 2 (Convert & compile → Compile) first.")
        return self.deployment

    def _require_keys(self) -> KeyStage:
        if self.keys is None:
            self._require_deployment()
            raise StepError("No keys yet: run step ① Key generation first.")
        return self.keys

    def _require_encrypted(self) -> EncryptedStage:
        if self.encrypted is None:
            self._require_keys()
            raise StepError("Nothing is encrypted yet: run step ② Encryption first.")
        return self.encrypted

    def _require_server_output(self) -> ServerStage:
        if self.server_output is None:
            self._require_encrypted()
            raise StepError("The server has not computed anything yet: run step ③ FHE execution first.")
        return self.server_output

    @property
    def dataset(self) -> Dataset | None:
        """The dataset of the current model, if any."""
        return get_dataset(self.model.dataset) if self.model else None

    # -- tab 1: a model ----------------------------------------------------

    def train(self, cfg: TrainingConfig) -> Iterator[Baseline | RoundRecord | dict[str, Any]]:
        """Run federated training with Flower, yielding each round as it ends.

        Parameters
        ----------
        cfg : TrainingConfig
            From :func:`training_config`.

        Yields
        ------
        Baseline
            First: the accuracy of a centrally trained model, for comparison.
        RoundRecord
            One per round (round 0: the initial model).
        dict
            Last: the summary (``accuracy``, ``rounds``, ``clients``, ``seconds``,
            ``history``, ``baseline_accuracy``; ``epsilon``/``delta`` under DP).
            The session's model is replaced only then.

        Raises
        ------
        StepError
            If the settings do not fit the dataset or the run fails.
        """
        from fl_training.simulation import TrainingResult, stream_training

        with self._step("training"):
            dataset = get_dataset(cfg.dataset)
            label_distribution(cfg)  # refuse impossible partitions before anything slow
            # Computed before Ray starts, never beside it: Ray forks its processes
            # while starting, and a fork during a BLAS call in another thread hangs
            # both (OpenBLAS's fork handlers). Cached per dataset afterwards.
            try:
                baseline: float | None = baseline_accuracy(cfg.dataset)
            except Exception as exc:  # the baseline is a comparison, not a requirement
                logger.warning("baseline training failed: %s", exc)
                baseline = None
            yield Baseline(baseline)
            result: TrainingResult | None = None
            try:
                for item in stream_training(cfg):
                    if isinstance(item, TrainingResult):
                        result = item
                    else:
                        yield item
            except ValueError as exc:
                raise StepError(str(exc)) from exc
            except RuntimeError as exc:
                raise StepError(f"Training failed: {exc}") from exc
            if result is None:
                raise StepError("Training ended without a model; try again.")
            summary = result.summary()
            summary["baseline_accuracy"] = baseline
            summary["source"] = "federated"
            model_file = save_model(result.model, self._new_public_dir() / "federated_model.skops")
            self._replace_model(ModelStage(result.model, dataset.name, "federated", summary, model_file))
            yield summary

    def use_uploaded_model(self, path: str | os.PathLike | None, dataset_name: str) -> dict[str, Any]:
        """Use an existing scikit-learn model instead of training one.

        Parameters
        ----------
        path : path-like or None
            An uploaded ``.skops`` file (pickles are refused: loading them runs code).
        dataset_name : str
            The dataset the model must fit (features and classes).

        Returns
        -------
        dict
            ``source``, ``dataset``, ``accuracy``, ``n_features``, ``classes``.

        Raises
        ------
        StepError
            If no file was given, or it is not a safe, matching model.
        """
        if path is None or not Path(path).is_file():
            raise StepError("No file: choose a .skops model file to upload.")
        dataset = get_dataset(dataset_name)
        with self._step("the upload"):
            audit_model_file(path)
            try:
                model = load_model(path)  # skops's own audit, then a load that runs no code
            except ModelFileError as exc:
                raise StepError(str(exc)) from exc
            except (OSError, ValueError) as exc:
                raise StepError(f"{Path(path).name} could not be read as a model: {exc}") from exc
            check_model_fits(model, dataset)
            accuracy = float(model.score(dataset.X_test, dataset.y_test))
            summary = {
                "source": "uploaded",
                "dataset": dataset.name,
                "accuracy": accuracy,
                "n_features": dataset.n_features,
                "classes": [int(c) for c in model.classes_],
                "baseline_accuracy": None,
            }
            model_file = save_model(model, self._new_public_dir() / "uploaded_model.skops")
            self._replace_model(ModelStage(model, dataset.name, "uploaded", summary, model_file))
            return summary

    # -- tab 2: compile ----------------------------------------------------

    def compile(self, n_bits: Any = 8, calibration: str = "data") -> dict[str, Any]:
        """Quantize and compile the model, and save this session's deployment.

        Parameters
        ----------
        n_bits : int
            Quantization bits (2-16).
        calibration : {"data", "random"}
            Representative training rows, or random inputs in the public
            feature range (a server that holds no data).

        Returns
        -------
        dict
            ``n_bits``, ``max_bit_width``, ``compile_seconds``, ``accuracy_clear``,
            ``accuracy_quantized``, ``accuracy_fhe_simulated`` and more.

        Raises
        ------
        StepError
            Without a model, or for invalid settings.
        """
        from fhe_model.developer import (
            CALIBRATION_MODES,
            N_BITS_MAX,
            N_BITS_MIN,
            compile_model,
            save_deployment,
        )

        n_bits = whole_number("n_bits", n_bits, N_BITS_MIN, N_BITS_MAX)
        if calibration not in CALIBRATION_MODES:
            raise StepError(
                f"calibration must be one of {', '.join(CALIBRATION_MODES)}, got {calibration!r}."
            )
        with self._step("compilation"):
            stage = self._require_model()
            dataset = get_dataset(stage.dataset)
            try:
                compiled = compile_model(stage.model, dataset, n_bits=n_bits, calibration=calibration)
            except ValueError as exc:
                raise StepError(str(exc)) from exc
            try:
                files = save_deployment(compiled, self._new_public_dir() / "deployment")
            except BaseException:
                remove_compiled_files(compiled)
                raise
            previous, self.deployment = self.deployment, CompiledStage(compiled, files)
            self._drop_keys()
            self._retire_deployment(previous)
            self._clear_after_keys()
            return self.compile_summary()

    def compile_summary(self) -> dict[str, Any]:
        """The JSON summary of the current deployment (see :meth:`compile`)."""
        stage = self._require_deployment()
        report = stage.compiled.report
        return {
            "dataset": report.dataset,
            "n_bits": report.n_bits,
            "calibration": report.calibration,
            "max_bit_width": report.max_bit_width,
            "conversion_seconds": round(report.conversion_seconds, 3),
            "compile_seconds": round(report.compile_seconds, 3),
            "accuracy_clear": report.clear_accuracy,
            "accuracy_quantized": report.quantized_accuracy,
            "accuracy_fhe_simulated": report.fhe_simulated_accuracy,
            "fhe_clear_agreement": report.fhe_clear_agreement,
            "evaluation_samples": report.evaluation_samples,
            "range_check_passed": report.range_check_passed,
            "client_zip_bytes": stage.files.client_zip_bytes,
            "server_zip_bytes": stage.files.server_zip_bytes,
        }

    def n_bits_sweep(
        self,
        n_bits_values: tuple[int, ...] = SWEEP_N_BITS,
        calibration: str = "data",
        samples: int = SWEEP_SAMPLES,
    ) -> list[dict[str, Any]]:
        """Compile the model at several ``n_bits`` and score each on a test subset.

        The session's deployment is not changed.

        Parameters
        ----------
        n_bits_values : tuple of int
            Bits to try.
        calibration : {"data", "random"}
            As in :meth:`compile`.
        samples : int
            Test samples scored per value (FHE-simulated).

        Returns
        -------
        list of dict
            One row per value: ``n_bits``, ``max_bit_width``, ``compile_seconds``,
            ``accuracy_clear``, ``accuracy_fhe_simulated``.
        """
        from fhe_model.developer import CALIBRATION_MODES, compile_model

        if calibration not in CALIBRATION_MODES:
            raise StepError(
                f"calibration must be one of {', '.join(CALIBRATION_MODES)}, got {calibration!r}."
            )
        with self._step("the n_bits sweep"):
            stage = self._require_model()
            dataset = get_dataset(stage.dataset)
            rows = []
            for n_bits in n_bits_values:
                compiled = compile_model(
                    stage.model, dataset, n_bits=n_bits, calibration=calibration,
                    calibration_samples=SWEEP_CALIBRATION_SAMPLES, evaluation_samples=samples,
                )
                remove_compiled_files(compiled)  # only its report is kept
                report = compiled.report
                rows.append({
                    "n_bits": n_bits,
                    "max_bit_width": report.max_bit_width,
                    "compile_seconds": round(report.compile_seconds, 3),
                    "accuracy_clear": report.clear_accuracy,
                    "accuracy_fhe_simulated": report.fhe_simulated_accuracy,
                })
            return rows

    # -- tab 3: the four steps ---------------------------------------------

    def _server_deployment(self, stage: CompiledStage) -> str:
        """Upload this session's server.zip (with its client.zip) once; return its id."""
        if stage.server_deployment_id is None:
            server_zip = stage.files.server_zip.read_bytes()
            client_zip = stage.files.client_zip.read_bytes()
            stage.server_deployment_id = self.server.client.add_deployment(
                server_zip, self.server.admin_token, client_zip
            )
        return stage.server_deployment_id

    def generate_keys(self) -> dict[str, Any]:
        """Step ①: generate fresh keys and send the evaluation keys to the server.

        Returns
        -------
        dict
            ``private_key_bytes``, ``evaluation_key_bytes``, ``seconds``,
            ``upload_seconds``.

        Raises
        ------
        StepError
            Without a compiled model.
        """
        from fhe_model.client import FHEClient
        from fhe_model.http_client import FHEServerError

        with self._step("key generation"):
            stage = self._require_deployment()
            self._keys_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_dir = Path(tempfile.mkdtemp(prefix="keys-", dir=self._keys_root))
            try:
                client = FHEClient(stage.files.directory, key_dir)
                keygen = client.generate_keys()
                start = time.perf_counter()
                try:
                    deployment_id = self._server_deployment(stage)
                    key_id = self.server.client.upload_keys(client.evaluation_keys, deployment_id)
                except FHEServerError as exc:
                    raise StepError(f"The FHE server refused this session's upload: {exc}") from exc
                upload_seconds = time.perf_counter() - start
            except BaseException:
                shutil.rmtree(key_dir, ignore_errors=True)
                raise
            self._drop_keys()
            self.keys = KeyStage(client, keygen, key_dir, deployment_id, key_id, upload_seconds)
            self._clear_after_keys()
            return {
                "private_key_bytes": keygen.private_key_bytes,
                "evaluation_key_bytes": keygen.evaluation_key_bytes,
                "seconds": round(keygen.seconds, 4),
                "upload_seconds": round(upload_seconds, 4),
            }

    def sample(self, index: Any) -> tuple[np.ndarray, int]:
        """Return test sample ``index`` of the model's dataset and its label.

        Parameters
        ----------
        index : int
            Position in the test split.

        Returns
        -------
        tuple of (ndarray, int)
            Raw features and true label.
        """
        dataset = self.dataset
        if dataset is None:
            self._require_model()
        assert dataset is not None
        index = whole_number("sample_index", index, 0, len(dataset.X_test) - 1)
        return np.asarray(dataset.X_test[index]), int(dataset.y_test[index])

    def encrypt(
        self, source: str = "test sample", sample_index: Any = 0, drawing: Any = None
    ) -> dict[str, Any]:
        """Step ②: quantize and encrypt a test sample or a drawing with the private key.

        Parameters
        ----------
        source : {"test sample", "drawing"}
            What to encrypt.
        sample_index : int
            Test-split position (``source="test sample"``).
        drawing : ndarray or dict, optional
            Sketchpad image (``source="drawing"``).

        Returns
        -------
        dict
            ``ciphertext_bytes``, ``seconds``, ``label`` (None for a drawing),
            ``sample_index``, ``source``, ``ciphertext_preview``.

        Raises
        ------
        StepError
            Without keys, or for an invalid sample.
        """
        if source not in INPUT_SOURCES:
            raise StepError(f"source must be one of {', '.join(INPUT_SOURCES)}, got {source!r}.")
        with self._step("encryption"):
            keys = self._require_keys()
            dataset = get_dataset(self.deployment.compiled.report.dataset)
            if source == "test sample":
                index = whole_number("sample_index", sample_index, 0, len(dataset.X_test) - 1)
                x, label = np.asarray(dataset.X_test[index]), int(dataset.y_test[index])
            else:
                index, label = None, None
                x = drawing_to_features(drawing, dataset)
            try:
                encryption = keys.client.encrypt(x)
            except ValueError as exc:
                raise StepError(str(exc)) from exc
            self.encrypted = EncryptedStage(x, label, source, index, encryption)
            self._clear_after_encryption()
            return {
                "source": source,
                "sample_index": index,
                "label": label,
                "ciphertext_bytes": encryption.ciphertext_bytes,
                "seconds": round(encryption.seconds, 4),
                "ciphertext_preview": encryption.ciphertext_preview,
                "quantized_min": int(np.min(encryption.quantized_input)),
                "quantized_max": int(np.max(encryption.quantized_input)),
            }

    def _predict_on_server(self, keys: KeyStage, ciphertext: bytes) -> tuple[bytes, bool]:
        """POST /predict; if the server forgot the keys (TTL, restart), upload them again once."""
        from fhe_model.http_client import FHEServerError

        try:
            return self.server.client.predict(keys.key_id, ciphertext), False
        except FHEServerError as exc:
            if exc.status_code != 404:
                raise StepError(f"The FHE server could not run the circuit: {exc}") from exc
        stage = self._require_deployment()
        try:
            try:
                keys.key_id = self.server.client.upload_keys(keys.client.evaluation_keys, keys.deployment_id)
            except FHEServerError as exc:
                if exc.status_code != 404:
                    raise
                # The deployment is gone too (TTL, eviction, restart): upload it again.
                stage.server_deployment_id = None
                keys.deployment_id = self._server_deployment(stage)
                keys.key_id = self.server.client.upload_keys(keys.client.evaluation_keys, keys.deployment_id)
            return self.server.client.predict(keys.key_id, ciphertext), True
        except FHEServerError as exc:
            raise StepError(f"The FHE server could not run the circuit: {exc}") from exc

    def run_on_server(self) -> dict[str, Any]:
        """Step ③: send the ciphertext to the server, which computes on it without decrypting.

        Returns
        -------
        dict
            ``seconds`` (round trip), ``output_ciphertext_bytes``,
            ``input_ciphertext_bytes``, ``evaluation_key_bytes``.

        Raises
        ------
        StepError
            Before encryption, or if the server fails.
        """
        with self._step("FHE execution"):
            encrypted = self._require_encrypted()
            keys = self._require_keys()
            start = time.perf_counter()
            output, retried = self._predict_on_server(keys, encrypted.encryption.ciphertext)
            seconds = time.perf_counter() - start
            self.server_output = ServerStage(output, seconds, retried)
            self.decrypted = None
            return {
                "seconds": round(seconds, 4),
                "output_ciphertext_bytes": len(output),
                "input_ciphertext_bytes": encrypted.encryption.ciphertext_bytes,
                "evaluation_key_bytes": keys.keygen.evaluation_key_bytes,
                "keys_uploaded_again": retried,
            }

    def decrypt(self) -> dict[str, Any]:
        """Step ④: decrypt the server's output with the private key.

        Returns
        -------
        dict
            ``prediction``, ``clear_prediction``, ``probabilities``, ``seconds``,
            ``label``, ``class_name``, ``matches_clear``.

        Raises
        ------
        StepError
            Before the server ran.
        """
        from fhe_model.client import FHEClientError

        with self._step("decryption"):
            output = self._require_server_output()
            keys, encrypted, model = self._require_keys(), self._require_encrypted(), self._require_model()
            try:
                result = keys.client.decrypt(output.ciphertext)
            except FHEClientError as exc:
                raise StepError(str(exc)) from exc
            clear_probabilities = model.model.predict_proba(encrypted.x[None, :])[0]
            clear_prediction = int(model.model.classes_[int(np.argmax(clear_probabilities))])
            self.decrypted = DecryptedStage(result, clear_prediction, clear_probabilities)
            return {
                "prediction": result.prediction,
                "class_name": result.class_name,
                "clear_prediction": clear_prediction,
                "matches_clear": result.prediction == clear_prediction,
                "label": encrypted.label,
                "probabilities": [float(p) for p in result.probabilities],
                "clear_probabilities": [float(p) for p in clear_probabilities],
                "seconds": round(result.seconds, 4),
            }

    def decrypt_with_wrong_key(self) -> dict[str, Any]:
        """Decrypt the server's output with freshly generated keys, as an eavesdropper would.

        Returns
        -------
        dict
            ``decrypted`` (Concrete accepted the bytes), ``prediction`` and
            ``probabilities`` (meaningless), ``error`` if it refused.
        """
        from fhe_model.client import decrypt_with_fresh_keys

        with self._step("the wrong-key demo"):
            output = self._require_server_output()
            stage = self._require_deployment()
            intruder_dir = Path(tempfile.mkdtemp(prefix="intruder-", dir=self._keys_root))
            try:
                result = decrypt_with_fresh_keys(stage.files.directory, intruder_dir, output.ciphertext)
            finally:
                shutil.rmtree(intruder_dir, ignore_errors=True)
            return {
                "decrypted": result.decrypted,
                "prediction": result.prediction,
                "probabilities": None if result.probabilities is None
                else [float(p) for p in result.probabilities],
                "raw_scores": None if result.decrypted_scores is None
                else [int(s) for s in result.decrypted_scores],
                "error": result.error,
            }

    # -- tab 4: batch --------------------------------------------------------

    def evaluate(
        self, num_samples: Any = 50, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Run the first ``num_samples`` test samples through encrypt → server → decrypt.

        Parameters
        ----------
        num_samples : int
            Batch size (1 to the test-split size, at most 1,000).
        progress : callable, optional
            ``progress(done, total)`` after each sample.

        Returns
        -------
        dict
            ``accuracy_fhe``, ``accuracy_clear``, ``agreement``, ``samples``,
            ``seconds_per_sample`` (mean latency), ``samples_per_second``,
            ``total_seconds``, ``workers``.

        Raises
        ------
        StepError
            Without keys, or for an invalid ``num_samples``.
        """
        from fhe_model.evaluation import evaluate_encrypted
        from fhe_model.http_client import FHEServerError

        if self.deployment is not None:
            n_test = len(get_dataset(self.deployment.compiled.report.dataset).X_test)
        else:
            n_test = MAX_EVALUATION_SAMPLES
        num_samples = whole_number("num_samples", num_samples, 1, min(n_test, MAX_EVALUATION_SAMPLES))
        with self._step("the encrypted evaluation"):
            keys = self._require_keys()
            model = self._require_model()
            dataset = get_dataset(model.dataset)
            X, y = dataset.X_test[:num_samples], dataset.y_test[:num_samples]
            # Brings back keys the server may have forgotten (TTL, restart) before the batch.
            self._predict_on_server(keys, keys.client.encrypt(X[0]).ciphertext)

            def run(ciphertext: bytes) -> bytes:
                return self.server.client.predict(keys.key_id, ciphertext)

            try:
                report = evaluate_encrypted(
                    keys.client, run, X, y,
                    clear_predictions=model.model.predict(X),
                    progress=(lambda done, total, _sample: progress(done, total)) if progress else None,
                    mode="http",
                )
            except FHEServerError as exc:
                raise StepError(f"The FHE server failed during the evaluation: {exc}") from exc
            self.evaluation = report
            return {
                "accuracy_fhe": report.encrypted_accuracy,
                "accuracy_clear": report.clear_accuracy,
                "agreement": report.agreement,
                "samples": report.n_samples,
                "seconds_per_sample": round(report.mean_latency_seconds, 4),
                "samples_per_second": round(report.samples_per_second, 3),
                "total_seconds": round(report.total_seconds, 3),
                "workers": report.workers,
                "mean_encrypt_seconds": round(report.mean_encrypt_seconds, 4),
                "mean_server_seconds": round(report.mean_server_seconds, 4),
                "mean_decrypt_seconds": round(report.mean_decrypt_seconds, 4),
            }


# --------------------------------------------------------------------------
# Sessions of a running app
# --------------------------------------------------------------------------


class SessionRegistry:
    """The live sessions of one app, by session id, with cleanup.

    Parameters
    ----------
    server : FHEServerHandle
        Shared by all sessions.
    idle_ttl_seconds : float
        A session unused for this long is wiped (the backstop for tabs whose
        close was never reported).
    """

    def __init__(self, server: FHEServerHandle, idle_ttl_seconds: float = DEFAULT_IDLE_TTL_SECONDS):
        self.server = server
        self.idle_ttl_seconds = idle_ttl_seconds
        #: Parent of every session's private-key directory; never served.
        self.keys_root = Path(tempfile.mkdtemp(prefix="fhe-demo-keys-"))
        #: Parent of every session's directory of downloadable files (served
        #: only through the copies handlers return).
        self.work_root = Path(tempfile.mkdtemp(prefix="fhe-demo-work-"))
        self._sessions: dict[str, DemoSession] = {}
        #: Every live session, with or without an id, so that shutdown wipes them all.
        self._all: weakref.WeakSet[DemoSession] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    def new_session(self) -> DemoSession:
        """A session not tied to an id (tests, scripts); :meth:`close_all` wipes it too."""
        session = DemoSession(self.server, self.keys_root, self.work_root)
        with self._all_lock:
            self._all.add(session)
        return session

    def resolve(self, session: DemoSession | None, session_id: str | None) -> DemoSession:
        """Return the caller's session, creating it on first use.

        Parameters
        ----------
        session : DemoSession or None
            What the UI state holds.
        session_id : str or None
            The UI framework's id of the browser session (a dictionary key,
            never part of a path).

        Returns
        -------
        DemoSession
            The session; a closed one is returned as is (its steps explain).
        """
        self._ensure_sweeper()
        with self._lock:
            if session is None and session_id is not None:
                session = self._sessions.get(session_id)
            if session is None:
                session = self.new_session()
            if session_id is not None and not session.closed:
                self._sessions[session_id] = session
        session.last_used = time.monotonic()
        return session

    def close(self, session_id: str | None) -> None:
        """Wipe the session of ``session_id`` (tab closed).

        Parameters
        ----------
        session_id : str or None
            Unknown ids are ignored.
        """
        if session_id is None:
            return
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def sweep(self) -> int:
        """Wipe sessions idle for longer than the TTL.

        Returns
        -------
        int
            Number of sessions wiped.
        """
        now = time.monotonic()
        with self._lock:
            stale = [
                sid for sid, s in self._sessions.items()
                if not s.busy and now - s.last_used > self.idle_ttl_seconds
            ]
            sessions = [self._sessions.pop(sid) for sid in stale]
        for session in sessions:
            session.close()
        return len(sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is not None:
            return
        with self._lock:
            if self._sweeper is None:
                interval = max(1.0, min(300.0, self.idle_ttl_seconds / 4))

                def loop() -> None:
                    while not self._stop.wait(interval):
                        try:
                            self.sweep()
                        except Exception:  # a failed sweep must not stop later ones
                            logger.exception("session sweep failed")

                self._sweeper = threading.Thread(target=loop, name="session-sweeper", daemon=True)
                self._sweeper.start()

    def close_all(self) -> None:
        """Wipe every session, the key root and the work root (app shutdown)."""
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        with self._all_lock:
            sessions += list(self._all)
        for session in sessions:
            session.close()
        shutil.rmtree(self.keys_root, ignore_errors=True)
        shutil.rmtree(self.work_root, ignore_errors=True)
