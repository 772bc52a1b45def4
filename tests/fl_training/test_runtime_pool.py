"""Different trainings queued at once: a second warm runtime takes them (bounded by an env variable)."""

from __future__ import annotations

import threading

import pytest

from fl_training import simulation
from fl_training.config import TrainingConfig
from tests.helpers import wait_for

#: A run long enough (a few seconds) to keep a runtime busy while the test looks.
LONG = dict(dataset="mnist-5k", num_clients=10, num_rounds=12)


@pytest.mark.parametrize("value", ["0", "5", "two", "-1", "1.5"])
def test_the_number_of_runtimes_is_checked(monkeypatch, value):
    monkeypatch.setenv(simulation.RUNTIMES_ENV, value)
    with pytest.raises(ValueError, match=r"FHE_DEMO_TRAINING_RUNTIMES must be a whole number from 1 to 4"):
        simulation.max_runtimes()


def test_the_number_of_runtimes_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(simulation.RUNTIMES_ENV, raising=False)
    assert simulation.max_runtimes() == simulation.DEFAULT_RUNTIMES
    monkeypatch.setenv(simulation.RUNTIMES_ENV, " 1 ")
    assert simulation.max_runtimes() == 1


@pytest.fixture
def own_pool(monkeypatch):
    """This test's runtimes, apart from the shared ones other tests use; all stopped after."""
    monkeypatch.setattr(simulation, "_runtimes", [])
    monkeypatch.setenv(simulation.RUNTIMES_ENV, "2")
    yield
    simulation.shutdown()


def _drain(config: TrainingConfig, engine=None) -> None:
    for _ in simulation.stream_training(config, runtime_=engine):
        pass


@pytest.mark.slow
def test_a_queue_of_different_trainings_starts_a_second_runtime_that_takes_the_next_ones(own_pool):
    first = simulation.prepare()
    assert first.wait_ready(), "the first runtime did not start"
    busy = [threading.Thread(target=_drain, args=(TrainingConfig(**LONG, seed=s), first)) for s in (1, 2)]
    for thread in busy:
        thread.start()
    wait_for(lambda: first.load == 2, "the two runs to queue on the first runtime", timeout=60)
    # A third different training: every ready runtime has a run waiting, so another one boots,
    # and meanwhile this training still goes to the first (the only one ready).
    assert simulation.runtime() is first
    engines = simulation.runtimes()
    assert len(engines) == 2
    second = engines[1]
    assert second.wait_ready(), "the second runtime did not start"
    for thread in busy:
        thread.join(300)
    # With the first busy again, a new training goes to the idle second runtime, and runs there.
    blocker = threading.Thread(target=_drain, args=(TrainingConfig(**LONG, seed=3), first))
    blocker.start()
    wait_for(lambda: first.load == 1, "the blocking run to start on the first runtime", timeout=60)
    chosen = simulation.runtime()
    assert chosen is second
    _drain(TrainingConfig(dataset="digits", num_clients=2, num_rounds=1, seed=4), chosen)
    blocker.join(300)
    # Never more than the bound.
    assert len(simulation.runtimes()) == 2


@pytest.mark.slow
def test_one_runtime_when_the_environment_says_so(own_pool, monkeypatch):
    monkeypatch.setenv(simulation.RUNTIMES_ENV, "1")
    first = simulation.prepare()
    assert first.wait_ready()
    busy = [threading.Thread(target=_drain, args=(TrainingConfig(**LONG, seed=s), first)) for s in (5, 6)]
    for thread in busy:
        thread.start()
    wait_for(lambda: first.load == 2, "the two runs to queue on the only runtime", timeout=60)
    assert simulation.runtime() is first and len(simulation.runtimes()) == 1
    for thread in busy:
        thread.join(300)
