"""The training runtime's process: Flower's simulation engine, kept warm between runs.

Started by :class:`fl_training.runtime.TrainingRuntime` as
``python -m fl_training.runtime_worker FD WARM_UP FLOWER_LOGS``. Before the first
request it does everything a run does not depend on: imports, ``ray.init``, the
pool of ClientApp actors and, with ``WARM_UP``, what a first run would pay
once (the actors import the ClientApp and load the default dataset and its
partitions; this process imports the ServerApp). Then it serves runs
one after another with ``flwr.simulation.run_simulation`` and the project's
ClientApp and ServerApp.

Flower's Ray backend builds a new actor pool for every run and shuts Ray down
after it, which is most of a run's time on a small model (round 1 lands ~3 s
after the start with a fresh pool, ~0.4 s with a warm one). Here the backend is
handed the pool built before the click, and Ray and the actors outlive each run.
The adapter (:func:`_keep_pool_between_runs`) is written for flwr 1.42, which
requirements.txt pins; the runtime's tests fail if a Flower upgrade breaks it.

Requests come on stdin and events go back on the pipe ``FD``, both as
length-prefixed pickles (both ends are this project's code):

- parent → child: ``("run", run_id, config_dict)`` or ``("stop",)``;
- child → parent: ``("ready", info)``, then per run ``("round", run_id, RoundRecord)``,
  ``("result", run_id, (model, history))`` or ``("error", run_id, (kind, message))``,
  and ``("finished", run_id)`` once the engine has let go of the run.

A run that fails ends the process after reporting (its actors may be gone);
the parent starts a fresh one.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import IO, Any

#: Frames on both pipes: a 4-byte length, then a pickle.
HEADER = struct.Struct("!I")

#: Flower warns at every ``run_simulation`` call that it is deprecated; one notice per process is enough.
_DEPRECATION_MARK = "DEPRECATED FEATURE"


def write_frame(pipe: IO[bytes], item: Any) -> None:
    """Write one length-prefixed pickle and flush."""
    data = pickle.dumps(item)
    pipe.write(HEADER.pack(len(data)) + data)
    pipe.flush()


def read_frame(pipe: IO[bytes]) -> Any | None:
    """Read one length-prefixed pickle (``None`` at end of stream)."""
    header = pipe.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    data = pipe.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - our own parent process


def backend_config() -> dict:
    """Flower's backend settings: one CPU per virtual client, so both cores train at once."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": max(1, os.cpu_count() or 1),
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }


def _start_ray() -> None:
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    # No worker_process_setup_hook to pre-import the ClientApp: it runs before Ray limits each
    # worker's BLAS threads to its one CPU, and rounds then take twice as long on 2 cores.
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **backend_config()["init_args"])


def _keep_pool_between_runs() -> Any:
    """Build Flower's actor pool now, and let every run's Ray backend use it instead of its own."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    pool = BasicActorPool(
        actor_type=ClientAppActor, client_resources=backend_config()["client_resources"], actor_kwargs={}
    )
    pool.add_actors_to_pool(pool.actors_capacity)
    ray.get([actor.__ray_ready__.remote() for actor in pool.pool])

    def build(self: RayBackend, app_fn: Callable) -> None:
        self.pool = pool
        self.app_fn = app_fn

    def terminate(self: RayBackend) -> None:
        """The pool and Ray stay up for the next run."""

    RayBackend.build = build  # type: ignore[method-assign]
    RayBackend.terminate = terminate  # type: ignore[method-assign]
    return pool


def _preload(pool: Any, config: Any) -> None:
    """Pay the first run's one-off costs before any click, without running a federation.

    Each actor imports the ClientApp and loads the dataset and ``config``'s
    partitions (what its first message would do); this process imports the
    ServerApp and the simulation engine and loads the dataset for the
    server-side evaluation. Cheaper than a warm-up run: no ServerApp, no rounds.
    """
    import ray
    from flwr.simulation import run_simulation  # noqa: F401

    from fl_training import client_app, server_app  # noqa: F401 - the import is the point
    from fl_training.datasets import load_dataset

    pending = [actor.__ray_call__.remote(lambda _actor: client_app.preload(config)) for actor in pool.pool]
    load_dataset(config.dataset)
    ray.get(pending, timeout=120)


def _pool_is_whole(pool: Any) -> bool:
    import ray

    if len(pool.pool) != pool.num_actors:
        return False
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=10)
    except Exception:
        return False
    return True


def _quiet_flower(flower_logs: bool) -> None:
    seen: set[str] = set()

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _DEPRECATION_MARK in message:
            if _DEPRECATION_MARK in seen:
                return False
            seen.add(_DEPRECATION_MARK)
            return True
        return flower_logs or record.levelno >= logging.WARNING

    # Flower resets its logger's level when a simulation starts; a filter stays.
    logging.getLogger("flwr").addFilter(keep)


def run_one(config: Any, send: Callable[[tuple], None], run_id: int) -> bool:
    """Run one federated training with Flower's simulation engine; report through ``send``.

    The result is sent as soon as the ServerApp has finished, before the
    engine's own teardown. Returns whether the run succeeded.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_training.client_app import app as client_app
    from fl_training.server_app import run_federation

    server_app = ServerApp()
    outcome: dict = {}

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            federation = run_federation(grid, config, on_round=lambda r: send(("round", run_id, r)))
        except Exception as exc:  # reported below
            outcome["error"] = exc
            raise
        outcome["done"] = True
        send(("result", run_id, (federation.model, federation.history)))

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=config.num_clients,
            backend_config=backend_config(),
        )
    except BaseException as exc:
        outcome.setdefault("error", exc)
    if outcome.get("done"):
        return True
    error = outcome.get("error")
    kind = "value" if isinstance(error, ValueError) else "runtime"
    send(("error", run_id, (kind, str(error) if error else "see the Flower log for the failing client")))
    return False


def serve(requests: IO[bytes], events: IO[bytes], *, warm_up: bool, flower_logs: bool) -> int:
    """Prepare the engine, then serve run requests until told to stop or the parent goes."""
    from fl_training.config import TrainingConfig
    from fl_training.datasets import DEFAULT_DATASET

    def send(event: tuple) -> None:
        write_frame(events, event)

    _quiet_flower(flower_logs)
    _start_ray()
    pool = _keep_pool_between_runs()
    if warm_up:
        try:
            _preload(pool, TrainingConfig(dataset=DEFAULT_DATASET))
        except Exception as exc:  # reported to the parent, which starts a fresh runtime
            send(("error", None, ("runtime", f"the warm-up failed: {exc}")))
            return 1
    send(("ready", {"pid": os.getpid(), "actors": pool.num_actors}))
    while (request := read_frame(requests)) is not None:
        if request[0] == "stop":
            break
        _, run_id, config_dict = request
        try:
            config = TrainingConfig(**config_dict)
        except ValueError as exc:
            send(("error", run_id, ("value", str(exc))))
            send(("finished", run_id))
            continue
        succeeded = run_one(config, send, run_id)
        whole = succeeded and _pool_is_whole(pool)
        send(("finished", run_id))
        if not whole:
            return 1  # a failed run may have cost actors: the parent starts a fresh runtime
    return 0


def main(argv: list[str]) -> int:
    """``python -m fl_training.runtime_worker FD WARM_UP FLOWER_LOGS``."""
    fd, warm_up, flower_logs = int(argv[0]), argv[1] == "1", argv[2] == "1"
    with os.fdopen(fd, "wb") as events:
        return serve(sys.stdin.buffer, events, warm_up=warm_up, flower_logs=flower_logs)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("This module is started by fl_training.runtime.TrainingRuntime; "
                 "to train, run python -m fl_training.")
    sys.exit(main(sys.argv[1:]))
