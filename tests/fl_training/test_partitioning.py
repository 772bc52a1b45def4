import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fl_training.config import TRAINING_CONSTRAINTS, TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.task import (
    feature_scaling,
    fit_local,
    initial_parameters,
    label_distribution,
    new_model,
    partition_indices,
    set_parameters,
)
from fl_training.validation import Real, SettingError, one_of, whole_number

MAX_SEED = TRAINING_CONSTRAINTS["seed"].high


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(partitioning="iid"),
        dict(partitioning="dirichlet", alpha=0.3),
        dict(partitioning="pathological", classes_per_client=2),
    ],
)
def test_partitions_are_disjoint_and_cover_the_training_split(kwargs):
    cfg = TrainingConfig(dataset="digits", num_clients=5, **kwargs)
    parts = partition_indices(cfg)
    assert len(parts) == 5
    everything = np.concatenate(parts)
    assert len(everything) == len(np.unique(everything))  # disjoint
    n_train = len(load_dataset("digits").y_train)
    if cfg.partitioning != "pathological":  # pathological may leave unassigned labels' rows out
        assert len(everything) == n_train
    assert all(len(p) > 0 for p in parts)


def test_iid_partitions_see_every_label_despite_sorted_source_data():
    counts = label_distribution(TrainingConfig(dataset="mnist-5k", num_clients=10))
    assert (counts > 0).all()


def test_pathological_clients_hold_only_k_labels():
    counts = label_distribution(
        TrainingConfig(dataset="digits", num_clients=5, partitioning="pathological", classes_per_client=2)
    )
    assert ((counts > 0).sum(axis=1) <= 2).all()


def test_dirichlet_is_skewed_and_seeded():
    cfg = TrainingConfig(dataset="digits", num_clients=5, partitioning="dirichlet", alpha=0.3, seed=1)
    a = label_distribution(cfg)
    b = label_distribution(TrainingConfig(**{**cfg.to_dict(), "seed": 2}))
    assert not np.array_equal(a, b)
    share = a / a.sum(axis=1, keepdims=True)
    assert share.max() > 0.3  # far from the uniform 0.1


def test_client_missing_classes_still_trains_over_the_global_label_set():
    d = load_dataset("digits")
    scaling = feature_scaling(d)
    only_two = np.isin(d.y_train, [3, 7])
    X, y = scaling.transform(d.X_train[only_two]), d.y_train[only_two]

    # A plain fit forgets the global label set: its weights change shape and
    # can no longer be averaged with the other clients'. That is what we guard against.
    plain = set_parameters(LogisticRegression(max_iter=5, warm_start=True), initial_parameters(d), d.classes)
    plain.fit(X, y)
    assert plain.coef_.shape != (10, 64)

    model = set_parameters(new_model(5), initial_parameters(d), d.classes)
    fit_local(model, X, y, d.classes)
    assert model.coef_.shape == (10, 64)
    assert list(model.classes_) == list(range(10))
    assert set(model.predict(X)) <= {3, 7}


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(num_clients=0), "num_clients"),
        (dict(num_clients=10_000), "num_clients"),
        (dict(num_rounds=0), "num_rounds"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(partitioning="shards"), "partitioning"),
        (dict(strategy="fedsgd"), "strategy"),
        (dict(dataset="cifar"), "dataset"),
        (dict(differential_privacy=True, strategy="fedmedian"), "fedavg"),
        (dict(differential_privacy=True, noise_multiplier=0.0), "noise_multiplier"),
        (dict(seed=-1), f"seed must be a whole number from 0 to {MAX_SEED}, got -1"),
        (dict(differential_privacy="yes"), "differential_privacy must be true or false"),
    ],
)
def test_invalid_settings_are_refused_with_a_message(bad, match):
    with pytest.raises(SettingError, match=match):
        TrainingConfig(**bad)


def test_too_many_clients_for_the_dataset_is_refused():
    with pytest.raises(SettingError, match="fewer clients"):
        partition_indices(TrainingConfig(dataset="breast-cancer", num_clients=60))


def test_from_values_turns_whole_floats_into_ints_and_keeps_defaults():
    cfg = TrainingConfig.from_values(
        dataset="digits", num_clients=3.0, num_rounds=np.int64(2), alpha=1, differential_privacy=np.True_
    )
    assert (cfg.num_clients, cfg.num_rounds) == (3, 2)
    assert type(cfg.num_clients) is int and type(cfg.num_rounds) is int
    assert type(cfg.alpha) is float and cfg.differential_privacy is True
    assert cfg.local_epochs == TrainingConfig().local_epochs


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(num_clients=float("nan")), r"num_clients must be a whole number from 2 to 100, got nan\."),
        (dict(num_clients="three"), "num_clients must be a whole number from 2 to 100, got 'three'"),
        (dict(num_rounds=2.5), "num_rounds must be a whole number"),
        (dict(num_rounds=True), "num_rounds must be a whole number"),
        (dict(alpha=float("inf")), "alpha must be a number from 0.001 to 1000, got inf"),
        (dict(differential_privacy="true"), "differential_privacy must be true or false, got 'true'"),
        (dict(differential_privacy=1), "differential_privacy must be true or false, got 1"),
        (dict(strategy="fedsgd"),
         "strategy must be one of fedavg, fedprox, fedadam, fedmedian, got 'fedsgd'"),
        (dict(rounds=3), "Unknown training parameter 'rounds'"),
    ],
)
def test_from_values_refuses_bad_values_naming_the_parameter(bad, match):
    with pytest.raises(SettingError, match=match):
        TrainingConfig.from_values(**bad)


def test_from_mapping_reads_dashed_keys_and_ignores_unknown_ones():
    cfg = TrainingConfig.from_mapping({"num-clients": 4, "local_epochs": 3.0, "output": "model.skops"})
    assert (cfg.num_clients, cfg.local_epochs) == (4, 3)
    with pytest.raises(SettingError, match="num_clients"):
        TrainingConfig.from_mapping({"num-clients": "4"})


def test_validation_helpers():
    assert whole_number("n", 3.0, 1, 5) == 3
    assert Real(0, 1).check("x", np.float32(0.5)) == 0.5
    assert one_of("source", "drawing", ("test sample", "drawing")) == "drawing"
    with pytest.raises(SettingError, match="must be one of test sample, drawing, got 'photo'"):
        one_of("source", "photo", ("test sample", "drawing"))
    with pytest.raises(ValueError, match=r"x must be a number from 0 to 1, got True\."):
        Real(0, 1).check("x", True)
