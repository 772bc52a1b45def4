"""Secure aggregation (Flower's SecAgg+) in real Flower simulations: same model as in the
clear, noise for the server, ε under client-side clipping, and a client that drops out."""

from __future__ import annotations

import multiprocessing
import os
import sys

import numpy as np
import pytest

from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.federation import ReceivedUpdate
from fl_training.rounds import privacy_accountant
from fl_training.secure_aggregation import share_settings
from fl_training.server_app import ServerSettings
from fl_training.simulation import TrainingResult, train
from fl_training.task import (
    client_data,
    evaluate,
    export_model,
    feature_scaling,
    fit_local,
    get_parameters,
    initial_parameters,
    new_model,
    set_parameters,
)
from fl_training.validation import SettingError
from story.updates import resemblance
from tests.helpers import SMALL_TRAINING as SMALL


@pytest.fixture(scope="module")
def clear_and_secure():
    """Two simulations of the same settings: in the clear and under SecAgg+."""
    return train(TrainingConfig(**SMALL)), train(TrainingConfig(**SMALL, secure_aggregation=True))


@pytest.mark.slow
def test_secure_aggregation_gives_the_model_of_the_run_in_the_clear(clear_and_secure):
    clear, secure = clear_and_secure
    assert secure.summary()["secure_aggregation"] is True and clear.summary()["secure_aggregation"] is False
    assert secure.accuracy > 0.85
    assert abs(secure.accuracy - clear.accuracy) <= 0.005
    # Same weights up to SecAgg+'s quantization, round after round.
    peak = np.abs(clear.model.coef_).max()
    assert np.abs(secure.model.coef_ - clear.model.coef_).max() <= 1e-3 * peak
    for a, b in zip(clear.history, secure.history, strict=True):
        assert a.loss == pytest.approx(b.loss, abs=1e-3)


@pytest.mark.slow
def test_fedadam_under_secure_aggregation_matches_fedadam_in_the_clear():
    # Adam scales every weight's step by its own history: with Flower's τ = 1e-9, SecAgg+'s rounding
    # on weights that never move (always-blank pixels) became full steps (a 1e-3 difference).
    clear = train(TrainingConfig(**SMALL, strategy="fedadam"))
    secure = train(TrainingConfig(**SMALL, strategy="fedadam", secure_aggregation=True))
    assert abs(secure.accuracy - clear.accuracy) <= 0.005
    assert np.abs(secure.model.coef_ - clear.model.coef_).max() <= 5e-4 * np.abs(clear.model.coef_).max()


@pytest.mark.slow
def test_the_server_sees_digits_in_the_clear_and_noise_under_secure_aggregation(clear_and_secure):
    clear, secure = clear_and_secure
    for result, masked in ((clear, False), (secure, True)):
        trained = [r for r in result.history if r.round > 0]
        assert all(r.received_update is not None and r.received_update.masked is masked for r in trained)
        view = ReceivedUpdate.from_json(result.summary()["server_view"])
        assert view.round == 1 and view.masked is masked and view.weights.shape == (10, 64)
    clear_view = ReceivedUpdate.from_json(clear.summary()["server_view"])
    secure_view = ReceivedUpdate.from_json(secure.summary()["server_view"])
    assert resemblance(clear_view.weights, "digits") > 0.6
    assert abs(resemblance(secure_view.weights, "digits")) < 0.25
    # Masked values are spread over the whole modulus, like uniform noise.
    masked = secure.history[1].received_update.weights
    assert 0.2 < masked.std() < 0.4 and masked.min() < 0.05 and masked.max() > 0.95


@pytest.mark.slow
def test_differential_privacy_composes_with_secure_aggregation():
    cfg = TrainingConfig(**SMALL, secure_aggregation=True, differential_privacy=True,
                         noise_multiplier=0.3, clipping_norm=5.0)
    result = train(cfg)
    summary = result.summary()
    assert summary["secure_aggregation"] is True and summary["delta"] == 1e-5
    # One release per round, accounted as without secure aggregation.
    expected = privacy_accountant(3)
    from flwr.serverapp import GaussianPrivacyEvent

    epsilons = []
    for _ in range(2):
        expected.compose(GaussianPrivacyEvent(noise_multiplier=0.3, sample_size=3, population_size=3))
        epsilons.append(expected.get_privacy_spent().epsilon)
    assert [r.epsilon for r in result.history[1:]] == pytest.approx(epsilons)
    assert result.history[1].received_update.masked


def test_secure_aggregation_refuses_strategies_that_need_every_update():
    with pytest.raises(SettingError, match="fedavg, fedprox, fedadam"):
        TrainingConfig(**SMALL, secure_aggregation=True, strategy="fedmedian")
    with pytest.raises(SettingError, match="secure_aggregation must be true or false"):
        TrainingConfig.from_values(secure_aggregation="yes")
    assert TrainingConfig.from_mapping({"secure-aggregation": True, "strategy": "fedprox"}).secure_aggregation


def test_shares_and_threshold_follow_the_number_of_clients():
    assert share_settings(2) == (1.0, 2)
    assert share_settings(3) == (1.0, 2)  # one client may drop out
    assert share_settings(10) == (1.0, 6)
    assert share_settings(50) == (11, 6)


def test_the_run_config_reads_the_server_keys():
    settings = ServerSettings.from_run_config(
        {"dataset": "digits", "num-server-rounds": 2, "num-clients": 0, "secure-aggregation": True,
         "node-wait-seconds": 5, "round-timeout": 30.0, "output": "/tmp/m.skops"}
    )
    assert settings.num_clients is None and settings.node_wait_seconds == 5.0
    assert settings.training.secure_aggregation and settings.training.num_rounds == 2
    assert ServerSettings.from_run_config({"num-clients": 4}).num_clients == 4
    with pytest.raises(SettingError, match="node-wait-seconds"):
        ServerSettings.from_run_config({"node-wait-seconds": 0})


# -- a client that drops out mid-round ---------------------------------------------------------

DROPOUT = TrainingConfig(dataset="digits", num_clients=3, num_rounds=2, secure_aggregation=True)


def leave_after_sharing_keys(msg, context, call_next):
    """Client 0 goes offline in round 1 after sending its key shares, before its masked update."""
    configs = msg.content.config_records.get("secaggplus_configs")
    if (
        configs is not None
        and configs.get("stage") == "collect_masked_vectors"
        and msg.metadata.group_id == "1"
        and int(context.node_config["partition-id"]) == 0
    ):
        raise ConnectionError("client 0 went offline")
    return call_next(msg, context)


def _run_with_a_dropout(results) -> None:
    """Child process: Flower's simulation engine (Ray) with the failing client."""
    import logging

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fl_training.client_app import build_client_app
    from fl_training.server_app import run_federation

    os.environ["PYTHONPATH"] = os.pathsep.join(sys.path)  # Ray's workers import this module
    logging.getLogger("flwr").addFilter(lambda record: record.levelno >= logging.ERROR)
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        federation = run_federation(grid, DROPOUT)
        results.put((federation.model, federation.history))

    run_simulation(
        server_app=server_app,
        client_app=build_client_app([leave_after_sharing_keys]),
        num_supernodes=DROPOUT.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}},
    )


@pytest.fixture(scope="module")
def dropout_run():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_run_with_a_dropout, args=(results,))
    child.start()
    try:
        model, history = results.get(timeout=300)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    return TrainingResult(model=model, config=DROPOUT, history=history)


def _round_one_without_client_zero() -> tuple[float, float]:
    """Accuracy and loss of the mean of clients 1 and 2's round-1 weights (weighted by examples)."""
    d = load_dataset("digits")
    scaling = feature_scaling(d)
    weights, params = [], []
    for client in (1, 2):
        X, y, _, _ = client_data(DROPOUT, client)
        model = set_parameters(new_model(DROPOUT.local_epochs), initial_parameters(d), d.classes)
        params.append(get_parameters(fit_local(model, scaling.transform(X), y, d.classes)))
        weights.append(len(y))
    mean = [sum(w * p[i] for w, p in zip(weights, params, strict=True)) / sum(weights) for i in range(2)]
    return evaluate(export_model(mean, d), d.X_test, d.y_test)


@pytest.mark.slow
def test_a_client_that_drops_out_mid_round_does_not_stop_the_round(dropout_run):
    history = dropout_run.history
    assert [r.round for r in history] == [0, 1, 2]
    assert [r.dropped_clients for r in history] == [0, 1, 0]
    # Round 1 is the secure sum of the two clients left: the dropped client's masks were removed.
    accuracy, loss = _round_one_without_client_zero()
    assert history[1].accuracy == pytest.approx(accuracy, abs=1 / 360)
    assert history[1].loss == pytest.approx(loss, abs=1e-3)
    assert history[2].accuracy > 0.85  # client 0 is back in round 2
    summary = dropout_run.summary()
    assert summary["dropped_clients"] == 1 and summary["history"][1]["dropped_clients"] == 1
