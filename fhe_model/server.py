"""The server's job: host circuits and evaluation keys, run circuits on ciphertexts.

This is the FHEModelServer role, without HTTP (see ``fhe_model.http_server``).
It only ever handles public material: server.zip/client.zip, serialized
evaluation keys and ciphertexts. It imports nothing that can hold a private
key (``fhe_model.client`` must never be imported from here).

Everything a client uploads is bounded: payloads by what the deployment's
circuit needs, keys and uploaded deployments by a TTL of inactivity and by
caps on their number and size. Keys come in two pools: those uploaded with
the admin token (the app's own sessions), where a new upload evicts the least
recently used, and anonymous ones, where a full pool refuses new uploads:
no client without the token can make the server drop another client's keys.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhe_model.concrete_modules import concrete
from fhe_model.deployment import (
    SERVER_ZIP,
    DeploymentFormatError,
    check_client_zip,
    check_server_zip,
    deployment_paths,
    first_line,
    remove_circuit_files,
    split_upload,
)
from fhe_model.key_store import KeyEntry, KeyStore
from fhe_model.server_limits import (  # noqa: F401 - the server role's errors, importable from here
    IncompatiblePayloadError,
    KeyStoreFullError,
    MalformedPayloadError,
    PayloadLimits,
    PayloadTooLargeError,
    PinnedDeploymentError,
    ServerError,
    StoreLimits,
    UnknownDeploymentError,
    UnknownKeyError,
)

logger = logging.getLogger(__name__)


def retain_freed_memory(max_mmap_chunk: int = 32 * 1024 * 1024, keep_free: int = 256 * 1024 * 1024) -> bool:
    """Make glibc keep freed heap memory for reuse instead of unmapping it.

    Each circuit run allocates ~27 MB of temporaries (MNIST). With glibc's
    defaults, buffers that large are mmapped and unmapped on every run, and
    faulting ~7,000 fresh pages back in cost 15% of the run in a dedicated
    server process (110 ms vs 94 ms). The price is that the process keeps its
    peak heap (tens of MB) instead of returning it. Process-wide setting.

    Parameters
    ----------
    max_mmap_chunk : int
        Allocations below this size come from the heap (glibc caps it at 32 MiB).
    keep_free : int
        Free memory kept at the top of the heap before trimming.

    Returns
    -------
    bool
        False where ``mallopt`` is unavailable (non-glibc platforms); nothing changes there.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(m_mmap_threshold, max_mmap_chunk)) and bool(mallopt(m_trim_threshold, keep_free))


def new_id() -> str:
    """A random, URL-safe identifier (128 bits): ids are never chosen by clients."""
    return secrets.token_urlsafe(16)


#: Loads of server.zip files run one at a time: each one finds the directory
#: Concrete unpacked it into by comparing the temp directory before and after,
#: and two concurrent loads of the same bytes would each take the other's
#: directory for their own (and delete it while it is being read).
_LOAD_LOCK = threading.Lock()


def _load_fhe_server(server_zip: bytes) -> Any:
    """Compile a checked server.zip into an FHEModelServer."""
    FHEModelServer = concrete().FHEModelServer

    # FHEModelServer wants a directory holding server.zip. Concrete unpacks and
    # compiles it into its own temporary directory, so ours can go right away.
    with _LOAD_LOCK, tempfile.TemporaryDirectory(prefix="fhe-upload-") as tmp:
        Path(tmp, SERVER_ZIP).write_bytes(server_zip)
        before = _temp_dirs()
        try:
            return FHEModelServer(tmp)
        except ValueError as exc:  # concrete's version check
            raise IncompatiblePayloadError(
                f"server.zip was built with other package versions: {exc}. Recompile it "
                "with the Concrete ML version this server runs."
            ) from exc
        except (RuntimeError, KeyError, OSError) as exc:
            raise MalformedPayloadError(f"server.zip could not be loaded: {exc}") from exc
        finally:
            _remove_unpacked_copies(server_zip, _temp_dirs() - before)


def _temp_dirs() -> set[Path]:
    return {p for p in Path(tempfile.gettempdir()).glob("tmp*") if p.is_dir()}


def _remove_unpacked_copies(server_zip: bytes, candidates: set[Path]) -> None:
    """Delete the directories Concrete unpacked ``server_zip`` into while loading it.

    Concrete unpacks a server.zip into a fresh temporary directory, compiles it
    into another (removed with the deployment, see ``remove_circuit_files``)
    and never deletes the first. Only a directory whose files are exactly the
    archive's, byte for byte, is removed, so nobody else's files are touched.
    """
    import io
    import shutil
    import zipfile

    with zipfile.ZipFile(io.BytesIO(server_zip)) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    for directory in candidates:
        try:
            files = {p.name: p for p in directory.iterdir()}
            if set(files) == set(members) and all(
                files[name].read_bytes() == content for name, content in members.items()
            ):
                shutil.rmtree(directory, ignore_errors=True)
        except OSError:
            continue


@dataclass
class _Deployment:
    deployment_id: str
    fhe_server: Any  # concrete.ml.deployment.FHEModelServer
    client_zip: bytes | None
    pinned: bool
    last_used: float
    limits: PayloadLimits


class FHEServer:
    """Deployments and evaluation keys of many clients, and circuit execution.

    Thread-safe: stores are guarded by a lock, circuits run outside it (and
    Concrete releases the GIL while running them).

    Parameters
    ----------
    limits : StoreLimits, optional
        TTLs and caps.
    clock : callable, optional
        Monotonic time source (seconds); injectable to test expiry.
    """

    def __init__(self, limits: StoreLimits | None = None, clock=time.monotonic):
        self.limits = limits or StoreLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._deployments: OrderedDict[str, _Deployment] = OrderedDict()
        self._keys = KeyStore(self.limits)
        self.default_deployment_id: str | None = None

    # -- deployments -------------------------------------------------------

    def add_deployment_dir(self, directory: str | os.PathLike, *, default: bool = False) -> str:
        """Load a deployment directory (client.zip + server.zip); it never expires.

        Parameters
        ----------
        directory : path-like
            Written by ``python -m fhe_model compile`` or FHEModelDev.
        default : bool
            Serve it when a request names no deployment. The first one added
            becomes the default anyway.

        Returns
        -------
        str
            Its new random deployment id.

        Raises
        ------
        DeploymentFormatError
            If the directory is not a valid deployment.
        """
        client_zip_path, server_zip_path = deployment_paths(directory)
        client_zip = client_zip_path.read_bytes()
        check_client_zip(client_zip)
        server_zip = server_zip_path.read_bytes()
        try:
            check_server_zip(server_zip)
        except DeploymentFormatError as exc:
            raise DeploymentFormatError(f"{server_zip_path}: {exc}") from exc
        fhe_server = _load_fhe_server(server_zip)
        return self._insert(fhe_server, client_zip, pinned=True, default=default)

    def add_deployment_bytes(self, data: bytes) -> str:
        """Load an uploaded server.zip, or a bundle of server.zip + client.zip.

        Parameters
        ----------
        data : bytes
            See :func:`fhe_model.deployment.split_upload`.

        Returns
        -------
        str
            Its new random deployment id.

        Raises
        ------
        MalformedPayloadError, IncompatiblePayloadError
            If the upload is not a loadable deployment.
        """
        try:
            server_zip, client_zip = split_upload(data, self.limits.max_uncompressed_zip_bytes)
        except DeploymentFormatError as exc:
            raise MalformedPayloadError(str(exc)) from exc
        fhe_server = _load_fhe_server(server_zip)
        return self._insert(fhe_server, client_zip, pinned=False, default=False)

    def _insert(self, fhe_server: Any, client_zip: bytes | None, *, pinned: bool, default: bool) -> str:
        deployment_id = new_id()
        fallback = PayloadLimits(self.limits.max_key_store_bytes, self.limits.max_key_store_bytes)
        limits = PayloadLimits.of(fhe_server.server, fallback)
        with self._lock:
            self._deployments[deployment_id] = _Deployment(
                deployment_id, fhe_server, client_zip, pinned, self._clock(), limits
            )
            if default or self.default_deployment_id is None:
                self.default_deployment_id = deployment_id
            self._expire_locked()
            uploaded = [d for d in self._deployments.values() if not d.pinned]
            # OrderedDict order is least recently used first.
            for stale in uploaded[: max(0, len(uploaded) - self.limits.max_uploaded_deployments)]:
                self._drop_deployment_locked(stale.deployment_id)
        return deployment_id

    def _drop_deployment_locked(self, deployment_id: str) -> None:
        entry = self._deployments.pop(deployment_id, None)
        self._keys.drop_deployment(deployment_id)
        if entry is not None:
            remove_circuit_files(entry.fhe_server.server)
        logger.info("deployment %s dropped", deployment_id)

    def remove_deployment(self, deployment_id: str) -> None:
        """Drop an uploaded deployment, its keys and its compiled circuit's files now.

        Parameters
        ----------
        deployment_id : str
            From :meth:`add_deployment_bytes`.

        Raises
        ------
        UnknownDeploymentError
            If there is no such deployment.
        PinnedDeploymentError
            For a deployment loaded from a directory when the server started.
        """
        with self._lock:
            entry = self._deployments.get(deployment_id)
            if entry is None:
                raise UnknownDeploymentError(
                    f"Unknown deployment {deployment_id!r} (never added, expired or evicted)."
                )
            if entry.pinned:
                raise PinnedDeploymentError(
                    f"Deployment {deployment_id!r} was loaded from a directory when the server "
                    "started; restart the server without it to remove it."
                )
            if self.default_deployment_id == deployment_id:
                self.default_deployment_id = None
            self._drop_deployment_locked(deployment_id)

    def _deployment_locked(self, deployment_id: str | None) -> _Deployment:
        if deployment_id is None:
            deployment_id = self.default_deployment_id
            if deployment_id is None:
                raise UnknownDeploymentError(
                    "This server has no default deployment; pass deployment_id."
                )
        entry = self._deployments.get(deployment_id)
        if entry is None:
            raise UnknownDeploymentError(
                f"Unknown deployment {deployment_id!r} (never added, expired or evicted)."
            )
        entry.last_used = self._clock()
        self._deployments.move_to_end(deployment_id)
        return entry

    def resolve_deployment(self, deployment_id: str | None = None) -> str:
        """Return the id a request addresses (the default one for ``None``).

        Parameters
        ----------
        deployment_id : str, optional
            Requested id.

        Returns
        -------
        str
            An existing deployment id.

        Raises
        ------
        UnknownDeploymentError
            If there is no such deployment.
        """
        with self._lock:
            self._expire_locked()
            return self._deployment_locked(deployment_id).deployment_id

    def client_zip(self, deployment_id: str | None = None) -> bytes:
        """Return a deployment's client.zip bytes (held in memory, never re-read).

        Parameters
        ----------
        deployment_id : str, optional
            Defaults to the default deployment.

        Returns
        -------
        bytes
            The zip.

        Raises
        ------
        UnknownDeploymentError
            If there is no such deployment, or it was uploaded without a client.zip.
        """
        with self._lock:
            self._expire_locked()
            entry = self._deployment_locked(deployment_id)
            if entry.client_zip is None:
                raise UnknownDeploymentError(
                    f"Deployment {entry.deployment_id!r} was uploaded without a client.zip; "
                    "upload server.zip and client.zip together to serve it."
                )
            return entry.client_zip

    def payload_limits(self, deployment_id: str | None = None) -> PayloadLimits:
        """What a deployment's circuit can need: read before a request's body is.

        Parameters
        ----------
        deployment_id : str, optional
            Defaults to the default deployment.

        Returns
        -------
        PayloadLimits
            Its bounds on evaluation keys and ciphertexts.

        Raises
        ------
        UnknownDeploymentError
            If there is no such deployment.
        """
        with self._lock:
            self._expire_locked()
            return self._deployment_locked(deployment_id).limits

    # -- evaluation keys ---------------------------------------------------

    def ciphertext_limit(self, key_id: str) -> int:
        """The largest input the circuit of ``key_id``'s deployment takes, in bytes.

        Parameters
        ----------
        key_id : str
            From :meth:`register_keys`.

        Returns
        -------
        int
            Bytes.

        Raises
        ------
        UnknownKeyError
            For an unknown key id (answered before any body is read).
        """
        with self._lock:
            self._expire_locked()
            entry = self._keys.get(key_id)
            return self._deployments[entry.deployment_id].limits.max_ciphertext_bytes

    def check_key_room(self, trusted: bool) -> None:
        """Refuse an anonymous upload at once when its pool is full (before its body is read).

        Parameters
        ----------
        trusted : bool
            Whether the upload carries the admin token (that pool evicts instead).

        Raises
        ------
        KeyStoreFullError
            If the anonymous pool has no room.
        """
        with self._lock:
            self._expire_locked()
            self._keys.check_room(trusted, 0, self._clock())

    def register_keys(
        self, evaluation_keys: bytes, deployment_id: str | None = None, *, trusted: bool = False
    ) -> str:
        """Store a client's serialized evaluation keys for one deployment.

        Parameters
        ----------
        evaluation_keys : bytes
            From ``FHEModelClient.get_serialized_evaluation_keys()``.
        deployment_id : str, optional
            Defaults to the default deployment.
        trusted : bool, default=False
            Uploaded with the admin token (see :mod:`fhe_model.key_store`: that
            pool evicts its least recently used keys; the anonymous pool
            refuses uploads when full and never evicts).

        Returns
        -------
        str
            A new random key id to pass to :meth:`run`.

        Raises
        ------
        UnknownDeploymentError, MalformedPayloadError, PayloadTooLargeError, KeyStoreFullError
            For an unknown deployment, bytes that are not evaluation keys, more
            bytes than the deployment's circuit needs, or a full anonymous pool.
        """
        fhe = concrete().fhe

        with self._lock:
            self._expire_locked()
            deployment = self._deployment_locked(deployment_id)
        if not evaluation_keys:
            raise MalformedPayloadError("Empty body: send the serialized evaluation keys.")
        if len(evaluation_keys) > deployment.limits.max_key_bytes:
            raise PayloadTooLargeError(
                f"These evaluation keys are {len(evaluation_keys)} bytes; this deployment's circuit "
                f"needs at most {deployment.limits.max_key_bytes}. Were they generated from its client.zip?"
            )
        self.check_key_room(trusted)
        try:
            # Deserialized once here, not per prediction.
            keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
        except RuntimeError as exc:
            raise MalformedPayloadError(
                f"These bytes are not serialized evaluation keys ({first_line(exc)})."
            ) from exc
        key_id = new_id()
        with self._lock:
            self._expire_locked()
            if deployment.deployment_id not in self._deployments:
                raise UnknownDeploymentError(f"Deployment {deployment.deployment_id!r} expired meanwhile.")
            entry = KeyEntry(deployment.deployment_id, keys, len(evaluation_keys), self._clock(), trusted)
            self._keys.add(key_id, entry)
        return key_id

    def remove_keys(self, key_id: str) -> None:
        """Forget a client's evaluation keys now (the client is done with them).

        Parameters
        ----------
        key_id : str
            From :meth:`register_keys`.

        Raises
        ------
        UnknownKeyError
            If there are no such keys (never uploaded, expired, evicted or removed).
        """
        with self._lock:
            self._keys.remove(key_id)

    def _expire_locked(self) -> None:
        now = self._clock()
        self._keys.expire(now)
        for dep in list(self._deployments.values()):
            if not dep.pinned and now - dep.last_used > self.limits.deployment_ttl_seconds:
                self._drop_deployment_locked(dep.deployment_id)

    # -- execution ---------------------------------------------------------

    def run(self, key_id: str, ciphertext: bytes) -> bytes:
        """Run a deployment's circuit on one encrypted input.

        Parameters
        ----------
        key_id : str
            From :meth:`register_keys`; selects the keys and the deployment.
        ciphertext : bytes
            One serialized encrypted input.

        Returns
        -------
        bytes
            The serialized encrypted output.

        Raises
        ------
        UnknownKeyError, MalformedPayloadError, IncompatiblePayloadError
            For an unknown key id, undeserializable bytes, or a ciphertext made
            for another circuit.
        """
        fhe = concrete().fhe

        with self._lock:
            self._expire_locked()
            entry = self._keys.use(key_id, self._clock())
            deployment = self._deployment_locked(entry.deployment_id)
            keys = entry.evaluation_keys
        if not ciphertext:
            raise MalformedPayloadError("Empty body: send one serialized encrypted input.")
        if len(ciphertext) > deployment.limits.max_ciphertext_bytes:
            raise PayloadTooLargeError(
                f"This input is {len(ciphertext)} bytes; this deployment's circuit takes at most "
                f"{deployment.limits.max_ciphertext_bytes}."
            )
        try:
            value = fhe.Value.deserialize(ciphertext)
        except RuntimeError as exc:
            raise MalformedPayloadError(
                f"These bytes are not a serialized ciphertext ({first_line(exc)})."
            ) from exc
        try:
            return deployment.fhe_server.run(value, keys).serialize()
        except RuntimeError as exc:
            raise IncompatiblePayloadError(
                "The ciphertext does not fit this deployment's circuit (was it encrypted "
                f"with this deployment's client.zip?): {first_line(exc)}"
            ) from exc

    # -- introspection -----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for health checks.

        Returns
        -------
        dict
            ``deployments``, ``keys``, ``anonymous_keys``, ``key_store_bytes``,
            ``default_deployment_id``.
        """
        with self._lock:
            self._expire_locked()
            return {
                "deployments": len(self._deployments),
                "keys": len(self._keys),
                "anonymous_keys": self._keys.count(False),
                "key_store_bytes": self._keys.total_bytes(),
                "default_deployment_id": self.default_deployment_id,
            }
