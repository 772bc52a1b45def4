"""Act 1: a model, trained together with Flower or uploaded as a file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.model_io import check_model_fits, load_model, save_model
from fl_training.preprocessing import model_inputs
from fl_training.runtime import QueueStatus
from fl_training.server_app import RoundRecord
from fl_training.simulation import TrainingResult
from fl_training.task import baseline_accuracy
from story.base import SessionCore
from story.class_rules import CLASS_DATASET
from story.errors import NO_MODEL_FILE, StepError
from story.shared_trainings import Joined
from story.stages import Baseline, ModelStage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRecord:
    """The current model as tab 1 shows it, whichever page made it.

    Attributes
    ----------
    source : str
        ``"federated"``, ``"uploaded"`` or ``"class"``.
    summary : dict
        What :meth:`TrainingSteps.train` (or the upload, or the class) returned for it.
    history : list of RoundRecord
        Its rounds (empty unless trained here).
    settings : dict or None
        The training's settings, by :class:`TrainingConfig` field (None unless trained here).
    resumed : bool
        True if a reloaded page took the model over from its previous page.
    """

    source: str
    summary: dict[str, Any]
    history: list[RoundRecord]
    settings: dict[str, Any] | None
    resumed: bool


class TrainingSteps(SessionCore):
    """Tab 1's steps: :meth:`train` and :meth:`use_uploaded_model`."""

    def training_record(self) -> TrainingRecord | None:
        """The current model's record for tab 1 (None without a model): a reloaded page redraws from it."""
        model = self.model
        if model is None:
            return None
        summary = model.summary
        history = [RoundRecord(**r) for r in summary.get("history", ())]
        return TrainingRecord(model.source, summary, history, summary.get("settings"),
                              bool(summary.get("resumed")))

    def train(
        self, cfg: TrainingConfig
    ) -> Iterator[Baseline | Joined | QueueStatus | RoundRecord | dict[str, Any]]:
        """Run federated training with Flower, yielding each round as it ends.

        A run with equal settings (seed included) that another visitor started
        is joined rather than run again, and a finished one comes back from the
        app's cache; the model is the same, the session's files are its own.

        Parameters
        ----------
        cfg : TrainingConfig
            A validated config (:meth:`TrainingConfig.from_values` builds one
            from loosely typed UI or API values).

        Yields
        ------
        Baseline
            First: the accuracy of a centrally trained model, for comparison.
        Joined
            If the run is shared with another visitor (then its rounds so far follow at once).
        QueueStatus
            While the run waits for its turn (place in the queue, estimated wait).
        RoundRecord
            One per round (round 0: the initial model).
        dict
            Last: the summary (``accuracy``, ``rounds``, ``clients``, ``seconds``,
            ``history``, ``baseline_accuracy``, ``shared``; ``epsilon``/``delta``
            under DP). The session's model is replaced only then.

        Raises
        ------
        StepError
            If the run fails.
        fl_training.validation.SettingError
            If the settings do not fit the dataset (before anything slow starts).
        """
        with self._step("training"):
            dataset = load_dataset(cfg.dataset)
            # Once per dataset, preprocessing and app (concurrent visitors wait for the one computation).
            try:
                baseline: float | None = baseline_accuracy(cfg.dataset, deskew=cfg.deskew)
            except Exception as exc:  # the baseline is a comparison, not a requirement
                logger.warning("baseline training failed: %s", exc)
                baseline = None
            yield Baseline(baseline)
            result: TrainingResult | None = None
            joined: Joined | None = None
            try:
                for item in self._trainings.stream(cfg):
                    if isinstance(item, TrainingResult):
                        result = item
                        continue
                    if isinstance(item, Joined):
                        joined = item
                    yield item
            except RuntimeError as exc:
                raise StepError(f"Training failed: {exc}") from exc
            if result is None:
                raise StepError("Training ended without a model; try again.")
            summary = result.summary()
            summary["baseline_accuracy"] = baseline
            summary["source"] = "federated"
            summary["shared"] = joined is not None
            if joined is not None:
                summary["joined_at_round"] = None if joined.finished else joined.at_round
            model_file = save_model(result.model, self._new_public_dir() / "federated_model.skops")
            self._replace_model(ModelStage(result.model, dataset.name, "federated", summary, model_file))
            yield summary

    def use_class_model(self, model: Any, class_summary: dict[str, Any]) -> dict[str, Any]:
        """Make a class's model (trained on its participants' drawings) this session's current model.

        Returns
        -------
        dict
            ``source`` ("class"), ``dataset``, ``accuracy`` (MNIST's test split) and the class run's
            ``accuracy_room`` / ``accuracy_room_before``.
        """
        dataset = load_dataset(CLASS_DATASET)
        with self._step("using the class model"):
            check_model_fits(model, dataset)
            summary = {
                "source": "class",
                "dataset": dataset.name,
                "accuracy": float(model.score(model_inputs(model, dataset.X_test, dataset), dataset.y_test)),
                "baseline_accuracy": None,
                **{k: class_summary[k] for k in ("accuracy_room", "accuracy_room_before", "clients")
                   if k in class_summary},
            }
            model_file = save_model(model, self._new_public_dir() / "class_model.skops")
            self._replace_model(ModelStage(model, dataset.name, "class", summary, model_file))
            return summary

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
            If no file was given.
        fl_training.model_io.ModelFileError
            If it is not a safe model that fits the dataset.
        """
        if path is None or not Path(path).is_file():
            raise StepError(NO_MODEL_FILE)
        dataset = load_dataset(dataset_name)
        with self._step("the upload"):
            model = load_model(path)  # audited against the allow-list before anything is built
            check_model_fits(model, dataset)
            # Scored on its own preprocessing: none for a model trained on raw pixels elsewhere.
            accuracy = float(model.score(model_inputs(model, dataset.X_test, dataset), dataset.y_test))
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
