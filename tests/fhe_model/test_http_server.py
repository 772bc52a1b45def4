"""The HTTP server for real: uvicorn on 127.0.0.1, random free port."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from fhe_model.client import FHEClient
from fhe_model.evaluation import default_workers, evaluate_encrypted, http_server_call
from fhe_model.http_client import FHEServerClient, FHEServerError
from fhe_model.http_server import HTTPSettings, start_local_server
from fhe_model.server import FHEServer
from tests.helpers import BODY_LIMIT, assert_still_serving, declared_too_big_status, free_port

# `server` (tests/fhe_model/conftest.py): the digits deployment served with bodies capped at BODY_LIMIT.


@pytest.fixture()
def api(server):
    with FHEServerClient(server.url, busy_retries=0) as client:
        yield client


@pytest.fixture()
def raw(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture()
def key_id(api, keyed_client):
    return api.upload_keys(keyed_client.evaluation_keys)


def _assert_json_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert fragment in str(response.json()["detail"])


def test_server_binds_loopback_and_reports_health(server, api):
    assert urlsplit(server.url).hostname == "127.0.0.1"
    health = api.health()
    assert health["status"] == "ok" and health["uploads_enabled"]
    assert health["default_deployment_id"] == server.default_deployment_id


def test_round_trip_with_downloaded_client_zip(server, api, digits_deployment, tmp_path):
    client_zip = api.download_client_zip()
    assert client_zip == digits_deployment.files.client_zip.read_bytes()
    assert api.download_client_zip(server.default_deployment_id) == client_zip
    client = FHEClient.from_client_zip(client_zip, tmp_path / "keys")
    client.generate_keys()
    key_id = api.upload_keys(client.evaluation_keys)
    X = digits_deployment.dataset.X_test[10:14]
    predictions = [client.decrypt(api.predict(key_id, client.encrypt(x).ciphertext)).prediction for x in X]
    assert predictions == list(digits_deployment.expected(X))
    timed = api.predict_timed(key_id, client.encrypt(X[0]).ciphertext)
    assert client.decrypt(timed.ciphertext).prediction == predictions[0]
    assert 0 < timed.server_seconds < timed.round_trip_seconds and timed.queue_seconds >= 0


def test_plain_concrete_client_works_against_the_server(server, digits_deployment, tmp_path):
    """Only Concrete ML and httpx here: the served files are the standard format."""
    from concrete.ml.deployment import FHEModelClient

    with httpx.Client(base_url=server.url, timeout=60) as http:
        response = http.get("/client.zip")
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
        (tmp_path / "client.zip").write_bytes(response.content)
        client = FHEModelClient(str(tmp_path), key_dir=str(tmp_path / "keys"))
        client.generate_private_and_evaluation_keys()
        response = http.post("/keys", content=client.get_serialized_evaluation_keys())
        assert response.status_code == 201
        key_id = response.json()["key_id"]
        X = digits_deployment.dataset.X_test[20:23]
        for x, want in zip(X, digits_deployment.expected(X), strict=True):
            response = http.post("/predict", params={"key_id": key_id},
                                 content=client.quantize_encrypt_serialize(x[None]))
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/octet-stream"
            probabilities = client.deserialize_decrypt_dequantize(response.content)
            assert int(np.argmax(probabilities)) == want


def test_evaluate_over_http(api, keyed_client, digits_deployment):
    X, y = digits_deployment.dataset.X_test[:5], digits_deployment.dataset.y_test[:5]
    seen = []
    report = evaluate_encrypted(
        keyed_client, http_server_call(api, keyed_client.evaluation_keys), X, y,
        clear_predictions=digits_deployment.model.predict(X),
        progress=lambda done, total, _s: seen.append((done, total)), mode="http",
    )
    assert seen == [(i, 5) for i in range(1, 6)]
    np.testing.assert_array_equal([s.prediction for s in report.samples], digits_deployment.expected(X))
    assert report.mode == "http" and report.output_ciphertext_bytes > report.input_ciphertext_bytes / 10
    assert report.workers == default_workers() + 1  # one more in flight than CPUs over HTTP


def test_http_server_call_reuses_uploaded_keys(api, keyed_client, digits_deployment):
    x = digits_deployment.dataset.X_test[6]
    call = http_server_call(api, key_id=api.upload_keys(keyed_client.evaluation_keys))
    assert keyed_client.decrypt(call(keyed_client.encrypt(x).ciphertext)).prediction == \
        digits_deployment.expected(x)[0]
    with pytest.raises(ValueError, match="either"):
        http_server_call(api)


def test_add_deployment_then_use_it(server, api, other_deployment, admin_token, tmp_path):
    files = other_deployment.files
    deployment_id = api.add_deployment(files.server_zip.read_bytes(), admin_token,
                                       client_zip=files.client_zip.read_bytes())
    assert deployment_id != server.default_deployment_id
    client_zip = api.download_client_zip(deployment_id)
    assert client_zip == files.client_zip.read_bytes()
    client = FHEClient.from_client_zip(client_zip, tmp_path / "keys")
    client.generate_keys()
    key_id = api.upload_keys(client.evaluation_keys, deployment_id)
    x = other_deployment.dataset.X_test[3]
    assert client.decrypt(api.predict(key_id, client.encrypt(x).ciphertext)).prediction == \
        other_deployment.expected(x[None])[0]

    server_only = api.add_deployment(files.server_zip.read_bytes(), admin_token)
    with pytest.raises(FHEServerError, match="without a client.zip") as excinfo:
        api.download_client_zip(server_only)
    assert excinfo.value.status_code == 404


# -- bad requests -------------------------------------------------------------


def test_unknown_ids_are_404(raw, keyed_client):
    _assert_json_error(raw.post("/predict", params={"key_id": "nope"}, content=b"x"), 404, "Unknown key_id")
    _assert_json_error(raw.post("/keys", params={"deployment_id": "nope"},
                                content=keyed_client.evaluation_keys), 404, "Unknown deployment")
    _assert_json_error(raw.get("/client.zip", params={"deployment_id": "nope"}), 404, "Unknown deployment")


def test_malformed_requests_are_4xx(raw, key_id, keyed_client, other_deployment, tmp_path, digits_deployment):
    _assert_json_error(raw.post("/keys", content=b"\x00not keys" * 5), 400, "not serialized evaluation keys")
    _assert_json_error(raw.post("/predict", params={"key_id": key_id}, content=b"\x01" * 99), 400,
                       "not a serialized ciphertext")
    _assert_json_error(raw.post("/predict", params={"key_id": key_id}, content=b""), 400, "Empty body")
    assert raw.post("/predict", content=b"x").status_code == 422  # key_id missing
    assert raw.post("/predict", params={"key_id": "../../etc/passwd"}, content=b"x").status_code == 422
    other = FHEClient(other_deployment.files.directory, tmp_path / "other")
    other.generate_keys()
    foreign = other.encrypt(digits_deployment.dataset.X_test[0]).ciphertext
    _assert_json_error(raw.post("/predict", params={"key_id": key_id}, content=foreign), 422, "does not fit")
    assert_still_serving(str(raw.base_url), keyed_client, key_id, digits_deployment, index=1)


def test_oversized_bodies_are_413(server, raw, key_id, keyed_client, digits_deployment):
    # Declared too big: refused before a byte of the body is read.
    assert declared_too_big_status(server.url, key_id) == 413
    # No Content-Length (chunked): refused once the streamed size passes the limit.
    chunks = (b"\0" * 16384 for _ in range(BODY_LIMIT // 16384 + 2))
    _assert_json_error(raw.post("/predict", params={"key_id": key_id}, content=chunks), 413, "limit")
    _assert_json_error(raw.post("/keys", content=b"\0" * (BODY_LIMIT + 1)), 413, "limit")
    assert_still_serving(server.url, keyed_client, key_id, digits_deployment, index=2)


def test_deployment_upload_needs_the_admin_token(raw, digits_deployment, admin_token):
    body = digits_deployment.files.server_zip.read_bytes()
    response = raw.post("/deployments", content=body)
    _assert_json_error(response, 401, "Missing admin token")
    assert response.headers["www-authenticate"] == "Bearer"
    _assert_json_error(raw.post("/deployments", content=body, headers={"Authorization": "Bearer wrong"}),
                       403, "Wrong admin token")
    _assert_json_error(raw.post("/deployments", content=b"not a zip",
                                headers={"Authorization": f"Bearer {admin_token}"}), 400, "not a zip")


def test_uploads_disabled_without_token(digits_deployment):
    with start_local_server(enable_uploads=False) as handle, httpx.Client(base_url=handle.url) as http:
        assert handle.admin_token is None
        response = http.post("/deployments", content=digits_deployment.files.server_zip.read_bytes(),
                             headers={"Authorization": "Bearer anything"})
        _assert_json_error(response, 403, "disabled")
        _assert_json_error(http.get("/client.zip"), 404, "no default deployment")


class GatedServer(FHEServer):
    """A real server whose circuit runs wait for the test's go: compute slots stay taken on demand."""

    def __init__(self, directory):
        super().__init__()
        self.add_deployment_dir(directory)
        self.running = threading.Event()
        self.go = threading.Event()

    def run(self, key_id: str, ciphertext: bytes) -> bytes:
        self.running.set()
        assert self.go.wait(60), "the test never let the circuit run"
        return super().run(key_id, ciphertext)


@pytest.fixture()
def gated(digits_deployment):
    gated = GatedServer(digits_deployment.files.directory)
    settings = HTTPSettings(max_concurrent_requests=1, workers=1)
    with start_local_server(fhe_server=gated, settings=settings) as handle:
        yield gated, handle
        gated.go.set()


def test_a_busy_server_answers_503_at_once_then_recovers(gated, digits_deployment, keyed_client):
    gated_server, handle = gated
    with FHEServerClient(handle.url, busy_retries=0) as api:
        key_id = api.upload_keys(keyed_client.evaluation_keys)
        x = digits_deployment.dataset.X_test[4]
        ciphertext = keyed_client.encrypt(x).ciphertext
        outputs: list[bytes] = []
        first = threading.Thread(target=lambda: outputs.append(api.predict(key_id, ciphertext)))
        first.start()
        assert gated_server.running.wait(30)  # the only compute slot is taken
        with pytest.raises(FHEServerError, match="busy") as excinfo:
            api.predict(key_id, ciphertext)
        assert excinfo.value.status_code == 503
        assert api.health()["status"] == "ok"  # not behind the limit
        gated_server.go.set()
        first.join(60)
        expected = digits_deployment.expected(x[None])[0]
        assert keyed_client.decrypt(outputs[0]).prediction == expected
        assert keyed_client.decrypt(api.predict(key_id, ciphertext)).prediction == expected


def test_busy_retries_in_the_http_client(gated, digits_deployment, keyed_client, monkeypatch):
    import fhe_model.http_client

    gated_server, handle = gated
    waits: list[float] = []

    def wait_then_free_the_slot(seconds: float) -> None:
        waits.append(seconds)  # the client was told "busy" and waits its Retry-After...
        gated_server.go.set()  # ...meanwhile the request holding the slot completes
        first.join(60)

    with FHEServerClient(handle.url, busy_retries=0) as holder, \
            FHEServerClient(handle.url, busy_retries=5) as api:
        key_id = api.upload_keys(keyed_client.evaluation_keys)
        x = digits_deployment.dataset.X_test[5]
        ciphertext = keyed_client.encrypt(x).ciphertext
        first = threading.Thread(target=holder.predict, args=(key_id, ciphertext))
        first.start()
        assert gated_server.running.wait(30)
        monkeypatch.setattr(fhe_model.http_client.time, "sleep", wait_then_free_the_slot)
        output = api.predict(key_id, ciphertext)  # busy at first; a retry gets through
        first.join(60)
    assert waits and waits[0] > 0
    assert keyed_client.decrypt(output).prediction == digits_deployment.expected(x[None])[0]


def test_unreachable_server_is_a_clear_error():
    with FHEServerClient(f"http://127.0.0.1:{free_port()}") as api:
        with pytest.raises(FHEServerError, match="Cannot reach"):
            api.health()
