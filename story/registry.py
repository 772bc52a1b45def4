"""The live sessions of a running app, by session id, with cleanup."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

from fhe_model.connection import FHEServerHandle
from story.session import DemoSession

logger = logging.getLogger(__name__)

#: A session idle for this long is wiped even if the tab never said goodbye.
DEFAULT_IDLE_TTL_SECONDS = 3600.0


class SessionRegistry:
    """The live sessions of one app, by session id, with cleanup.

    Parameters
    ----------
    server : FHEServerHandle
        Shared by all sessions.
    idle_ttl_seconds : float
        A session unused for this long is wiped (the backstop for tabs whose
        close was never reported).
    """

    def __init__(self, server: FHEServerHandle, idle_ttl_seconds: float = DEFAULT_IDLE_TTL_SECONDS):
        self.server = server
        self.idle_ttl_seconds = idle_ttl_seconds
        #: Parent of every session's private-key directory; never served.
        self.keys_root = Path(tempfile.mkdtemp(prefix="fhe-demo-keys-"))
        #: Parent of every session's directory of downloadable files (served
        #: only through the copies handlers return).
        self.work_root = Path(tempfile.mkdtemp(prefix="fhe-demo-work-"))
        self._sessions: dict[str, DemoSession] = {}
        #: Every live session, with or without an id, so that shutdown wipes them all.
        self._all: weakref.WeakSet[DemoSession] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    def new_session(self) -> DemoSession:
        """A session not tied to an id (tests, scripts); :meth:`close_all` wipes it too."""
        session = DemoSession(self.server, self.keys_root, self.work_root)
        with self._all_lock:
            self._all.add(session)
        return session

    def resolve(self, session: DemoSession | None, session_id: str | None) -> DemoSession:
        """Return the caller's session, creating it on first use.

        Parameters
        ----------
        session : DemoSession or None
            What the UI state holds.
        session_id : str or None
            The UI framework's id of the browser session (a dictionary key,
            never part of a path).

        Returns
        -------
        DemoSession
            The session; a closed one is returned as is (its steps explain).
        """
        self._ensure_sweeper()
        with self._lock:
            if session is None and session_id is not None:
                session = self._sessions.get(session_id)
            if session is None:
                session = self.new_session()
            if session_id is not None and not session.closed:
                self._sessions[session_id] = session
        session.last_used = time.monotonic()
        return session

    def close(self, session_id: str | None) -> None:
        """Wipe the session of ``session_id`` (tab closed).

        Parameters
        ----------
        session_id : str or None
            Unknown ids are ignored.
        """
        if session_id is None:
            return
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def sweep(self) -> int:
        """Wipe sessions idle for longer than the TTL.

        Returns
        -------
        int
            Number of sessions wiped.
        """
        now = time.monotonic()
        with self._lock:
            stale = [
                sid for sid, s in self._sessions.items()
                if not s.busy and now - s.last_used > self.idle_ttl_seconds
            ]
            sessions = [self._sessions.pop(sid) for sid in stale]
        for session in sessions:
            session.close()
        return len(sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is not None:
            return
        with self._lock:
            if self._sweeper is None:
                interval = max(1.0, min(300.0, self.idle_ttl_seconds / 4))

                def loop() -> None:
                    while not self._stop.wait(interval):
                        try:
                            self.sweep()
                        except Exception:  # a failed sweep must not stop later ones
                            logger.exception("session sweep failed")

                self._sweeper = threading.Thread(target=loop, name="session-sweeper", daemon=True)
                self._sweeper.start()

    def close_all(self) -> None:
        """Wipe every session, the key root and the work root (app shutdown)."""
        self._stop.set()
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        with self._all_lock:
            sessions += list(self._all)
        for session in sessions:
            session.close()
        shutil.rmtree(self.keys_root, ignore_errors=True)
        shutil.rmtree(self.work_root, ignore_errors=True)
