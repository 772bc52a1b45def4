"""The server role behind HTTP (FastAPI + uvicorn).

Endpoints (all errors are JSON ``{"detail": "..."}``):

* ``GET  /health`` - liveness and store counts.
* ``GET  /client.zip[?deployment_id=ID]`` - a deployment's public client.zip.
* ``POST /deployments`` - body: server.zip (or a server.zip + client.zip
  bundle); needs ``Authorization: Bearer <admin token>``. Uploading a circuit
  is uploading code, hence the token; with no token configured it is disabled.
* ``DELETE /deployments?deployment_id=ID`` - drops an uploaded deployment and
  its keys now (admin token).
* ``POST /keys[?deployment_id=ID]`` - body: serialized evaluation keys, at
  most what the deployment's circuit needs. With the admin token they go to
  the pool that evicts its least recently used keys; without it, to the
  anonymous pool, which refuses uploads when full (503) and never evicts.
* ``DELETE /keys?key_id=ID`` - forgets those keys now (the key id, a random
  128-bit token, is the only credential: whoever holds it may already use them).
* ``POST /predict?key_id=ID`` - body: one serialized encrypted input (at most
  what the circuit takes); returns the serialized encrypted output.

Bodies are received before a request takes a compute slot, each within
``body_timeout_seconds``, at most ``max_pending_bodies`` at once and
``max_pending_bodies_per_client`` per client address: a client sending slow
bodies holds nothing but its own requests, for one request's time. When every
compute slot is taken the server answers 503 at once instead of queueing
without bound. Circuits run on a fixed thread pool (Concrete releases the GIL
while computing). Query strings (``key_id`` is a credential) are redacted
from the access log.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from fhe_model.deployment import ADMIN_TOKEN_ENV
from fhe_model.http_limits import HTTPSettings, Receivers, Slots, read_body, redact_access_log
from fhe_model.server import FHEServer, KeyStoreFullError, ServerError, StoreLimits, retain_freed_memory

logger = logging.getLogger(__name__)

#: Ids are server-generated ``token_urlsafe`` strings; anything else is refused
#: before it reaches a lookup.
_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _is_admin(request: Request, admin_token: str | None) -> bool:
    """Whether an optional token was sent and is right (a wrong one is refused, not ignored)."""
    token = _bearer_token(request)
    if token is None:
        return False
    if not admin_token or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise HTTPException(403, "Wrong admin token.")
    return True


def _check_admin(request: Request, admin_token: str | None) -> None:
    if not admin_token:
        raise HTTPException(
            403,
            "Deployment uploads are disabled on this server: start it with "
            f"{ADMIN_TOKEN_ENV}=<token> (or --admin-token-file) to enable them.",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            401, "Missing admin token: send 'Authorization: Bearer <token>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        raise HTTPException(403, "Wrong admin token.")


def create_app(
    fhe_server: FHEServer,
    *,
    admin_token: str | None = None,
    settings: HTTPSettings | None = None,
) -> FastAPI:
    """Build the FastAPI application around an :class:`FHEServer`.

    Parameters
    ----------
    fhe_server : FHEServer
        Holds deployments and keys.
    admin_token : str, optional
        Bearer token for ``POST /deployments``; ``None`` disables uploads.
    settings : HTTPSettings, optional
        Request limits.

    Returns
    -------
    FastAPI
        The ASGI app.
    """
    admission = _Admission(settings or HTTPSettings())
    app = FastAPI(title="FHE model server", lifespan=admission.lifespan, docs_url=None, redoc_url=None)
    _add_error_handlers(app)
    _add_status_routes(app, fhe_server, admission, admin_token)
    _add_deployment_routes(app, fhe_server, admission, admin_token)
    _add_compute_routes(app, fhe_server, admission, admin_token)
    return app


class _Admission:
    """What a request waits for: a receiver for its body, then a compute slot on the server's pool.

    A slow sender holds only its own request, never a compute slot; when none is free the
    request is answered 503 with ``Retry-After`` at once instead of queueing without bound.
    """

    def __init__(self, settings: HTTPSettings):
        self.settings = settings
        self.slots = Slots(settings.concurrency)
        self.receivers = Receivers(settings.max_pending_bodies, settings.max_pending_bodies_per_client)
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI):
        # One pool for the server's life: no thread is spawned per request.
        self._executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="fhe-run")
        self._loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def busy(what: str) -> HTTPException:
        return HTTPException(503, f"Server busy ({what}); retry shortly.", headers={"Retry-After": "1"})

    async def receive(self, request: Request, limit: int) -> bytes:
        """Receive a body without holding a compute slot."""
        client = request.client.host if request.client else "?"
        if not self.receivers.try_acquire(client):
            raise self.busy(f"{self.receivers.in_use} request bodies being received")
        try:
            return await read_body(request, limit, self.settings.body_timeout_seconds)
        finally:
            self.receivers.release(client)

    async def run(self, request: Request, limit: int, job: Callable[[bytes], Any]) -> Any:
        """Receive the body, then run ``job(body)`` on the pool if a compute slot is free."""
        body = await self.receive(request, limit)
        if not self.slots.try_acquire():
            raise self.busy(f"{self.slots.limit} requests in progress")
        try:
            future = self._executor.submit(job, body)
        except BaseException:
            self.slots.release()
            raise
        loop = self._loop

        def release(_future) -> None:
            # The slot is freed when the computation ends, even if the client left.
            try:
                loop.call_soon_threadsafe(self.slots.release)
            except RuntimeError:  # loop already closed at shutdown
                pass

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServerError)
    async def _server_error(_request: Request, exc: ServerError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, KeyStoreFullError) else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return JSONResponse({"detail": "Internal server error."}, status_code=500)


def _add_status_routes(
    app: FastAPI, fhe_server: FHEServer, admission: _Admission, admin_token: str | None
) -> None:
    """``GET /health`` and ``GET /client.zip``: what anyone may read."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            **fhe_server.stats(),
            "uploads_enabled": bool(admin_token),
            "workers": admission.settings.workers,
            "max_concurrent_requests": admission.slots.limit,
            "requests_in_progress": admission.slots.in_use,
            "bodies_being_received": admission.receivers.in_use,
        }

    @app.get("/client.zip")
    async def client_zip(
        deployment_id: str | None = Query(None, pattern=_ID_PATTERN),
    ) -> Response:
        data = fhe_server.client_zip(deployment_id)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="client.zip"'},
        )


def _add_deployment_routes(
    app: FastAPI, fhe_server: FHEServer, admission: _Admission, admin_token: str | None
) -> None:
    """``POST`` / ``DELETE /deployments``: the model owner's, with the admin token."""

    @app.post("/deployments", status_code=201)
    async def add_deployment(request: Request) -> dict[str, str]:
        _check_admin(request, admin_token)
        deployment_id = await admission.run(
            request, admission.settings.max_deployment_bytes, fhe_server.add_deployment_bytes
        )
        return {"deployment_id": deployment_id}

    @app.delete("/deployments", status_code=204)
    async def remove_deployment(
        request: Request, deployment_id: str = Query(..., pattern=_ID_PATTERN)
    ) -> Response:
        _check_admin(request, admin_token)
        fhe_server.remove_deployment(deployment_id)
        return Response(status_code=204)


def _add_compute_routes(
    app: FastAPI, fhe_server: FHEServer, admission: _Admission, admin_token: str | None
) -> None:
    """``/keys`` and ``/predict``: evaluation keys in, ciphertexts in and out."""
    settings = admission.settings

    @app.post("/keys", status_code=201)
    async def upload_keys(
        request: Request, deployment_id: str | None = Query(None, pattern=_ID_PATTERN)
    ) -> dict[str, str]:
        trusted = _is_admin(request, admin_token)
        resolved = fhe_server.resolve_deployment(deployment_id)
        limit = min(settings.max_key_bytes, fhe_server.payload_limits(resolved).max_key_bytes)
        fhe_server.check_key_room(trusted)  # a full pool answers before any body is read
        key_id = await admission.run(
            request, limit, lambda body: fhe_server.register_keys(body, resolved, trusted=trusted)
        )
        return {"key_id": key_id, "deployment_id": resolved}

    @app.delete("/keys", status_code=204)
    async def remove_keys(key_id: str = Query(..., pattern=_ID_PATTERN)) -> Response:
        fhe_server.remove_keys(key_id)
        return Response(status_code=204)

    @app.post("/predict")
    async def predict(request: Request, key_id: str = Query(..., pattern=_ID_PATTERN)) -> Response:
        received = time.perf_counter()

        def job(body: bytes) -> tuple[bytes, float, float]:
            start = time.perf_counter()
            output = fhe_server.run(key_id, body)
            return output, start, time.perf_counter()

        limit = min(settings.max_ciphertext_bytes, fhe_server.ciphertext_limit(key_id))
        output, started, finished = await admission.run(request, limit, job)
        # Server-Timing lets a client tell FHE compute time from transport and queueing.
        timing = (
            f"queue;dur={1000 * (started - received):.2f}, fhe;dur={1000 * (finished - started):.2f}, "
            f"total;dur={1000 * (time.perf_counter() - received):.2f}"
        )
        return Response(output, media_type="application/octet-stream", headers={"Server-Timing": timing})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port.") from exc
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_server(
    deployment_dirs: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
    limits: StoreLimits | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FHEServer:
    """Create an :class:`FHEServer` with deployment directories loaded; the first is the default.

    Also tunes this process's allocator for repeated circuit runs
    (:func:`fhe_model.server.retain_freed_memory`).

    Parameters
    ----------
    deployment_dirs : sequence of path-like
        Deployment directories to serve (they never expire).
    limits : StoreLimits, optional
        TTLs and caps.
    clock : callable, optional
        Monotonic time source of the TTLs (tests pass a fake one).

    Returns
    -------
    FHEServer
        Ready to wrap with :func:`create_app`.
    """
    retain_freed_memory()
    fhe_server = FHEServer(limits, clock=clock)
    for index, directory in enumerate(deployment_dirs):
        deployment_id = fhe_server.add_deployment_dir(directory, default=index == 0)
        logger.info("deployment %s: %s%s", deployment_id, directory, " (default)" if index == 0 else "")
    return fhe_server


@dataclass
class LocalServer:
    """A server running in a background thread of this process (tests, benchmarks).

    The app runs its server in a process of its own instead
    (:class:`fhe_model.connection.FHEServerHandle`).

    Attributes
    ----------
    url : str
        e.g. ``"http://127.0.0.1:43117"``.
    admin_token : str or None
        Token for ``POST /deployments`` (never shown in the repr).
    fhe_server : FHEServer
        The server-role object (public material only).
    """

    url: str
    admin_token: str | None = field(repr=False)
    fhe_server: FHEServer = field(repr=False)
    _uvicorn: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def default_deployment_id(self) -> str | None:
        return self.fhe_server.default_deployment_id

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread to end.

        Parameters
        ----------
        timeout : float
            Seconds to wait.
        """
        self._uvicorn.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def start_local_server(
    deployment_dir: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_token: str | None = None,
    enable_uploads: bool = True,
    settings: HTTPSettings | None = None,
    limits: StoreLimits | None = None,
    fhe_server: FHEServer | None = None,
    clock: Callable[[], float] = time.monotonic,
    startup_timeout: float = 60.0,
) -> LocalServer:
    """Start the HTTP server in a background thread (nothing starts at import).

    Parameters
    ----------
    deployment_dir : path-like, optional
        Default deployment to serve.
    host : str, default="127.0.0.1"
        Interface to bind; keep loopback unless behind a TLS proxy.
    port : int, default=0
        0 picks a free port (see ``.url``).
    admin_token : str, optional
        Token for deployment uploads; a random one is generated if omitted
        and ``enable_uploads``.
    enable_uploads : bool, default=True
        False disables ``POST /deployments`` (403).
    settings : HTTPSettings, optional
        Request limits.
    limits : StoreLimits, optional
        Key/deployment TTLs and caps.
    fhe_server : FHEServer, optional
        Serve this one instead of building one (``deployment_dir``, ``limits``
        and ``clock`` are then ignored).
    clock : callable, optional
        Monotonic time source of the TTLs (tests pass a fake one).
    startup_timeout : float
        Seconds to wait for the server to accept connections.

    Returns
    -------
    LocalServer
        Handle with ``.url``, ``.admin_token`` and ``.stop()``.

    Raises
    ------
    RuntimeError
        If the server did not start.
    """
    import uvicorn

    if enable_uploads and not admin_token:
        admin_token = secrets.token_urlsafe(24)
    if not enable_uploads:
        admin_token = None
    if fhe_server is None:
        fhe_server = build_server([deployment_dir] if deployment_dir is not None else [], limits, clock)
    app = create_app(fhe_server, admin_token=admin_token, settings=settings)
    sock = _bind(host, port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_keep_alive=30, lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fhe-http-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise RuntimeError(f"The FHE server did not start on {host}:{port} within {startup_timeout:g} s.")
    return LocalServer(url=_url(sock), admin_token=admin_token, fhe_server=fhe_server,
                       _uvicorn=server, _thread=thread)


def _stop_on_stdin_eof(server: Any) -> None:
    """Stop ``server`` once standard input closes: its owner ended, however it ended."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="fhe-owner-watch", daemon=True).start()


def serve(
    deployment_dirs: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    admin_token: str | None = None,
    settings: HTTPSettings | None = None,
    limits: StoreLimits | None = None,
    log_level: str = "info",
    announce_url: bool = False,
    stop_on_stdin_eof: bool = False,
) -> None:
    """Serve in the foreground until interrupted (``python -m fhe_model serve``).

    uvicorn's access log has its query strings redacted (``key_id`` is a credential).

    Parameters
    ----------
    deployment_dirs : sequence of path-like
        Deployments to serve; the first is the default.
    host, port : str, int
        Where to listen (port 0: any free port; see ``announce_url``).
    admin_token : str, optional
        Enables ``POST /deployments``; defaults to ``$FHE_ADMIN_TOKEN``.
    settings : HTTPSettings, optional
        Request limits.
    limits : StoreLimits, optional
        TTLs and caps.
    log_level : str
        uvicorn log level.
    announce_url : bool, default=False
        Print ``{"url": ...}`` as one line on stdout once the address is bound
        (for a parent process that started this one).
    stop_on_stdin_eof : bool, default=False
        Exit when standard input closes (a parent holding the other end of a
        pipe: the server ends with it, even if it is killed).

    Raises
    ------
    ValueError
        If there is nothing to serve or a deployment directory is invalid.
    OSError
        If the address cannot be bound.
    """
    import json

    import uvicorn

    admin_token = admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None
    if not deployment_dirs and not admin_token:
        raise ValueError(
            "Nothing to serve: pass --deployment DIR, or set FHE_ADMIN_TOKEN to accept uploads."
        )
    sock = _bind(host, port)  # before loading circuits, so a busy port fails fast
    try:
        fhe_server = build_server(list(deployment_dirs), limits)
    except BaseException:
        sock.close()
        raise
    app = create_app(fhe_server, admin_token=admin_token, settings=settings)
    if not _is_loopback(host):
        logger.warning(
            "Listening on %s over plain HTTP: ciphertexts are safe, but put the server behind "
            "TLS before sending an admin token over a network.", host,
        )
    logger.info(
        "FHE server on %s, default deployment %s, uploads %s",
        _url(sock), fhe_server.default_deployment_id, "enabled" if admin_token else "disabled",
    )
    config = uvicorn.Config(app, log_level=log_level, timeout_keep_alive=30, lifespan="on", ws="none")
    redact_access_log()  # after uvicorn configured its loggers
    server = uvicorn.Server(config)
    if stop_on_stdin_eof:
        _stop_on_stdin_eof(server)
    if announce_url:
        print(json.dumps({"url": _url(sock)}), flush=True)
    server.run(sockets=[sock])
