"""An FHE server in a process of its own, started and owned by the process that needs it.

The app runs ``python -m fhe_model serve`` as a child rather than as a thread
of its own, so that the boundary it teaches holds on the host too: code
running in the server (a crafted upload, a bug in Concrete) runs in a process
that holds no private key and never had one in its memory.

The child gets its admin token on standard input (never in its command line
or environment, where ``ps`` and ``/proc`` show them), announces its URL on
standard output, and exits when its standard input closes: when its owner
calls :meth:`ServerProcess.stop`, and also when the owner is killed.

This module does not import the server role: it only starts a program.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from fhe_model.deployment import ADMIN_TOKEN_ENV

logger = logging.getLogger(__name__)

#: Where ``python -m fhe_model`` is importable from, whatever the owner's working directory.
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ServerProcessError(RuntimeError):
    """The server process did not start, or did not answer in time."""


class ServerProcess:
    """``python -m fhe_model serve`` on 127.0.0.1, a free port, uploads enabled with a random token.

    Parameters
    ----------
    startup_timeout : float, default=60
        Seconds to wait for it to answer ``/health``.

    Attributes
    ----------
    url : str
        Its base URL.
    pid : int
        Its process id.

    Raises
    ------
    ServerProcessError
        If it exited or stayed silent until the timeout (it is stopped then).
    """

    def __init__(self, startup_timeout: float = 60.0):
        self._admin_token = secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", "fhe_model", "serve", "--host", "127.0.0.1", "--port", "0",
            "--admin-token-file", "-", "--announce-url", "--stop-on-stdin-eof", "--log-level", "warning",
        ]
        # A session of its own: a Ctrl-C meant for the owner reaches it through the owner's stop().
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_PROJECT_ROOT, env=env,
            start_new_session=True,
        )
        self.pid = self._process.pid
        announced: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(announced,), name=f"fhe-server-{self.pid}",
                         daemon=True).start()
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(self._admin_token.encode() + b"\n")
            self._process.stdin.flush()  # kept open: closing it stops the server
            self.url = self._await_ready(announced, startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_stdout(self, announced: queue.Queue) -> None:
        """Take the URL from the first line; pass anything after it to the log (the pipe never fills)."""
        assert self._process.stdout is not None
        first = True
        for line in self._process.stdout:
            text = line.decode("utf-8", "replace").strip()
            if first:
                first = False
                try:
                    announced.put(json.loads(text)["url"])
                    continue
                except (ValueError, KeyError, TypeError):
                    announced.put(None)
            if text:
                logger.info("fhe server: %s", text)
        if first:
            announced.put(None)

    def _await_ready(self, announced: queue.Queue, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        try:
            url = announced.get(timeout=timeout)
        except queue.Empty:
            url = None
        if url is None:
            raise ServerProcessError(self._failure(f"did not announce its address within {timeout:g} s"))
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise ServerProcessError(self._failure(f"did not answer on {url} within {timeout:g} s"))

    def _failure(self, what: str) -> str:
        code = self._process.poll()
        status = f"exited with status {code}" if code is not None else what
        return (f"The FHE server process ({' '.join(self._process.args[1:4])}) {status}; "
                "its errors are in this program's log.")

    @property
    def admin_token(self) -> str:
        """The token it accepts for deployment uploads."""
        return self._admin_token

    @property
    def alive(self) -> bool:
        """False once the process has exited (stopped, crashed or killed)."""
        return self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Close its standard input (it exits), then terminate or kill it if it lingers.

        Parameters
        ----------
        timeout : float
            Seconds to wait after closing standard input, then after SIGTERM.
        """
        if self._process.stdin is not None and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self._process.poll() is None:
                self._process.send_signal(sig)
            try:
                self._process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited ({self._process.returncode})"
        return f"ServerProcess(pid={self.pid}, url={getattr(self, 'url', None)!r}, {state})"
