"""The data owner's side of the HTTP protocol against a real server (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fhe_model.connection import (
    ADMIN_TOKEN_ENV,
    SERVER_URL_ENV,
    FHEServerHandle,
    RemoteDeployment,
    RemoteKeys,
)
from fhe_model.http_client import FHEServerError
from fhe_model.http_server import start_local_server
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def server(admin_token):
    """A server without a default deployment: clients upload theirs (in place of the package's ``server``)."""
    local = start_local_server(admin_token=admin_token)
    yield local
    local.stop()


@pytest.fixture()
def handle(server, admin_token):
    handle = FHEServerHandle(server.url, admin_token)
    yield handle
    handle.stop()


@pytest.fixture()
def deployment(handle, digits_deployment):
    deployment = RemoteDeployment(
        handle, digits_deployment.files.server_zip, digits_deployment.files.client_zip
    )
    yield deployment
    deployment.forget()


def _stored(server) -> tuple[int, int]:
    stats = server.fhe_server.stats()
    return stats["deployments"], stats["keys"]


def _prediction(client, output: bytes) -> int:
    return client.decrypt(output).prediction


def test_keys_upload_the_deployment_once_and_predict(server, deployment, keyed_client, digits_deployment):
    assert deployment.deployment_id is None
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    assert keys.deployment_id == deployment.deployment_id == deployment.ensure()
    assert keys.upload_seconds > 0
    X = digits_deployment.dataset.X_test[:2]
    outputs = [keys.predict(keyed_client.encrypt(x).ciphertext) for x in X]
    assert [retried for _, retried in outputs] == [False, False]
    assert [_prediction(keyed_client, out) for out, _ in outputs] == list(digits_deployment.expected(X))
    keys.forget()


def test_predict_uploads_forgotten_keys_again(server, handle, deployment, keyed_client, digits_deployment):
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    old_key_id, deployment_id = keys.key_id, keys.deployment_id
    handle.client.delete_keys(keys.key_id)
    x = digits_deployment.dataset.X_test[3]
    output, retried = keys.predict(keyed_client.encrypt(x).ciphertext)
    assert isinstance(output, bytes) and retried
    assert _prediction(keyed_client, output) == digits_deployment.expected(x)[0]
    assert keys.key_id != old_key_id and keys.deployment_id == deployment_id
    assert keys.predict(keyed_client.encrypt(x).ciphertext)[1] is False
    keys.forget()


def test_predict_uploads_forgotten_deployment_and_keys_again(
    server, handle, admin_token, deployment, keyed_client, digits_deployment
):
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    old_deployment_id, old_key_id = keys.deployment_id, keys.key_id
    handle.client.delete_deployment(old_deployment_id, admin_token)  # drops its keys too
    x = digits_deployment.dataset.X_test[4]
    output, retried = keys.predict(keyed_client.encrypt(x).ciphertext)
    assert retried and _prediction(keyed_client, output) == digits_deployment.expected(x)[0]
    assert deployment.deployment_id == keys.deployment_id != old_deployment_id
    assert keys.key_id != old_key_id
    keys.forget()


def test_concurrent_predicts_upload_forgotten_keys_once(
    server, handle, deployment, keyed_client, digits_deployment
):
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    handle.client.delete_keys(keys.key_id)
    before = _stored(server)
    ciphertext = keyed_client.encrypt(digits_deployment.dataset.X_test[5]).ciphertext
    results, errors = [], []

    def run() -> None:
        try:
            results.append(keys.predict(ciphertext))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 3 and any(retried for _, retried in results)
    assert _stored(server) == (before[0], before[1] + 1)
    keys.forget()


def test_forget_is_idempotent_and_final(server, handle, deployment, keyed_client):
    before = _stored(server)
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    assert _stored(server) == (before[0] + 1, before[1] + 1)
    keys.forget()
    keys.forget()
    assert _stored(server) == (before[0] + 1, before[1])
    with pytest.raises(FHEServerError, match="generate new keys"):
        keys.predict(b"anything")
    deployment.forget()
    deployment.forget()
    assert deployment.deployment_id is None and _stored(server) == before
    with pytest.raises(FHEServerError, match="new RemoteDeployment"):
        deployment.ensure()


def test_forget_ignores_what_the_server_already_dropped(handle, admin_token, deployment, keyed_client):
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    handle.client.delete_deployment(keys.deployment_id, admin_token)
    keys.forget()
    deployment.forget()


def test_forget_sends_nothing_once_the_handle_stopped(server, handle, deployment, keyed_client):
    before = _stored(server)
    keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
    handle.stop()
    keys.forget()
    deployment.forget()
    assert not handle.started  # forgetting did not reconnect
    assert _stored(server) == (before[0] + 1, before[1] + 1)  # the server drops them at its TTL


def test_external_server_without_admin_token(server, digits_deployment, keyed_client):
    handle = FHEServerHandle(server.url)
    try:
        assert handle.is_external and handle.url == server.url
        with pytest.raises(FHEServerError, match=ADMIN_TOKEN_ENV):
            _ = handle.admin_token
        deployment = RemoteDeployment(
            handle, digits_deployment.files.server_zip, digits_deployment.files.client_zip
        )
        with pytest.raises(FHEServerError, match="FHE_ADMIN_TOKEN"):
            RemoteKeys(deployment, keyed_client.evaluation_keys)
        assert deployment.deployment_id is None
    finally:
        handle.stop()


def test_handle_from_env(monkeypatch, server, admin_token):
    monkeypatch.setenv(SERVER_URL_ENV, server.url + "/")
    monkeypatch.setenv(ADMIN_TOKEN_ENV, admin_token)
    handle = FHEServerHandle.from_env()
    assert not handle.started
    try:
        assert handle.url == server.url and handle.is_external and handle.started
        assert handle.admin_token == admin_token
        assert handle.client.health()["status"] == "ok"
    finally:
        handle.stop()
    assert not handle.started


def _process_text(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    import psutil

    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


def test_local_handle_runs_its_server_in_a_process_of_its_own(digits_deployment, keyed_client):
    handle = FHEServerHandle()
    try:
        assert not handle.is_external and handle.pid is None
        deployment = RemoteDeployment(
            handle, digits_deployment.files.server_zip, digits_deployment.files.client_zip
        )
        keys = RemoteKeys(deployment, keyed_client.evaluation_keys)  # starts the server
        pid = handle.pid
        assert handle.started and pid is not None and pid != os.getpid()
        assert "fhe_model serve" in _process_text(pid, "cmdline")
        token = handle.admin_token
        for where in ("cmdline", "environ"):  # what `ps` and /proc show to anyone on the host
            assert token not in _process_text(pid, where), where
        assert token not in repr(handle) and token not in repr(handle._process)
        x = digits_deployment.dataset.X_test[6]
        output, retried = keys.predict(keyed_client.encrypt(x).ciphertext)
        assert not retried and _prediction(keyed_client, output) == digits_deployment.expected(x)[0]
    finally:
        handle.stop()
    assert not handle.started and _wait_gone(pid, timeout=1)


@pytest.mark.slow
def test_a_local_server_that_died_is_started_again_and_sessions_upload_again(digits_deployment,
                                                                               keyed_client):
    handle = FHEServerHandle()
    try:
        deployment = RemoteDeployment(
            handle, digits_deployment.files.server_zip, digits_deployment.files.client_zip
        )
        keys = RemoteKeys(deployment, keyed_client.evaluation_keys)
        first_pid, first_url = handle.pid, handle.url
        os.kill(first_pid, signal.SIGKILL)  # as the kernel's OOM killer would
        assert _wait_gone(first_pid)
        x = digits_deployment.dataset.X_test[7]
        output, retried = keys.predict(keyed_client.encrypt(x).ciphertext)
        assert retried and _prediction(keyed_client, output) == digits_deployment.expected(x)[0]
        assert handle.pid != first_pid and handle.url != first_url
    finally:
        handle.stop()


@pytest.mark.slow
def test_the_local_server_ends_with_its_owner_even_when_the_owner_is_killed(tmp_path):
    script = (
        "import sys\n"
        "from fhe_model.connection import FHEServerHandle\n"
        "handle = FHEServerHandle()\n"
        "handle.start()\n"
        "print(handle.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert Path(f"/proc/{server_pid}").exists()
        owner.kill()  # no cleanup code runs in the owner
        owner.wait(30)
        assert _wait_gone(server_pid), "the FHE server outlived the process that owned it"
    finally:
        owner.kill()
