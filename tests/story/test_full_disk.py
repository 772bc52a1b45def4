"""A full disk while a session saves its model, its deployment or its keys.

Writes fail for real (``RLIMIT_FSIZE``: any write past 1 kB gets ``EFBIG``,
as ``ENOSPC`` would on a full disk) inside a child process, so that nothing
else of the test run is affected. Each step must fail with an error, leave
the session as it was and leave no half-written file behind (a private key
least of all), and work once there is room again. Compiling is refused before
it starts when the temp directory is full, because LLVM aborts the whole
process when it cannot write a circuit's library.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple

import pytest

import fhe_model.developer
from fhe_model.connection import FHEServerHandle
from fl_training.model_io import save_model
from story import SessionRegistry
from tests.helpers import ROOT

_SESSION_ON_A_FULL_DISK = r"""
import contextlib, json, resource, signal, sys
from pathlib import Path
from fhe_model.connection import FHEServerHandle
from fhe_model.developer import save_deployment
from story import SessionRegistry

model_path, root = sys.argv[1], Path(sys.argv[2])

@contextlib.contextmanager
def disk_full(limit=1024):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

def files(under):
    return sorted(str(p.relative_to(root)) for p in Path(under).rglob("*") if p.is_file())

def attempt(name, step, state):
    before = files(root)
    try:
        with disk_full():
            step()
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"step": name, "error": error, "state_kept": state(), "new_files":
                      sorted(set(files(root)) - set(before))}), flush=True)
    step()  # room again: the same step works

registry = SessionRegistry(FHEServerHandle(), temp_dir=root)
session = registry.new_session()
try:
    attempt("model", lambda: session.use_uploaded_model(model_path, "digits"), lambda: session.model is None)
    session.compile(n_bits=6)
    out = root / "saved-deployment"
    attempt("deployment", lambda: save_deployment(session.deployment.compiled, out, overwrite=True),
            lambda: not out.exists() or not any(out.iterdir()))
    attempt("keys", session.generate_keys, lambda: session.keys is None)
    session.encrypt(sample_index=2)
    session.run_on_server()
    decrypted = session.decrypt()
    print(json.dumps({"step": "flow", "matches": decrypted["prediction"] == decrypted["clear_prediction"]}))
finally:
    registry.close_all()
    registry.server.stop()
"""


@pytest.mark.slow
def test_a_full_disk_while_saving_leaves_the_session_as_it_was_and_no_partial_file(digits_model, tmp_path):
    model = save_model(digits_model, tmp_path / "digits.skops")
    root = tmp_path / "app"
    root.mkdir()
    run = subprocess.run([sys.executable, "-c", _SESSION_ON_A_FULL_DISK, str(model), str(root)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["step"]: r for r in map(json.loads, run.stdout.strip().splitlines())}
    for step in ("model", "deployment", "keys"):
        assert results[step]["error"] and "too large" in results[step]["error"].lower(), results[step]
        assert results[step]["state_kept"], results[step]
        # Nothing half-written remains: no model file, no zip, no key file (a keys directory is empty).
        assert results[step]["new_files"] == [], results[step]
    assert results["flow"]["matches"]


def test_compiling_on_a_full_disk_is_refused_before_llvm_aborts_the_app(digits_model, tmp_path, monkeypatch):
    registry = SessionRegistry(FHEServerHandle("http://127.0.0.1:9"), temp_dir=tmp_path)
    session = registry.new_session()
    try:
        session.use_uploaded_model(save_model(digits_model, tmp_path / "digits.skops"), "digits")
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(fhe_model.developer.shutil, "disk_usage",
                            lambda _path: usage(10**9, 10**9 - 2**20, 2**20))
        with pytest.raises(OSError, match="Only 1.0 MB free .* compiling needs 64 MB") as refused:
            session.compile(n_bits=6)
        assert refused.value.errno == 28 and session.deployment is None
        monkeypatch.undo()  # room again
        assert session.compile(n_bits=6)["n_bits"] == 6
    finally:
        registry.close_all()
