"""Run the Flower App in simulation and stream its progress.

Trainings run on Flower's simulation engine (``run_simulation``, Ray backend)
in a warm worker process owned by :class:`fl_training.runtime.TrainingRuntime`:
this module keeps one shared runtime per process, started by :func:`prepare`
(or by the first training) and stopped by :func:`shutdown`. Trainings take
their turn one after another, which is what two cores serve best (see
README's figures).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sklearn.linear_model import LogisticRegression

from fl_training.runtime import QueueStatus, RunOutcome, TrainingRuntime
from fl_training.server_app import DP_DELTA, RoundRecord
from fl_training.task import TrainingConfig, partition_indices

_runtime: TrainingRuntime | None = None
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


def runtime() -> TrainingRuntime:
    """This process's shared training runtime (created on first use, not started)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = TrainingRuntime()
        return _runtime


def prepare() -> TrainingRuntime:
    """Start the shared runtime in the background, so that the first training finds it warm."""
    shared = runtime()
    shared.start()
    return shared


def shutdown() -> None:
    """Stop the shared runtime and every process it started."""
    global _runtime
    with _runtime_lock:
        shared, _runtime = _runtime, None
    if shared is not None:
        shared.close()


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
    InvalidParameterError
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
    partition_indices(config)  # fail fast, in the caller, on settings the dataset cannot serve
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
