"""Plain helpers that tests of several packages share (fixtures live in the ``conftest.py`` files).

Imports of the project's heavier modules (gradio, Concrete ML) happen inside the
functions that need them, so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np

#: Debian's Chromium for the browser tests (``$CHROMIUM_PATH`` overrides it), and how it is started.
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
]

if TYPE_CHECKING:
    import gradio as gr
    from gradio_client import Client
    from sklearn.linear_model import LogisticRegression

    from story import SessionRegistry

#: The repository's root (where ``app.py`` and ``.ci/`` are).
ROOT = Path(__file__).resolve().parents[1]

#: The smallest meaningful federated run: ~12 s on 2 cores, Ray start-up included.
SMALL_TRAINING = {"dataset": "digits", "num_clients": 3, "num_rounds": 2}

#: Body limit of the FHE HTTP server the ``server`` fixture of ``tests/fhe_model`` starts.
BODY_LIMIT = 64 * 1024


# -- time and the network -----------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand (no sleeping, no race with a busy machine)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_status(sock: socket.socket) -> int:
    """The HTTP status code of the response arriving on a raw socket."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def declared_too_big_status(url: str, key_id: str) -> int:
    """The status of a ``POST /predict`` whose headers declare 1 GB; no byte of the body is sent."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"POST /predict?key_id={key_id} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n"
                     .encode())
        return read_status(sock)


# -- model files and archives ---------------------------------------------------------


def rezip_bytes(data: bytes, replace: dict[str, bytes | None]) -> bytes:
    """A zip archive's bytes with some members replaced, removed (``None``) or added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            content = replace[name] if name in replace else src.read(name)
            if content is not None:
                dst.writestr(name, content)
        for name, content in replace.items():
            if name not in src.namelist() and content is not None:
                dst.writestr(name, content)
    return out.getvalue()


def rezip(source: Path, target: Path, replace: dict[str, bytes], extra: dict | None = None) -> Path:
    """Copy a zip file, replacing some members' bytes and adding others."""
    target.write_bytes(rezip_bytes(source.read_bytes(), {**replace, **(extra or {})}))
    return target


def read_schema(path: Path) -> dict:
    """The ``schema.json`` of a skops file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("schema.json"))


class CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file exists only if the payload ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def fit_logistic(dataset_name: str, *, classes: int | None = None, features: int | None = None,
                 C: float = 1.0, max_iter: int = 300) -> LogisticRegression:
    """A briefly fitted LogisticRegression, on the first ``classes`` labels or ``features`` only if given."""
    from sklearn.linear_model import LogisticRegression

    from fl_training.datasets import load_dataset

    dataset = load_dataset(dataset_name)
    X, y = np.array(dataset.X_train), np.array(dataset.y_train)
    if classes is not None:
        X, y = X[y < classes], y[y < classes]
    if features is not None:
        X = X[:, :features]
    return LogisticRegression(max_iter=max_iter, C=C).fit(X, y)


def hostile_files(folder: Path, marker: Path, good: Path) -> dict[str, Path]:
    """Model files that would create ``marker`` if anything unpickled them (``good``: a valid skops file)."""
    import joblib

    payload = pickle.dumps(CreatesFile(marker))
    files = {"pickle named .skops": folder / "model.skops", "pickle": folder / "model.pkl"}
    files["pickle named .skops"].write_bytes(payload)
    files["pickle"].write_bytes(payload)
    files["joblib"] = folder / "model.joblib"
    joblib.dump(CreatesFile(marker), files["joblib"])
    # A pickle followed by a valid skops archive: zip readers find the archive at the end.
    files["pickle + skops polyglot"] = folder / "polyglot.skops"
    files["pickle + skops polyglot"].write_bytes(payload + good.read_bytes())
    # A valid skops schema whose array file is a pickled object array.
    npy = io.BytesIO()
    np.save(npy, np.array([CreatesFile(marker)], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as archive:
        array_file = next(name for name in archive.namelist() if name.endswith(".npy"))
    files["pickled numpy array in skops"] = rezip(good, folder / "npy.skops", {array_file: npy.getvalue()})
    return files


def crafted_skops_files(good: Path, folder: Path) -> dict[str, Path]:
    """skops files, made from the valid ``good``, that name other types or are not what they claim."""
    import skops.io as sio
    from sklearn.pipeline import Pipeline

    from fl_training.model_io import MAX_MODEL_UNPACKED_BYTES

    model = sio.load(good, trusted=True)
    files = {"pipeline": folder / "pipeline.skops"}
    sio.dump(Pipeline([("model", model)]), files["pipeline"])  # skops itself would trust this one
    schema = read_schema(good)
    schema["content"]["content"]["solver"] = {
        "__class__": "system", "__module__": "os", "__loader__": "FunctionNode",
        "content": {"module_path": "os", "function": "system"}, "__id__": 1,
    }
    files["function"] = rezip(good, folder / "function.skops", {"schema.json": json.dumps(schema).encode()})
    schema = read_schema(good)
    schema["__class__"], schema["__module__"] = "Popen", "subprocess"
    files["other class"] = rezip(good, folder / "popen.skops", {"schema.json": json.dumps(schema).encode()})
    padding = {"padding.bin": bytes(MAX_MODEL_UNPACKED_BYTES + 1)}
    files["bomb"] = rezip(good, folder / "bomb.skops", {}, padding)
    files["deep"] = rezip(good, folder / "deep.skops", {"schema.json": b"[" * 30_000 + b"]" * 30_000})
    files["not skops"] = folder / "archive.skops"
    with zipfile.ZipFile(files["not skops"], "w") as archive:
        archive.writestr("model.pkl", pickle.dumps(model))
    return files


# -- FHE ------------------------------------------------------------------------------


def circuit_dirs(compiled) -> list[Path]:
    """The directories Concrete compiled a model's circuit and its simulator into."""
    circuit = compiled.concrete_model.fhe_circuit
    return [Path(server._library.get_output_dir_path()) for server in (circuit.server, circuit.simulator)]


def assert_still_serving(url: str, client, key_id: str, built, index: int = 7) -> None:
    """A valid request succeeds: the server is healthy and the client decrypts the expected class."""
    from fhe_model.http_client import FHEServerClient

    x = built.dataset.X_test[index]
    with FHEServerClient(url, busy_retries=0) as api:
        assert api.health()["status"] == "ok"
        output = api.predict(key_id, client.encrypt(x).ciphertext)
    assert client.decrypt(output).prediction == built.expected(x[None])[0]


# -- the app --------------------------------------------------------------------------


@dataclass
class LaunchedApp:
    """A running demo: its URL, Blocks and session registry."""

    url: str
    demo: gr.Blocks
    registry: SessionRegistry


@contextlib.contextmanager
def running_app(**registry_options: Any) -> Iterator[LaunchedApp]:
    """Launch the demo (and its local FHE server) on free loopback ports; stop both after.

    ``registry_options`` go to :class:`story.SessionRegistry` (e.g. a small ``max_sessions``).
    """
    from app import build_demo, launch_options
    from fhe_model.connection import FHEServerHandle
    from story import SessionRegistry

    registry = SessionRegistry(FHEServerHandle(), **registry_options)
    registry.server.start()
    demo = build_demo(registry)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        **launch_options(registry),
    )
    try:
        yield LaunchedApp(f"http://127.0.0.1:{port}/", demo, registry)
    finally:
        demo.close()
        registry.close_all()
        registry.server.stop()


def handler(demo: gr.Blocks, api_name: str) -> Callable:
    """The function behind the event with ``api_name`` (as wrapped for gradio)."""
    for block_fn in demo.fns.values():
        if block_fn.api_name == api_name:
            return block_fn.fn
    raise KeyError(f"no event with api_name={api_name!r}")


def handler_named(demo: gr.Blocks, name: str) -> Callable:
    """The function behind the event whose Python function is called ``name`` (events without an API name)."""
    return next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name)


def call(demo: gr.Blocks, api_name: str, *args, **kwargs) -> Any:
    """Run a handler; for generators, drain it and return (all yields, last yield)."""
    result = handler(demo, api_name)(*args, **kwargs)
    if hasattr(result, "__next__"):
        items = list(result)
        return items, items[-1]
    return result


def new_client(app: LaunchedApp) -> Client:
    """A new browser-like session; output files stay on the server (nothing is downloaded)."""
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=False)


def upload_model(client: Client, path: Path, dataset: str = "digits") -> dict:
    """Upload a model file through ``/upload_model``; return the summary."""
    from gradio_client import handle_file

    return client.predict(file=handle_file(str(path)), dataset=dataset, api_name="/upload_model")[0]


def raw_call(url: str, api_name: str, body: str) -> str:
    """POST a hand-written JSON body (gradio_client cannot send NaN) and return the event stream."""
    with httpx.Client(base_url=url, timeout=60) as http:
        response = http.post(f"/gradio_api/call/{api_name}", content=body,
                             headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return http.get(f"/gradio_api/call/{api_name}/{response.json()['event_id']}").text


def end_tab(url: str, session_hash: str) -> None:
    """Open and drop a heartbeat for the session, as a closing browser tab does (runs demo.unload)."""
    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session_hash}", timeout=30) as response:
        next(response.iter_lines())


# -- memory -----------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


class PeakMemory:
    """Growth of this process's peak RSS while the block runs (a launched app runs in this process)."""

    def __enter__(self) -> PeakMemory:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *_exc) -> None:
        self.growth = _status_kb("VmHWM") * 1024 - self.before
