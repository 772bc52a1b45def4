"""Shared helpers of the Flower App: partitions, model, metrics (the settings: :mod:`fl_training.config`).

The ClientApp and the ServerApp both import from here, as in Flower's own
examples. Nothing here knows about encryption or the UI.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss

from concurrency.imports import import_once
from concurrency.single_flight import SingleFlight
from fl_training import local_data
from fl_training.config import MIN_SAMPLES_PER_CLIENT, TrainingConfig, check_fits_dataset
from fl_training.datasets import Dataset, load_dataset
from fl_training.model_io import ModelFileError, check_model_fits, load_model
from fl_training.preprocessing import (
    RAW,
    dataset_features,
    model_preprocessing,
    preprocess,
    record_preprocessing,
    run_preprocessing,
)
from fl_training.validation import SettingError

#: Each client keeps this share of its partition for its own evaluation, and trains on the rest.
LOCAL_VALIDATION_FRACTION = 0.1
#: Inverse L2 penalty of a client's logistic regression. A client holds a small share of the
#: data, and scikit-learn's penalty does not shrink with the sample count, so the clients
#: regularise less than the central baseline (C = 1): on mnist-5k, 10 clients × 5 rounds, a
#: client C of 1 gives 0.893 test accuracy, 5 gives 0.902 (benchmarks in README).
CLIENT_INVERSE_REGULARISATION = 5.0
#: The record in which a ClientApp says which partition its node config gives it (no data).
PARTITION_RECORD = "partition"
#: What a SuperNode with its own drawings (node config ``drawings``) says instead of a partition id:
#: the federation gives it any partition left free.
OWN_DATA = "own-data"
#: Server learning rate of FedAdam (and its ``eta_l``): the averaged update is a pseudo-gradient,
#: and a smaller step than Flower's default 0.1 suits a linear model's weights.
FEDADAM_LEARNING_RATE = 0.05
#: FedAdam's τ, the floor under each weight's step size: Reddi et al. (2021) use about 1e-3.
#: Flower's 1e-9 lets any change, however tiny, take a full step: under secure aggregation,
#: SecAgg+'s rounding (±1e-5) on weights that never move (always-blank pixels) would.
FEDADAM_TAU = 1e-3


def strategy_class(cfg: TrainingConfig) -> tuple[str, dict[str, Any]]:
    """The Flower strategy ``cfg.strategy`` names, and the arguments of its own.

    Both of Flower's strategy families (``flwr.serverapp.strategy`` for the Message API,
    ``flwr.server.strategy`` under secure aggregation's workflow) use these class and
    argument names, so each picks the class from its own family by this one choice.
    """
    if cfg.strategy == "fedprox":
        return "FedProx", {"proximal_mu": cfg.proximal_mu}
    if cfg.strategy == "fedadam":
        return "FedAdam", {"eta": FEDADAM_LEARNING_RATE, "eta_l": FEDADAM_LEARNING_RATE, "tau": FEDADAM_TAU}
    if cfg.strategy == "fedmedian":
        return "FedMedian", {}
    return "FedAvg", {}


# --------------------------------------------------------------------------
# Partitioning (flwr-datasets)
# --------------------------------------------------------------------------


def _make_partitioner(cfg: TrainingConfig):
    (partitioners,) = import_once("flwr_datasets.partitioner")
    DirichletPartitioner, IidPartitioner, PathologicalPartitioner = (
        partitioners.DirichletPartitioner, partitioners.IidPartitioner, partitioners.PathologicalPartitioner)

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
    SettingError
        If the dataset cannot be divided this way (see :func:`check_fits_dataset`).
    """
    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)
    (hf_datasets,) = import_once("datasets")
    order = np.random.default_rng(cfg.seed).permutation(len(dataset.y_train))
    table = hf_datasets.Dataset.from_dict({"row": order, "label": dataset.y_train[order]})
    partitioner = _make_partitioner(cfg)
    partitioner.dataset = table
    try:
        parts = tuple(
            np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
            for i in range(cfg.num_clients)
        )
    except ValueError as exc:
        raise SettingError(
            f"Could not divide {dataset.name} into {cfg.num_clients} {cfg.partitioning} partitions "
            f"({exc}). Use fewer clients or a larger alpha."
        ) from exc
    for i, part in enumerate(parts):
        if len(part) == 0:
            raise SettingError(
                f"Client {i} got no data with {cfg.partitioning} partitioning. Use fewer clients "
                "or more classes per client."
            )
    return parts


def client_data(
    cfg: TrainingConfig, partition_id: int, drawings_file: str | None = None
) -> tuple[np.ndarray, ...]:
    """One client's local data, split into local train and validation parts.

    Parameters
    ----------
    cfg : TrainingConfig
        The run's settings.
    partition_id : int
        This client's partition.
    drawings_file : str, optional
        The node's own drawings file (its node config's ``drawings``): used
        instead of anything the run names.

    Returns
    -------
    X_train, y_train, X_val, y_val : ndarray
        Features after the run's preprocessing (:func:`~fl_training.preprocessing.run_preprocessing`:
        deskewed images when ``cfg.deskew`` and the dataset gains from it). From a partition of the dataset,
        :data:`LOCAL_VALIDATION_FRACTION` of it is kept for the client's own
        evaluation (at least one sample when the partition has ten or more);
        from drawings, :data:`fl_training.local_data.DRAWINGS_VALIDATION_FRACTION`.
    """
    dataset = load_dataset(cfg.dataset)
    preprocessing = run_preprocessing(cfg.dataset, cfg.deskew)
    if drawings_file or cfg.client_data:
        path, reference = ((drawings_file, False) if drawings_file
                           else local_data.partition_file(cfg.client_data, partition_id))
        if reference:  # rows of the dataset, prepared once per process
            rows = local_data.load_reference(path, dataset)
            return local_data.split_drawings(dataset_features(dataset, preprocessing)[0][rows],
                                             dataset.y_train[rows])
        X, y = local_data.load_drawings(path, dataset)
        return local_data.split_drawings(preprocess(X, preprocessing, dataset.image_shape), y)
    X_train = dataset_features(dataset, preprocessing)[0]
    idx = partition_indices(cfg)[partition_id]
    n_val = int(len(idx) * LOCAL_VALIDATION_FRACTION)
    val, train = idx[:n_val], idx[n_val:]
    if n_val == 0:
        val = train
    return X_train[train], dataset.y_train[train], X_train[val], dataset.y_train[val]


def check_runnable(cfg: TrainingConfig) -> None:
    """Refuse, before anything slow, a run whose clients' data cannot serve it.

    Raises
    ------
    SettingError
        If the dataset cannot be divided this way (:func:`partition_indices`).
    fl_training.local_data.DrawingsFileError
        If a client's drawings file is missing or unusable.
    """
    if not cfg.client_data:
        partition_indices(cfg)
        return
    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)  # the work budget too
    for partition_id in range(cfg.num_clients):
        path, reference = local_data.partition_file(cfg.client_data, partition_id)
        (local_data.load_reference if reference else local_data.load_drawings)(path, dataset)


def is_reference_client(cfg: TrainingConfig, partition_id: int, drawings_file: str | None = None) -> bool:
    """Whether this client holds reference data (trains, but its evaluation is not counted)."""
    return not drawings_file and bool(cfg.client_data) and local_data.partition_file(
        cfg.client_data, partition_id)[1]


def equal_client_weights(cfg: TrainingConfig) -> bool:
    """Whether every client counts once in the average, whatever its number of samples.

    Under differential privacy, Flower's accountant assumes it; with drawings, it keeps
    each participant's drawing count from the server.
    """
    return cfg.differential_privacy or bool(cfg.client_data)


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


def initial_parameters(
    dataset: Dataset, initial_model: str = "", preprocessing: str = RAW
) -> list[np.ndarray]:
    """The weights ``[coef, intercept]`` round 1 starts from, in the training's scaled features.

    Zeros for the global label set, or ``initial_model``'s weights: a model file
    of the same dataset and preprocessing (it takes unscaled features, so
    :func:`export_model`'s folding of the scaling is undone).

    Raises
    ------
    fl_training.model_io.ModelFileError
        If the initial model does not fit the dataset or records another preprocessing.
    """
    if initial_model:
        model = load_model(initial_model)
        check_model_fits(model, dataset)
        recorded = model_preprocessing(model)
        if recorded != preprocessing:
            raise ModelFileError(
                f"The initial model takes inputs preprocessed as {recorded!r}, but this run preprocesses "
                f"as {preprocessing!r}: start from a model of the same preprocessing, or set "
                f"deskew={recorded != RAW} for the run.")
        scaling = feature_scaling(dataset)
        coef_raw = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64) + coef_raw @ scaling.offset
        return [coef_raw * scaling.scale, intercept]
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


def export_model(params: list[np.ndarray], dataset: Dataset, preprocessing: str = RAW) -> LogisticRegression:
    """Build the model a client of the FHE side uses: it takes unscaled features, preprocessed as recorded.

    Training sees ``(x - offset) / scale``. Since the model is linear, that
    scaling folds into the weights: ``coef_raw = coef / scale`` and
    ``intercept_raw = intercept - coef_raw @ offset``. The exported model gives
    the same predictions on unscaled features as the trained one on scaled
    features. Deskewing is not linear, so it cannot fold: the model records it
    (:func:`~fl_training.preprocessing.record_preprocessing`) and whoever feeds
    it applies it (:func:`~fl_training.preprocessing.model_inputs`).
    """
    scaling = feature_scaling(dataset)
    coef = np.asarray(params[0], dtype=np.float64) / scaling.scale
    intercept = np.asarray(params[1], dtype=np.float64) - coef @ scaling.offset
    model = set_parameters(new_model(), [coef, intercept], dataset.classes)
    return record_preprocessing(model, preprocessing)


def train_centralized(dataset: Dataset, max_iter: int = 200, deskew: bool = True) -> LogisticRegression:
    """The non-federated baseline: one model trained on the whole training split, preprocessed as a run would.

    Returns a model like :func:`export_model`'s (it records its preprocessing).
    """
    preprocessing = run_preprocessing(dataset.name, deskew)
    scaling = feature_scaling(dataset)
    model = LogisticRegression(max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaling.transform(dataset_features(dataset, preprocessing)[0]), dataset.y_train)
    return export_model(get_parameters(model), dataset, preprocessing)


_baselines: dict[str, float] = {}
_baseline_flights = SingleFlight()


def baseline_accuracy(dataset_name: str, deskew: bool = True) -> float:
    """Test accuracy of a model trained centrally on the whole training split.

    Computed once per dataset and process: callers who ask while it is being
    computed wait for that computation instead of starting their own.

    Parameters
    ----------
    dataset_name : str
        One of :data:`fl_training.datasets.DATASET_NAMES`.
    deskew : bool, default=True
        Preprocess as a run with this ``deskew`` setting does.

    Returns
    -------
    float
        Accuracy of :func:`train_centralized`'s model on the fixed test split.
    """
    key = f"{dataset_name}:{run_preprocessing(dataset_name, deskew)}"
    with _baseline_flights.turn(key):
        if key not in _baselines:
            dataset = load_dataset(dataset_name)
            model = train_centralized(dataset, deskew=deskew)
            X_test = dataset_features(dataset, model_preprocessing(model))[1]
            _baselines[key] = float(model.score(X_test, dataset.y_test))
        return _baselines[key]
