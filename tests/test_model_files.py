"""Model files: the audit that runs before anything is built, loading, and fitting a dataset."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from fl_training.datasets import load_dataset
from fl_training.model_io import (
    MAX_MODEL_FILE_BYTES,
    MAX_MODEL_UNPACKED_BYTES,
    MAX_SCHEMA_BYTES,
    PICKLE_REFUSED,
    ModelFileError,
    audit_model_file,
    check_model,
    check_model_fits,
    datasets_fitting,
    load_model,
    save_model,
)
from tests.model_files import read_schema, rezip

# The test models are fitted briefly; how well they converge does not matter here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file exists only if the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fit(dataset_name: str, *, classes: int | None = None) -> LogisticRegression:
    dataset = load_dataset(dataset_name)
    X, y = np.array(dataset.X_train), np.array(dataset.y_train)
    if classes is not None:
        X, y = X[y < classes], y[y < classes]
    return LogisticRegression(max_iter=50).fit(X, y)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return save_model(_fit("digits"), tmp_path_factory.mktemp("models") / "digits.skops")


def test_a_plain_logistic_regression_passes_the_audit_and_loads(good):
    audit_model_file(good)
    model = load_model(good)
    check_model(model)
    check_model_fits(model, load_dataset("digits"))
    assert model.coef_.shape == (10, 64)


@pytest.mark.parametrize("suffix", [".skops", ".pkl"])
def test_pickles_are_refused_with_one_message_and_run_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_CreatesFile(marker)))
    expected = PICKLE_REFUSED.format(name=path.name)
    assert "Pickle/joblib files are refused" in expected
    for check in (audit_model_file, load_model):
        with pytest.raises(ModelFileError) as refused:
            check(path)
        assert str(refused.value) == expected
    assert not marker.exists()


def test_a_pickle_before_a_skops_archive_is_refused(tmp_path, good):
    marker = tmp_path / "pwned"
    polyglot = tmp_path / "polyglot.skops"
    polyglot.write_bytes(pickle.dumps(_CreatesFile(marker)) + good.read_bytes())
    with pytest.raises(ModelFileError, match="Pickle/joblib files are refused"):
        load_model(polyglot)
    assert not marker.exists()


def test_a_pickled_array_inside_a_skops_file_is_not_unpickled(tmp_path, good):
    marker = tmp_path / "pwned"
    npy = io.BytesIO()
    np.save(npy, np.array([_CreatesFile(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as archive:
        array_file = next(name for name in archive.namelist() if name.endswith(".npy"))
    bad = rezip(good, tmp_path / "npy.skops", {array_file: npy.getvalue()})
    with pytest.raises(ModelFileError, match="could not be loaded"):
        load_model(bad)
    assert not marker.exists()


def test_files_naming_other_types_are_refused_before_loading(tmp_path, good):
    pipeline = tmp_path / "pipeline.skops"
    sio.dump(Pipeline([("model", load_model(good))]), pipeline)  # skops itself would trust this one

    schema = read_schema(good)
    schema["content"]["content"]["solver"] = {
        "__class__": "system", "__module__": "os", "__loader__": "FunctionNode",
        "content": {"module_path": "os", "function": "system"}, "__id__": 1,
    }
    function = rezip(good, tmp_path / "function.skops", {"schema.json": json.dumps(schema).encode()})
    schema = read_schema(good)
    schema["__class__"], schema["__module__"] = "Popen", "subprocess"
    other_class = rezip(good, tmp_path / "popen.skops", {"schema.json": json.dumps(schema).encode()})

    for path, message in [
        (pipeline, "outside the allow-list: sklearn.pipeline.Pipeline"),
        (function, r"os.system \(as FunctionNode\)"),
        (other_class, "subprocess.Popen"),
    ]:
        for check in (audit_model_file, load_model):
            with pytest.raises(ModelFileError, match=message):
                check(path)


def test_archives_that_are_too_big_deep_or_not_skops_are_refused(tmp_path, good):
    bomb = rezip(good, tmp_path / "bomb.skops", {}, {"padding.bin": bytes(MAX_MODEL_UNPACKED_BYTES + 1)})
    assert bomb.stat().st_size < MAX_MODEL_FILE_BYTES  # refused for what it unpacks to, not its size
    deep = rezip(good, tmp_path / "deep.skops", {"schema.json": b"[" * 30_000 + b"]" * 30_000})
    not_skops = tmp_path / "archive.skops"
    with zipfile.ZipFile(not_skops, "w") as archive:
        archive.writestr("model.pkl", b"not read")
    huge = tmp_path / "huge.skops"
    with open(huge, "wb") as fh:
        fh.write(good.read_bytes())
        fh.truncate(MAX_MODEL_FILE_BYTES + 1)

    for path, message in [
        (bomb, "unpacks to .* at most 16 files and 4.0 MB"),
        (deep, "not a valid skops file"),
        (not_skops, "has no schema.json"),
        (huge, re.escape(f"is 5.0 MB ({MAX_MODEL_FILE_BYTES + 1:,} bytes); model files may be at most")),
    ]:
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


def test_a_schema_that_would_blow_up_in_memory_is_refused_unparsed(tmp_path, good):
    import tracemalloc

    # Parsing `[[],[],...]` costs ~21x its size; 3 MB of it compresses to a few kB.
    bomb_schema = b"[" + b"[]," * (1024 * 1024) + b"[]]"
    bomb = rezip(good, tmp_path / "json-bomb.skops", {"schema.json": bomb_schema})
    assert bomb.stat().st_size < 64 * 1024
    tracemalloc.start()
    try:
        for check in (audit_model_file, load_model):
            with pytest.raises(ModelFileError, match=r"schema.json is larger than 64.0 KB"):
                check(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"{peak / 2**20:.1f} MB"
    # A real LogisticRegression's schema is far below the bound, whatever its dataset.
    with zipfile.ZipFile(good) as archive:
        assert archive.getinfo("schema.json").file_size < MAX_SCHEMA_BYTES / 4


def test_the_schema_is_parsed_once(monkeypatch, good):
    import fl_training.model_io

    with zipfile.ZipFile(good) as archive:
        schema = archive.read("schema.json")
    parsed = []
    loads = json.loads

    def counting_loads(text, *args, **kwargs):
        if text == schema or text == schema.decode():
            parsed.append(text)
        return loads(text, *args, **kwargs)

    monkeypatch.setattr(fl_training.model_io.json, "loads", counting_loads)  # the json module, for skops too
    load_model(good)
    assert len(parsed) == 1


def test_check_model_refuses_what_is_not_a_fitted_finite_classifier():
    with pytest.raises(ModelFileError, match="Expected a fitted LogisticRegression, got Pipeline"):
        check_model(Pipeline([("model", LogisticRegression())]))
    with pytest.raises(ModelFileError, match="not fitted"):
        check_model(LogisticRegression())
    model = _fit("breast-cancer")
    model.coef_[0, 0] = np.nan
    with pytest.raises(ModelFileError, match="NaN or infinity"):
        check_model(model)


def test_a_model_for_another_dataset_is_refused_naming_the_one_that_fits(good):
    model = load_model(good)
    assert datasets_fitting(64, np.arange(10)) == ["digits"]
    with pytest.raises(
        ModelFileError, match="expects 64 features, but the dataset has 784 .*fits digits: select that"
    ):
        check_model_fits(model, load_dataset("mnist-5k"))
    with pytest.raises(
        ModelFileError, match="predicts classes 0–4, but the dataset has 0–9 .*No dataset of this demo"
    ):
        check_model_fits(_fit("digits", classes=5), load_dataset("digits"))
