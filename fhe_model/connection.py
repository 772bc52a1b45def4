"""The data owner's side of the HTTP protocol: which server, and what it must hold.

A client needs an FHE server (:class:`FHEServerHandle`: an external one, or a
local one started on demand), its deployment on that server
(:class:`RemoteDeployment`) and its evaluation keys there (:class:`RemoteKeys`).
The server may forget the last two at any time (TTL, eviction, restart); these
classes upload them again when it answers 404, so callers only see
:class:`~fhe_model.http_client.FHEServerError` for failures that persist.

Only public bytes travel: server.zip, client.zip, evaluation keys and
ciphertexts. The private key stays with :class:`fhe_model.client.FHEClient`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fhe_model.http_client import FHEServerClient, FHEServerError

# The server defines its admin authentication; the client side reads the same variable.
from fhe_model.http_server import ADMIN_TOKEN_ENV, LocalServer, start_local_server

logger = logging.getLogger(__name__)

#: Environment variable naming an external FHE server (with ``ADMIN_TOKEN_ENV``).
SERVER_URL_ENV = "FHE_SERVER_URL"

_DEPLOYMENT_FORGOTTEN = (
    "This deployment was removed from the FHE server (forget() was called); "
    "create a new RemoteDeployment to upload it again."
)
_KEYS_FORGOTTEN = (
    "These evaluation keys were removed from the FHE server (forget() was called); "
    "generate new keys and register them with a new RemoteKeys."
)


class FHEServerHandle:
    """The FHE HTTP server clients use: an external one, or a local one started on demand.

    Parameters
    ----------
    url : str, optional
        An external server (``$FHE_SERVER_URL``). Without it, :meth:`start`
        runs one on 127.0.0.1 in a background thread of this process.
    admin_token : str, optional
        Bearer token for uploading deployments to the external server
        (``$FHE_ADMIN_TOKEN``); a local server gets a random one.
    """

    def __init__(self, url: str | None = None, admin_token: str | None = None):
        self._url = url.rstrip("/") if url else None
        self._admin_token = admin_token
        self._local: LocalServer | None = None
        self._client: FHEServerClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> FHEServerHandle:
        """Use ``$FHE_SERVER_URL`` / ``$FHE_ADMIN_TOKEN`` if set, else a local server.

        Returns
        -------
        FHEServerHandle
            Not started yet.
        """
        return cls(os.environ.get(SERVER_URL_ENV) or None, os.environ.get(ADMIN_TOKEN_ENV) or None)

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._client is not None

    @property
    def is_external(self) -> bool:
        """True when the server was given by URL rather than started here."""
        return self._url is not None and self._local is None

    def start(self) -> str:
        """Start the local server if needed and return the server's URL.

        Returns
        -------
        str
            Base URL.
        """
        with self._lock:
            if self._url is None:
                self._local = start_local_server(host="127.0.0.1", port=0)
                self._url = self._local.url
                self._admin_token = self._local.admin_token
                logger.info("FHE server started on %s", self._url)
            if self._client is None:
                self._client = FHEServerClient(self._url)
            return self._url

    @property
    def url(self) -> str:
        """The server's base URL (starts a local server if needed)."""
        return self.start()

    @property
    def client(self) -> FHEServerClient:
        """A connected HTTP client, shared by all users of this handle (thread-safe)."""
        self.start()
        assert self._client is not None
        return self._client

    @property
    def admin_token(self) -> str:
        """Token for ``POST /deployments``.

        Raises
        ------
        FHEServerError
            If an external server was configured without ``$FHE_ADMIN_TOKEN``.
        """
        self.start()
        if not self._admin_token:
            raise FHEServerError(
                f"The FHE server at {self._url} needs an admin token to accept this session's "
                f"server.zip: set {ADMIN_TOKEN_ENV} (or unset {SERVER_URL_ENV} to use a local server)."
            )
        return self._admin_token

    def stop(self) -> None:
        """Close the HTTP client and stop the local server, if one was started."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._local is not None:
                self._local.stop()
                self._local = None
                self._url = None


def _forget(server: FHEServerHandle, what: str, delete: Callable[[], None]) -> None:
    """Best effort: the server drops it at its TTL anyway."""
    if not server.started:  # stopped at shutdown: nothing to tell, nothing to restart
        return
    try:
        delete()
    except FHEServerError as exc:
        if exc.status_code != 404:
            logger.warning("could not remove %s from the FHE server: %s", what, exc)


class RemoteDeployment:
    """A deployment (server.zip + client.zip files on disk) as a client uses it on the server.

    It is uploaded on first use, and uploaded again when the server forgot it
    (TTL, eviction, restart). After :meth:`forget` it is never uploaded again.

    Parameters
    ----------
    server : FHEServerHandle
        Where to upload it (with the handle's admin token).
    server_zip, client_zip : Path
        The deployment's files, read at each upload.
    """

    def __init__(self, server: FHEServerHandle, server_zip: Path, client_zip: Path):
        self.server = server
        self.server_zip = Path(server_zip)
        self.client_zip = Path(client_zip)
        self._deployment_id: str | None = None
        self._forgotten = False
        self._lock = threading.Lock()

    @property
    def deployment_id(self) -> str | None:
        """The server's id for this deployment, None before the first upload or after :meth:`forget`."""
        return self._deployment_id

    def _upload_locked(self) -> str:
        if self._forgotten:
            raise FHEServerError(_DEPLOYMENT_FORGOTTEN)
        self._deployment_id = self.server.client.add_deployment(
            self.server_zip.read_bytes(), self.server.admin_token, self.client_zip.read_bytes()
        )
        return self._deployment_id

    def ensure(self) -> str:
        """Upload the deployment unless it already was; return its id.

        Returns
        -------
        str
            The deployment id.

        Raises
        ------
        FHEServerError
            If the server refused the upload, or the admin token is missing.
        """
        with self._lock:
            if self._deployment_id is not None:
                return self._deployment_id
            return self._upload_locked()

    def reupload(self) -> str:
        """Upload the deployment again (the server answered 404 for its id); return the new id.

        Returns
        -------
        str
            The new deployment id.

        Raises
        ------
        FHEServerError
            If the server refused the upload, or the admin token is missing.
        """
        with self._lock:
            return self._upload_locked()

    def _renew(self, stale_id: str | None) -> str:
        """Upload again unless another caller already replaced ``stale_id``."""
        with self._lock:
            if self._deployment_id is not None and self._deployment_id != stale_id:
                return self._deployment_id
            return self._upload_locked()

    def forget(self) -> None:
        """Ask the server to drop the deployment (and any keys for it); best effort.

        A 404 is ignored, other failures are logged. Nothing is sent if the
        server handle was stopped. Thread-safe and idempotent.
        """
        with self._lock:
            deployment_id, self._deployment_id = self._deployment_id, None
            self._forgotten = True
        if deployment_id is not None:
            _forget(
                self.server, "a deployment",
                lambda: self.server.client.delete_deployment(deployment_id, self.server.admin_token),
            )


class RemoteKeys:
    """One client's evaluation keys registered on the server for a :class:`RemoteDeployment`.

    Creating it uploads the keys (and the deployment, if needed).

    Parameters
    ----------
    deployment : RemoteDeployment
        The deployment the keys were generated for.
    evaluation_keys : bytes
        ``FHEClient.evaluation_keys`` (public).

    Attributes
    ----------
    key_id : str
        The server's id for the keys (changes when they are uploaded again).
    upload_seconds : float
        Time of the first upload, the deployment's included.

    Raises
    ------
    FHEServerError
        If the server refused an upload.
    """

    def __init__(self, deployment: RemoteDeployment, evaluation_keys: bytes):
        self.deployment = deployment
        self._evaluation_keys = evaluation_keys
        self._lock = threading.Lock()
        self._forgotten = False
        self._deployment_id: str | None = None
        start = time.perf_counter()
        with self._lock:
            self.key_id: str = self._upload_locked()
        self.upload_seconds = time.perf_counter() - start

    @property
    def deployment_id(self) -> str:
        """The deployment id the keys are registered for."""
        assert self._deployment_id is not None
        return self._deployment_id

    @property
    def _client(self) -> FHEServerClient:
        return self.deployment.server.client

    def _upload_locked(self) -> str:
        if self._forgotten:
            raise FHEServerError(_KEYS_FORGOTTEN)
        deployment_id = self.deployment.ensure()
        try:
            key_id = self._client.upload_keys(self._evaluation_keys, deployment_id)
        except FHEServerError as exc:
            if exc.status_code != 404:
                raise
            # The deployment is gone too (TTL, eviction, restart): upload it again.
            deployment_id = self.deployment._renew(deployment_id)
            key_id = self._client.upload_keys(self._evaluation_keys, deployment_id)
        self._deployment_id = deployment_id
        return key_id

    def _renew(self, stale_key_id: str) -> str:
        """Upload the keys again unless another caller already replaced ``stale_key_id``."""
        with self._lock:
            if self.key_id != stale_key_id and not self._forgotten:
                return self.key_id
            self.key_id = self._upload_locked()
            return self.key_id

    def predict(self, ciphertext: bytes) -> tuple[bytes, bool]:
        """Run the circuit on one encrypted input (``POST /predict``).

        If the server forgot the keys, they are uploaded again once (with the
        deployment, if it forgot that too) and the request is retried.

        Parameters
        ----------
        ciphertext : bytes
            ``FHEClient.encrypt(x).ciphertext``.

        Returns
        -------
        tuple of (bytes, bool)
            The encrypted output, and whether the keys had to be uploaded again.

        Raises
        ------
        FHEServerError
            If the server refused the request or an upload, or after :meth:`forget`.
        """
        key_id = self.key_id
        if self._forgotten:
            raise FHEServerError(_KEYS_FORGOTTEN)
        try:
            return self._client.predict(key_id, ciphertext), False
        except FHEServerError as exc:
            if exc.status_code != 404:
                raise
        return self._client.predict(self._renew(key_id), ciphertext), True

    def forget(self) -> None:
        """Ask the server to drop the keys now rather than at their TTL; best effort.

        A 404 is ignored, other failures are logged. Nothing is sent if the
        server handle was stopped. Thread-safe and idempotent.
        """
        with self._lock:
            if self._forgotten:
                return
            self._forgotten = True
            key_id = self.key_id
        _forget(self.deployment.server, "evaluation keys", lambda: self._client.delete_keys(key_id))
