"""Request limits of the FHE HTTP front end: sizes, concurrency, timeouts, and a redacted access log.

Used by :mod:`fhe_model.http_server`; everything here runs on the event loop
thread, so the counters need no lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

_MiB = 1024 * 1024


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class HTTPSettings:
    """Request limits of the HTTP front end.

    Attributes
    ----------
    max_ciphertext_bytes : int
        Ceiling on ``POST /predict`` bodies; each deployment's own limit
        (what its circuit takes: ~19 kB for MNIST) is usually far lower.
    max_key_bytes : int
        Ceiling on ``POST /keys`` bodies; each deployment's own limit (what
        its circuit needs: 64 bytes for this linear model, tens of MB with
        bootstrapping) is usually far lower.
    max_deployment_bytes : int
        Body limit of ``POST /deployments``.
    workers : int
        Threads running circuits; default: usable CPUs.
    max_concurrent_requests : int
        POST requests queued or running (their body received) before new
        ones get 503; default: twice ``workers``, so a core never idles between requests.
    max_pending_bodies : int
        Bodies being received at once, from all clients; more get 503.
    max_pending_bodies_per_client : int
        Bodies being received at once from one client address; more get 503.
    body_timeout_seconds : float
        A body that has not fully arrived by then gets 408.
    """

    max_ciphertext_bytes: int = 16 * _MiB
    max_key_bytes: int = 64 * _MiB
    max_deployment_bytes: int = 64 * _MiB
    workers: int = field(default_factory=_usable_cpus)
    max_concurrent_requests: int | None = None
    max_pending_bodies: int = 64
    max_pending_bodies_per_client: int = 8
    body_timeout_seconds: float = 10.0

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_requests or 2 * self.workers


class Slots:
    """A non-blocking counter; used only from the event loop thread, so no lock."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class Receivers:
    """Bodies being received, in all and per client address (event loop thread only)."""

    def __init__(self, limit: int, per_client: int):
        self.limit = limit
        self.per_client = per_client
        self.by_client: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        return sum(self.by_client.values())

    def try_acquire(self, client: str) -> bool:
        if self.in_use >= self.limit or self.by_client[client] >= self.per_client:
            return False
        self.by_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


class RedactQueryStrings(logging.Filter):
    """Blank out query values in uvicorn's access log: ``key_id`` is a credential.

    uvicorn's access records carry ``(client, method, path with query, http
    version, status)`` as arguments; the path keeps its parameter names.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            names = [part.partition("=")[0] for part in query.split("&")]
            redacted = "&".join(f"{name}=<redacted>" for name in names)
            record.args = (*args[:2], f"{path}?{redacted}", *args[3:])
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryStrings) for f in access.filters):
        access.addFilter(RedactQueryStrings())


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """Read the body, refusing more than ``limit`` bytes whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "Invalid Content-Length header.")
        if int(declared) > limit:
            raise HTTPException(
                413, f"The body ({declared} bytes) exceeds this endpoint's limit of {limit} bytes."
            )
    chunks: list[bytes] = []
    size = 0

    async def consume() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked uploads declare no length
                raise HTTPException(
                    413, f"The body exceeds this endpoint's limit of {limit} bytes."
                )
            chunks.append(chunk)

    try:
        await asyncio.wait_for(consume(), timeout)
    except TimeoutError:
        raise HTTPException(408, f"The body did not arrive within {timeout:g} s.") from None
    except ClientDisconnect:  # nobody is left to read the answer; not a server error
        raise HTTPException(400, "The client left before its body arrived.") from None
    return b"".join(chunks)


