"""A run's settings multiply: the work they come to is bounded, and refused at once above the bound."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from fl_training.config import (
    MAX_TRAINING_WORK,
    MAX_TRAINING_WORK_ENV,
    PRESETS,
    TrainingConfig,
    check_fits_dataset,
    max_training_work,
    training_work,
)
from fl_training.datasets import load_dataset
from fl_training.task import check_runnable
from fl_training.validation import SettingError

#: Every setting at its bound, secure aggregation on: hours of work.
HEAVIEST = TrainingConfig(num_clients=100, num_rounds=100, local_epochs=200, secure_aggregation=True)


@pytest.fixture(autouse=True)
def default_bound(monkeypatch):
    monkeypatch.delenv(MAX_TRAINING_WORK_ENV, raising=False)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("secure_aggregation", [False, True])
def test_the_defaults_and_presets_are_well_inside_the_budget(name, secure_aggregation):
    cfg = replace(PRESETS[name], secure_aggregation=secure_aggregation)
    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)
    assert training_work(cfg, dataset) <= MAX_TRAINING_WORK / 10


def test_the_heaviest_run_is_refused_at_once_naming_the_bound_and_how_to_raise_it():
    check_runnable(PRESETS["default"])  # the dataset loaded, as at the app's launch
    started = time.perf_counter()
    with pytest.raises(SettingError) as refused:
        check_runnable(HEAVIEST)
    assert time.perf_counter() - started < 1.0
    message = str(refused.value)
    work = training_work(HEAVIEST, load_dataset(HEAVIEST.dataset))
    assert f"the largest allowed is {MAX_TRAINING_WORK:,}" in message
    assert f"come to {work:,} sample-epochs" in message
    assert "or turn secure aggregation off" in message
    assert f"environment variable {MAX_TRAINING_WORK_ENV}={work}" in message


def test_secure_aggregation_counts_as_more_work():
    dataset = load_dataset("mnist-5k")
    cfg = PRESETS["default"]
    assert training_work(replace(cfg, secure_aggregation=True), dataset) > training_work(cfg, dataset)


def test_the_environment_raises_the_bound(monkeypatch):
    dataset = load_dataset(HEAVIEST.dataset)
    work = training_work(HEAVIEST, dataset)
    monkeypatch.setenv(MAX_TRAINING_WORK_ENV, f" {work} ")
    assert max_training_work() == work
    check_fits_dataset(HEAVIEST, dataset)
    monkeypatch.setenv(MAX_TRAINING_WORK_ENV, str(work - 1))
    with pytest.raises(SettingError, match=f"the largest allowed is {work - 1:,}"):
        check_fits_dataset(HEAVIEST, dataset)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5", "1e9", "10 000", "1²"])
def test_a_bad_bound_in_the_environment_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(MAX_TRAINING_WORK_ENV, value)
    expected = f"{MAX_TRAINING_WORK_ENV} must be a positive whole number of sample-epochs .*, got '{value}'"
    with pytest.raises(ValueError, match=expected):
        check_fits_dataset(PRESETS["default"], load_dataset("mnist-5k"))
