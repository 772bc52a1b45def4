import pickle

import numpy as np
import pytest

from fl_training.datasets import load_dataset
from fl_training.model_io import ModelFileError, check_model, check_model_fits, load_model, save_model
from fl_training.task import (
    export_model,
    feature_scaling,
    fit_local,
    get_parameters,
    initial_parameters,
    new_model,
    set_parameters,
)


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_exported_model_on_raw_features_equals_trained_model_on_scaled_features(name):
    d = load_dataset(name)
    scaling = feature_scaling(d)
    trained = set_parameters(new_model(50), initial_parameters(d), d.classes)
    fit_local(trained, scaling.transform(d.X_train), d.y_train, d.classes)

    exported = export_model(get_parameters(trained), d)
    np.testing.assert_allclose(
        exported.predict_proba(d.X_test), trained.predict_proba(scaling.transform(d.X_test)), atol=1e-9
    )
    assert exported.score(d.X_test, d.y_test) > 0.85


def _trained_digits_model():
    d = load_dataset("digits")
    model = set_parameters(new_model(30), initial_parameters(d), d.classes)
    fit_local(model, feature_scaling(d).transform(d.X_train), d.y_train, d.classes)
    return export_model(get_parameters(model), d), d


def test_skops_round_trip(tmp_path):
    model, d = _trained_digits_model()
    path = save_model(model, tmp_path / "model.skops")
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(d.X_test), model.predict(d.X_test))
    check_model(loaded)
    check_model_fits(loaded, d)


def test_pickle_is_written_on_request_but_never_loaded_by_default(tmp_path):
    model, _ = _trained_digits_model()
    path = save_model(model, tmp_path / "model.pkl")
    with pytest.raises(ModelFileError, match="skops"):
        load_model(path)
    assert load_model(path, allow_pickle=True).coef_.shape == (10, 64)


class _Hostile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_hostile_pickle_leaves_no_file(tmp_path):
    target = tmp_path / "pwned"
    bad = tmp_path / "model.skops"
    bad.write_bytes(pickle.dumps(_Hostile(str(target))))
    with pytest.raises(ModelFileError):
        load_model(bad)
    assert not target.exists()


def test_model_that_does_not_fit_the_dataset_is_refused():
    model, _ = _trained_digits_model()
    with pytest.raises(ModelFileError, match="expects 64 features, but the dataset has 784"):
        check_model_fits(model, load_dataset("mnist-5k"))
    with pytest.raises(ModelFileError, match="expects 64 features, but the dataset has 30"):
        check_model_fits(model, load_dataset("breast-cancer"))
