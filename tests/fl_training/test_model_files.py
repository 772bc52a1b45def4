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
from tests.helpers import (
    CreatesFile,
    PeakMemory,
    crafted_skops_files,
    fit_logistic,
    hostile_files,
    read_schema,
    rezip,
)

# The test models are fitted briefly; how well they converge does not matter here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _fit(dataset_name: str, *, classes: int | None = None) -> LogisticRegression:
    return fit_logistic(dataset_name, classes=classes, max_iter=50)


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
    path.write_bytes(pickle.dumps(CreatesFile(marker)))
    expected = PICKLE_REFUSED.format(name=path.name)
    assert "Pickle/joblib files are refused" in expected
    for check in (audit_model_file, load_model):
        with pytest.raises(ModelFileError) as refused:
            check(path)
        assert str(refused.value) == expected
    assert not marker.exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("pickle + skops polyglot", "Pickle/joblib files are refused"),  # a pickle before a skops archive
        ("pickled numpy array in skops", "could not be loaded"),  # a pickled array inside a skops file
    ],
)
def test_a_pickle_before_or_inside_a_skops_archive_is_refused_and_runs_nothing(tmp_path, good, kind, message):
    marker = tmp_path / "pwned"
    hostile = hostile_files(tmp_path, marker, good)[kind]
    with pytest.raises(ModelFileError, match=message):
        load_model(hostile)
    assert not marker.exists()


def test_files_naming_other_types_are_refused_before_loading(tmp_path, good):
    crafted = crafted_skops_files(good, tmp_path)  # the pipeline is one skops itself would trust
    for path, message in [
        (crafted["pipeline"], "outside the allow-list: sklearn.pipeline.Pipeline"),
        (crafted["function"], r"os.system \(as FunctionNode\)"),
        (crafted["other class"], "subprocess.Popen"),
    ]:
        for check in (audit_model_file, load_model):
            with pytest.raises(ModelFileError, match=message):
                check(path)


def test_archives_that_are_too_big_deep_or_not_skops_are_refused(tmp_path, good):
    crafted = crafted_skops_files(good, tmp_path)
    bomb, deep, not_skops = crafted["bomb"], crafted["deep"], crafted["not skops"]
    assert bomb.stat().st_size < MAX_MODEL_FILE_BYTES  # refused for what it unpacks to, not its size
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


def _naming_one_array(good: Path, target: Path, mentions: int, array: np.ndarray | None = None) -> Path:
    """``good`` with its coefficients' array file named ``mentions`` more times (a list of arrays).

    The entry is renamed ``a.npy`` and the schema written compactly, so that
    hundreds of mentions fit in schema.json's bound. Every mention has its own
    ``__id__``: skops reads the entry again for each (it only reuses a node of
    the same ``__id__``).
    """
    schema = read_schema(good)
    state = schema["content"]["content"]
    old_name = state["coef_"]["file"]
    node = {**state["coef_"], "file": "a.npy"}
    state["coef_"] = node
    state["n_iter_"] = {
        "__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "__id__": 1,
        "content": [{**node, "__id__": 10 + i} for i in range(mentions)],
    }
    content = io.BytesIO()
    with zipfile.ZipFile(good) as archive:
        np.save(content, _archive_array(archive, old_name) if array is None else array)
    compact = json.dumps(schema, separators=(",", ":")).encode()
    return rezip(good, target, {old_name: None, "a.npy": content.getvalue(), "schema.json": compact})


def _archive_array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.load(io.BytesIO(archive.read(name)), allow_pickle=False)


def test_a_file_naming_one_big_array_many_times_is_refused_before_skops_reads_it(tmp_path, good):
    # One 3.9 MB array named 501 times (with the model's other two arrays, 503 mentions): every bound
    # on the archive holds, but skops would read ~1.9 GB.
    big = np.zeros(3_900_000 // 8)
    hostile = _naming_one_array(good, tmp_path / "reads.skops", mentions=500, array=big)
    with zipfile.ZipFile(hostile) as archive:
        assert archive.getinfo("schema.json").file_size <= MAX_SCHEMA_BYTES
        assert sum(entry.file_size for entry in archive.infolist()) <= MAX_MODEL_UNPACKED_BYTES
    assert hostile.stat().st_size < 16 * 1024

    with PeakMemory() as peak:
        for check in (audit_model_file, load_model):
            with pytest.raises(ModelFileError, match=(
                r"names its array files 503 times, so loading it would read 1863.4 MB .*; loading a model "
                r"file may read at most 4.0 MB .*, each array once: save a fitted scikit-learn"
            )):
                check(hostile)
    assert peak.growth < 100 * 2**20, f"{peak.growth / 2**20:.0f} MB"


def test_an_array_file_named_twice_is_refused_even_when_small(tmp_path, good):
    twice = _naming_one_array(good, tmp_path / "twice.skops", mentions=1)
    with pytest.raises(ModelFileError, match=r"the same array file more than once: 'a.npy' \(2 times\)"):
        load_model(twice)


def test_a_schema_naming_an_array_file_the_archive_lacks_is_refused(tmp_path, good):
    schema = read_schema(good)
    schema["content"]["content"]["coef_"]["file"] = "missing.npy"
    lacking = rezip(good, tmp_path / "lacking.skops", {"schema.json": json.dumps(schema).encode()})
    with pytest.raises(ModelFileError, match="array file 'missing.npy' that the archive does not hold"):
        audit_model_file(lacking)


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
