"""Concrete leaves each circuit's compiled library in a temp dir; we remove it."""

import tempfile
from pathlib import Path

from fhe_model.server import FHEServer, StoreLimits

pytest_plugins = ["tests.fhe_fixtures"]


def _circuit_dirs() -> set[Path]:
    return {p for p in Path(tempfile.gettempdir()).iterdir() if p.is_dir() and p.name.startswith("tmp")}


def test_evicted_deployments_leave_no_compiled_library_behind(digits_deployment):
    server_zip = digits_deployment.files.server_zip.read_bytes()
    server = FHEServer(StoreLimits(max_uploaded_deployments=1))
    before = _circuit_dirs()
    server.add_deployment_bytes(server_zip)
    created = _circuit_dirs() - before
    # Concrete unpacks the zip into one directory and compiles into another;
    # only the compiled library is still needed once loaded.
    assert len(created) == 1 and (next(iter(created)) / "sharedlib.so").exists()
    server.add_deployment_bytes(server_zip)  # evicts the first one
    assert server.stats()["deployments"] == 1
    assert not (created & _circuit_dirs()), "the evicted circuit's directory is still there"
