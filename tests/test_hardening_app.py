"""Hardening of the app, against a launched demo (127.0.0.1) with real Concrete ML and FHE server.

Uploaded model files, steps called out of order, bad values, file serving,
isolation of concurrent sessions and what a session leaves behind. Models
are uploaded rather than trained here; training is exercised in
``test_hardening_repeated.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import stat
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr
import httpx
import joblib
import numpy as np
import pytest
import skops.io as sio
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

import story.base
import story.compiling
from fl_training.datasets import load_dataset
from fl_training.model_io import MAX_MODEL_FILE_BYTES, MAX_MODEL_UNPACKED_BYTES, save_model
from tests.app_fixtures import handler, launched_app  # noqa: F401 - fixture
from tests.model_files import read_schema, rezip

# The test models are fitted briefly; how well they converge does not matter here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file exists only if the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fit(dataset_name: str, *, classes: int | None = None, features: int | None = None, C: float = 1.0):
    dataset = load_dataset(dataset_name)
    X, y = np.array(dataset.X_train), np.array(dataset.y_train)
    if classes is not None:
        X, y = X[y < classes], y[y < classes]
    if features is not None:
        X = X[:, :features]
    return LogisticRegression(max_iter=300, C=C).fit(X, y)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Model files: one per dataset, and some that fit no dataset of the demo."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "digits": save_model(_fit("digits"), folder / "digits.skops"),
        "breast-cancer": save_model(_fit("breast-cancer"), folder / "breast.skops"),
        "digits-0-4": save_model(_fit("digits", classes=5), folder / "digits04.skops"),
        "5-features": save_model(_fit("digits", features=5), folder / "five.skops"),
    }


def _client(app) -> Client:
    """A new browser-like session; output files stay on the server (nothing is downloaded)."""
    return Client(app.url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def stateless_client(launched_app) -> Client:  # noqa: F811
    """One session for calls that are refused before they touch any session state."""
    return _client(launched_app)


def _upload(client: Client, path: Path, dataset: str = "digits") -> dict:
    return client.predict(file=handle_file(str(path)), dataset=dataset, api_name="/upload_model")[0]


def _file_data(path: str | Path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _call(demo: gr.Blocks, api_name: str, *args, **kwargs):
    result = handler(demo, api_name)(*args, **kwargs)
    return list(result)[-1] if hasattr(result, "__next__") else result


def _hostile_files(folder: Path, marker: Path, good: Path) -> dict[str, Path]:
    """Files that would create ``marker`` if anything unpickled them."""
    payload = pickle.dumps(_CreatesFile(marker))
    files = {}
    files["pickle named .skops"] = folder / "model.skops"
    files["pickle named .skops"].write_bytes(payload)
    files["pickle"] = folder / "model.pkl"
    files["pickle"].write_bytes(payload)
    files["joblib"] = folder / "model.joblib"
    joblib.dump(_CreatesFile(marker), files["joblib"])
    # A pickle followed by a valid skops archive: zip readers find the archive at the end.
    files["pickle + skops polyglot"] = folder / "polyglot.skops"
    files["pickle + skops polyglot"].write_bytes(payload + good.read_bytes())
    # A valid skops schema whose array file is a pickled object array.
    npy = io.BytesIO()
    np.save(npy, np.array([_CreatesFile(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as archive:
        array_file = next(name for name in archive.namelist() if name.endswith(".npy"))
    files["pickled numpy array in skops"] = rezip(good, folder / "npy.skops", {array_file: npy.getvalue()})
    return files


# -- uploaded model files ------------------------------------------------------


def test_hostile_pickles_run_nothing_through_the_handler_or_the_api(launched_app, models, tmp_path):  # noqa: F811
    marker = tmp_path / "pwned"
    hostile = _hostile_files(tmp_path, marker, models["digits"])
    # Sanity: the payload does create the file when unpickled.
    pickle.loads(hostile["pickle"].read_bytes())
    assert marker.exists()
    marker.unlink()

    session = launched_app.registry.new_session()
    client = _client(launched_app)
    for kind, path in hostile.items():
        with pytest.raises(gr.Error, match="skops") as refused:
            _call(launched_app.demo, "upload_model", str(path), "digits", session)
        assert "refused" in str(refused.value) or "could not be loaded" in str(refused.value), kind
        with pytest.raises(AppError, match="skops|could not be loaded"):
            client.predict(file=handle_file(str(path)), dataset="digits", api_name="/upload_model")
        assert not marker.exists(), f"{kind}: the payload ran"
    assert session.model is None
    # The app still works for a valid file afterwards.
    summary = _upload(client, models["digits"])
    assert summary["source"] == "uploaded" and summary["accuracy"] > 0.9


def test_skops_files_naming_other_types_are_refused_before_loading(launched_app, models, tmp_path):  # noqa: F811
    good = models["digits"]
    model = sio.load(good, trusted=True)
    pipeline = tmp_path / "pipeline.skops"
    sio.dump(Pipeline([("model", model)]), pipeline)  # skops itself would trust this one

    schema = read_schema(good)
    schema["content"]["content"]["solver"] = {
        "__class__": "system", "__module__": "os", "__loader__": "FunctionNode",
        "content": {"module_path": "os", "function": "system"}, "__id__": 1,
    }
    function = rezip(good, tmp_path / "function.skops", {"schema.json": json.dumps(schema).encode()})
    schema = read_schema(good)
    schema["__class__"], schema["__module__"] = "Popen", "subprocess"
    other_class = rezip(good, tmp_path / "popen.skops", {"schema.json": json.dumps(schema).encode()})
    bomb = rezip(good, tmp_path / "bomb.skops", {}, {"padding.bin": bytes(MAX_MODEL_UNPACKED_BYTES + 1)})
    deep = rezip(good, tmp_path / "deep.skops", {"schema.json": b"[" * 30_000 + b"]" * 30_000})
    not_skops = tmp_path / "archive.skops"
    with zipfile.ZipFile(not_skops, "w") as archive:
        archive.writestr("model.pkl", pickle.dumps(model))

    session = launched_app.registry.new_session()
    for path, message in [
        (pipeline, "outside the allow-list: sklearn.pipeline.Pipeline"),
        (function, r"os.system \(as FunctionNode\)"),
        (other_class, "subprocess.Popen"),
        (bomb, "unpacks to .* at most 16 files and 4.0 MB"),
        (deep, "not a valid skops file"),
        (not_skops, "has no schema.json"),
    ]:
        with pytest.raises(gr.Error, match=message):
            _call(launched_app.demo, "upload_model", str(path), "digits", session)
    assert session.model is None
    assert bomb.stat().st_size < MAX_MODEL_FILE_BYTES  # refused for what it unpacks to, not its size


def test_a_model_for_another_dataset_is_refused_saying_what_would_fit(launched_app, models):  # noqa: F811
    session = launched_app.registry.new_session()
    for model, dataset, message in [
        ("digits", "mnist-5k", "expects 64 features, but the dataset has 784 .*fits digits: select that"),
        ("breast-cancer", "digits", "expects 30 features, but the dataset has 64 .*fits breast-cancer"),
        ("digits-0-4", "digits", "predicts classes 0–4, but the dataset has 0–9 .*No dataset of this demo"),
        ("5-features", "breast-cancer", "No dataset of this demo fits the model .*mnist-5k: 784 features"),
    ]:
        with pytest.raises(gr.Error, match=message):
            _call(launched_app.demo, "upload_model", str(models[model]), dataset, session)
    assert session.model is None
    with pytest.raises(AppError, match="fits digits"):
        _upload(_client(launched_app), models["digits"], "breast-cancer")


def test_oversize_uploads_are_refused_with_413(launched_app, models):  # noqa: F811
    with httpx.Client(base_url=launched_app.url, timeout=60) as http:
        big = http.post("/gradio_api/upload", files={"files": ("big.skops", bytes(MAX_MODEL_FILE_BYTES + 1))})
        assert big.status_code == 413, big.text
        small = http.post("/gradio_api/upload", files={"files": ("m.skops", models["digits"].read_bytes())})
        assert small.status_code == 200


# -- steps out of order and bad values -------------------------------------------


def _blank_png(path: Path) -> Path:
    Image.new("RGBA", (280, 280), (255, 255, 255, 255)).save(path)
    return path


def test_every_step_out_of_order_names_the_missing_step_through_the_api(launched_app, models, tmp_path):  # noqa: F811
    client = _client(launched_app)

    def refused(api_name: str, message: str, **kwargs) -> None:
        with pytest.raises(AppError, match=message):
            client.predict(api_name=api_name, **kwargs)

    for api_name in ("/compile", "/n_bits_sweep", "/keygen", "/encrypt", "/run_fhe", "/decrypt",
                     "/decrypt_wrong_key", "/evaluate_encrypted"):
        refused(api_name, "No model yet: train one in tab 1")
    _upload(client, models["digits"])
    for api_name in ("/keygen", "/encrypt", "/run_fhe", "/decrypt", "/decrypt_wrong_key"):
        refused(api_name, r"not compiled yet: run tab 2")
    client.predict(n_bits=6, api_name="/compile")
    for api_name in ("/encrypt", "/run_fhe", "/decrypt", "/evaluate_encrypted"):
        refused(api_name, "No keys yet: run step ① Key generation first")
    client.predict(api_name="/keygen")
    for api_name in ("/run_fhe", "/decrypt", "/decrypt_wrong_key"):
        refused(api_name, "Nothing is encrypted yet: run step ② Encryption first")

    dataset = load_dataset("digits")
    last = len(dataset.X_test) - 1
    for index in (last + 1, -1, 2.5):
        refused("/encrypt", f"sample_index must be a whole number from 0 to {last}", sample_index=index)
    blank = handle_file(str(_blank_png(tmp_path / "blank.png")))
    refused("/encrypt", "The drawing is blank", source="drawing",
            drawing={"background": blank, "layers": [], "composite": blank})
    refused("/encrypt", "source must be one of|not in the list of choices", source="microphone")

    encrypted = client.predict(sample_index=last, api_name="/encrypt")[0]
    assert encrypted["label"] == int(dataset.y_test[last])
    refused("/decrypt", "run step ③ FHE execution first")
    client.predict(api_name="/run_fhe")
    decrypted = client.predict(api_name="/decrypt")[0]
    assert decrypted["prediction"] == decrypted["clear_prediction"]


@pytest.mark.parametrize(
    ("api_name", "kwargs", "message"),
    [
        ("/train", {"num_clients": 0}, "num_clients must be a whole number from 2 to 100, got 0"),
        ("/train", {"num_clients": 10_000}, "num_clients must be a whole number from 2 to 100, got 10000"),
        ("/train", {"num_rounds": 0}, "num_rounds must be a whole number from 1 to 100, got 0"),
        ("/train", {"local_epochs": 10**9}, "local_epochs must be a whole number"),
        ("/train", {"partitioning": "dirichlet", "alpha": 0}, "alpha must be a number from"),
        ("/train", {"seed": -1}, "seed must be a whole number from 0"),
        ("/compile", {"n_bits": 0}, "n_bits must be a whole number from 2 to 16, got 0"),
        ("/compile", {"n_bits": 64}, "n_bits must be a whole number from 2 to 16, got 64"),
        ("/evaluate_encrypted", {"num_samples": 0}, "num_samples must be a whole number from 1"),
        ("/evaluate_encrypted", {"num_samples": 10**6}, "num_samples must be a whole number from 1"),
    ],
)
def test_values_outside_the_sliders_are_refused_through_the_api(stateless_client, api_name, kwargs, message):
    with pytest.raises(AppError, match=message):
        stateless_client.predict(api_name=api_name, **kwargs)


def _raw_call(url: str, api_name: str, body: str) -> str:
    """POST a hand-written JSON body (gradio_client cannot send NaN) and return the event stream."""
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post(f"/gradio_api/call/{api_name}", content=body,
                             headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return http.get(f"/gradio_api/call/{api_name}/{response.json()['event_id']}").text


def _raw_data(client: Client, api_name: str, overrides: dict[str, str]) -> str:
    """The endpoint's values as a JSON list: its defaults, with some replaced by raw JSON tokens (NaN...).

    Built from the endpoint's own description, so adding a parameter does not break the test.
    """
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"][f"/{api_name}"]
    values = [overrides.get(p["parameter_name"], json.dumps(p["parameter_default"]))
              for p in parameters["parameters"]]
    return "[" + ", ".join(values) + "]"


@pytest.mark.parametrize(
    ("api_name", "overrides", "message"),
    [
        ("train", {"partitioning": '"dirichlet"', "alpha": "NaN"}, "alpha must be a number"),
        ("train", {"differential_privacy": "true", "noise_multiplier": "Infinity"},
         "noise_multiplier must be a number"),
        ("train", {"num_rounds": "Infinity"}, "num_rounds must be a whole number from 1 to 100, got inf"),
        ("compile", {"n_bits": "NaN"}, "n_bits must be a whole number from 2 to 16, got nan"),
        ("compile", {"n_bits": "-Infinity"}, "n_bits must be a whole number from 2 to 16, got -inf"),
        ("evaluate_encrypted", {"num_samples": "NaN"}, "num_samples must be a whole number"),
    ],
)
def test_non_finite_values_get_clear_errors(launched_app, stateless_client, api_name, overrides, message):  # noqa: F811
    data = _raw_data(stateless_client, api_name, overrides)
    stream = _raw_call(launched_app.url, api_name, f'{{"data": {data}}}')
    assert "event: error" in stream
    error = json.loads(stream.split("event: error\ndata: ", 1)[1].splitlines()[0])["error"]
    assert error and re.search(message, error), error


@pytest.mark.parametrize(("api_name", "data"), [("encrypt", "[3]"), ("train", '["digits"]')])
def test_too_few_values_get_gradio_s_clear_error(launched_app, api_name, data):  # noqa: F811
    stream = _raw_call(launched_app.url, api_name, f'{{"data": {data}}}')
    assert "event: error" in stream
    error = json.loads(stream.split("event: error\ndata: ", 1)[1].splitlines()[0])["error"]
    assert re.search(r"didn't receive enough input values \(needed: \d+, got: 1\)", error), error


def test_the_label_preview_says_n_samples_each_when_all_clients_hold_as_many(launched_app):  # noqa: F811
    preview = next(f.fn for f in launched_app.demo.fns.values()
                   if getattr(f.fn, "__name__", "") == "preview_distribution")
    settings = ("iid", 0.5, 2, "fedavg", 1, 0, False, 0.5, 5.0)
    _, note = preview("digits", 3, 1, *settings)  # 1,437 training samples: 479 each
    assert note.startswith("3 clients hold 479 samples each;"), note
    _, note = preview("digits", 2, 1, *settings)
    assert note.startswith("2 clients hold 718–719 samples each;"), note


# -- isolation -------------------------------------------------------------------


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def _complete(stream: str) -> list:
    return json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])


def test_key_files_are_never_served_and_uploads_cannot_name_them(launched_app, models):  # noqa: F811
    client = _client(launched_app)
    _upload(client, models["digits"])
    session = launched_app.registry.resolve(None, client.session_hash)
    with httpx.Client(base_url=launched_app.url, timeout=30) as http:
        # What a handler returned is served, from a copy in Gradio's cache.
        body = json.dumps({"data": [6, "data"], "session_hash": client.session_hash})
        served = _complete(_raw_call(launched_app.url, "compile", body))[3]
        assert Path(served["path"]).parent.parent == Path(gr.utils.get_upload_folder()).resolve()
        response = http.get(served["url"])
        assert response.status_code == 200 and response.content[:2] == b"PK"

        client.predict(api_name="/keygen")
        key_files = _files_under(session.keys.key_dir)
        assert key_files
        # Key files, and the session's own copies of what it served, are not.
        for path in key_files + [session.model.model_file, session.deployment.files.client_zip]:
            response = http.get(f"/gradio_api/file={path}")
            assert response.status_code == 403, (path, response.status_code)

    # An API call cannot hand the app a path it did not receive as an upload.
    for path, refusal in [(key_files[0], "blocked_paths"),
                          (session.model.model_file, "not uploaded by a user")]:
        body = json.dumps({"data": [_file_data(path), "digits"]})
        stream = _raw_call(launched_app.url, "upload_model", body)
        assert "event: error" in stream and refusal in stream, stream
    assert all(path.exists() for path in key_files)
    assert session.keys is not None  # the refused call changed nothing


def test_sessions_get_private_randomly_named_directories(launched_app, models):  # noqa: F811
    registry = launched_app.registry
    clients = [_client(launched_app) for _ in range(2)]
    sessions = []
    for client in clients:
        _upload(client, models["digits"])
        sessions.append(registry.resolve(None, client.session_hash))
    work_dirs = [s.model.model_file.parent.parent for s in sessions]
    assert work_dirs[0] != work_dirs[1]
    for client, work_dir in zip(clients, work_dirs, strict=True):
        assert work_dir.parent == registry.work_root
        assert stat.S_IMODE(os.stat(work_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(registry.keys_root).st_mode) == 0o700
        assert client.session_hash not in str(work_dir)

    # A session id with path separators is a dictionary key, never a path.
    hostile_id = "../../escape-" + os.urandom(4).hex()
    with httpx.Client(base_url=launched_app.url, timeout=30) as http:
        upload = http.post("/gradio_api/upload", files={"files": ("m.skops", models["digits"].read_bytes())})
    body = json.dumps({"data": [_file_data(upload.json()[0]), "digits"], "session_hash": hostile_id})
    assert "event: complete" in _raw_call(launched_app.url, "upload_model", body)
    hostile = registry.resolve(None, hostile_id)
    assert hostile.model is not None and hostile.model.model_file.parents[1].parent == registry.work_root
    tmp = Path(registry.keys_root).parent
    for found in (list(registry.keys_root.rglob("*escape-*")), list(registry.work_root.rglob("*escape-*")),
                  list(tmp.glob("*escape-*")), list(tmp.parent.glob("*escape-*"))):
        assert not found


def test_a_session_whose_gradio_state_was_dropped_keeps_its_work(launched_app, models):  # noqa: F811
    # Gradio keeps the UI state of at most STATE_SESSION_CAPACITY sessions; one pushed out
    # (simulated here) comes back with an empty gr.State, and the registry still knows it.
    client = _client(launched_app)
    _upload(client, models["digits"])
    launched_app.demo.state_holder.session_data.pop(client.session_hash)
    with pytest.raises(AppError, match="not compiled yet"):  # not "No model yet": the model is still there
        client.predict(api_name="/keygen")


def test_concurrent_sessions_each_get_their_own_answer(launched_app, models):  # noqa: F811
    dataset = load_dataset("digits")
    model = sio.load(models["digits"], trusted=True)
    indices = [11, 222, 333]
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def walk(index: int) -> None:
        try:
            client = _client(launched_app)
            _upload(client, models["digits"])
            client.predict(n_bits=6, api_name="/compile")
            client.predict(api_name="/keygen")
            encrypted = client.predict(sample_index=index, api_name="/encrypt")[0]
            client.predict(api_name="/run_fhe")
            results[index] = (encrypted, client.predict(api_name="/decrypt")[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=walk, args=(i,)) for i in indices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    for index in indices:
        encrypted, decrypted = results[index]
        assert encrypted["sample_index"] == index and encrypted["label"] == int(dataset.y_test[index])
        assert decrypted["clear_prediction"] == int(model.predict(dataset.X_test[index : index + 1])[0])
        assert decrypted["prediction"] == decrypted["clear_prediction"]


def test_compile_runs_in_fresh_threads_without_the_ui_workaround(launched_app, models):  # noqa: F811
    import concrete.fhe  # noqa: F401 - Concrete's thread-local state now belongs to this thread

    assert not any(hasattr(module, "prepare_concrete_thread") for module in (story.base, story.compiling))
    session = launched_app.registry.new_session()
    _call(launched_app.demo, "upload_model", str(models["digits"]), "digits", session)
    outcomes: list = []
    compile_step = handler(launched_app.demo, "compile")
    for n_bits in (4, 5):
        thread = threading.Thread(target=lambda b=n_bits: outcomes.append(compile_step(b, "data", session)))
        thread.start()
        thread.join(120)
    assert [summary["n_bits"] for summary, *_ in outcomes] == [4, 5]
    session.close()


# -- what a session leaves behind ------------------------------------------------


def _end_tab(url: str, session_hash: str) -> None:
    """Open and drop a heartbeat for the session, as a closing browser tab does (runs demo.unload)."""
    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session_hash}", timeout=30) as response:
        next(response.iter_lines())


def _circuit_dirs(compiled) -> list[Path]:
    circuit = compiled.concrete_model.fhe_circuit
    return [Path(s._library.get_output_dir_path()) for s in (circuit.server, circuit.simulator)]


def test_closing_the_tab_removes_everything_the_session_made(launched_app, tmp_path, monkeypatch):  # noqa: F811
    import fhe_model.developer

    registry = launched_app.registry
    compiled_here: list = []
    compile_model = fhe_model.developer.compile_model

    def recording_compile(*args, **kwargs):
        compiled_here.append(compile_model(*args, **kwargs))
        return compiled_here[-1]

    monkeypatch.setattr(fhe_model.developer, "compile_model", recording_compile)
    # Unique bytes, so no other session of this module holds the same cached copies.
    model_file = save_model(_fit("digits", C=0.37), tmp_path / "unique.skops")
    client = _client(launched_app)
    _upload(client, model_file)
    session = registry.resolve(None, client.session_hash)
    client.predict(n_bits=5, api_name="/compile")
    client.predict(n_bits=6, api_name="/compile")  # replaces the first deployment
    assert not any(p.exists() for p in _circuit_dirs(compiled_here[0])), "the replaced circuit is still there"
    client.predict(api_name="/keygen")
    client.predict(sample_index=5, api_name="/encrypt")
    client.predict(api_name="/run_fhe")
    client.predict(api_name="/decrypt")
    assert len(session.n_bits_sweep((3,), samples=20)) == 1
    assert len(compiled_here) == 3
    for compiled in compiled_here[2:]:
        assert not any(p.exists() for p in _circuit_dirs(compiled)), "the sweep left a circuit behind"

    circuits = _circuit_dirs(compiled_here[1])
    work_dir = session.model.model_file.parent.parent
    key_dir = session.keys.key_dir
    key_id, deployment_id = session.keys.key_id, session.keys.deployment_id
    upload_folder = Path(gr.utils.get_upload_folder()).resolve()
    ours = {path.read_bytes() for path in (model_file, session.model.model_file,
                                           session.deployment.files.client_zip,
                                           session.deployment.files.server_zip)}
    cached = [p for p in _files_under(upload_folder)
              if p.suffix in (".skops", ".zip") and p.read_bytes() in ours]
    assert len(cached) >= 4  # the upload, the model offered for download, client.zip, server.zip
    assert all(p.exists() for p in circuits) and _files_under(key_dir) and _files_under(work_dir)

    _end_tab(launched_app.url, client.session_hash)
    deadline = time.monotonic() + 60  # a deadline, not a sleep: generous for a busy machine
    while not (session.closed and not work_dir.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.closed
    assert not key_dir.exists() and not work_dir.exists()
    assert not any(p.exists() for p in circuits), "Concrete's circuit directories outlived the session"
    assert not any(p.exists() for p in cached), "Gradio's copies of the session's files outlived it"
    with httpx.Client(base_url=registry.server.url, timeout=30) as http:
        assert http.post("/predict", params={"key_id": key_id}, content=b"x").status_code == 404
        assert http.get("/client.zip", params={"deployment_id": deployment_id}).status_code == 404
    with pytest.raises(AppError, match="session has ended"):
        client.predict(api_name="/keygen")


def test_two_calls_driving_one_session_at_once_get_one_step_each(launched_app, models, monkeypatch):  # noqa: F811
    """Two threads of a script (or two quick clicks in a tab) on one session: one step at a time.

    (Two browser tabs are two sessions, see above; Gradio streams one session's
    events over one connection, so concurrent calls share one client here.)
    """
    import fhe_model.client

    client = _client(launched_app)
    _upload(client, models["digits"])
    client.predict(n_bits=6, api_name="/compile")
    client.predict(api_name="/keygen")
    gate, inside = threading.Event(), threading.Event()
    encrypt = fhe_model.client.FHEClient.encrypt

    def held_encrypt(self, x):
        inside.set()
        assert gate.wait(60), "the test never released the step"
        return encrypt(self, x)

    monkeypatch.setattr(fhe_model.client.FHEClient, "encrypt", held_encrypt)
    job = client.submit(sample_index=5, api_name="/encrypt")
    try:
        assert inside.wait(60)
        for api_name, kwargs in (("/keygen", {}), ("/run_fhe", {}), ("/compile", {"n_bits": 6}),
                                 ("/evaluate_encrypted", {"num_samples": 2})):
            with pytest.raises(AppError, match="Another step of this session is still running"):
                client.predict(api_name=api_name, **kwargs)
    finally:
        gate.set()
    encrypted = job.result()[0]
    monkeypatch.undo()
    client.predict(api_name="/run_fhe")
    decrypted = client.predict(api_name="/decrypt")[0]
    assert encrypted["sample_index"] == 5 and decrypted["label"] == encrypted["label"]
    assert decrypted["prediction"] == decrypted["clear_prediction"]
