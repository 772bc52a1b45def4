"""Limits of the FHE HTTP server (uvicorn on 127.0.0.1), beyond the protocol of ``test_http_server.py``.

Every refusal is followed by a valid request that must still succeed; keys
and uploaded deployments expire (on a fake clock) and are bounded over HTTP
too; bodies are bounded by what the circuit needs; no client without the
admin token can evict another's keys; slow bodies hold nothing but their own
request; a crafted configuration.json runs nothing; clients can remove what
they uploaded; concurrent uploads of the same circuit all load.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from fhe_model.client import FHEClient
from fhe_model.deployment import DeploymentFormatError, check_server_zip, make_bundle
from fhe_model.http_client import FHEServerClient, FHEServerError
from fhe_model.http_server import HTTPSettings, start_local_server
from fhe_model.server import FHEServer, MalformedPayloadError, StoreLimits
from tests.helpers import BODY_LIMIT, FakeClock, assert_still_serving, read_status, rezip_bytes, wait_for

# `server` (tests/fhe_model/conftest.py): the digits deployment served with bodies capped at BODY_LIMIT.


def _bundle(built) -> bytes:
    return make_bundle(built.files.server_zip.read_bytes(), built.files.client_zip.read_bytes())


#: Bad requests, by name: what is sent, the status and a fragment of the explanation.
REFUSALS = {
    "unknown key_id": ("POST", "/predict", {"key_id": "x" * 22}, "ciphertext", None, 404, "Unknown key_id"),
    "unknown deployment": ("POST", "/keys", {"deployment_id": "nope"}, "keys", None, 404, "Unknown deploy"),
    "id that is not an id": ("POST", "/predict", {"key_id": "../../etc/passwd"}, b"x", None, 422, "key_id"),
    "garbage ciphertext": ("POST", "/predict", "own key", b"\x07" * 500, None, 400, "not a serialized"),
    "truncated ciphertext": ("POST", "/predict", "own key", "truncated", None, 400, "not a serialized"),
    "ciphertext of another circuit": ("POST", "/predict", "own key", "foreign", None, 422, "does not fit"),
    "garbage keys": ("POST", "/keys", None, b"\x00keys?" * 9, None, 400, "not serialized evaluation keys"),
    "chunked body over the limit": ("POST", "/predict", "own key", "chunks", None, 413, "limit"),
    "deployment without a token": ("POST", "/deployments", None, "server.zip", None, 401, "Missing admin"),
    "deployment with a wrong token": ("POST", "/deployments", None, "server.zip", "bad", 403, "Wrong admin"),
    "deployment that is not a zip": ("POST", "/deployments", None, b"PK no", "test-admin-token", 400, "zip"),
    "removing a deployment without a token": ("DELETE", "/deployments", {"deployment_id": "abc"}, None, None,
                                              401, "Missing admin token"),
}


def _content(kind, client: FHEClient, other_deployment, tmp_path: Path):
    if not isinstance(kind, str):
        return kind
    if kind == "keys":
        return client.evaluation_keys
    if kind == "ciphertext":
        return client.encrypt(other_deployment.dataset.X_test[1]).ciphertext
    if kind == "truncated":
        return client.encrypt(other_deployment.dataset.X_test[1]).ciphertext[:-100]
    if kind == "foreign":
        foreign = FHEClient(other_deployment.files.directory, tmp_path / "foreign")
        foreign.generate_keys()
        return foreign.encrypt(other_deployment.dataset.X_test[0]).ciphertext
    if kind == "chunks":
        return (b"\0" * 16384 for _ in range(BODY_LIMIT // 16384 + 2))
    assert kind == "server.zip"
    return other_deployment.files.server_zip.read_bytes()


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_each_refusal_then_a_valid_request_succeeds(server, keyed_client, digits_deployment, other_deployment,
                                                     refusal, tmp_path):
    with FHEServerClient(server.url) as api:
        key_id = api.upload_keys(keyed_client.evaluation_keys)
    method, path, params, content, token, status, fragment = REFUSALS[refusal]
    params = {"key_id": key_id} if params == "own key" else params
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.request(method, path, params=params, headers=headers,
                                content=_content(content, keyed_client, other_deployment, tmp_path))
    assert response.status_code == status, response.text
    assert fragment in str(response.json()["detail"])
    assert_still_serving(server.url, keyed_client, key_id, digits_deployment)


def test_expired_keys_and_deployments_are_404_and_uploading_again_works(
    digits_deployment, other_deployment, keyed_client, admin_token, tmp_path
):
    clock = FakeClock()
    limits = StoreLimits(key_ttl_seconds=10, anonymous_key_ttl_seconds=10, deployment_ttl_seconds=20)
    directory = digits_deployment.files.directory
    with start_local_server(directory, admin_token=admin_token, limits=limits, clock=clock) as handle, \
            FHEServerClient(handle.url, busy_retries=0) as api:
        pinned_key = api.upload_keys(keyed_client.evaluation_keys)
        uploaded = api.add_deployment(other_deployment.files.server_zip.read_bytes(), admin_token,
                                      other_deployment.files.client_zip.read_bytes())
        other = FHEClient.from_client_zip(api.download_client_zip(uploaded), tmp_path / "other")
        other.generate_keys()
        other_key = api.upload_keys(other.evaluation_keys, uploaded, admin_token=admin_token)
        assert_still_serving(handle.url, other, other_key, other_deployment)
        assert_still_serving(handle.url, keyed_client, pinned_key, digits_deployment)
        clock.now += 9  # within both TTLs: still there
        assert_still_serving(handle.url, keyed_client, pinned_key, digits_deployment)
        clock.now += 21  # past both TTLs, with nothing used meanwhile

        for key_id, client in ((pinned_key, keyed_client), (other_key, other)):
            with pytest.raises(FHEServerError, match="expired") as expired:
                api.predict(key_id, client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext)
            assert expired.value.status_code == 404
        for call in (lambda: api.download_client_zip(uploaded), lambda: api.upload_keys(other.evaluation_keys,
                                                                                         uploaded)):
            with pytest.raises(FHEServerError, match="Unknown deployment") as gone:
                call()
            assert gone.value.status_code == 404
        assert api.health()["keys"] == 0 and api.health()["deployments"] == 1  # the pinned one stays

        assert_still_serving(handle.url, keyed_client, api.upload_keys(keyed_client.evaluation_keys),
                             digits_deployment)
        again = api.add_deployment(other_deployment.files.server_zip.read_bytes(), admin_token)
        assert_still_serving(handle.url, other, api.upload_keys(other.evaluation_keys, again),
                             other_deployment)


def test_key_and_deployment_stores_are_bounded(digits_deployment, other_deployment, keyed_client,
                                               admin_token):
    keys = keyed_client.evaluation_keys
    limits = StoreLimits(max_keys=2, max_key_store_bytes=10 * len(keys), max_uploaded_deployments=1)
    directory = digits_deployment.files.directory
    with start_local_server(directory, admin_token=admin_token, limits=limits) as handle, \
            FHEServerClient(handle.url, busy_retries=0) as api:
        # The pool of keys uploaded with the token keeps the most recently used ones.
        first, second, third = (api.upload_keys(keys, admin_token=admin_token) for _ in range(3))
        assert api.health()["keys"] == 2
        with pytest.raises(FHEServerError, match="Unknown key_id") as evicted:
            api.predict(first, keyed_client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext)
        assert evicted.value.status_code == 404
        for key_id in (second, third):
            assert_still_serving(handle.url, keyed_client, key_id, digits_deployment)

        bundle = _bundle(other_deployment)
        old = api.add_deployment(bundle, admin_token)
        old_key = api.upload_keys(keys, handle.default_deployment_id)
        api.add_deployment(bundle, admin_token)  # evicts the older upload, never the pinned one
        assert api.health()["deployments"] == 2
        with pytest.raises(FHEServerError, match="Unknown deployment"):
            api.download_client_zip(old)
        assert_still_serving(handle.url, keyed_client, old_key, digits_deployment)


def _circuit_dir(handle, deployment_id: str) -> Path:
    entry = handle.fhe_server._deployments[deployment_id]
    return Path(entry.fhe_server.server._library.get_output_dir_path())


def test_clients_can_remove_their_keys_and_deployments(server, keyed_client, digits_deployment,
                                                       other_deployment, admin_token, tmp_path):
    with FHEServerClient(server.url, busy_retries=0) as api, httpx.Client(base_url=server.url) as http:
        key_id = api.upload_keys(keyed_client.evaluation_keys)
        api.delete_keys(key_id)
        with pytest.raises(FHEServerError, match="Unknown key_id") as gone:
            api.predict(key_id, keyed_client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext)
        assert gone.value.status_code == 404
        assert http.delete("/keys", params={"key_id": key_id}).status_code == 404
        assert http.delete("/keys", params={"key_id": "../x"}).status_code == 422

        deployment_id = api.add_deployment(_bundle(other_deployment), admin_token)
        circuit_dir = _circuit_dir(server, deployment_id)
        other = FHEClient.from_client_zip(api.download_client_zip(deployment_id), tmp_path / "k")
        other.generate_keys()
        other_key = api.upload_keys(other.evaluation_keys, deployment_id)
        params = {"deployment_id": deployment_id}
        assert http.delete("/deployments", params=params).status_code == 401
        assert http.delete("/deployments", params=params,
                           headers={"Authorization": "Bearer wrong"}).status_code == 403
        pinned = http.delete("/deployments", params={"deployment_id": server.default_deployment_id},
                             headers={"Authorization": f"Bearer {admin_token}"})
        assert pinned.status_code == 403 and "restart the server" in pinned.json()["detail"]
        assert circuit_dir.is_dir()
        api.delete_deployment(deployment_id, admin_token)
        assert not circuit_dir.exists(), "the removed deployment's compiled circuit is still on disk"
        with pytest.raises(FHEServerError, match="Unknown key_id"):
            api.predict(other_key, other.encrypt(other_deployment.dataset.X_test[0]).ciphertext)
        with pytest.raises(FHEServerError, match="Unknown deployment") as gone:
            api.delete_deployment(deployment_id, admin_token)
        assert gone.value.status_code == 404
        assert_still_serving(server.url, keyed_client, api.upload_keys(keyed_client.evaluation_keys),
                             digits_deployment)


def test_concurrent_uploads_of_the_same_circuit_all_load(server, other_deployment, admin_token, tmp_path):
    # Each load finds the directory Concrete unpacked it into; identical uploads at once must not
    # take (and delete) each other's.
    bundle = _bundle(other_deployment)
    ids: list[str] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with FHEServerClient(server.url, busy_retries=10) as api:
                ids.append(api.add_deployment(bundle, admin_token))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(set(ids)) == 4
    with FHEServerClient(server.url) as api:
        for n, deployment_id in enumerate(ids):
            client = FHEClient.from_client_zip(api.download_client_zip(deployment_id), tmp_path / str(n))
            client.generate_keys()
            assert_still_serving(server.url, client, api.upload_keys(client.evaluation_keys, deployment_id),
                                 other_deployment, index=n)
            api.delete_deployment(deployment_id, admin_token)


# -- a crafted configuration.json ------------------------------------------------


def _crafted_configurations(server_zip: bytes, marker: Path) -> dict[str, dict]:
    with zipfile.ZipFile(io.BytesIO(server_zip)) as archive:
        good = json.loads(archive.read("configuration.json"))
    command = {"py/tuple": [f"touch {marker}"]}
    # jsonpickle resolves a name by importing its longest module prefix, then follows attributes:
    # the configuration module imports `platform`, which imports `os`.
    walk = "concrete.fhe.compilation.configuration.platform.os.system"
    return {
        "reduce through an allowed prefix": {
            **good, "security_level": {"py/reduce": [{"py/type": walk}, command]}},
        "object of an allowed prefix": {**good, "approximate_rounding_config": {"py/object": walk}},
        "function tag": {**good, "verbose": {"py/function": "os.system"}},
        "enum called with an object": {**good, "security_level": {"py/reduce": [
            {"py/type": "concrete.fhe.compilation.configuration.SecurityLevel"},
            {"py/tuple": [{"py/reduce": [{"py/type": "os.system"}, command]}]}]}},
        "debug dumps on the server": {**good, "dump_artifacts_on_unexpected_failures": True},
    }


def test_a_crafted_configuration_json_is_refused_and_runs_nothing(digits_deployment, other_deployment,
                                                                   admin_token, tmp_path):
    import jsonpickle

    server_zip = other_deployment.files.server_zip.read_bytes()
    marker = tmp_path / "pwned"
    crafted = _crafted_configurations(server_zip, marker)
    # Sanity: the first payload is live, jsonpickle does run it.
    jsonpickle.loads(json.dumps(crafted["reduce through an allowed prefix"]["security_level"]))
    assert marker.exists()
    marker.unlink()

    check_server_zip(server_zip)  # the real configuration passes
    with start_local_server(digits_deployment.files.directory, admin_token=admin_token) as handle, \
            httpx.Client(base_url=handle.url, timeout=60) as http:
        for kind, configuration in crafted.items():
            upload = rezip_bytes(server_zip, {"configuration.json": json.dumps(configuration).encode()})
            with pytest.raises(DeploymentFormatError, match="configuration.json"):
                check_server_zip(upload)
            with pytest.raises(MalformedPayloadError, match="configuration.json"):
                FHEServer().add_deployment_bytes(upload)
            response = http.post("/deployments", content=upload,
                                 headers={"Authorization": f"Bearer {admin_token}"})
            assert response.status_code == 400, (kind, response.text)
            assert "configuration.json" in response.json()["detail"]
            assert not marker.exists(), f"{kind}: the payload ran"
        assert http.get("/health").json()["deployments"] == 1  # nothing was added


# -- bodies sized by the circuit ------------------------------------------------


def test_bodies_are_bounded_by_what_the_circuit_needs(server, keyed_client, digits_deployment):
    keys = keyed_client.evaluation_keys
    limits = server.fhe_server.payload_limits()
    assert len(keys) == 64 and limits.max_key_bytes <= 4096  # a linear model needs no bootstrapping key
    ciphertext = keyed_client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext
    assert len(ciphertext) <= limits.max_ciphertext_bytes <= 2 * len(ciphertext) + 4096
    with FHEServerClient(server.url) as api, httpx.Client(base_url=server.url, timeout=30) as http:
        key_id = api.upload_keys(keys)
        too_big_keys = http.post("/keys", content=keys + bytes(limits.max_key_bytes))
        assert too_big_keys.status_code == 413, too_big_keys.text
        assert f"limit of {limits.max_key_bytes} bytes" in too_big_keys.json()["detail"]
        too_big_input = http.post("/predict", params={"key_id": key_id},
                                  content=ciphertext + bytes(limits.max_ciphertext_bytes))
        assert too_big_input.status_code == 413, too_big_input.text
        # In process too, whatever the HTTP layer lets through.
        with pytest.raises(Exception, match="needs at most"):
            server.fhe_server.register_keys(keys + bytes(limits.max_key_bytes))
    assert_still_serving(server.url, keyed_client, key_id, digits_deployment)


# -- key flooding ---------------------------------------------------------------


def test_key_flooding_evicts_nobody_and_is_refused_politely(digits_deployment, keyed_client, admin_token):
    keys = keyed_client.evaluation_keys
    limits = StoreLimits(max_keys=2, max_anonymous_keys=3)
    directory = digits_deployment.files.directory
    with start_local_server(directory, admin_token=admin_token, limits=limits) as handle, \
            FHEServerClient(handle.url, busy_retries=0) as api:
        host_key = api.upload_keys(keys, admin_token=admin_token)  # the app's sessions upload with the token
        anonymous_key = api.upload_keys(keys)  # a remote client keeping its own keys
        flood = []
        for _ in range(10):
            try:
                flood.append(api.upload_keys(keys))
            except FHEServerError as exc:
                assert exc.status_code == 503 and "never evicted" in exc.message
        assert len(flood) == 2  # the anonymous pool filled up, then refused
        response = httpx.post(f"{handle.url}/keys", content=keys)
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        for key_id in (host_key, anonymous_key):
            assert_still_serving(handle.url, keyed_client, key_id, digits_deployment)
        # A wrong token is refused, not taken for an anonymous upload.
        with pytest.raises(FHEServerError, match="Wrong admin token"):
            api.upload_keys(keys, admin_token="guess")
        # Deleting one's own keys makes room again.
        api.delete_keys(flood[0])
        assert_still_serving(handle.url, keyed_client, api.upload_keys(keys), digits_deployment)
        assert api.health()["anonymous_keys"] == 3


# -- slow bodies ------------------------------------------------------------------


def _held_body(url: str, key_id: str, source: str = "127.0.0.1") -> socket.socket:
    """A POST whose headers arrived and whose body never completes."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30, source_address=(source, 0))
    sock.sendall(f"POST /predict?key_id={key_id} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                 "partial".encode())
    return sock


def test_slow_bodies_hold_no_compute_slot_and_no_other_client(digits_deployment, keyed_client):
    settings = HTTPSettings(workers=1, max_concurrent_requests=1, max_pending_bodies_per_client=4,
                            body_timeout_seconds=5)
    with start_local_server(digits_deployment.files.directory, settings=settings) as handle, \
            FHEServerClient(handle.url, busy_retries=0) as api:
        key_id = api.upload_keys(keyed_client.evaluation_keys)
        held = [_held_body(handle.url, key_id) for _ in range(3)]  # more than the compute slots
        try:
            wait_for(lambda: api.health()["bodies_being_received"] == 3, "the slow bodies")
            # A valid request from another connection is served at once, not answered 503.
            assert_still_serving(handle.url, keyed_client, key_id, digits_deployment)
            # With one more, this address has used its share of bodies in flight; another has not.
            held.append(_held_body(handle.url, key_id))
            wait_for(lambda: api.health()["bodies_being_received"] == 4, "the fourth slow body")
            with pytest.raises(FHEServerError, match="busy") as busy:
                api.predict(key_id, keyed_client.encrypt(digits_deployment.dataset.X_test[3]).ciphertext)
            assert busy.value.status_code == 503
            transport = httpx.HTTPTransport(local_address="127.0.0.2")
            with httpx.Client(base_url=handle.url, transport=transport, timeout=30) as other_address:
                x = digits_deployment.dataset.X_test[3]
                response = other_address.post("/predict", params={"key_id": key_id},
                                              content=keyed_client.encrypt(x).ciphertext)
                assert response.status_code == 200, response.text
            # Each slow body is cut after one request's time.
            assert [read_status(sock) for sock in held] == [408] * 4
        finally:
            for sock in held:
                sock.close()
        assert_still_serving(handle.url, keyed_client, key_id, digits_deployment)
