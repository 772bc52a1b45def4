"""Run the Flower App in simulation and stream its progress.

Trainings run on Flower's simulation engine (``run_simulation``, Ray backend)
in a warm worker process owned by :class:`fl_training.runtime.TrainingRuntime`.
This module keeps the process's shared runtimes: one, started by :func:`prepare`
(or by the first training), and up to ``$FHE_DEMO_TRAINING_RUNTIMES`` (default
:data:`DEFAULT_RUNTIMES`) when different trainings queue up; :func:`shutdown`
stops them all. Each runtime takes one run at a time; two at once nearly double
the throughput on 2 cores, because a run leaves the cores idle for about a
second while Flower's engine winds down (README's figures), at the cost of a
second Ray instance's memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sklearn.linear_model import LogisticRegression

from fl_training.config import TrainingConfig
from fl_training.runtime import QueueStatus, RunOutcome, TrainingRuntime
from fl_training.server_app import DP_DELTA, RoundRecord
from fl_training.task import check_runnable

#: Environment variable: how many training runtimes may run at once (1 to :data:`MAX_RUNTIMES`).
RUNTIMES_ENV = "FHE_DEMO_TRAINING_RUNTIMES"
#: Runtimes by default: a second one starts only when different trainings queue up.
DEFAULT_RUNTIMES = 2
MAX_RUNTIMES = 4

_runtimes: list[TrainingRuntime] = []
_runtime_lock = threading.Lock()


@dataclass
class TrainingResult:
    """A finished federated run.

    Attributes
    ----------
    model : LogisticRegression
        The global model; it takes raw features as the dataset loader returns them.
    config : TrainingConfig
        The settings of the run.
    history : list of RoundRecord
        Round 0 (the initial model) to the last round.
    seconds : float
        Wall-clock time from the run's start on the engine to its last round.
    """

    model: LogisticRegression
    config: TrainingConfig
    history: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.history[-1].accuracy

    def summary(self) -> dict:
        """The JSON-ready summary: accuracy, rounds, clients, seconds, history, …

        ``secure_aggregation`` says whether the server saw only the sum of the
        updates; ``dropped_clients`` counts the clients that dropped out of a
        round (all rounds); ``server_view`` is what the server received from
        one client in the first round (:meth:`ReceivedUpdate.to_json`), and
        ``settings`` the run's whole :class:`TrainingConfig`.
        """
        last = self.history[-1]
        out = {
            "accuracy": last.accuracy,
            "loss": last.loss,
            "rounds": self.config.num_rounds,
            "clients": self.config.num_clients,
            "dataset": self.config.dataset,
            "partitioning": self.config.partitioning,
            "strategy": self.config.strategy,
            "secure_aggregation": self.config.secure_aggregation,
            "dropped_clients": sum(r.dropped_clients for r in self.history),
            "seconds": round(self.seconds, 3),
            "history": [r.to_dict() for r in self.history],
            "settings": self.config.to_dict(),
        }
        if self.config.differential_privacy:
            out.update(epsilon=last.epsilon, delta=DP_DELTA)
        received = next((r.received_update for r in self.history if r.received_update is not None), None)
        if received is not None:
            out["server_view"] = received.to_json()
        return out


def max_runtimes() -> int:
    """How many runtimes may run at once: ``$FHE_DEMO_TRAINING_RUNTIMES`` or :data:`DEFAULT_RUNTIMES`.

    Raises
    ------
    ValueError
        If the variable is not a whole number from 1 to :data:`MAX_RUNTIMES`.
    """
    raw = os.environ.get(RUNTIMES_ENV, "").strip()
    if not raw:
        return DEFAULT_RUNTIMES
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RUNTIMES:
        raise ValueError(f"{RUNTIMES_ENV} must be a whole number from 1 to {MAX_RUNTIMES}, got {raw!r}.")
    return int(raw)


def runtime() -> TrainingRuntime:
    """The shared runtime a new training should go to (created on first use, not started).

    The one where it would likely start soonest (its queue, and the rest of
    its start-up if it is still booting). When every runtime is up and the
    chosen one already has a run waiting, another one starts in the
    background (up to :func:`max_runtimes`): trainings submitted while it
    boots go to it once that is quicker than their queue, and it stays for the
    next ones.
    """
    with _runtime_lock:
        _first_locked()
        chosen = min(_runtimes, key=lambda engine: engine.expected_wait())
        all_up = all(engine.ready for engine in _runtimes)  # one boots at a time
        if all_up and chosen.load >= 2 and len(_runtimes) < max_runtimes():
            extra = TrainingRuntime()
            extra.start()
            _runtimes.append(extra)
        chosen.reserve()  # counted at once, so that callers arriving together spread out
        return chosen


def _first_locked() -> TrainingRuntime:
    if not _runtimes:
        _runtimes.append(TrainingRuntime())
    return _runtimes[0]


def runtimes() -> list[TrainingRuntime]:
    """Every shared runtime of this process (for monitoring and tests)."""
    with _runtime_lock:
        return list(_runtimes)


def prepare() -> TrainingRuntime:
    """Start the first shared runtime in the background, so that the first training finds it warm.

    Nothing is reserved on it (no run is sent yet, unlike :func:`runtime`).
    """
    with _runtime_lock:
        first = _first_locked()
    first.start()
    return first


def shutdown() -> None:
    """Stop every shared runtime and every process it started."""
    with _runtime_lock:
        shared = list(_runtimes)
        _runtimes.clear()
    for engine in shared:
        engine.close()


def stream_training(
    config: TrainingConfig,
    *,
    on_wait: Callable[[QueueStatus], None] | None = None,
    cancel: threading.Event | None = None,
    runtime_: TrainingRuntime | None = None,
) -> Iterator[RoundRecord | TrainingResult]:
    """Run a federated training and yield its progress while it runs.

    Parameters
    ----------
    config : TrainingConfig
        The run's settings (already validated by its constructor).
    on_wait : callable, optional
        Told the run's place in the queue and the estimated wait while other
        runs go first.
    cancel : threading.Event, optional
        Set from another thread to abandon the run.
    runtime_ : TrainingRuntime, optional
        Where to run; this process's shared runtime by default.

    Yields
    ------
    RoundRecord
        One per round, starting with round 0 (the initial model), as soon as
        the server has scored it.
    TrainingResult
        Last, the moment the last round has ended.

    Raises
    ------
    SettingError
        If the settings do not fit the dataset (checked before anything starts).
    ValueError
        If the run itself refused a value.
    fl_training.runtime.RuntimeFailure
        If the simulation stalled or failed (the runtime has been replaced).

    Notes
    -----
    Closing the generator early (the user left) stops the run's worker and its
    Ray processes; a fresh worker starts for the next run.
    """
    check_runnable(config)  # fail fast, in the caller, on settings the clients' data cannot serve
    engine = runtime_ if runtime_ is not None else runtime()
    for item in engine.run(config, on_wait=on_wait, cancel=cancel):
        if isinstance(item, RunOutcome):
            yield TrainingResult(model=item.model, config=config, history=item.history, seconds=item.seconds)
            return
        yield item


def train(
    config: TrainingConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
    *,
    runtime_: TrainingRuntime | None = None,
) -> TrainingResult:
    """Run a federated training to the end; ``on_round`` sees each round's record."""
    for item in stream_training(config, runtime_=runtime_):
        if isinstance(item, TrainingResult):
            return item
        if on_round is not None:
            on_round(item)
    raise RuntimeError("The simulation produced no result.")
