"""The UI handlers called directly: real Flower, real Concrete ML, real HTTP FHE server.

One module-wide session trains digits (3 clients, 2 rounds) once; the tests
then walk the steps in order, and check refusals and state preservation on the way.
"""

from __future__ import annotations

import math
import os
import pickle
import stat
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import story.base
import story.compiling
from fl_training.datasets import load_dataset
from fl_training.model_io import save_model
from fl_training.task import train_centralized
from tests.helpers import SMALL_TRAINING, call, handler, handler_named

# `app` (tests/ui/conftest.py): the demo's Blocks and registry, not launched; one per module.


def digit_drawing(size: int = 280) -> np.ndarray:
    """An RGBA sketch of a "1": a thick black vertical stroke on a transparent canvas."""
    image = np.zeros((size, size, 4), dtype=np.uint8)
    image[size // 6 : size - size // 6, size // 2 - 12 : size // 2 + 12] = (0, 0, 0, 255)
    return image


@pytest.fixture(scope="module")
def trained(app):
    demo, registry = app
    session = registry.new_session()
    items, last = call(demo, "train", **SMALL_TRAINING, state=session)
    return session, items, last


def test_steps_before_a_model_name_the_missing_step(app):
    demo, registry = app
    session = registry.new_session()
    with pytest.raises(gr.Error, match="No model yet"):
        call(demo, "compile", 8, "data", session)
    for step in ("keygen", "run_fhe", "decrypt"):
        with pytest.raises(gr.Error, match="No model yet"):
            call(demo, step, session)
    with pytest.raises(gr.Error, match="No model yet"):
        call(demo, "encrypt", 0, "test sample", None, session)
    with pytest.raises(gr.Error, match="No model yet"):
        call(demo, "evaluate_encrypted", 5, session)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_clients": 0}, "num_clients must be a whole number from 2 to 100, got 0"),
        ({"num_clients": 10_000}, "num_clients must be a whole number from 2 to 100"),
        ({"num_rounds": 0}, "num_rounds must be a whole number from 1 to 100"),
        ({"num_clients": math.nan}, "num_clients must be a whole number"),
        ({"num_clients": "three"}, "num_clients must be a whole number"),
        ({"alpha": math.inf, "partitioning": "dirichlet"}, "alpha must be a number"),
        ({"dataset": "cifar"}, "dataset must be one of mnist-5k, mnist, digits, breast-cancer, got 'cifar'"),
        ({"differential_privacy": True, "strategy": "fedmedian"}, "fedavg"),
        ({"partitioning": "pathological", "classes_per_client": 11}, "classes_per_client must be at most 10"),
    ],
)
def test_bad_training_settings_are_refused_before_flower_starts(app, settings, message):
    demo, registry = app
    session = registry.new_session()
    with pytest.raises(gr.Error, match=message):
        call(demo, "train", **{**SMALL_TRAINING, **settings}, state=session)
    assert session.model is None


def test_training_streams_every_round_then_a_summary(trained):
    session, items, last = trained
    summary_json, status, _plot, log, summary_md, model_file, state, _pipeline, shown = last
    assert shown["model"] == session.versions()["model"]  # tab 1 knows it drew this model
    # Rounds are shown while Flower runs, each log the one before plus what came since (rounds that
    # come within MIN_UPDATE_SECONDS of the last update are shown with the next); the summary has all.
    logs = [list(item[3]["round"]) for item in items[1:-1] if str(item[1]).startswith("… Round")]
    assert all(log == list(range(len(log))) for log in logs)
    assert all(len(a) < len(b) for a, b in zip(logs, logs[1:], strict=False))
    assert list(log["round"]) == [0, 1, 2]
    assert {"accuracy", "rounds", "clients", "seconds", "history"} <= set(summary_json)
    assert summary_json["rounds"] == 2 and summary_json["clients"] == 3
    assert summary_json["accuracy"] > 0.8
    assert 0.8 < summary_json["baseline_accuracy"] <= 1.0
    assert "Centrally trained baseline" in summary_md
    assert Path(model_file).suffix == ".skops" and Path(model_file).is_file()
    assert state is session and session.model.dataset == "digits"


def test_a_finished_shared_run_is_shown_in_two_updates_not_one_per_round(app, trained):
    demo, registry = app
    items, last = call(demo, "train", **SMALL_TRAINING, state=registry.new_session())
    # The notice at the click, then the result: rounds that come at once are not sent one by one.
    assert len(items) == 2, [str(item[1]) for item in items]
    assert list(last[3]["round"]) == [0, 1, 2] and last[0]["accuracy"] == trained[2][0]["accuracy"]


def test_label_distribution_preview_follows_the_settings(app):
    demo, _ = app
    preview = handler_named(demo, "preview_distribution")
    figure, note = preview("digits", 4, 2, "pathological", 0.5, 2, "fedavg", 10, 0, False, 0.5, 5.0)
    assert figure is not None and "4 clients" in note and "2.0 of 10 labels" in note
    figure, note = preview("digits", 1000, 2, "iid", 0.5, 2, "fedavg", 10, 0, False, 0.5, 5.0)
    assert figure is None and note.startswith("⚠") and "num_clients" in note


def offline_mnist(monkeypatch, data_dir: Path) -> None:
    """Full MNIST not cached in ``data_dir``, and openml.org out of reach (as on an offline host)."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("FL_DATA_DIR", str(data_dir))
    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)


def test_the_label_preview_says_before_start_that_mnist_needs_a_download(app, monkeypatch, tmp_path):
    demo, _ = app
    offline_mnist(monkeypatch, tmp_path)
    figure, note = handler_named(demo, "preview_distribution")(
        "mnist", 4, 2, "iid", 0.5, 2, "fedavg", 10, 0, False, 0.5, 5.0)
    assert figure is None and "not on this host yet" in note and "mnist-5k" in note
    assert str(tmp_path) not in note


def test_a_failed_training_shows_the_current_model_again(trained, app, monkeypatch, tmp_path):
    demo, _ = app
    session, _, (summary, *_) = trained
    offline_mnist(monkeypatch, tmp_path)
    updates = []
    with pytest.raises(gr.Error, match="mnist-5k") as failed:
        for update in handler(demo, "train")(dataset="mnist", num_clients=3, num_rounds=2, state=session):
            updates.append(update)
    assert str(tmp_path) not in str(failed.value)
    shown, status, chart, log, summary_md, model_file, *_ = updates[-1]
    assert status.startswith("✗ Training failed: Full MNIST could not be downloaded")
    assert str(tmp_path) not in status
    assert shown["accuracy"] == summary["accuracy"] == session.model.summary["accuracy"]  # the digits model
    assert chart is not None and len(log) == 3 and "Federated model" in summary_md and model_file


def test_the_label_preview_says_n_samples_each_when_all_clients_hold_as_many(app):
    preview = handler_named(app[0], "preview_distribution")
    settings = ("iid", 0.5, 2, "fedavg", 1, 0, False, 0.5, 5.0)
    _, note = preview("digits", 3, 1, *settings)  # 1,437 training samples: 479 each
    assert note.startswith("3 clients hold 479 samples each;"), note
    _, note = preview("digits", 2, 1, *settings)
    assert note.startswith("2 clients hold 718–719 samples each;"), note


def test_compile_refuses_bad_n_bits_and_keeps_the_session(trained, app):
    demo, _ = app
    session = trained[0]
    model = session.model
    for bad in (0, 1, 17, 64, math.nan, "8"):
        with pytest.raises(gr.Error, match="n_bits must be a whole number from 2 to 16"):
            call(demo, "compile", bad, "data", session)
    with pytest.raises(gr.Error, match="calibration"):
        call(demo, "compile", 8, "telepathy", session)
    assert session.model is model and session.deployment is None


def test_compile_reports_accuracy_and_serves_public_files_only(trained, app):
    demo, registry = app
    session = trained[0]
    summary, text, table, client_zip, server_zip, *_ = call(demo, "compile", 8, "random", session)
    for key in ("n_bits", "max_bit_width", "compile_seconds", "accuracy_clear", "accuracy_fhe_simulated"):
        assert key in summary
    assert summary["n_bits"] == 8 and summary["calibration"] == "random"
    assert summary["accuracy_fhe_simulated"] > 0.8
    assert len(table) == 4 and "Compiled in" in text
    for path in (client_zip, server_zip):
        path = Path(path)
        assert path.is_file()
        assert registry.keys_root not in path.parents


def test_steps_after_compile_refuse_to_run_out_of_order(trained, app):
    demo, _ = app
    session = trained[0]
    if session.deployment is None:
        call(demo, "compile", 8, "data", session)
    with pytest.raises(gr.Error, match="No keys yet: run step ① Key generation"):
        call(demo, "encrypt", 0, "test sample", None, session)
    with pytest.raises(gr.Error, match="No keys yet"):
        call(demo, "evaluate_encrypted", 5, session)
    call(demo, "keygen", session)
    with pytest.raises(gr.Error, match="Nothing is encrypted for this input yet: encrypt this input first"):
        call(demo, "run_fhe", session)
    with pytest.raises(gr.Error, match="encrypt this input first"):
        call(demo, "decrypt", session)


def test_keygen_keeps_the_private_key_in_a_private_session_directory(trained, app):
    demo, registry = app
    session = trained[0]
    result, text, *_ = call(demo, "keygen", session)
    assert result["private_key_bytes"] > 1000
    assert 0 < result["evaluation_key_bytes"]
    assert result["seconds"] >= 0
    assert "0.00 MB" not in text and "bytes" in text
    key_dir = session.keys.key_dir
    assert key_dir.parent == registry.keys_root
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700
    assert any(key_dir.rglob("*"))


def test_four_steps_give_the_clear_models_prediction(trained, app):
    demo, _ = app
    session = trained[0]
    if session.keys is None:
        call(demo, "keygen", session)
    dataset = load_dataset("digits")
    index = 7
    encrypted, text, picture, *_ = call(demo, "encrypt", index, "test sample", None, session)
    assert encrypted["label"] == int(dataset.y_test[index])
    assert encrypted["ciphertext_bytes"] > 100 and encrypted["seconds"] >= 0
    assert picture.shape[0] > 8  # the quantized input, upscaled
    ran, run_text, *_ = call(demo, "run_fhe", session)
    assert ran["output_ciphertext_bytes"] > 0 and ran["seconds"] > 0
    assert "never sent" in run_text
    decrypted, decrypt_text, plot, *_ = call(demo, "decrypt", session)
    clear = int(session.model.model.predict(dataset.X_test[index : index + 1])[0])
    assert decrypted["prediction"] == decrypted["clear_prediction"] == clear
    assert math.isclose(sum(decrypted["probabilities"]), 1.0, rel_tol=1e-6)
    assert plot is not None and f"Prediction: {clear}" in decrypt_text

    wrong, wrong_text, _ = call(demo, "decrypt_wrong_key", session)
    assert wrong["decrypted"]
    assert not np.allclose(wrong["probabilities"], decrypted["probabilities"], atol=1e-3)
    assert "wrong" not in session.keys.key_dir.name  # the intruder's keys went elsewhere and are gone
    assert not list(session.keys.key_dir.parent.glob("intruder-*"))


def test_bad_sample_index_keeps_the_previous_ciphertext(trained, app):
    demo, _ = app
    session = trained[0]
    if session.encrypted is None:
        call(demo, "keygen", session)
        call(demo, "encrypt", 0, "test sample", None, session)
    before = session.encrypted
    n_test = len(load_dataset("digits").X_test)
    for bad in (n_test, -1, 2.5, math.nan):
        with pytest.raises(gr.Error, match=f"sample_index must be a whole number from 0 to {n_test - 1}"):
            call(demo, "encrypt", bad, "test sample", None, session)
    with pytest.raises(gr.Error, match="drawing is blank"):
        call(demo, "encrypt", 0, "drawing", None, session)
    with pytest.raises(gr.Error, match="drawing is blank"):
        call(demo, "encrypt", 0, "drawing", {"composite": np.zeros((50, 50, 4), np.uint8)}, session)
    assert session.encrypted is before


def test_a_new_input_forgets_the_old_ones_ciphertext_and_results(trained, app):
    demo, _ = app
    session = trained[0]
    preview = handler_named(demo, "preview")
    if session.keys is None:
        call(demo, "keygen", session)
    call(demo, "encrypt", 3, "test sample", None, session)
    call(demo, "run_fhe", session)
    call(demo, "decrypt", session)
    *_, status = preview("test sample", 3, None, session)  # the input shown is the one encrypted: kept
    assert session.decrypted is not None and status == gr.skip()
    for source, index, drawing in (("test sample", 4, None), ("drawing", 3, None),
                                   ("drawing", 3, {"composite": digit_drawing()})):
        if session.encrypted is None:
            call(demo, "encrypt", 3, "test sample", None, session)
            call(demo, "run_fhe", session)
        *_, status = preview(source, index, drawing, session)
        assert session.encrypted is session.server_output is session.decrypted is None, source
        assert "○ encrypted · ○ server ran · ○ decrypted" in status
        for step in ("run_fhe", "decrypt"):
            with pytest.raises(gr.Error, match="encrypt this input first"):
                call(demo, step, session)
    # A drawing encrypted, then the same drawing shown again (a tab switch): kept; cleared canvas: forgotten.
    call(demo, "encrypt", 0, "drawing", {"composite": digit_drawing()}, session)
    preview("drawing", 0, {"composite": digit_drawing()}, session)
    assert session.encrypted is not None
    preview("drawing", 0, None, session)
    assert session.encrypted is None


def test_a_drawing_goes_through_the_encrypted_path(trained, app):
    demo, _ = app
    session = trained[0]
    if session.keys is None:
        call(demo, "keygen", session)
    encrypted, *_ = call(demo, "encrypt", 0, "drawing", {"composite": digit_drawing()}, session)
    assert encrypted["source"] == "drawing" and encrypted["label"] is None
    assert session.encrypted.x.shape == (64,) and session.encrypted.x.max() == pytest.approx(16.0)
    call(demo, "run_fhe", session)
    decrypted, *_ = call(demo, "decrypt", session)
    assert decrypted["prediction"] == decrypted["clear_prediction"]


def test_encrypted_evaluation_matches_the_clear_model(trained, app):
    demo, _ = app
    session = trained[0]
    if session.keys is None:
        call(demo, "keygen", session)
    with pytest.raises(gr.Error, match="num_samples must be a whole number from 1 to"):
        call(demo, "evaluate_encrypted", 0, session)
    items, (result, text, table, _state) = call(demo, "evaluate_encrypted", 12, session)
    assert result["samples"] == 12
    assert result["accuracy_fhe"] == pytest.approx(result["accuracy_clear"], abs=1 / 12)
    assert result["seconds_per_sample"] > 0 and result["samples_per_second"] > 0
    assert "Encrypted accuracy" in text and len(table) >= 4


def test_uploading_a_model_checks_format_and_dataset(app, tmp_path):
    demo, registry = app
    session = registry.new_session()
    digits = load_dataset("digits")
    model = train_centralized(digits, max_iter=50)

    pickled = tmp_path / "model.skops"
    pickled.write_bytes(pickle.dumps(model))
    with pytest.raises(gr.Error, match="Pickle/joblib files are refused"):
        call(demo, "upload_model", str(pickled), "digits", session)
    good = save_model(model, tmp_path / "digits.skops")
    with pytest.raises(gr.Error, match="expects 64 features, but the dataset has 784"):
        call(demo, "upload_model", str(good), "mnist-5k", session)
    with pytest.raises(gr.Error, match="No file"):
        call(demo, "upload_model", None, "digits", session)
    assert session.model is None

    summary, text, model_file, *_ = call(demo, "upload_model", str(good), "digits", session)
    assert summary["source"] == "uploaded" and summary["accuracy"] > 0.8
    assert Path(model_file).is_file()
    compiled, *_ = call(demo, "compile", 6, "data", session)
    assert compiled["n_bits"] == 6


def test_sessions_are_isolated_and_wiped_when_the_tab_closes(trained, app):
    demo, registry = app
    other = registry.resolve(None, "tab-b")
    with pytest.raises(gr.Error, match="No model yet"):
        call(demo, "compile", 8, "data", other)

    mine = registry.resolve(None, "tab-a")
    call(demo, "upload_model", str(trained[0].model.model_file), "digits", mine)
    call(demo, "compile", 8, "data", mine)
    call(demo, "keygen", mine)
    key_dir = mine.keys.key_dir
    assert other.keys is None and key_dir.is_dir()

    registry.close("tab-a")  # what demo.unload does
    assert not key_dir.exists()
    with pytest.raises(gr.Error, match="session has ended"):
        call(demo, "encrypt", 0, "test sample", None, mine)


def test_idle_sessions_are_wiped_after_the_ttl(app):
    _, registry = app
    session = registry.resolve(None, "idle-tab")
    session.last_used -= registry.idle_ttl_seconds + 1
    assert registry.sweep() >= 1
    assert session.closed


def test_compile_works_from_any_thread_without_a_ui_workaround(trained, app):
    # Gradio runs each event on a pool thread; Concrete only set up the importing thread's state.
    import concrete.fhe  # noqa: F401 - Concrete's thread-local state now belongs to this thread

    assert not any(hasattr(module, "prepare_concrete_thread") for module in (story.base, story.compiling))
    demo, _ = app
    session = trained[0]
    outcomes: list = []
    compile_step = handler(demo, "compile")
    for n_bits in (4, 5):  # each in a fresh thread
        thread = threading.Thread(target=lambda b=n_bits: outcomes.append(compile_step(b, "data", session)))
        thread.start()
        thread.join(120)
    assert [summary["n_bits"] for summary, *_ in outcomes] == [4, 5]


def test_a_queued_training_says_how_long_it_waited_and_how_long_it_ran():
    from ui.training_tab import done_text

    assert done_text(3, 5, 1.6, waited=22.4) == (
        "✓ Done: 3 rounds with 5 clients. Waited 22.4 s for the training runtime, then ran in 1.6 s.")
    assert done_text(3, 5, 1.6) == "✓ Done: 3 rounds with 5 clients in 1.6 s."
