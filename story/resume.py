"""A page reload resumes the visitor's model and deployment, with a new private key.

The browser keeps one thing: an opaque token (:func:`new_token`, random,
never a path or a session id). Each page tells :class:`Resumptions` its token
when it loads, and gets a new one in exchange (:meth:`Resumptions.rotate`): a
token works once, so a leaked old one can no longer take a session over. A
token expires with its session: it is forgotten when its page's session ends
(closed, idle, reclaimed) or its parked session is wiped.

When a page closes, its session is *parked*: its private key and everything
after the deployment are deleted at once, the model and the
deployment are kept for :data:`PARK_SECONDS`. A page that loads with the same
token takes them over (:meth:`story.base.SessionCore.resume_from`) and makes
keys of its own. A reload whose new page arrives before the old one has said
goodbye takes over from the old page's session while it is still open.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from story.base import SessionCore

logger = logging.getLogger(__name__)

#: How long a closed page's model and deployment wait for the page to come back.
PARK_SECONDS = 15 * 60
#: Closed pages kept at once; past it, the oldest is wiped first.
MAX_PARKED = 16
#: Random bytes in a token.
TOKEN_BYTES = 24


def new_token() -> str:
    """A fresh opaque token for a browser (URL-safe text, 192 random bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def looks_like_token(value: object) -> bool:
    if not isinstance(value, str) or not 16 <= len(value) <= 64:
        return False
    return value.replace("-", "").replace("_", "").isalnum()


@dataclass
class _Parked:
    session: SessionCore
    until: float


class Resumptions:
    """Which page of which browser holds which session, and the sessions of closed pages.

    Parameters
    ----------
    park_seconds : float
        How long a parked session waits before it is wiped.
    max_parked : int
        Parked sessions kept at once.
    clock : callable, optional
        Monotonic time source (injectable for tests).
    """

    def __init__(self, park_seconds: float = PARK_SECONDS, max_parked: int = MAX_PARKED,
                 clock: Callable[[], float] = time.monotonic):
        self.park_seconds = park_seconds
        self.max_parked = max_parked
        self._clock = clock
        self._lock = threading.Lock()
        self._token_of_page: dict[str, str] = {}
        self._page_of_token: dict[str, str] = {}
        self._parked: dict[str, _Parked] = {}

    def remember(self, page_id: str, token: str) -> None:
        """Record that the page ``page_id`` (a UI session id) belongs to the browser with ``token``.

        The newest page of a browser is the one whose session is parked when it closes.
        """
        with self._lock:
            self._token_of_page[page_id] = token
            self._page_of_token[token] = page_id

    def rotate(self, token: object) -> str:
        """Retire ``token`` (it will never resume anything again) and return a fresh one.

        Parameters
        ----------
        token : object
            What a loading page's browser sent (anything: unknown values are ignored).

        Returns
        -------
        str
            The token the browser keeps from now on (record it with :meth:`remember`).
        """
        if looks_like_token(token):
            with self._lock:
                page = self._page_of_token.pop(token, None)
                if page is not None and self._token_of_page.get(page) == token:
                    del self._token_of_page[page]
        return new_token()

    def forget_page(self, page_id: str) -> None:
        """The session of ``page_id`` ended without being parked: its token expires with it."""
        with self._lock:
            token = self._token_of_page.pop(page_id, None)
            if token is not None and self._page_of_token.get(token) == page_id:
                del self._page_of_token[token]

    def page_of(self, token: object) -> str | None:
        """The newest page (UI session id) of the browser with ``token``, if it is known."""
        if not looks_like_token(token):
            return None
        with self._lock:
            return self._page_of_token.get(token)

    def park(self, page_id: str | None, session: SessionCore) -> bool:
        """Park ``session`` if it is the newest page of its browser and has a model; else do nothing.

        Parameters
        ----------
        page_id : str or None
            The closing page.
        session : SessionCore
            Its session (still open).

        Returns
        -------
        bool
            True if parked: the caller must not close it (this object closes it later).
        """
        with self._lock:
            token = self._token_of_page.pop(page_id, None) if page_id is not None else None
            newest = token is not None and self._page_of_token.get(token) == page_id
            if newest:
                del self._page_of_token[token]
        if not newest or not session.park():
            return False
        evicted = []
        with self._lock:
            previous = self._parked.pop(token, None)
            if previous is not None:
                evicted.append(previous.session)
            self._parked[token] = _Parked(session, self._clock() + self.park_seconds)
            evicted += self._expired_locked()
        for stale in evicted:
            stale.close()
        return True

    def take(self, token: object) -> SessionCore | None:
        """Hand over the parked session of ``token`` (the caller resumes from it, then closes it)."""
        if not looks_like_token(token):
            return None
        with self._lock:
            parked = self._parked.pop(token, None)
            evicted = self._expired_locked()
        for stale in evicted:
            stale.close()
        if parked is None or parked.until < self._clock():
            if parked is not None:
                parked.session.close()
            return None
        return parked.session

    def holds(self, session: SessionCore) -> bool:
        """True while ``session`` is parked here (nobody else may close it)."""
        with self._lock:
            return any(p.session is session for p in self._parked.values())

    def sweep(self) -> int:
        """Wipe parked sessions whose time is up; return how many."""
        with self._lock:
            evicted = self._expired_locked()
        for stale in evicted:
            stale.close()
        return len(evicted)

    def close_all(self) -> None:
        """Wipe every parked session (app shutdown)."""
        with self._lock:
            parked, self._parked = list(self._parked.values()), {}
            self._token_of_page.clear()
            self._page_of_token.clear()
        for entry in parked:
            entry.session.close()

    def __len__(self) -> int:
        return len(self._parked)

    def _expired_locked(self) -> list[SessionCore]:
        now = self._clock()
        expired = [token for token, p in self._parked.items() if p.until < now]
        while len(self._parked) - len(expired) > self.max_parked:
            oldest = min((t for t in self._parked if t not in expired), key=lambda t: self._parked[t].until)
            expired.append(oldest)
        return [self._parked.pop(token).session for token in expired]
