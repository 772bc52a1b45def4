"""A busy FHE server (503 with ``Retry-After``) makes the app's requests wait, not fail.

A stand-in HTTP server answers 503 a given number of times before it serves;
the client's sleeps are recorded instead of slept.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import fhe_model.http_client
from fhe_model.connection import FHEServerHandle
from fhe_model.http_client import BUSY_WAIT_SECONDS, FHEServerClient, FHEServerError


class _Busy:
    """How the stand-in answers: ``busy`` more 503s with ``retry_after``, then 200."""

    def __init__(self) -> None:
        self.busy, self.retry_after, self.requests = 0, "1", 0


@pytest.fixture()
def busy_server() -> Iterator[tuple[str, _Busy]]:
    state = _Busy()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests += 1
            if state.busy > 0:
                state.busy -= 1
                body, status = {"detail": "Server busy (4 requests in progress); retry shortly."}, 503
            else:
                body, status = {"status": "ok"}, 200
            data = json.dumps(body).encode()
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", state.retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@pytest.fixture()
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(fhe_model.http_client.time, "sleep", slept.append)
    return slept


def test_the_apps_connection_waits_out_a_busy_server_honouring_retry_after(busy_server, sleeps):
    url, state = busy_server
    state.busy, state.retry_after = 6, "2"  # more than the old five retries
    handle = FHEServerHandle(url)
    assert handle.client.health()["status"] == "ok"
    assert state.requests == 7 and len(sleeps) == 6
    assert all(2 <= s <= 2.5 for s in sleeps), sleeps  # its Retry-After, plus a little spread
    assert handle.client.busy_wait_seconds == BUSY_WAIT_SECONDS >= 30


def test_a_wait_past_the_budget_is_reported_with_the_servers_retry_after(busy_server, sleeps):
    url, state = busy_server
    state.busy, state.retry_after = 100, "3"
    with FHEServerClient(url, busy_wait_seconds=10.5) as api, pytest.raises(FHEServerError) as refused:
        api.health()
    assert refused.value.status_code == 503 and "busy" in str(refused.value)
    assert "retry in 3 s" in str(refused.value)
    # Each wait is 3 to 3.75 s: three always fit in 10.5 s, a fourth never does.
    assert sum(sleeps) <= 10.5 and len(sleeps) == 3 and all(s >= 3 for s in sleeps)


def test_a_client_told_never_to_retry_reports_the_first_503(busy_server, sleeps):
    url, state = busy_server
    state.busy = 1
    with FHEServerClient(url, busy_retries=0) as api, pytest.raises(FHEServerError, match="busy"):
        api.health()
    assert sleeps == [] and state.requests == 1
