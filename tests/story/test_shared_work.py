"""Identical work done once: shared trainings and compiled deployments (real Flower, Concrete, server)."""

from __future__ import annotations

import threading

import httpx
import pytest

from fhe_model.connection import FHEServerHandle
from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.model_io import save_model
from fl_training.task import train_centralized
from story import Joined, SessionRegistry
from story.shared_trainings import SharedTrainings
from tests.helpers import circuit_dirs

TINY = dict(dataset="digits", num_clients=2, num_rounds=2)


def _train(session, config: TrainingConfig) -> tuple[list, dict]:
    items = list(session.train(config))
    return items, items[-1]


def test_equal_settings_share_one_run_and_get_equal_histories(registry):
    config = TrainingConfig(**TINY, seed=11)
    before = registry.trainings.runs_started
    sessions = [registry.new_session() for _ in range(3)]
    outcomes: list = [None] * 3

    def train(i: int) -> None:
        outcomes[i] = _train(sessions[i], config)

    threads = [threading.Thread(target=train, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert registry.trainings.runs_started - before == 1
    summaries = [summary for _items, summary in outcomes]
    assert all(s["history"] == summaries[0]["history"] for s in summaries)
    assert sum(s["shared"] for s in summaries) == 2  # everyone but the one who started it
    joined = [item for items, _ in outcomes for item in items if isinstance(item, Joined)]
    assert len(joined) == 2
    # Each session still holds its own copy of the model file.
    files = {session.model_file for session in sessions}
    assert len(files) == 3 and all(path.is_file() for path in files)

    later = registry.new_session()
    items, summary = _train(later, config)  # finished: comes from the cache at once
    assert registry.trainings.runs_started - before == 1
    assert summary["shared"] and summary["joined_at_round"] is None
    assert next(item for item in items if isinstance(item, Joined)).finished


@pytest.mark.slow
def test_a_different_seed_is_a_different_run(registry):
    before = registry.trainings.runs_started
    first, second = registry.new_session(), registry.new_session()
    _, a = _train(first, TrainingConfig(**TINY, seed=21))
    _, b = _train(second, TrainingConfig(**TINY, seed=22))
    assert registry.trainings.runs_started - before == 2
    assert not a["shared"] and not b["shared"]


@pytest.mark.slow
def test_the_cache_of_finished_trainings_is_bounded():
    shared = SharedTrainings(cache_size=2)
    configs = [TrainingConfig(dataset="digits", num_clients=2, num_rounds=1, seed=s) for s in (31, 32, 33)]
    for config in configs:
        list(shared.stream(config))
    assert len(shared) == 2
    assert shared.cached(configs[0]) is None and shared.cached(configs[2]) is not None


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(train_centralized(load_dataset("digits"), max_iter=50),
                      tmp_path_factory.mktemp("models") / "digits.skops")


def _key_material(key_dir) -> list[bytes]:
    return [path.read_bytes() for path in sorted(key_dir.rglob("*")) if path.is_file()]


def _server_knows(registry, deployment_id: str) -> bool:
    with httpx.Client(base_url=registry.server.url, timeout=30) as http:
        return http.get("/client.zip", params={"deployment_id": deployment_id}).status_code == 200


def test_equal_compiles_share_one_circuit_and_deployment_but_never_keys(registry, model_file):
    compiles = registry.deployments.compiles
    first, second = registry.new_session(), registry.new_session()
    for session in (first, second):
        session.use_uploaded_model(model_file, "digits")
    a = first.compile(n_bits=6)
    b = second.compile(n_bits=6)
    assert registry.deployments.compiles - compiles == 1
    assert not a["shared"] and b["shared"]
    keys_a, keys_b = first.generate_keys(), second.generate_keys()
    assert keys_a["deployment_id"] == keys_b["deployment_id"]
    assert keys_a["key_id"] != keys_b["key_id"]
    assert first.keys.key_dir != second.keys.key_dir
    assert _key_material(first.keys.key_dir) != _key_material(second.keys.key_dir)
    # A ciphertext made with one session's private key means nothing to the other's.
    first.encrypt(sample_index=3)
    first.run_on_server()
    assert first.decrypt()["matches_clear"]
    wrong = second.keys.client.attempt_decrypt(first.server_output.ciphertext)
    right = first.keys.client.attempt_decrypt(first.server_output.ciphertext)
    assert wrong.decrypted_scores is None or list(wrong.decrypted_scores) != list(right.decrypted_scores)

    # The deployment outlives the first session that closes...
    first.close()
    assert _server_knows(registry, keys_b["deployment_id"])
    second.encrypt(sample_index=3)
    second.run_on_server()
    assert second.decrypt()["matches_clear"]
    circuits = circuit_dirs(second.deployment.compiled)
    # ...and goes with the last.
    second.close()
    assert not _server_knows(registry, keys_b["deployment_id"])
    assert len(registry.deployments) == 0
    assert not any(path.exists() for path in circuits)


@pytest.mark.slow
def test_other_settings_compile_again(registry, model_file):
    compiles = registry.deployments.compiles
    session = registry.new_session()
    session.use_uploaded_model(model_file, "digits")
    session.compile(n_bits=5)
    session.compile(n_bits=6, calibration="random")
    assert registry.deployments.compiles - compiles == 2
    session.close()
    assert len(registry.deployments) == 0


@pytest.mark.slow
def test_the_defaults_are_trained_and_compiled_ahead_and_kept_until_shutdown():
    registry = SessionRegistry(FHEServerHandle())
    config = TrainingConfig(**TINY, seed=41)
    try:
        registry.prepare(config, n_bits=6)
        assert registry.prepared.wait(300)
        assert registry.trainings.runs_started == 1 and registry.deployments.compiles == 1
        visitor = registry.new_session()
        _, trained = _train(visitor, config)
        compiled = visitor.compile(n_bits=6)
        assert trained["shared"] and compiled["shared"]
        assert registry.trainings.runs_started == 1 and registry.deployments.compiles == 1
        keys = visitor.generate_keys()  # made now, for this visitor only
        visitor.encrypt(sample_index=5)
        visitor.run_on_server()
        assert visitor.decrypt()["matches_clear"]
        visitor.close()
        assert _server_knows(registry, keys["deployment_id"])  # kept for the next visitor
        registry.close_all()
        assert len(registry.deployments) == 0 and not _server_knows(registry, keys["deployment_id"])
    finally:
        registry.close_all()
        registry.server.stop()
