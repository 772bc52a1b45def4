"""The settings of a federated training run: one table of constraints, one set of defaults, named presets.

Every way to start a run reads these: the command line (``python -m fl_training``),
``flwr run .`` (``[tool.flwr.app.config]`` in ``pyproject.toml``, whose values must
equal :class:`TrainingConfig`'s defaults, which ``tests/test_architecture.py``
checks), and the app, whose form starts from :data:`PRESETS`. A request is checked
once, where it comes in: constructing a :class:`TrainingConfig` normalises and
checks every value against :data:`TRAINING_CONSTRAINTS`; everything inside trusts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fl_training.datasets import DATASET_CHOICE, DEFAULT_DATASET, Dataset
from fl_training.validation import (
    Flag,
    OneOf,
    Real,
    SettingError,
    Text,
    Whole,
    bound_from_env,
    check_settings,
)

PARTITIONINGS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian")
#: Strategies secure aggregation composes with: they only need the weighted sum of the
#: updates, which is all SecAgg+ reveals (FedMedian needs every update in the clear).
SECURE_AGGREGATION_STRATEGIES = ("fedavg", "fedprox", "fedadam")
#: A client needs at least this many training samples.
MIN_SAMPLES_PER_CLIENT = 10

#: The valid values of every setting. Validation, the command line and the app's sliders read
#: them from here; they keep a run meaningful and within a 2-core machine's reach.
TRAINING_CONSTRAINTS = {
    "dataset": DATASET_CHOICE,
    "num_clients": Whole(2, 100),
    "num_rounds": Whole(1, 100),
    "partitioning": OneOf(PARTITIONINGS),
    "alpha": Real(1e-3, 1e3),
    "classes_per_client": Whole(1, 1000),
    "strategy": OneOf(STRATEGIES),
    "local_epochs": Whole(1, 200),
    "proximal_mu": Real(0.0, 1e3),
    "seed": Whole(0, 2**32 - 1),
    "differential_privacy": Flag(),
    "noise_multiplier": Real(0.0, 100.0),
    "clipping_norm": Real(1e-6, 1e6),
    "secure_aggregation": Flag(),
    "client_data": Text(4096),
    "initial_model": Text(4096),
    "deskew": Flag(),
}

#: Fewest clients a run needs (the federation is complete before round 1).
MIN_CLIENTS = TRAINING_CONSTRAINTS["num_clients"].low

# Work budget. Each setting is bounded alone, but together they multiply: 100 clients × 100 rounds
# × 200 local epochs with secure aggregation is hours. A run's work is counted in sample-epochs (one
# solver pass over one training sample) as
#
#     num_rounds × (local_epochs × (training samples + num_clients × CLIENT_EPOCH_WORK)
#                   + num_clients × CLIENT_ROUND_WORK + ROUND_WORK)          [× SECURE_AGGREGATION_FACTOR]
#
# Basis, on this project's 2-core machine: `fl_training.task.fit_local` on mnist-5k partitions
# (one thread, as in the runtime's Ray actors; a round of every client's fit from the global
# weights) took 0.16 s for 10 clients × 10 epochs, 0.73–0.77 s for 100 × 10, 3.1–3.4 s for 100 × 50:
# ~3.2 µs per sample-epoch, plus ~0.44 ms per client and epoch and ~1.6 ms per fit, whatever the
# partition's size. Flower's own cost per round comes from README's "Cost" figures
# (`benchmarks/bench_secure_aggregation.py`): 10 clients × 5 rounds take 5.6–6.8 s of federated work,
# a round of 100 clients 4.5 s; less the fits, that is ~30 ms per client and ~0.77 s per round.
# The estimate then gives 6.3 s for the defaults and 4.5 s for a round of 100 clients (10.1 s and
# 7.3 s with SecAgg+, measured 9.3–9.8 s and ~7 s). With many local epochs it counts high: the
# solver stops at convergence, before ``max_iter`` (10 clients × 200 epochs: a round in 0.8–1.1 s
# of fits, counted as 3.5 s).

#: Seconds of one sample-epoch (measured above); turns work into the time a message quotes.
SECONDS_PER_WORK = 3.2e-6
#: A client's cost per local epoch whatever its partition's size: 0.44 ms ≈ 140 sample-epochs.
CLIENT_EPOCH_WORK = 140
#: A client's cost per round besides its epochs (Flower's messages, the fit's set-up, its
#: evaluation): ~30 ms + 1.6 ms ≈ 10,000 sample-epochs.
CLIENT_ROUND_WORK = 10_000
#: A round's cost whatever the clients (the server's evaluation, Flower's round): ~0.77 s.
ROUND_WORK = 240_000
#: SecAgg+ adds key agreement, secret sharing and masking per client and round, and three more
#: message exchanges per round: README's figures give 9.3–9.8 s instead of 5.6–6.8 s on the
#: defaults and ~7 s instead of 4.5 s per round of 100 clients, a factor of 1.5–1.7.
SECURE_AGGREGATION_FACTOR = 1.6
#: The most work a run may ask for, ~144 s at :data:`SECONDS_PER_WORK`: the largest accepted run
#: takes about 2–3 minutes on 2 cores (the defaults with 100 rounds: 39 million). The defaults
#: are 2.0 million, the app's quick preset 1.0 million, the differential-privacy preset 2.6 million.
#: ``$FHE_DEMO_MAX_TRAINING_WORK`` replaces it (a local run).
MAX_TRAINING_WORK = 45_000_000
#: Environment variable: the largest work a run may ask for (a positive whole number).
MAX_TRAINING_WORK_ENV = "FHE_DEMO_MAX_TRAINING_WORK"


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a federated training run.

    Constructing one checks and normalises every value (``3.0`` becomes ``3``,
    numpy scalars become Python numbers) against :data:`TRAINING_CONSTRAINTS`.

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
    client_data : str, default=""
        A folder of drawings files, one per client (``client-<partition-id>.npz``,
        see :mod:`fl_training.local_data`): each client trains on its own
        drawings instead of a partition of the dataset, and every client weighs
        the same in the average (the server learns no drawing counts). A
        SuperNode whose node config names ``drawings`` uses that file instead.
        Empty: partitions of the dataset.
    initial_model : str, default=""
        A model file (``.skops``) of the same dataset to start from instead of zeros.
    deskew : bool, default=True
        Every client deskews its images, the server its test split
        (:mod:`fl_training.preprocessing`), on the datasets where it helps
        (:data:`~fl_training.preprocessing.DESKEWED_DATASETS`); the model records it,
        and every path that feeds it deskews the same way.

    Raises
    ------
    SettingError
        Naming the offending setting and its valid values.
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
    client_data: str = ""
    initial_model: str = ""
    deskew: bool = True

    def __post_init__(self) -> None:
        checked = check_settings(TRAINING_CONSTRAINTS, {f.name: getattr(self, f.name) for f in fields(self)})
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        _check_combination(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_values(cls, **values: Any) -> TrainingConfig:
        """Build a config from loosely typed values (a web form, a JSON API); missing ones take defaults.

        Raises
        ------
        SettingError
            On an unknown name, or a value of the wrong type or out of range.
        """
        unknown = sorted(set(values) - set(TRAINING_CONSTRAINTS))
        if unknown:
            raise SettingError(
                f"Unknown training parameter {', '.join(map(repr, unknown))}; "
                f"use any of {', '.join(TRAINING_CONSTRAINTS)}."
            )
        return cls(**values)

    @classmethod
    def from_mapping(cls, values: Any) -> TrainingConfig:
        """Build a config from a Flower ``ConfigRecord`` or any mapping.

        Keys may use dashes (Flower's style) or underscores; missing keys take
        their defaults, unknown keys are ignored.
        """
        normalised = {str(k).replace("-", "_"): values[k] for k in values.keys()}
        return cls(**{k: v for k, v in normalised.items() if k in TRAINING_CONSTRAINTS})


def _check_combination(cfg: TrainingConfig) -> None:
    """Settings that are valid alone but not together."""
    if cfg.differential_privacy:
        # Flower's privacy accountant covers FedAvg aggregation with positive noise only.
        if cfg.strategy != "fedavg":
            raise SettingError(
                f"Differential privacy needs strategy 'fedavg' (its accounting assumes FedAvg); "
                f"got {cfg.strategy!r}."
            )
        if cfg.noise_multiplier <= 0:
            raise SettingError("Differential privacy needs noise_multiplier > 0, e.g. 0.5 or 1.0.")
    if cfg.secure_aggregation and cfg.strategy not in SECURE_AGGREGATION_STRATEGIES:
        raise SettingError(
            f"Secure aggregation only reveals the sum of the clients' updates, which strategy "
            f"{cfg.strategy!r} cannot work with; choose one of {', '.join(SECURE_AGGREGATION_STRATEGIES)}."
        )


def check_fits_dataset(cfg: TrainingConfig, dataset: Dataset) -> None:
    """Refuse settings the dataset is too small or has too few labels for, or that are too much work.

    Every run's entry calls it (``fl_training.task.check_runnable`` through
    ``partition_indices`` in a simulation, the ServerApp's main under ``flwr run``),
    before anything slow.

    Raises
    ------
    SettingError
        Saying how many clients or classes per client the dataset allows, or
        how much work a run may be (:func:`check_training_work`).
    """
    max_clients = len(dataset.y_train) // MIN_SAMPLES_PER_CLIENT
    if cfg.num_clients > max_clients:
        raise SettingError(
            f"{dataset.name} has {len(dataset.y_train)} training samples: at most {max_clients} "
            f"clients get {MIN_SAMPLES_PER_CLIENT} samples each. Use fewer clients."
        )
    if cfg.partitioning == "pathological" and cfg.classes_per_client > dataset.n_classes:
        raise SettingError(
            f"{dataset.name} has {dataset.n_classes} classes; classes_per_client must be at most "
            f"{dataset.n_classes}."
        )
    check_training_work(cfg, dataset)


def training_work(cfg: TrainingConfig, dataset: Dataset) -> int:
    """A run's work in sample-epochs, as the comment above :data:`SECONDS_PER_WORK` counts it.

    Parameters
    ----------
    cfg : TrainingConfig
        The run's settings.
    dataset : Dataset
        Its dataset (the clients share its training split).

    Returns
    -------
    int
        The work; about ``work × SECONDS_PER_WORK`` seconds on 2 cores.
    """
    per_round = (
        cfg.local_epochs * (len(dataset.y_train) + cfg.num_clients * CLIENT_EPOCH_WORK)
        + cfg.num_clients * CLIENT_ROUND_WORK
        + ROUND_WORK
    )
    factor = SECURE_AGGREGATION_FACTOR if cfg.secure_aggregation else 1.0
    return math.ceil(cfg.num_rounds * per_round * factor)


def max_training_work() -> int:
    """The most work a run may ask for: ``$FHE_DEMO_MAX_TRAINING_WORK`` or :data:`MAX_TRAINING_WORK`.

    Raises
    ------
    ValueError
        If the variable is set but is not a positive whole number.
    """
    return bound_from_env(MAX_TRAINING_WORK_ENV, MAX_TRAINING_WORK, unit="sample-epochs")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def check_training_work(cfg: TrainingConfig, dataset: Dataset) -> None:
    """Refuse a run whose work (:func:`training_work`) is above :func:`max_training_work`.

    Raises
    ------
    SettingError
        With the run's work, the largest allowed, what to lower, and how to
        raise the bound for a local run.
    ValueError
        If ``$FHE_DEMO_MAX_TRAINING_WORK`` is not a positive whole number.
    """
    work, allowed = training_work(cfg, dataset), max_training_work()
    if work <= allowed:
        return
    secure = " with secure aggregation" if cfg.secure_aggregation else ""
    lower = "rounds, local epochs or clients" + (", or turn secure aggregation off" if secure else "")
    raise SettingError(
        f"This training is too much work: {cfg.num_clients} clients × {cfg.num_rounds} rounds × "
        f"{cfg.local_epochs} local epochs on {dataset.name}'s {len(dataset.y_train):,} training "
        f"samples{secure} come to {work:,} sample-epochs (about {_duration(work * SECONDS_PER_WORK)} on 2 "
        f"cores); the largest allowed is {allowed:,} (about {_duration(allowed * SECONDS_PER_WORK)}). Use "
        f"fewer {lower}. For a run on your own machine, raise the bound: start it with the environment "
        f"variable {MAX_TRAINING_WORK_ENV}={work}."
    )


#: The defaults: ``python -m fl_training``, ``flwr run .`` and README's figures.
DEFAULT = TrainingConfig()
#: Clients in the differential-privacy preset: DP adds its noise once, to the clients' average,
#: so it needs many clients (``benchmarks/bench_dp_tradeoff.py`` measured the price with 50).
DP_CLIENTS = 50
#: Named starting points; the app's form opens on ``quick``.
PRESETS: dict[str, TrainingConfig] = {
    "default": DEFAULT,
    # ~1.5 s on mnist-5k once the app's training runtime is warm: a visitor's first run on a
    # 2-core laptop or Space. The app trains it at launch, before any visitor.
    "quick": replace(DEFAULT, num_clients=5, num_rounds=3),
    # The run README's price-of-privacy chart was measured with.
    "differential-privacy": replace(DEFAULT, num_clients=DP_CLIENTS, num_rounds=3, differential_privacy=True),
}
