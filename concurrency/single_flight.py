"""Compute once per key: callers who ask while it is being computed wait for that computation."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class SingleFlight:
    """Per-key turns: one caller at a time computes what a key stands for.

    A cache holds its results its own way (forever, least recently used, leased);
    it looks the key up again inside :meth:`turn`, so the callers who waited find
    the first caller's result instead of computing it again. A key's lock exists
    only while somebody holds or waits for it.

    Examples
    --------
    >>> flights, cache = SingleFlight(), {}
    >>> def get(key):
    ...     with flights.turn(key):
    ...         if key not in cache:
    ...             cache[key] = key * 2  # the slow part, once
    ...         return cache[key]
    >>> get(21)
    42
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._turns: dict[Hashable, tuple[threading.Lock, list[int]]] = {}

    def __len__(self) -> int:
        """Keys somebody holds or waits for right now."""
        with self._guard:
            return len(self._turns)

    @contextmanager
    def turn(self, key: Hashable) -> Iterator[None]:
        """Hold ``key``'s turn: wait for whoever holds it, then hold it until the block ends."""
        with self._guard:
            lock, users = self._turns.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._turns[key]
