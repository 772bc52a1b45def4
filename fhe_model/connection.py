"""The data owner's side of the HTTP protocol: which server, and what it must hold.

A client needs an FHE server (:class:`FHEServerHandle`: an external one, or a
local one started on demand in a process of its own), its deployment on that server
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

from fhe_model.deployment import ADMIN_TOKEN_ENV
from fhe_model.http_client import FHEServerClient, FHEServerError
from fhe_model.server_process import ServerProcess

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
        runs ``python -m fhe_model serve`` on 127.0.0.1 as a child process
        (:class:`fhe_model.server_process.ServerProcess`), owned by this
        handle: :meth:`stop` stops it, it exits if this process dies, and it
        is started again if it died meanwhile (its clients upload their
        deployments and keys again, as after any server restart).
    admin_token : str, optional
        Bearer token for uploading deployments and keys to the external server
        (``$FHE_ADMIN_TOKEN``); a local server gets a random one. Never shown in the repr.
    """

    def __init__(self, url: str | None = None, admin_token: str | None = None):
        self._url = url.rstrip("/") if url else None
        self._admin_token = admin_token
        self._external = url is not None
        self._process: ServerProcess | None = None
        self._client: FHEServerClient | None = None
        self._lock = threading.Lock()
        #: Incremented each time a local server process is started.
        self.generation = 0

    @classmethod
    def from_env(cls) -> FHEServerHandle:
        """Use ``$FHE_SERVER_URL`` / ``$FHE_ADMIN_TOKEN`` if set, else a local server.

        Returns
        -------
        FHEServerHandle
            Not started yet.
        """
        return cls(os.environ.get(SERVER_URL_ENV) or None, os.environ.get(ADMIN_TOKEN_ENV) or None)

    def __repr__(self) -> str:
        where = self._url or "not started"
        kind = "external" if self._external else f"local process {self.pid}"
        return f"FHEServerHandle({where}, {kind})"

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._client is not None

    @property
    def is_external(self) -> bool:
        """True when the server was given by URL rather than started here."""
        return self._external

    @property
    def pid(self) -> int | None:
        """The local server's process id (None for an external server, or before :meth:`start`)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> str:
        """Start the local server if needed (again, if it died) and return the server's URL.

        Returns
        -------
        str
            Base URL.

        Raises
        ------
        fhe_model.server_process.ServerProcessError
            If the local server did not start.
        """
        with self._lock:
            if not self._external and (self._process is None or not self._process.alive):
                if self._process is not None:
                    logger.warning("the FHE server process %s ended; starting a new one", self._process.pid)
                    self._process.stop()
                if self._client is not None:
                    self._client.close()
                    self._client = None
                self._process = ServerProcess()
                self.generation += 1
                self._url, self._admin_token = self._process.url, self._process.admin_token
                logger.info("FHE server started on %s (process %s)", self._url, self._process.pid)
            if self._client is None:
                assert self._url is not None
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
        """Token for ``POST /deployments`` (and for keys kept in the server's evicting pool).

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

    def recover(self, generation: int, wait_seconds: float = 2.0) -> bool:
        """After a request got no answer: whether the local server was (or now is) started afresh.

        A local server process that died (killed, out of memory) is started
        again here; one that is dying gets ``wait_seconds`` to finish. An
        external server is never restarted from here.

        Parameters
        ----------
        generation : int
            :attr:`generation` when the failed request was sent.
        wait_seconds : float
            How long a process that is still alive may take to exit.

        Returns
        -------
        bool
            True if the server the request went to is gone and another one
            runs: its deployments and keys must be uploaded again.
        """
        if self._external:
            return False
        with self._lock:
            process = self._process
        if process is not None and process.alive and self.generation == generation:
            deadline = time.monotonic() + wait_seconds
            while process.alive and time.monotonic() < deadline:
                time.sleep(0.02)
            if process.alive:
                return False  # it is running: the failure was something else
        self.start()
        return self.generation != generation

    def stop(self) -> None:
        """Close the HTTP client and stop the local server, if one was started."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._process is not None:
                self._process.stop()
                self._process = None
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
        # With the token that uploaded the deployment: the server keeps these keys in the pool
        # that anonymous uploads can never fill or evict.
        token = self.deployment.server.admin_token
        try:
            key_id = self._client.upload_keys(self._evaluation_keys, deployment_id, admin_token=token)
        except FHEServerError as exc:
            if exc.status_code != 404:
                raise
            # The deployment is gone too (TTL, eviction, restart): upload it again.
            deployment_id = self.deployment._renew(deployment_id)
            key_id = self._client.upload_keys(self._evaluation_keys, deployment_id, admin_token=token)
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
        server = self.deployment.server
        generation = server.generation
        try:
            return self._client.predict(key_id, ciphertext), False
        except FHEServerError as exc:
            # 404: the server forgot the keys. No answer at all: maybe its process died and
            # was started again (running a circuit twice is harmless).
            if exc.status_code != 404 and not (exc.status_code is None and server.recover(generation)):
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
