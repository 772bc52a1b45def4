"""Run the Flower App in-process and stream its progress.

``flwr.simulation.run_simulation`` blocks until the run ends and Ray allows one
simulation per process. :func:`stream_training` runs it in a worker thread,
serialised by a process-wide lock, and yields one :class:`RoundRecord` per
round as the ServerApp produces it, then the final :class:`TrainingResult`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from sklearn.linear_model import LogisticRegression

from fl_training.client_app import app as client_app
from fl_training.datasets import load_dataset
from fl_training.server_app import RoundRecord, run_federation
from fl_training.task import TrainingConfig, check_fits_dataset, partition_indices

# Ray allows one simulation per process; runs asked for at once wait here.
_SIMULATION_LOCK = threading.Lock()
_waiting = 0
_waiting_lock = threading.Lock()


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
        Wall-clock time of the whole run, Ray start-up included.
    """

    model: LogisticRegression
    config: TrainingConfig
    history: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.history[-1].accuracy

    def summary(self) -> dict:
        """The JSON-ready summary: accuracy, rounds, clients, seconds, history."""
        last = self.history[-1]
        out = {
            "accuracy": last.accuracy,
            "loss": last.loss,
            "rounds": self.config.num_rounds,
            "clients": self.config.num_clients,
            "dataset": self.config.dataset,
            "partitioning": self.config.partitioning,
            "strategy": self.config.strategy,
            "seconds": round(self.seconds, 3),
            "history": [r.to_dict() for r in self.history],
        }
        if self.config.differential_privacy:
            from fl_training.server_app import DP_DELTA

            out.update(epsilon=last.epsilon, delta=DP_DELTA)
        return out


def runs_waiting() -> int:
    """How many training runs are waiting for the running one to finish."""
    return _waiting


def _backend_config() -> dict:
    # One CPU per virtual client: on a 2-core machine two clients train at once.
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, os.cpu_count() or 1),
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }


def stream_training(config: TrainingConfig) -> Iterator[RoundRecord | TrainingResult]:
    """Run a federated training and yield its progress while it runs.

    Parameters
    ----------
    config : TrainingConfig
        The run's settings (already validated by its constructor).

    Yields
    ------
    RoundRecord
        One per round, starting with round 0 (the initial model), as soon as
        the server has scored it.
    TrainingResult
        Last, once the run has finished.

    Raises
    ------
    ValueError
        If the settings do not fit the dataset (checked before Ray starts).
    RuntimeError
        If the simulation fails.
    """
    from flwr.simulation import run_simulation

    check_fits_dataset(config, load_dataset(config.dataset))
    partition_indices(config)  # fail fast, in the caller's thread, on impossible partitions

    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["result"] = run_federation(grid, config, on_round=events.put)

    def _worker() -> None:
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=config.num_clients,
                backend_config=_backend_config(),
            )
        except BaseException as exc:  # reported to the consumer below
            outcome["error"] = exc
        finally:
            events.put(None)

    global _waiting
    with _waiting_lock:
        _waiting += 1
    _SIMULATION_LOCK.acquire()
    with _waiting_lock:
        _waiting -= 1
    try:
        start = time.perf_counter()
        thread = threading.Thread(target=_worker, name="flower-simulation", daemon=True)
        thread.start()
        while (item := events.get()) is not None:
            yield item
        thread.join()
        if "result" not in outcome:
            cause = outcome.get("error")
            raise RuntimeError(
                "The Flower simulation ended without a result"
                + (f": {cause}" if cause else "; see the Flower log for the failing client.")
            ) from cause
        federation = outcome["result"]
        yield TrainingResult(
            model=federation.model,
            config=config,
            history=federation.history,
            seconds=time.perf_counter() - start,
        )
    finally:
        _SIMULATION_LOCK.release()


def train(
    config: TrainingConfig, on_round: Callable[[RoundRecord], None] | None = None
) -> TrainingResult:
    """Run a federated training to the end; ``on_round`` sees each round's record."""
    for item in stream_training(config):
        if isinstance(item, TrainingResult):
            return item
        if on_round is not None:
            on_round(item)
    raise RuntimeError("The simulation produced no result.")
