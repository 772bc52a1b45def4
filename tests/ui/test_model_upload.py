"""Uploaded model files, against a launched demo (127.0.0.1) with real Concrete ML and FHE server.

Hostile pickles run nothing, skops files naming other types are refused before
loading, a model for another dataset is refused naming the one that fits, and
oversize uploads get 413, through the handler and the API alike. What the model
file audit itself refuses is tested in ``tests/fl_training/test_model_files.py``.
"""

from __future__ import annotations

import pickle

import gradio as gr
import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from fl_training.model_io import MAX_MODEL_FILE_BYTES
from tests.helpers import call, crafted_skops_files, hostile_files, new_client, upload_model

# `model_files` (tests/ui/conftest.py): one model file per dataset, and some that fit none.


def test_hostile_pickles_run_nothing_through_the_handler_or_the_api(launched_app, model_files, tmp_path):
    marker = tmp_path / "pwned"
    hostile = hostile_files(tmp_path, marker, model_files["digits"])
    # Sanity: the payload does create the file when unpickled.
    pickle.loads(hostile["pickle"].read_bytes())
    assert marker.exists()
    marker.unlink()

    session = launched_app.registry.new_session()
    client = new_client(launched_app)
    for kind, path in hostile.items():
        with pytest.raises(gr.Error, match="skops") as refused:
            call(launched_app.demo, "upload_model", str(path), "digits", session)
        assert "refused" in str(refused.value) or "could not be loaded" in str(refused.value), kind
        with pytest.raises(AppError, match="skops|could not be loaded"):
            client.predict(file=handle_file(str(path)), dataset="digits", api_name="/upload_model")
        assert not marker.exists(), f"{kind}: the payload ran"
    assert session.model is None
    # The app still works for a valid file afterwards.
    summary = upload_model(client, model_files["digits"])
    assert summary["source"] == "uploaded" and summary["accuracy"] > 0.9


def test_skops_files_naming_other_types_are_refused_before_loading(launched_app, model_files, tmp_path):
    crafted = crafted_skops_files(model_files["digits"], tmp_path)  # the pipeline: one skops would trust
    session = launched_app.registry.new_session()
    for kind, message in [
        ("pipeline", "outside the allow-list: sklearn.pipeline.Pipeline"),
        ("function", r"os.system \(as FunctionNode\)"),
        ("other class", "subprocess.Popen"),
        ("bomb", "unpacks to .* at most 16 files and 4.0 MB"),
        ("deep", "not a valid skops file"),
        ("not skops", "has no schema.json"),
    ]:
        with pytest.raises(gr.Error, match=message):
            call(launched_app.demo, "upload_model", str(crafted[kind]), "digits", session)
    assert session.model is None
    # Refused for what it unpacks to, not for its size.
    assert crafted["bomb"].stat().st_size < MAX_MODEL_FILE_BYTES


def test_a_model_for_another_dataset_is_refused_saying_what_would_fit(launched_app, model_files):
    session = launched_app.registry.new_session()
    for model, dataset, message in [
        ("digits", "mnist-5k", "expects 64 features, but the dataset has 784 .*fits digits: select that"),
        ("breast-cancer", "digits", "expects 30 features, but the dataset has 64 .*fits breast-cancer"),
        ("digits-0-4", "digits", "predicts classes 0–4, but the dataset has 0–9 .*No dataset of this demo"),
        ("5-features", "breast-cancer", "No dataset of this demo fits the model .*mnist-5k: 784 features"),
    ]:
        with pytest.raises(gr.Error, match=message):
            call(launched_app.demo, "upload_model", str(model_files[model]), dataset, session)
    assert session.model is None
    with pytest.raises(AppError, match="fits digits"):
        upload_model(new_client(launched_app), model_files["digits"], "breast-cancer")


def test_oversize_uploads_are_refused_with_413(launched_app, model_files):
    with httpx.Client(base_url=launched_app.url, timeout=60) as http:
        big = http.post("/gradio_api/upload", files={"files": ("big.skops", bytes(MAX_MODEL_FILE_BYTES + 1))})
        assert big.status_code == 413, big.text
        small = http.post("/gradio_api/upload",
                          files={"files": ("m.skops", model_files["digits"].read_bytes())})
        assert small.status_code == 200
