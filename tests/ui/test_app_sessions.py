"""Sessions of a launched demo (127.0.0.1, real Concrete ML and FHE server): isolation and what they leave.

Key files are never served, each session works in a private randomly named
directory, sessions at once get their own answers, one session takes one step
at a time, and closing the tab removes everything the session made.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
import skops.io as sio
from gradio_client.exceptions import AppError

from fl_training.datasets import load_dataset
from fl_training.model_io import save_model
from tests.helpers import circuit_dirs, end_tab, fit_logistic, new_client, raw_call, upload_model

# The test models are fitted briefly; how well they converge does not matter here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _file_data(path: str | Path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def _complete(stream: str) -> list:
    return json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])


def test_key_files_are_never_served_and_uploads_cannot_name_them(launched_app, model_files):
    client = new_client(launched_app)
    upload_model(client, model_files["digits"])
    session = launched_app.registry.resolve(None, client.session_hash)
    with httpx.Client(base_url=launched_app.url, timeout=30) as http:
        # What a handler returned is served, from a copy in Gradio's cache.
        body = json.dumps({"data": [6, "data"], "session_hash": client.session_hash})
        served = _complete(raw_call(launched_app.url, "compile", body))[3]
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
        stream = raw_call(launched_app.url, "upload_model", body)
        assert "event: error" in stream and refusal in stream, stream
    assert all(path.exists() for path in key_files)
    assert session.keys is not None  # the refused call changed nothing


def test_sessions_get_private_randomly_named_directories(launched_app, model_files):
    registry = launched_app.registry
    clients = [new_client(launched_app) for _ in range(2)]
    sessions = []
    for client in clients:
        upload_model(client, model_files["digits"])
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
        upload = http.post("/gradio_api/upload",
                           files={"files": ("m.skops", model_files["digits"].read_bytes())})
    body = json.dumps({"data": [_file_data(upload.json()[0]), "digits"], "session_hash": hostile_id})
    assert "event: complete" in raw_call(launched_app.url, "upload_model", body)
    hostile = registry.resolve(None, hostile_id)
    assert hostile.model is not None and hostile.model.model_file.parents[1].parent == registry.work_root
    tmp = Path(registry.keys_root).parent
    for found in (list(registry.keys_root.rglob("*escape-*")), list(registry.work_root.rglob("*escape-*")),
                  list(tmp.glob("*escape-*")), list(tmp.parent.glob("*escape-*"))):
        assert not found


def test_a_session_whose_gradio_state_was_dropped_keeps_its_work(launched_app, model_files):
    # Gradio keeps the UI state of at most STATE_SESSION_CAPACITY sessions; one pushed out
    # (simulated here) comes back with an empty gr.State, and the registry still knows it.
    client = new_client(launched_app)
    upload_model(client, model_files["digits"])
    launched_app.demo.state_holder.session_data.pop(client.session_hash)
    with pytest.raises(AppError, match="not compiled yet"):  # not "No model yet": the model is still there
        client.predict(api_name="/keygen")


def test_concurrent_sessions_each_get_their_own_answer(launched_app, model_files):
    dataset = load_dataset("digits")
    model = sio.load(model_files["digits"], trusted=True)
    indices = [11, 222, 333]
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def walk(index: int) -> None:
        try:
            client = new_client(launched_app)
            upload_model(client, model_files["digits"])
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



# -- what a session leaves behind ------------------------------------------------


def test_closing_the_tab_removes_everything_the_session_made(launched_app, tmp_path, monkeypatch):
    import fhe_model.developer

    registry = launched_app.registry
    compiled_here: list = []
    compile_model = fhe_model.developer.compile_model

    def recording_compile(*args, **kwargs):
        compiled_here.append(compile_model(*args, **kwargs))
        return compiled_here[-1]

    monkeypatch.setattr(fhe_model.developer, "compile_model", recording_compile)
    # Unique bytes, so no other session of this module holds the same cached copies.
    model_file = save_model(fit_logistic("digits", C=0.37), tmp_path / "unique.skops")
    client = new_client(launched_app)
    upload_model(client, model_file)
    session = registry.resolve(None, client.session_hash)
    client.predict(n_bits=5, api_name="/compile")
    client.predict(n_bits=6, api_name="/compile")  # replaces the first deployment
    assert not any(p.exists() for p in circuit_dirs(compiled_here[0])), "the replaced circuit is still there"
    client.predict(api_name="/keygen")
    client.predict(sample_index=5, api_name="/encrypt")
    client.predict(api_name="/run_fhe")
    client.predict(api_name="/decrypt")
    assert len(session.n_bits_sweep((3,), samples=20)) == 1
    assert len(compiled_here) == 3
    for compiled in compiled_here[2:]:
        assert not any(p.exists() for p in circuit_dirs(compiled)), "the sweep left a circuit behind"

    circuits = circuit_dirs(compiled_here[1])
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

    end_tab(launched_app.url, client.session_hash)
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


def test_two_calls_driving_one_session_at_once_get_one_step_each(launched_app, model_files, monkeypatch):
    """Two threads of a script (or two quick clicks in a tab) on one session: one step at a time.

    (Two browser tabs are two sessions, see above; Gradio streams one session's
    events over one connection, so concurrent calls share one client here.)
    """
    import fhe_model.client

    client = new_client(launched_app)
    upload_model(client, model_files["digits"])
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
