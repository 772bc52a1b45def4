"""A Flower client that crashes or hangs mid-run must not hold the training turn.

Trainings run one at a time. If a client process dies or never answers, the
run must end (with an error, or without that client) within a bounded time,
and a training waiting behind it must then run, not wait for minutes.
Tested through :func:`fl_training.simulation.stream_training` only, on a
runtime of this module's own, with a fault injected into exactly one client's
``fit_local`` (``tests/fl_training/fault_injection/sitecustomize.py``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from fl_training.config import TrainingConfig
from fl_training.runtime import TrainingRuntime
from fl_training.simulation import TrainingResult, stream_training
from tests.helpers import ROOT

FAULT_INJECTION = Path(__file__).resolve().parent / "fault_injection"
SMALL = TrainingConfig(dataset="digits", num_clients=2, num_rounds=2, local_epochs=1)
#: The runtime's stall limit here (its ``stall_seconds``): a round of SMALL takes well under a second on a
#: warm worker, so a third of the default limit still leaves a wide margin, and the fault shows sooner.
STALL_SECONDS = 10.0
#: How long a failed run may keep the turn: the runtime's stall limit plus margin on a busy machine.
MAX_FAULT_SECONDS = 120
#: How long the next run may then take: a fresh worker's start plus the run.
MAX_NEXT_RUN_SECONDS = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime_with_faults(tmp_path_factory):
    """One runtime for both faults: each test starts with a healthy run on it, and every fault ends its
    worker, so each test's fault meets a fresh worker (started with the environment below) all the same."""
    fault_file = tmp_path_factory.mktemp("faults") / "fault"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FL_TEST_FAULT_FILE", str(fault_file))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
            str(FAULT_INJECTION), str(ROOT), os.environ.get("PYTHONPATH")])))
        # Its processes, and the fresh ones that replace them, inherit the environment above.
        runtime = TrainingRuntime(stall_seconds=STALL_SECONDS)
        runtime.start()
        yield runtime, fault_file
        runtime.close()


def _drain(stream) -> TrainingResult | BaseException:
    try:
        items = list(stream)
    except Exception as exc:  # the faulty run may end with an error: that is allowed
        return exc
    return items[-1]


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_client_that_fails_mid_run_does_not_keep_the_next_training_waiting(runtime_with_faults, fault):
    runtime, fault_file = runtime_with_faults
    assert isinstance(_drain(stream_training(SMALL, runtime_=runtime)), TrainingResult)  # warm, healthy

    fault_file.write_text(fault)
    outcome: dict[str, object] = {}

    def faulty_run() -> None:
        start = time.monotonic()
        outcome["result"] = _drain(stream_training(SMALL, runtime_=runtime))
        outcome["seconds"] = time.monotonic() - start

    first = threading.Thread(target=faulty_run)
    first.start()
    deadline = time.monotonic() + 60
    while fault_file.exists() and time.monotonic() < deadline:  # a client has taken the fault
        time.sleep(0.05)
    assert not fault_file.exists(), "no client ran fit_local: the fault was never injected"

    start = time.monotonic()
    waiting = _drain(stream_training(dataclasses.replace(SMALL, seed=1), runtime_=runtime))
    waited = time.monotonic() - start
    first.join(MAX_FAULT_SECONDS)
    assert not first.is_alive(), f"the run with a {fault}ed client still holds its turn"
    assert outcome["seconds"] < MAX_FAULT_SECONDS, outcome
    assert isinstance(waiting, TrainingResult), waiting
    assert waited < MAX_FAULT_SECONDS + MAX_NEXT_RUN_SECONDS, f"the next training waited {waited:.0f} s"
