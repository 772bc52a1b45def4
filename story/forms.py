"""What the app's forms offer: each setting's choices, bounds and starting values.

Every value here is declared by the module that owns its rule (the training
settings in :mod:`fl_training.config`, the compile settings in
:mod:`fhe_model.developer`, file sizes next to the code that reads the files);
this module only gathers them for the views, which reach nothing below the story.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fhe_model.developer import (
    CALIBRATION_MODES,
    COMPILE_CONSTRAINTS,
    DEFAULT_N_BITS,
    SWEEP_N_BITS,
    SWEEP_SAMPLES,
)
from fl_training.config import (
    DP_CLIENTS,
    PARTITIONINGS,
    PRESETS,
    SECURE_AGGREGATION_STRATEGIES,
    STRATEGIES,
    TRAINING_CONSTRAINTS,
    TrainingConfig,
    check_fits_dataset,
)
from fl_training.datasets import (
    DATASET_NAMES,
    DEFAULT_DATASET,
    DatasetUnavailableError,
    load_dataset,
    needs_download,
)
from fl_training.drawings import MAX_DRAWING_FILE_BYTES, MAX_DRAWING_IMAGES, check_image_file
from fl_training.model_io import MAX_MODEL_FILE_BYTES
from fl_training.task import label_distribution
from story.class_training import CLASS_TRAINING_CONSTRAINTS, DEFAULT_CLASS_ROUNDS

#: The training form's starting values: the app trains them at launch (``SessionRegistry.prepare``),
#: so a visitor who keeps them gets the result at once.
TRAINING_FORM: TrainingConfig = PRESETS["quick"]
#: The differential-privacy run the form suggests (the one the price-of-privacy chart was measured with).
DP_TRAINING: TrainingConfig = PRESETS["differential-privacy"]


def training_bounds(name: str) -> tuple[float, float]:
    """The valid range of a numeric training setting (e.g. ``"num_clients"`` → ``(2, 100)``)."""
    constraint = TRAINING_CONSTRAINTS[name]
    return constraint.low, constraint.high


def class_rounds_bounds() -> tuple[int, int]:
    """The valid range of a class training's rounds."""
    constraint = CLASS_TRAINING_CONSTRAINTS["num_rounds"]
    return constraint.low, constraint.high


def n_bits_bounds() -> tuple[int, int]:
    """The valid range of ``n_bits``."""
    constraint = COMPILE_CONSTRAINTS["n_bits"]
    return constraint.low, constraint.high


def label_preview(**values: Any) -> tuple[np.ndarray, tuple[str, ...], TrainingConfig]:
    """How a training's settings would divide the dataset, before it runs.

    Parameters
    ----------
    **values
        Training settings as the form sends them (missing ones take the defaults).

    Returns
    -------
    counts : ndarray of shape (num_clients, n_classes)
        Samples of each label per client.
    class_names : tuple of str
        The dataset's label names.
    config : TrainingConfig
        The checked settings.

    Raises
    ------
    SettingError
        For a setting out of range, or one the dataset cannot be divided by.
    """
    cfg = TrainingConfig.from_values(**values)
    note = download_note(cfg.dataset)
    if note:  # the preview never starts a download: Start does, and says so first
        raise DatasetUnavailableError(note)
    return label_distribution(cfg), tuple(load_dataset(cfg.dataset).class_names), cfg


def download_note(dataset: str) -> str:
    """What the form says before Start about a dataset this host has not downloaded ("" if none is needed).

    Parameters
    ----------
    dataset : str
        One of :data:`DATASET_NAMES`.
    """
    if not needs_download(dataset):
        return ""
    return (
        f"{dataset} is not on this host yet: Start first downloads it from openml.org (once; it is cached "
        "afterwards), which fails if the host is offline. mnist-5k holds real MNIST digits and needs none."
    )


def check_runnable(cfg: TrainingConfig) -> None:
    """Refuse a training the dataset cannot serve or past the work budget, before a session is opened for it.

    Raises
    ------
    SettingError
        As :func:`fl_training.config.check_fits_dataset` (the run's own entry checks it again).
    """
    check_fits_dataset(cfg, load_dataset(cfg.dataset))


__all__ = [
    "CALIBRATION_MODES",
    "DATASET_NAMES",
    "DEFAULT_CLASS_ROUNDS",
    "DEFAULT_DATASET",
    "DEFAULT_N_BITS",
    "DP_CLIENTS",
    "DP_TRAINING",
    "MAX_DRAWING_FILE_BYTES",
    "MAX_DRAWING_IMAGES",
    "MAX_MODEL_FILE_BYTES",
    "PARTITIONINGS",
    "SECURE_AGGREGATION_STRATEGIES",
    "STRATEGIES",
    "SWEEP_N_BITS",
    "SWEEP_SAMPLES",
    "TRAINING_FORM",
    "TrainingConfig",
    "check_image_file",
    "download_note",
    "check_runnable",
    "class_rounds_bounds",
    "label_preview",
    "n_bits_bounds",
    "training_bounds",
]
