"""Real Flower simulations (Ray backend) on small settings."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.model_io import load_model
from fl_training.server_app import RoundRecord
from fl_training.simulation import TrainingResult, stream_training, train
from tests.helpers import SMALL_TRAINING as SMALL


def test_stream_yields_each_round_while_running_then_the_result():
    items = []
    for item in stream_training(TrainingConfig(**SMALL)):
        items.append(item)
    records, result = items[:-1], items[-1]
    assert [r.round for r in records] == [0, 1, 2]
    assert all(isinstance(r, RoundRecord) for r in records)
    assert isinstance(result, TrainingResult)
    # Round 0 is the untrained model; training improves it.
    assert records[0].accuracy < 0.2 < 0.85 < records[-1].accuracy
    assert records[1].client_accuracy is not None and records[0].client_accuracy is None
    assert records[-1].seconds >= records[1].seconds > 0
    summary = result.summary()
    assert {"accuracy", "rounds", "clients", "seconds", "history"} <= summary.keys()
    # The exported model takes raw features and agrees with the server's score.
    d = load_dataset("digits")
    assert result.model.score(d.X_test, d.y_test) == pytest.approx(result.accuracy)


@pytest.mark.slow
def test_non_iid_runs_with_clients_missing_labels():
    cfg = TrainingConfig(**{**SMALL, "partitioning": "pathological", "classes_per_client": 2})
    result = train(cfg)
    assert result.model.coef_.shape == (10, 64)
    assert 0.1 < result.accuracy <= 1.0
    cfg = TrainingConfig(**{**SMALL, "partitioning": "dirichlet", "alpha": 0.3, "strategy": "fedmedian"})
    assert train(cfg).accuracy > 0.5


@pytest.mark.slow
def test_runs_asked_for_at_once_are_serialised_and_runs_in_a_row_succeed():
    results, errors = [], []

    def run(seed):
        try:
            results.append(train(TrainingConfig(**{**SMALL, "num_rounds": 1, "seed": seed})))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    # Three more in a row in the same process: five runs in all.
    for seed in (3, 4, 5):
        run(seed)
    assert not errors
    assert len(results) == 5 and all(r.accuracy > 0.5 for r in results)


def test_differential_privacy_reports_a_finite_epsilon():
    cfg = TrainingConfig(**SMALL, differential_privacy=True, noise_multiplier=0.3, clipping_norm=5.0)
    result = train(cfg)
    summary = result.summary()
    assert np.isfinite(summary["epsilon"]) and summary["epsilon"] > 0
    assert summary["delta"] == 1e-5
    eps = [r.epsilon for r in result.history[1:]]
    assert eps[1] > eps[0]  # privacy spent grows with every round


@pytest.mark.slow
def test_cli_trains_exports_and_prints_json(tmp_path):
    out = tmp_path / "model.skops"
    proc = subprocess.run(
        [sys.executable, "-m", "fl_training", "--dataset", "digits", "--clients", "3", "--rounds", "2",
         "--partition", "dirichlet", "--alpha", "0.5", "--seed", "0", "--output", str(out), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("round 1/2") for line in lines)
    summary = json.loads(lines[-1])
    assert summary["rounds"] == 2 and summary["clients"] == 3 and len(summary["history"]) == 3
    model = load_model(out)
    d = load_dataset("digits")
    assert model.score(d.X_test, d.y_test) == pytest.approx(summary["accuracy"])


def test_cli_rejects_bad_values_with_a_message():
    proc = subprocess.run(
        [sys.executable, "-m", "fl_training", "--clients", "0", "--output", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "num_clients" in proc.stderr and "Traceback" not in proc.stderr


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended; this container's init may never reap it)."""
    import psutil

    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
def test_closing_the_stream_stops_the_run_and_the_next_one_starts():
    from fl_training.simulation import runtime

    stream = stream_training(TrainingConfig(**{**SMALL, "num_rounds": 20}))
    first = next(stream)
    assert first.round == 0
    running = runtime().pids
    assert running, "the run has no worker processes"
    stream.close()  # the user left mid-run
    leftovers = _alive(running)
    deadline = time.monotonic() + 10  # SIGTERM, then SIGKILL after 5 s
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.1)
        leftovers = _alive(leftovers)
    assert not leftovers, f"processes of the aborted run are still alive: {leftovers}"
    assert train(TrainingConfig(**{**SMALL, "num_rounds": 1})).accuracy > 0.5


def test_training_is_not_disturbed_by_maths_in_other_threads():
    stop = threading.Event()

    def busy():
        a = np.random.default_rng(0).random((300, 300))
        while not stop.is_set():
            a = a @ a.T
            a /= np.abs(a).max()

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        result = train(TrainingConfig(**{**SMALL, "num_rounds": 1}))
    finally:
        stop.set()
        worker.join()
    assert result.accuracy > 0.5
