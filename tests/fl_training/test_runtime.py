"""The warm training runtime: real Flower simulations in its worker, and what happens when one goes wrong."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fl_training.config import TrainingConfig
from fl_training.runtime import QueueStatus, RunOutcome, RuntimeFailure, TrainingRuntime
from fl_training.server_app import RoundRecord

TINY = TrainingConfig(dataset="digits", num_clients=2, num_rounds=2)

#: Each test starts, kills, stalls or cancels real worker processes: a minute or more in all.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime():
    engine = TrainingRuntime(warm_up=False)
    assert engine.wait_ready(), "the training runtime did not start"
    yield engine
    engine.close()


def _run(engine: TrainingRuntime, config: TrainingConfig = TINY, **kwargs) -> list:
    return list(engine.run(config, **kwargs))


def test_runs_stream_rounds_then_the_outcome_and_reuse_the_same_worker(runtime):
    items = _run(runtime)
    assert [r.round for r in items[:-1]] == [0, 1, 2]
    assert all(isinstance(r, RoundRecord) for r in items[:-1]) and isinstance(items[-1], RunOutcome)
    worker = runtime.pids
    again = _run(runtime, TrainingConfig(dataset="digits", num_clients=2, num_rounds=1, seed=1))
    assert again[-1].model is not None
    assert runtime.pids == worker, "the second run did not reuse the warm worker"


def test_a_waiting_run_is_told_its_place_and_an_estimate(runtime):
    statuses: list[QueueStatus] = []
    started = threading.Event()

    def first_run() -> None:
        for _item in runtime.run(TrainingConfig(**{**TINY.to_dict(), "num_rounds": 3})):
            started.set()

    first = threading.Thread(target=first_run)
    first.start()
    assert started.wait(60)
    items = _run(runtime, TrainingConfig(**{**TINY.to_dict(), "seed": 7}), on_wait=statuses.append)
    first.join(60)
    assert isinstance(items[-1], RunOutcome)
    assert statuses and statuses[0].position == 1 and statuses[0].eta_seconds >= 0


def test_a_worker_killed_between_runs_is_replaced_and_the_next_run_succeeds(runtime):
    killed = runtime.worker_pid
    os.killpg(killed, signal.SIGKILL)
    assert isinstance(_run(runtime)[-1], RunOutcome)
    assert runtime.worker_pid != killed


def test_a_stalled_run_fails_in_seconds_and_the_runtime_is_replaced(runtime, monkeypatch):
    assert isinstance(_run(runtime)[-1], RunOutcome)  # the worker's first run has paid its imports
    monkeypatch.setattr(runtime, "stall_seconds", 4.0)
    stream = runtime.run(TrainingConfig(**{**TINY.to_dict(), "num_rounds": 50}))
    assert next(stream).round == 0
    stalled = runtime.pids
    for pid in stalled:  # freeze the worker and its Ray processes mid-run
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    start = time.monotonic()
    with pytest.raises(RuntimeFailure, match="stalled"):
        list(stream)
    assert time.monotonic() - start < 30
    monkeypatch.undo()
    # Nobody waits behind it: the next run gets a fresh worker.
    assert isinstance(_run(runtime)[-1], RunOutcome)
    assert not (runtime.pids & stalled)


def test_a_refused_value_is_a_value_error_and_the_runtime_carries_on(runtime):
    with pytest.raises(ValueError):
        # Valid on its own, refused by the ServerApp: digits has 10 classes.
        _run(runtime, TrainingConfig(dataset="digits", num_clients=2, num_rounds=1,
                                     partitioning="pathological", classes_per_client=11))
    assert isinstance(_run(runtime)[-1], RunOutcome)


def test_a_cancelled_run_stops_waiting_and_its_worker_goes(runtime):
    cancel = threading.Event()
    stream = runtime.run(TrainingConfig(**{**TINY.to_dict(), "num_rounds": 50}), cancel=cancel)
    assert next(stream).round == 0
    before = runtime.pids
    cancel.set()
    with pytest.raises(RuntimeError, match="cancelled"):
        list(stream)
    assert isinstance(_run(runtime)[-1], RunOutcome)
    assert not (runtime.pids & before)
