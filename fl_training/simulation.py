"""Run the Flower App in simulation and stream its progress.

Each run happens in a fresh child process that calls
``flwr.simulation.run_simulation`` (Ray backend). The child sends one
:class:`RoundRecord` per round back as the ServerApp produces it, then the
final model. Keeping Ray out of the caller's process means a long-lived
process (a web app) can run any number of trainings: Ray's one-simulation-per-
process rule, its start-up (which can deadlock with BLAS work running in other
threads of the same process) and its memory all stay in the child, which ends
with the run. A process-wide lock still runs one training at a time, which is
what two cores can serve.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sklearn.linear_model import LogisticRegression

from fl_training.server_app import DP_DELTA, RoundRecord
from fl_training.task import TrainingConfig, partition_indices

_SIMULATION_LOCK = threading.Lock()

#: How long a child may stay silent (no round finished) before it counts as hung.
ROUND_TIMEOUT_SECONDS = 600.0


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
        Wall-clock time of the whole run, process and Ray start-up included.
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
            out.update(epsilon=last.epsilon, delta=DP_DELTA)
        return out


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


def _child_main(config: TrainingConfig, send: Callable[[tuple], None], flower_logs: bool) -> None:
    """Body of the child process: run the simulation, report through ``send``."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_training.client_app import app as client_app
    from fl_training.server_app import run_federation

    if not flower_logs:
        # Flower resets its logger's level when a simulation starts; a filter stays.
        logging.getLogger("flwr").addFilter(lambda record: record.levelno >= logging.WARNING)

    server_app = ServerApp()
    outcome: dict = {}

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            outcome["result"] = run_federation(grid, config, on_round=lambda r: send(("round", r)))
        except Exception as exc:  # reported to the parent below
            outcome["error"] = exc
            raise

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.num_clients,
            backend_config=_backend_config(),
        )
    except BaseException as exc:
        outcome.setdefault("error", exc)
    if "result" in outcome:
        federation = outcome["result"]
        send(("result", (federation.model, federation.history)))
    else:
        error = outcome.get("error")
        kind = "value" if isinstance(error, ValueError) else "runtime"
        send(("error", (kind, str(error) if error else "see the Flower log for the failing client")))


# Events travel from the child over a dedicated pipe as length-prefixed
# pickles: both ends are this module, and nothing else writes to that pipe.
_HEADER = struct.Struct("!I")


def _read_events(fd: int, events: queue.Queue) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while header := pipe.read(_HEADER.size):
            if len(header) < _HEADER.size:
                break
            (size,) = _HEADER.unpack(header)
            events.put(pickle.loads(pipe.read(size)))  # noqa: S301 - our own child process
    events.put(None)


def _start_child(config: TrainingConfig, flower_logs: bool) -> tuple[subprocess.Popen, queue.Queue]:
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "fl_training.simulation", "--child", str(write_fd),
                json.dumps(config.to_dict()), "1" if flower_logs else "0",
            ],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
            start_new_session=True,  # its Ray processes can be stopped as one group
        )
    finally:
        os.close(write_fd)
    events: queue.Queue = queue.Queue()
    threading.Thread(target=_read_events, args=(read_fd, events), daemon=True).start()
    return process, events


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def stream_training(
    config: TrainingConfig, *, flower_logs: bool = False
) -> Iterator[RoundRecord | TrainingResult]:
    """Run a federated training and yield its progress while it runs.

    Parameters
    ----------
    config : TrainingConfig
        The run's settings (already validated by its constructor).
    flower_logs : bool, default=False
        Let Flower's INFO log through to the console.

    Yields
    ------
    RoundRecord
        One per round, starting with round 0 (the initial model), as soon as
        the server has scored it.
    TrainingResult
        Last, once the run has finished.

    Raises
    ------
    InvalidParameterError
        If the settings do not fit the dataset (checked before anything starts).
    ValueError
        If the run itself refused a value.
    RuntimeError
        If the simulation fails.

    Notes
    -----
    Closing the generator early (e.g. the user left) stops the child process
    and its Ray workers before the next run may start.
    """
    # Fail fast, in the caller, on settings the dataset cannot serve (this also
    # runs check_fits_dataset).
    partition_indices(config)

    _SIMULATION_LOCK.acquire()
    process = None
    try:
        start = time.perf_counter()
        process, events = _start_child(config, flower_logs)
        while True:
            try:
                event = events.get(timeout=ROUND_TIMEOUT_SECONDS)
            except queue.Empty:
                raise RuntimeError(
                    f"The Flower simulation finished no round in {ROUND_TIMEOUT_SECONDS:.0f} s."
                ) from None
            if event is None:
                process.wait(timeout=30)
                raise RuntimeError(
                    f"The Flower simulation process ended (exit code {process.returncode}) before "
                    "the run finished; its log above says why."
                )
            kind, payload = event
            if kind == "round":
                yield payload
            elif kind == "result":
                model, history = payload
                process.wait(timeout=60)
                yield TrainingResult(
                    model=model, config=config, history=history, seconds=time.perf_counter() - start
                )
                return
            else:
                error_kind, message = payload
                if error_kind == "value":
                    raise ValueError(message)
                raise RuntimeError(f"The Flower simulation failed: {message}")
    finally:
        if process is not None:
            _stop(process)
        _SIMULATION_LOCK.release()


def train(
    config: TrainingConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
    *,
    flower_logs: bool = False,
) -> TrainingResult:
    """Run a federated training to the end; ``on_round`` sees each round's record."""
    for item in stream_training(config, flower_logs=flower_logs):
        if isinstance(item, TrainingResult):
            return item
        if on_round is not None:
            on_round(item)
    raise RuntimeError("The simulation produced no result.")


def _child_entry(argv: list[str]) -> None:
    """``python -m fl_training.simulation --child FD CONFIG_JSON FLOWER_LOGS``."""
    fd, config_json, flower_logs = int(argv[1]), argv[2], argv[3] == "1"
    with os.fdopen(fd, "wb") as pipe:

        def send(event: tuple) -> None:
            data = pickle.dumps(event)
            pipe.write(_HEADER.pack(len(data)) + data)
            pipe.flush()

        _child_main(TrainingConfig(**json.loads(config_json)), send, flower_logs)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        sys.exit("This module is started by stream_training(); to train, run python -m fl_training.")
    _child_entry(sys.argv[1:])
