"""What the training server received: one client's update, in the clear or masked.

The visitor trains once without and once with secure aggregation. From each
run's summary (``server_view``, see :meth:`fl_training.federation.ReceivedUpdate.to_json`)
this module rebuilds what the server received from one client in round 1,
one image per class in the input's shape (28 × 28 for MNIST), and measures
how much each image resembles the average training image of its class. A
clear update does (the weights of a linear model look like the digits they
detect); a masked one is noise. Two runs with equal settings are then
compared: secure aggregation changes what the server sees, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from fl_training.datasets import load_dataset
from fl_training.federation import ReceivedUpdate
from fl_training.task import feature_scaling
from story.stages import ModelStage

#: Largest relative weight difference still "the same model": SecAgg+ quantizes weights to 2**24 levels.
SAME_MODEL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ServerView:
    """What the server received from one client in one run, and that run's outcome.

    Attributes
    ----------
    masked : bool
        True under secure aggregation.
    round : int
        The round the update belongs to.
    images : ndarray of shape (rows, height, width)
        One image per class (one row for a binary model): clear updates in
        ``[-1, 1]`` (each scaled to its largest weight), masked ones in ``[0, 1)``.
    labels : tuple of str
        The class of each image.
    resemblance : float
        Mean correlation of each image with its class's average training
        image (centred): near 1 for a clear update, near 0 for noise.
    dropped_clients : int
        Clients that dropped out of a round during the run.
    accuracy : float
        The run's test accuracy.
    settings : dict
        The run's training settings, secure aggregation left out.
    weights : ndarray
        The final model's coefficients, to compare runs.
    """

    masked: bool
    round: int
    images: np.ndarray = field(repr=False)
    labels: tuple[str, ...]
    resemblance: float
    dropped_clients: int
    accuracy: float
    settings: dict[str, Any] = field(repr=False)
    weights: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class AggregateComparison:
    """The clear run's model beside the secure one's (same settings)."""

    accuracy_clear: float
    accuracy_secure: float
    weight_difference: float  # largest |Δw|, relative to the largest weight

    @property
    def same_model(self) -> bool:
        return self.weight_difference <= SAME_MODEL_TOLERANCE


@dataclass(frozen=True)
class ServerViews:
    """The latest run of a session without and with secure aggregation."""

    clear: ServerView | None = None
    secure: ServerView | None = None

    def with_view(self, view: ServerView | None) -> ServerViews:
        """These views with ``view`` replacing the one of its kind."""
        if view is None:
            return self
        return replace(self, secure=view) if view.masked else replace(self, clear=view)

    def comparison(self) -> AggregateComparison | None:
        """The two models compared, if both runs exist and had the same settings."""
        if self.clear is None or self.secure is None or self.clear.settings != self.secure.settings:
            return None
        peak = float(np.abs(self.clear.weights).max()) or 1.0
        difference = float(np.abs(self.clear.weights - self.secure.weights).max()) / peak
        return AggregateComparison(self.clear.accuracy, self.secure.accuracy, difference)


def image_shape(n_features: int) -> tuple[int, int]:
    """The shape to draw ``n_features`` weights in: a square for images, one row otherwise."""
    side = math.isqrt(n_features)
    return (side, side) if side * side == n_features else (1, n_features)


@lru_cache(maxsize=8)
def _class_templates(dataset_name: str) -> np.ndarray:
    """Each class's average scaled training image minus the overall average, one row per class."""
    dataset = load_dataset(dataset_name)
    X = feature_scaling(dataset).transform(dataset.X_train)
    overall = X.mean(axis=0)
    return np.stack([X[dataset.y_train == c].mean(axis=0) - overall for c in dataset.classes])


def resemblance(weights: np.ndarray, dataset_name: str) -> float:
    """Mean correlation of each row of ``weights`` with its class's template (binary: the positive class)."""
    templates = _class_templates(dataset_name)
    if len(weights) == 1:
        templates = templates[-1:]
    scores = [np.corrcoef(w, t)[0, 1] for w, t in zip(weights, templates, strict=True) if w.std() and t.std()]
    return float(np.mean(scores)) if scores else 0.0


def server_view(stage: ModelStage | None) -> ServerView | None:
    """What the server received in the run that produced ``stage`` (None: uploaded model, no record).

    Parameters
    ----------
    stage : ModelStage or None
        A session's current model.

    Returns
    -------
    ServerView or None
        The first round's update of one client, as the server received it.
    """
    if stage is None or stage.source != "federated" or "server_view" not in stage.summary:
        return None
    return view_from_summary(stage.summary, stage.model.coef_)


def view_from_summary(summary: dict[str, Any], final_weights: np.ndarray) -> ServerView:
    """A :class:`ServerView` from a run's summary (``TrainingResult.summary()``) and its model's weights."""
    received = ReceivedUpdate.from_json(summary["server_view"])
    dataset = load_dataset(summary["dataset"])
    names = dataset.class_names if received.weights.shape[0] > 1 else dataset.class_names[-1:]
    settings = dict(summary.get("settings", {}))
    settings.pop("secure_aggregation", None)
    return ServerView(
        masked=received.masked,
        round=received.round,
        images=received.weights.reshape(-1, *image_shape(received.weights.shape[1])),
        labels=tuple(names),
        resemblance=resemblance(received.weights, dataset.name),
        dropped_clients=int(summary.get("dropped_clients", 0)),
        accuracy=float(summary["accuracy"]),
        settings=settings,
        weights=np.asarray(final_weights, dtype=np.float64),
    )
