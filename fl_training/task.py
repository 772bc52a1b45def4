"""Shared helpers of the Flower App: training config, partitions, model, metrics.

The ClientApp and the ServerApp both import from here, as in Flower's own
examples. Nothing here knows about encryption or the UI.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

from fl_training.datasets import DEFAULT_DATASET, Dataset, check_dataset_name, load_dataset
from fl_training.validation import InvalidParameterError, real_number, whole_number

PARTITIONINGS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian")

# The valid range of every numeric setting: validation, the command line and
# the UI's sliders all read them from here. They keep a run meaningful and
# within a 2-core machine's reach.
MIN_CLIENTS = 2
MAX_CLIENTS = 100
MIN_ROUNDS = 1
MAX_ROUNDS = 100
MIN_LOCAL_EPOCHS = 1
MAX_LOCAL_EPOCHS = 200
MAX_CLASSES_PER_CLIENT = 1000
MAX_SEED = 2**32 - 1
ALPHA_RANGE = (1e-3, 1e3)
PROXIMAL_MU_RANGE = (0.0, 1e3)
NOISE_MULTIPLIER_RANGE = (0.0, 100.0)
CLIPPING_NORM_RANGE = (1e-6, 1e6)
#: A client needs at least this many training samples.
MIN_SAMPLES_PER_CLIENT = 10
#: Each client keeps this share of its partition for its own evaluation, and trains on the rest.
LOCAL_VALIDATION_FRACTION = 0.1
#: Inverse L2 penalty of a client's logistic regression. A client holds a small share of the
#: data, and scikit-learn's penalty does not shrink with the sample count, so the clients
#: regularise less than the central baseline (C = 1): on mnist-5k, 10 clients × 5 rounds, a
#: client C of 1 gives 0.893 test accuracy, 5 gives 0.902 (benchmarks in README).
CLIENT_INVERSE_REGULARISATION = 5.0
#: The record in which a ClientApp says which partition its node config gives it (no data).
PARTITION_RECORD = "partition"
#: Server learning rate of FedAdam (and its ``eta_l``): the averaged update is a pseudo-gradient,
#: and a smaller step than Flower's default 0.1 suits a linear model's weights.
FEDADAM_LEARNING_RATE = 0.05
#: FedAdam's τ, the floor under each weight's step size: Reddi et al. (2021) use about 1e-3.
#: Flower's 1e-9 lets any change, however tiny, take a full step: under secure aggregation,
#: SecAgg+'s rounding (±1e-5) on weights that never move (always-blank pixels) would.
FEDADAM_TAU = 1e-3
#: Strategies secure aggregation composes with: they only need the weighted sum of the
#: updates, which is all SecAgg+ reveals (FedMedian needs every update in the clear).
SECURE_AGGREGATION_STRATEGIES = ("fedavg", "fedprox", "fedadam")

_WHOLE_NUMBER_BOUNDS: dict[str, tuple[int, int]] = {
    "num_clients": (MIN_CLIENTS, MAX_CLIENTS),
    "num_rounds": (MIN_ROUNDS, MAX_ROUNDS),
    "local_epochs": (MIN_LOCAL_EPOCHS, MAX_LOCAL_EPOCHS),
    "classes_per_client": (1, MAX_CLASSES_PER_CLIENT),
    "seed": (0, MAX_SEED),
}
_REAL_NUMBER_BOUNDS: dict[str, tuple[float, float]] = {
    "alpha": ALPHA_RANGE,
    "proximal_mu": PROXIMAL_MU_RANGE,
    "noise_multiplier": NOISE_MULTIPLIER_RANGE,
    "clipping_norm": CLIPPING_NORM_RANGE,
}


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a federated training run.

    Parameters
    ----------
    dataset : str, default="mnist-5k"
        One of :data:`fl_training.datasets.DATASET_NAMES`.
    num_clients : int, default=10
        Number of clients (Flower SuperNodes); each gets one partition.
    num_rounds : int, default=5
        Federated rounds.
    partitioning : {"iid", "dirichlet", "pathological"}, default="iid"
        How the training split is divided among clients.
    alpha : float, default=0.5
        Dirichlet concentration (``partitioning="dirichlet"``): lower is more skewed.
    classes_per_client : int, default=2
        Labels per client (``partitioning="pathological"``).
    strategy : {"fedavg", "fedprox", "fedadam", "fedmedian"}, default="fedavg"
        Server-side aggregation strategy.
    local_epochs : int, default=10
        Solver iterations over the local data per round (scikit-learn's
        ``max_iter`` with ``warm_start``).
    proximal_mu : float, default=0.1
        FedProx's proximal weight (``strategy="fedprox"`` only).
    seed : int, default=0
        Seeds partitioning and shuffling.
    differential_privacy : bool, default=False
        Clip each client's update and add Gaussian noise on the server. Without
        secure aggregation the server clips; with it, each client clips its own
        update before masking it (Flower's client-side fixed clipping).
    noise_multiplier : float, default=1.5
        Noise standard deviation relative to ``clipping_norm`` (DP only). With
        the defaults, 3 rounds give ε ≈ 5.6 at δ = 1e-5; on mnist-5k with 50
        clients the model keeps ~0.78 test accuracy (0.85 without DP). The
        noise is added to the clients' average, so few clients drown in it
        (``benchmarks/bench_dp_tradeoff.py``).
    clipping_norm : float, default=2.0
        Maximum L2 norm of a client's update (DP only); around σ = 1.5, 2
        kept the most accuracy of 1, 2, 3, 5 and 10 in that benchmark.
    secure_aggregation : bool, default=False
        Aggregate with Flower's SecAgg+ protocol: the server receives masked
        updates and can only unmask their sum (strategies in
        :data:`SECURE_AGGREGATION_STRATEGIES`).
    """

    dataset: str = DEFAULT_DATASET
    num_clients: int = 10
    num_rounds: int = 5
    partitioning: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    strategy: str = "fedavg"
    local_epochs: int = 10
    proximal_mu: float = 0.1
    seed: int = 0
    differential_privacy: bool = False
    noise_multiplier: float = 1.5
    clipping_norm: float = 2.0
    secure_aggregation: bool = False

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_values(cls, **values: Any) -> TrainingConfig:
        """Build a config from loosely typed values (a web form, a JSON API, a run config).

        Parameters
        ----------
        **values
            Any of the fields above, by name. Numbers may arrive as floats
            (``3.0`` becomes ``3`` for whole-number fields) or numpy scalars;
            NaN, infinity, strings and out-of-range numbers are refused.
            ``differential_privacy`` and ``secure_aggregation`` must be bools.
            Missing fields take their defaults.

        Returns
        -------
        TrainingConfig
            A validated config whose numbers have their proper Python types.

        Raises
        ------
        InvalidParameterError
            Naming the offending parameter and its valid values.
        """
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InvalidParameterError(
                f"Unknown training parameter {', '.join(map(repr, unknown))}; use any of {', '.join(names)}."
            )
        kwargs = dict(values)
        for name, (low, high) in _WHOLE_NUMBER_BOUNDS.items():
            if name in kwargs:
                kwargs[name] = whole_number(name, kwargs[name], low, high)
        for name, (low, high) in _REAL_NUMBER_BOUNDS.items():
            if name in kwargs:
                kwargs[name] = real_number(name, kwargs[name], low, high)
        for name in _FLAGS:
            if name in kwargs:
                kwargs[name] = _true_or_false(name, kwargs[name])
        return cls(**kwargs)

    @classmethod
    def from_mapping(cls, values: Any) -> TrainingConfig:
        """Build a config from a Flower ``ConfigRecord`` or any mapping.

        Keys may use dashes (Flower's style) or underscores; missing keys take
        their defaults, unknown keys are ignored. Values are checked as by
        :meth:`from_values`.
        """
        names = {f.name for f in fields(cls)}
        normalised = {str(k).replace("-", "_"): values[k] for k in values.keys()}
        return cls.from_values(**{k: v for k, v in normalised.items() if k in names})


_FLAGS = ("differential_privacy", "secure_aggregation")


def _true_or_false(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be true or false, got {value!r}.")
    return bool(value)


def validate_config(cfg: TrainingConfig) -> None:
    """Raise :class:`InvalidParameterError` with an actionable message if ``cfg`` cannot run.

    Parameters
    ----------
    cfg : TrainingConfig
        The settings to check (its constructor calls this).

    Raises
    ------
    InvalidParameterError
        Naming the offending setting and its valid values.
    """
    check_dataset_name(cfg.dataset)
    if cfg.partitioning not in PARTITIONINGS:
        raise InvalidParameterError(
            f"Unknown partitioning {cfg.partitioning!r}; choose one of {', '.join(PARTITIONINGS)}."
        )
    if cfg.strategy not in STRATEGIES:
        raise InvalidParameterError(
            f"Unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}."
        )
    for name, (low, high) in _WHOLE_NUMBER_BOUNDS.items():
        whole_number(name, getattr(cfg, name), low, high)
    for name, (low, high) in _REAL_NUMBER_BOUNDS.items():
        real_number(name, getattr(cfg, name), low, high)
    if _true_or_false("differential_privacy", cfg.differential_privacy):
        # Flower's privacy accountant covers FedAvg aggregation with positive noise only.
        if cfg.strategy != "fedavg":
            raise InvalidParameterError(
                f"Differential privacy needs strategy 'fedavg' (its accounting assumes FedAvg); "
                f"got {cfg.strategy!r}."
            )
        if cfg.noise_multiplier <= 0:
            raise InvalidParameterError("Differential privacy needs noise_multiplier > 0, e.g. 0.5 or 1.0.")
    if _true_or_false("secure_aggregation", cfg.secure_aggregation):
        if cfg.strategy not in SECURE_AGGREGATION_STRATEGIES:
            raise InvalidParameterError(
                f"Secure aggregation only reveals the sum of the clients' updates, which strategy "
                f"{cfg.strategy!r} cannot work with; choose one of "
                f"{', '.join(SECURE_AGGREGATION_STRATEGIES)}."
            )


def check_fits_dataset(cfg: TrainingConfig, dataset: Dataset) -> None:
    """Refuse settings the dataset is too small or has too few labels for.

    Parameters
    ----------
    cfg : TrainingConfig
        The planned run.
    dataset : Dataset
        Its dataset, loaded.

    Raises
    ------
    InvalidParameterError
        Saying how many clients or classes per client the dataset allows.
    """
    max_clients = len(dataset.y_train) // MIN_SAMPLES_PER_CLIENT
    if cfg.num_clients > max_clients:
        raise InvalidParameterError(
            f"{dataset.name} has {len(dataset.y_train)} training samples: at most {max_clients} "
            f"clients get {MIN_SAMPLES_PER_CLIENT} samples each. Use fewer clients."
        )
    if cfg.partitioning == "pathological" and cfg.classes_per_client > dataset.n_classes:
        raise InvalidParameterError(
            f"{dataset.name} has {dataset.n_classes} classes; classes_per_client must be at most "
            f"{dataset.n_classes}."
        )


# --------------------------------------------------------------------------
# Partitioning (flwr-datasets)
# --------------------------------------------------------------------------


def _make_partitioner(cfg: TrainingConfig):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if cfg.partitioning == "iid":
        return IidPartitioner(num_partitions=cfg.num_clients)
    if cfg.partitioning == "dirichlet":
        return DirichletPartitioner(
            num_partitions=cfg.num_clients,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=MIN_SAMPLES_PER_CLIENT,
            self_balancing=False,
            seed=cfg.seed,
        )
    return PathologicalPartitioner(
        num_partitions=cfg.num_clients,
        partition_by="label",
        num_classes_per_partition=cfg.classes_per_client,
        class_assignment_mode="first-deterministic",
        seed=cfg.seed,
    )


@lru_cache(maxsize=8)
def partition_indices(cfg: TrainingConfig) -> tuple[np.ndarray, ...]:
    """Indices into the training split, one array per client.

    The split is shuffled with ``cfg.seed`` first (the raw datasets are sorted
    by label, and an IID partitioner shards contiguously), then divided by a
    flwr-datasets partitioner.

    Returns
    -------
    tuple of ndarray
        ``num_clients`` arrays of row indices into ``dataset.X_train``.

    Raises
    ------
    InvalidParameterError
        If the dataset cannot be divided this way (see :func:`check_fits_dataset`).
    """
    from datasets import Dataset as HFDataset

    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)
    order = np.random.default_rng(cfg.seed).permutation(len(dataset.y_train))
    table = HFDataset.from_dict({"row": order, "label": dataset.y_train[order]})
    partitioner = _make_partitioner(cfg)
    partitioner.dataset = table
    try:
        parts = tuple(
            np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
            for i in range(cfg.num_clients)
        )
    except ValueError as exc:
        raise InvalidParameterError(
            f"Could not divide {dataset.name} into {cfg.num_clients} {cfg.partitioning} partitions "
            f"({exc}). Use fewer clients or a larger alpha."
        ) from exc
    for i, part in enumerate(parts):
        if len(part) == 0:
            raise InvalidParameterError(
                f"Client {i} got no data with {cfg.partitioning} partitioning. Use fewer clients "
                "or more classes per client."
            )
    return parts


def client_data(cfg: TrainingConfig, partition_id: int) -> tuple[np.ndarray, ...]:
    """One client's local data, split into local train and validation parts.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
        Raw features. :data:`LOCAL_VALIDATION_FRACTION` of the partition is
        kept for the client's own evaluation (at least one sample when the
        partition has ten or more).
    """
    dataset = load_dataset(cfg.dataset)
    idx = partition_indices(cfg)[partition_id]
    n_val = int(len(idx) * LOCAL_VALIDATION_FRACTION)
    val, train = idx[:n_val], idx[n_val:]
    if n_val == 0:
        val = train
    return dataset.X_train[train], dataset.y_train[train], dataset.X_train[val], dataset.y_train[val]


def label_distribution(cfg: TrainingConfig) -> np.ndarray:
    """Counts of each label per client, shape ``(num_clients, n_classes)``."""
    dataset = load_dataset(cfg.dataset)
    counts = np.zeros((cfg.num_clients, dataset.n_classes), dtype=np.int64)
    position = {c: i for i, c in enumerate(dataset.classes)}
    for client, idx in enumerate(partition_indices(cfg)):
        labels, n = np.unique(dataset.y_train[idx], return_counts=True)
        for label, count in zip(labels, n, strict=True):
            counts[client, position[label]] = count
    return counts


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureScaling:
    """Affine scaling ``(x - offset) / scale`` applied to raw features for training.

    Derived from the public valid range of each feature, so clients agree on it
    without sharing data. :func:`export_model` folds it into the weights.
    """

    offset: np.ndarray
    scale: np.ndarray

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.offset) / self.scale


def feature_scaling(dataset: Dataset) -> FeatureScaling:
    span = dataset.feature_high - dataset.feature_low
    return FeatureScaling(offset=dataset.feature_low, scale=np.where(span > 0, span, 1.0))


def _n_coef_rows(n_classes: int) -> int:
    return 1 if n_classes == 2 else n_classes


def initial_parameters(dataset: Dataset) -> list[np.ndarray]:
    """Zero weights ``[coef, intercept]`` for the global label set."""
    rows = _n_coef_rows(dataset.n_classes)
    return [np.zeros((rows, dataset.n_features)), np.zeros(rows)]


def new_model(local_epochs: int = 10) -> LogisticRegression:
    """A client's model: a warm-started multinomial logistic regression."""
    return LogisticRegression(max_iter=local_epochs, warm_start=True, C=CLIENT_INVERSE_REGULARISATION)


def set_parameters(
    model: LogisticRegression, params: list[np.ndarray], classes: np.ndarray
) -> LogisticRegression:
    """Give ``model`` the weights ``params`` and the global label set ``classes``."""
    model.classes_ = np.asarray(classes)
    model.coef_ = np.array(params[0], dtype=np.float64)
    model.intercept_ = np.array(params[1], dtype=np.float64)
    return model


def get_parameters(model: LogisticRegression) -> list[np.ndarray]:
    return [np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)]


def fit_local(
    model: LogisticRegression, X: np.ndarray, y: np.ndarray, classes: np.ndarray
) -> LogisticRegression:
    """Continue training ``model`` on one client's (scaled) data.

    A client whose partition lacks some labels still trains a model over all
    ``classes``: one all-zero sample per missing label is added with sample
    weight 0. It fixes the model's classes (so the warm start keeps its shape)
    and contributes nothing to the loss.
    """
    missing = np.setdiff1d(classes, np.unique(y))
    weights = np.ones(len(y))
    if len(missing):
        X = np.vstack([X, np.zeros((len(missing), X.shape[1]))])
        y = np.concatenate([y, missing])
        weights = np.concatenate([weights, np.zeros(len(missing))])
    with warnings.catch_warnings():
        # Few solver iterations per round is the point of federated rounds.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y, sample_weight=weights)
    return model


def evaluate(model: LogisticRegression, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(accuracy, log_loss)`` of ``model`` on ``(X, y)``."""
    proba = model.predict_proba(X)
    predictions = model.classes_[np.argmax(proba, axis=1)]
    return float(accuracy_score(y, predictions)), float(log_loss(y, proba, labels=model.classes_))


def export_model(params: list[np.ndarray], dataset: Dataset) -> LogisticRegression:
    """Build the model a client of the FHE side uses: it takes raw features.

    Training sees ``(x - offset) / scale``. Since the model is linear, that
    scaling folds into the weights: ``coef_raw = coef / scale`` and
    ``intercept_raw = intercept - coef_raw @ offset``. The exported model gives
    the same predictions on raw features as the trained one on scaled features.
    """
    scaling = feature_scaling(dataset)
    coef = np.asarray(params[0], dtype=np.float64) / scaling.scale
    intercept = np.asarray(params[1], dtype=np.float64) - coef @ scaling.offset
    return set_parameters(new_model(), [coef, intercept], dataset.classes)


def train_centralized(dataset: Dataset, max_iter: int = 200) -> LogisticRegression:
    """The non-federated baseline: one model trained on the whole training split.

    Returns a model that takes raw features, like :func:`export_model`'s.
    """
    scaling = feature_scaling(dataset)
    model = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaling.transform(dataset.X_train), dataset.y_train)
    return export_model(get_parameters(model), dataset)


_baselines: dict[str, float] = {}
_baseline_locks: dict[str, threading.Lock] = {}
_baseline_guard = threading.Lock()


def baseline_accuracy(dataset_name: str) -> float:
    """Test accuracy of a model trained centrally on the whole training split.

    Computed once per dataset and process: callers who ask while it is being
    computed wait for that computation instead of starting their own.

    Parameters
    ----------
    dataset_name : str
        One of :data:`fl_training.datasets.DATASET_NAMES`.

    Returns
    -------
    float
        Accuracy of :func:`train_centralized`'s model on the fixed test split.
    """
    with _baseline_guard:
        lock = _baseline_locks.setdefault(dataset_name, threading.Lock())
    with lock:
        if dataset_name not in _baselines:
            dataset = load_dataset(dataset_name)
            model = train_centralized(dataset)
            _baselines[dataset_name] = float(model.score(dataset.X_test, dataset.y_test))
        return _baselines[dataset_name]
