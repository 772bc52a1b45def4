"""Evaluation keys of many clients on the server, in two pools that never evict each other.

Keys uploaded with the admin token (the app's own sessions, which upload them
again when the server forgot them) live in the *trusted* pool: past its caps,
a new upload evicts the least recently used trusted keys. Keys uploaded
without the token live in the *anonymous* pool: past its caps, new uploads
are refused until keys expire or their owners delete them. So no client
without the token can make the server drop anybody's keys, and flooding the
anonymous pool blocks only new anonymous uploads, for at most its TTL.

Not thread-safe on its own: :class:`fhe_model.server.FHEServer` calls it
under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fhe_model.server_limits import KeyStoreFullError, StoreLimits, UnknownKeyError


@dataclass
class KeyEntry:
    """One client's evaluation keys for one deployment.

    Attributes
    ----------
    deployment_id : str
        The deployment they were registered for.
    evaluation_keys : concrete.fhe.EvaluationKeys
        Deserialized once, at upload.
    size : int
        Serialized size in bytes.
    last_used : float
        Clock time of the upload or last run.
    trusted : bool
        Uploaded with the admin token.
    """

    deployment_id: str
    evaluation_keys: Any
    size: int
    last_used: float
    trusted: bool


class KeyStore:
    """Key sets by id, least recently used first, with per-pool TTLs and caps.

    Parameters
    ----------
    limits : StoreLimits
        ``key_ttl_seconds`` / ``max_keys`` for the trusted pool,
        ``anonymous_key_ttl_seconds`` / ``max_anonymous_keys`` for the other,
        ``max_key_store_bytes`` for each.
    """

    def __init__(self, limits: StoreLimits):
        self.limits = limits
        self._entries: OrderedDict[str, KeyEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, trusted: bool) -> int:
        """Key sets in one pool."""
        return sum(1 for entry in self._entries.values() if entry.trusted == trusted)

    def total_bytes(self, trusted: bool | None = None) -> int:
        """Bytes held by one pool (both for ``None``)."""
        return sum(e.size for e in self._entries.values() if trusted is None or e.trusted == trusted)

    def _ttl(self, trusted: bool) -> float:
        return self.limits.key_ttl_seconds if trusted else self.limits.anonymous_key_ttl_seconds

    def expire(self, now: float) -> None:
        """Drop the key sets unused for longer than their pool's TTL."""
        stale = [k for k, e in self._entries.items() if now - e.last_used > self._ttl(e.trusted)]
        for key_id in stale:
            del self._entries[key_id]

    def check_room(self, trusted: bool, size: int, now: float) -> None:
        """Refuse an anonymous upload of ``size`` bytes if its pool has no room.

        Raises
        ------
        KeyStoreFullError
            With the seconds until the oldest anonymous keys expire.
        """
        if trusted:
            return
        if (
            self.count(False) < self.limits.max_anonymous_keys
            and self.total_bytes(False) + size <= self.limits.max_key_store_bytes
        ):
            return
        ttl = self.limits.anonymous_key_ttl_seconds
        remaining = [ttl - (now - e.last_used) for e in self._entries.values() if not e.trusted]
        wait = max(1, int(min(remaining, default=ttl)) + 1)
        raise KeyStoreFullError(
            f"The key store for clients without the admin token is full "
            f"({self.limits.max_anonymous_keys} key sets or {self.limits.max_key_store_bytes} bytes); "
            f"keys are never evicted to make room. Retry in {wait} s, or delete keys you no "
            "longer use (DELETE /keys).",
            retry_after=wait,
        )

    def add(self, key_id: str, entry: KeyEntry) -> None:
        """Store ``entry``; for a trusted one, evict the least recently used trusted keys past the caps.

        Raises
        ------
        KeyStoreFullError
            For an anonymous entry when its pool is full (nothing is evicted).
        """
        self.check_room(entry.trusted, entry.size, entry.last_used)
        self._entries[key_id] = entry
        while entry.trusted and (
            self.count(True) > self.limits.max_keys
            or self.total_bytes(True) > self.limits.max_key_store_bytes
        ):
            del self._entries[next(k for k, e in self._entries.items() if e.trusted)]

    def use(self, key_id: str, now: float) -> KeyEntry:
        """Return the entry of ``key_id`` and mark it used.

        Raises
        ------
        UnknownKeyError
            If there is none.
        """
        entry = self.get(key_id)
        entry.last_used = now
        self._entries.move_to_end(key_id)
        return entry

    def get(self, key_id: str) -> KeyEntry:
        """Return the entry of ``key_id`` without marking it used.

        Raises
        ------
        UnknownKeyError
            If there is none.
        """
        entry = self._entries.get(key_id)
        if entry is None:
            raise UnknownKeyError(
                f"Unknown key_id {key_id!r} (never uploaded, expired or evicted); "
                "upload the evaluation keys again with POST /keys."
            )
        return entry

    def remove(self, key_id: str) -> None:
        """Forget ``key_id``'s keys.

        Raises
        ------
        UnknownKeyError
            If there are none.
        """
        self.get(key_id)
        del self._entries[key_id]

    def drop_deployment(self, deployment_id: str) -> None:
        """Forget every key set registered for ``deployment_id``."""
        for key_id in [k for k, e in self._entries.items() if e.deployment_id == deployment_id]:
            del self._entries[key_id]
