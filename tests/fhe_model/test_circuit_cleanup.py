"""Concrete leaves each circuit's compiled library in a temp dir; we remove it.

The test gives the process a temp directory of its own, so that other
programs creating temporary directories meanwhile cannot change the count.
"""

import tempfile
from pathlib import Path

import pytest

from fhe_model.server import FHEServer, StoreLimits


@pytest.fixture()
def own_temp_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setenv("TMPDIR", str(root))
    return root


def _circuit_dirs(root: Path) -> set[Path]:
    return {p for p in root.iterdir() if p.is_dir() and p.name.startswith("tmp")}


def test_evicted_deployments_leave_no_compiled_library_behind(digits_deployment, own_temp_dir):
    server_zip = digits_deployment.files.server_zip.read_bytes()
    server = FHEServer(StoreLimits(max_uploaded_deployments=1))
    before = _circuit_dirs(own_temp_dir)
    server.add_deployment_bytes(server_zip)
    created = _circuit_dirs(own_temp_dir) - before
    # Concrete unpacks the zip into one directory and compiles into another;
    # only the compiled library is still needed once loaded.
    assert len(created) == 1 and (next(iter(created)) / "sharedlib.so").exists()
    server.add_deployment_bytes(server_zip)  # evicts the first one
    assert server.stats()["deployments"] == 1
    assert not (created & _circuit_dirs(own_temp_dir)), "the evicted circuit's directory is still there"
