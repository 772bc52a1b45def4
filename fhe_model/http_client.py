"""A Python client for the FHE HTTP server (``fhe_model.http_server``).

It moves public bytes only (client.zip, evaluation keys, ciphertexts); the
encryption itself is :class:`fhe_model.client.FHEClient`'s job. One persistent
``httpx.Client`` keeps connections alive across calls and is safe to share
between threads.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from fhe_model.deployment import make_bundle

#: How long in all a request may wait while the server answers 503 (busy), retrying after each
#: ``Retry-After``: a burst of 120 visitors' steps on a server of 2 × 2 compute slots drains in
#: about 120 × 0.2 s / 2 cores = 12 s; a minute covers five such bursts. A visitor waits, and
#: sees an error only past it.
BUSY_WAIT_SECONDS = 60.0


class FHEServerError(RuntimeError):
    """The server refused a request or could not be reached.

    Attributes
    ----------
    status_code : int or None
        HTTP status, or None if no response arrived.
    message : str
        The server's explanation.
    """

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(f"{message} (HTTP {status_code})" if status_code else message)
        self.status_code = status_code
        self.message = message


def _error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}" for item in detail
        )
    return str(detail)


@dataclass(frozen=True)
class PredictResult:
    """An encrypted output and where the time went.

    Attributes
    ----------
    ciphertext : bytes
        The serialized encrypted output.
    round_trip_seconds : float
        From sending the request to receiving the whole response.
    server_seconds : float or None
        FHE execution on the server (its ``Server-Timing`` header).
    queue_seconds : float or None
        From the server starting to handle the request to the circuit
        starting: receiving the body and waiting for a free worker.
    """

    ciphertext: bytes = field(repr=False)
    round_trip_seconds: float
    server_seconds: float | None
    queue_seconds: float | None


def _retry_after(response: httpx.Response) -> float:
    """The seconds a 503 asks to wait (``Retry-After`` in seconds; 1 if absent or not a number)."""
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _server_timing(header: str, name: str) -> float | None:
    match = re.search(rf"(?:^|,)\s*{name};dur=([0-9.]+)", header)
    return float(match.group(1)) / 1000 if match else None


class FHEServerClient:
    """Talk to an FHE model server.

    Parameters
    ----------
    base_url : str
        e.g. ``"http://127.0.0.1:8765"``.
    timeout : float, default=120
        Seconds to wait for a response.
    busy_retries : int, optional
        How often at most to retry a request the server answered 503 (busy) to
        (default: as often as ``busy_wait_seconds`` allows; 0: never).
    busy_wait_seconds : float, default=BUSY_WAIT_SECONDS
        How long in all a request may wait for a busy server. Each 503 is
        retried after its ``Retry-After`` (plus up to a quarter more, so that
        callers refused together do not all come back together); one whose
        ``Retry-After`` would pass this budget is reported at once, with the
        wait the server asked for. Busy requests stored nothing, so retrying is safe.
    """

    def __init__(self, base_url: str, *, timeout: float = 120.0, busy_retries: int | None = None,
                 busy_wait_seconds: float = BUSY_WAIT_SECONDS):
        self.base_url = base_url.rstrip("/")
        self.busy_retries = busy_retries
        self.busy_wait_seconds = busy_wait_seconds
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        waited, attempt = 0.0, 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise FHEServerError(
                    f"Cannot reach the FHE server at {self.base_url} ({exc.__class__.__name__}: {exc}). "
                    "Is it running? Start one with: python -m fhe_model serve --deployment DIR"
                ) from exc
            if response.status_code == 503:
                delay = _retry_after(response)
                retries_left = self.busy_retries is None or attempt < self.busy_retries
                if retries_left and waited + delay <= self.busy_wait_seconds:
                    # At least Retry-After (it fits the budget), up to a quarter more.
                    pause = min(delay * (1 + random.random() / 4), self.busy_wait_seconds - waited)
                    time.sleep(pause)
                    waited, attempt = waited + pause, attempt + 1
                    continue
                raise FHEServerError(
                    f"{_error_message(response)} The FHE server is busy (waited {waited:.0f} s); "
                    f"retry in {delay:.0f} s.", 503,
                )
            if response.is_error:
                raise FHEServerError(_error_message(response), response.status_code)
            return response

    def health(self) -> dict[str, Any]:
        """Return the server's ``/health`` JSON.

        Returns
        -------
        dict
            ``status``, store counts, limits.
        """
        return self._request("GET", "/health").json()

    def download_client_zip(self, deployment_id: str | None = None) -> bytes:
        """Download a deployment's client.zip.

        Parameters
        ----------
        deployment_id : str, optional
            Defaults to the server's default deployment.

        Returns
        -------
        bytes
            The zip, usable by ``FHEClient.from_client_zip`` or Concrete's FHEModelClient.
        """
        params = {"deployment_id": deployment_id} if deployment_id else None
        return self._request("GET", "/client.zip", params=params).content

    def add_deployment(
        self, server_zip: bytes, admin_token: str, client_zip: bytes | None = None
    ) -> str:
        """Upload a deployment (admin only).

        Parameters
        ----------
        server_zip : bytes
            The circuit.
        admin_token : str
            The server's admin token.
        client_zip : bytes, optional
            Its client.zip; without it the server cannot serve ``/client.zip`` for it.

        Returns
        -------
        str
            The new deployment id.
        """
        body = make_bundle(server_zip, client_zip) if client_zip is not None else server_zip
        response = self._request(
            "POST", "/deployments", content=body,
            headers={"Authorization": f"Bearer {admin_token}",
                     "Content-Type": "application/zip"},
        )
        return response.json()["deployment_id"]

    def delete_deployment(self, deployment_id: str, admin_token: str) -> None:
        """Drop an uploaded deployment and its keys from the server (admin only).

        Parameters
        ----------
        deployment_id : str
            From :meth:`add_deployment`.
        admin_token : str
            The server's admin token.
        """
        self._request(
            "DELETE", "/deployments", params={"deployment_id": deployment_id},
            headers={"Authorization": f"Bearer {admin_token}"},
        )

    def upload_keys(
        self, evaluation_keys: bytes, deployment_id: str | None = None, admin_token: str | None = None
    ) -> str:
        """Upload serialized evaluation keys.

        Parameters
        ----------
        evaluation_keys : bytes
            ``FHEClient.evaluation_keys``.
        deployment_id : str, optional
            Defaults to the server's default deployment.
        admin_token : str, optional
            The server's admin token: the keys then go to the pool where new
            uploads evict the least recently used instead of being refused
            when it is full (for a host uploading keys on behalf of its sessions).

        Returns
        -------
        str
            The key id to pass to :meth:`predict`.
        """
        params = {"deployment_id": deployment_id} if deployment_id else None
        headers = {"Content-Type": "application/octet-stream"}
        if admin_token:
            headers["Authorization"] = f"Bearer {admin_token}"
        response = self._request("POST", "/keys", content=evaluation_keys, params=params, headers=headers)
        return response.json()["key_id"]

    def delete_keys(self, key_id: str) -> None:
        """Make the server forget evaluation keys now rather than at their TTL.

        Parameters
        ----------
        key_id : str
            From :meth:`upload_keys`.
        """
        self._request("DELETE", "/keys", params={"key_id": key_id})

    def predict(self, key_id: str, ciphertext: bytes) -> bytes:
        """Run the circuit on one encrypted input.

        Parameters
        ----------
        key_id : str
            From :meth:`upload_keys`.
        ciphertext : bytes
            ``FHEClient.encrypt(x).ciphertext``.

        Returns
        -------
        bytes
            The encrypted output, for ``FHEClient.decrypt``.
        """
        return self.predict_timed(key_id, ciphertext).ciphertext

    def predict_timed(self, key_id: str, ciphertext: bytes) -> PredictResult:
        """Like :meth:`predict`, also reporting server compute and round-trip time.

        Parameters
        ----------
        key_id : str
            From :meth:`upload_keys`.
        ciphertext : bytes
            One encrypted input.

        Returns
        -------
        PredictResult
            The encrypted output with timings.
        """
        start = time.perf_counter()
        response = self._request(
            "POST", "/predict", params={"key_id": key_id}, content=ciphertext,
            headers={"Content-Type": "application/octet-stream"},
        )
        timing = response.headers.get("server-timing", "")
        return PredictResult(
            ciphertext=response.content,
            round_trip_seconds=time.perf_counter() - start,
            server_seconds=_server_timing(timing, "fhe"),
            queue_seconds=_server_timing(timing, "queue"),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FHEServerClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
