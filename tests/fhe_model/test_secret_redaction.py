"""Secrets stay out of logs, the process list and reprs.

``key_id`` is the only credential of ``DELETE /keys`` and ``POST /predict``;
the admin token lets its holder upload code (a circuit). ``python -m fhe_model
serve`` runs for real here, with its access log on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhe_model.http_client import FHEServerClient
from fhe_model.http_server import start_local_server
from tests.helpers import ROOT


def _announced_url(log: Path, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                return json.loads(line)["url"]
        time.sleep(0.05)
    raise AssertionError("the server never announced its URL")


@pytest.mark.slow
@pytest.mark.parametrize("token_from", ["file", "environment"])
def test_the_served_access_log_and_process_list_hold_no_secret(
    digits_deployment, keyed_client, tmp_path, token_from
):
    token = "secret-" + os.urandom(8).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "FHE_ADMIN_TOKEN"}
    command = [sys.executable, "-m", "fhe_model", "serve", "--deployment",
               str(digits_deployment.files.directory),
               "--port", "0", "--announce-url", "--log-level", "info"]
    if token_from == "file":
        command += ["--admin-token-file", str(token_file)]
    else:
        env["FHE_ADMIN_TOKEN"] = token
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _announced_url(log, process)
        assert token not in Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
        with FHEServerClient(url) as api:
            assert api.health()["uploads_enabled"]
            key_id = api.upload_keys(keyed_client.evaluation_keys, admin_token=token)
            x = digits_deployment.dataset.X_test[0]
            api.predict(key_id, keyed_client.encrypt(x).ciphertext)
            api.delete_keys(key_id)
    finally:
        process.terminate()
        process.wait(30)
    text = log.read_text()
    assert "POST /predict?key_id=<redacted>" in text and "DELETE /keys?key_id=<redacted>" in text, text
    assert key_id not in text and token not in text


@pytest.mark.slow
def test_the_token_on_the_command_line_works_but_is_discouraged(digits_deployment, tmp_path):
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "fhe_model", "serve", "--deployment",
               str(digits_deployment.files.directory),
               "--port", "0", "--announce-url", "--admin-token", "visible-token"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = _announced_url(log, process)
        with FHEServerClient(url) as api:
            assert api.health()["uploads_enabled"]
    finally:
        process.terminate()
        process.wait(30)
    assert "visible to every user of this machine in the process list" in log.read_text()


def test_no_repr_shows_the_admin_token(digits_deployment):
    with start_local_server(digits_deployment.files.directory, admin_token="repr-secret") as handle:
        assert "repr-secret" not in repr(handle) and "repr-secret" not in str(handle)
        assert handle.admin_token == "repr-secret"
