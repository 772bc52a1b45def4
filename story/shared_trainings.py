"""Identical trainings run once: visitors with equal settings share one Flower run.

A visitor whose settings (seed included) equal a run in flight joins it and
sees its rounds from the start, then live; a finished run stays in a bounded
cache and comes back at once. Each visitor still gets a session, model file
and keys of their own; only the training is shared.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fl_training.runtime import QueueStatus
from fl_training.server_app import RoundRecord
from fl_training.simulation import TrainingResult, stream_training
from fl_training.task import TrainingConfig

logger = logging.getLogger(__name__)

#: Finished trainings kept for visitors who ask for the same settings.
DEFAULT_CACHE_SIZE = 32


@dataclass(frozen=True)
class Joined:
    """This visitor shares a run another visitor started.

    ``at_round`` is the last round that run had finished when this visitor
    joined (``-1``: it had not started its rounds); ``finished`` says it had
    already ended (its result came from the cache).
    """

    at_round: int
    finished: bool


@dataclass
class _Run:
    config: TrainingConfig
    items: list[RoundRecord | TrainingResult] = field(default_factory=list)
    waiting: QueueStatus | None = None
    error: BaseException | None = None
    done: bool = False
    subscribers: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)


class SharedTrainings:
    """The trainings of one app, run once per distinct settings.

    Parameters
    ----------
    cache_size : int, default=DEFAULT_CACHE_SIZE
        Finished runs kept (least recently used first out).
    stream : callable, default=fl_training.simulation.stream_training
        What runs a training (``stream(config, on_wait=..., cancel=...)``).
    """

    def __init__(
        self, cache_size: int = DEFAULT_CACHE_SIZE, stream: Callable[..., Iterator[Any]] = stream_training
    ):
        self.cache_size = cache_size
        self._stream = stream
        self._lock = threading.Lock()
        self._in_flight: dict[TrainingConfig, _Run] = {}
        self._finished: OrderedDict[TrainingConfig, TrainingResult] = OrderedDict()
        #: How many runs Flower actually started (joins and cache hits excluded).
        self.runs_started = 0

    def cached(self, config: TrainingConfig) -> TrainingResult | None:
        """The finished run with these settings, if it is still in the cache."""
        with self._lock:
            result = self._finished.get(config)
            if result is not None:
                self._finished.move_to_end(config)
            return result

    def __len__(self) -> int:
        """Finished runs in the cache."""
        return len(self._finished)

    def prefetch(self, config: TrainingConfig) -> None:
        """Start a run in the background (the app's defaults at launch) unless it is cached or running."""
        with self._lock:
            if config in self._finished or config in self._in_flight:
                return
            run = self._start_locked(config)
            run.subscribers = 1  # the prefetch holds it until it ends, so nobody's leaving cancels it

        def release_when_done() -> None:
            with run.changed:
                run.changed.wait_for(lambda: run.done)
            self._unsubscribe(run)

        threading.Thread(target=release_when_done, name="training-prefetch", daemon=True).start()

    def stream(self, config: TrainingConfig) -> Iterator[Joined | QueueStatus | RoundRecord | TrainingResult]:
        """This visitor's view of the training with ``config``.

        Yields
        ------
        Joined
            First, if the run is shared (in flight or cached).
        QueueStatus
            While the run waits for its turn on the training runtime.
        RoundRecord
            Each round, from round 0 (a joiner catches up at once).
        TrainingResult
            Last.

        Raises
        ------
        Exception
            Whatever the run raised (every visitor sharing it sees the error).
        """
        with self._lock:
            result = self._finished.get(config)
            if result is not None:
                self._finished.move_to_end(config)
                run = None
            else:
                run = self._in_flight.get(config)
                joined = run is not None
                if run is None:
                    run = self._start_locked(config)
                run.subscribers += 1
        if run is None:
            yield Joined(at_round=result.history[-1].round, finished=True)
            yield from result.history
            yield result
            return
        try:
            if joined:
                with run.changed:
                    rounds = [item for item in run.items if isinstance(item, RoundRecord)]
                yield Joined(at_round=rounds[-1].round if rounds else -1, finished=False)
            yield from self._follow(run)
        finally:
            self._unsubscribe(run)

    def _follow(self, run: _Run) -> Iterator[QueueStatus | RoundRecord | TrainingResult]:
        seen, reported = 0, None
        while True:
            with run.changed:
                run.changed.wait_for(
                    lambda s=seen, r=reported: len(run.items) > s or run.done or run.waiting != r
                )
                new, waiting, done, error = run.items[seen:], run.waiting, run.done, run.error
            seen += len(new)
            if waiting != reported:
                reported = waiting
                if waiting is not None and not new:
                    yield waiting
            yield from new
            if done and seen == len(run.items):
                if error is not None:
                    raise error
                return

    def _start_locked(self, config: TrainingConfig) -> _Run:
        run = _Run(config)
        self._in_flight[config] = run
        self.runs_started += 1
        threading.Thread(target=self._drive, args=(run,), name="shared-training", daemon=True).start()
        return run

    def _drive(self, run: _Run) -> None:
        def on_wait(status: QueueStatus) -> None:
            with run.changed:
                run.waiting = status
                run.changed.notify_all()

        try:
            for item in self._stream(run.config, on_wait=on_wait, cancel=run.cancel):
                with run.changed:
                    run.waiting = None
                    run.items.append(item)
                    run.changed.notify_all()
        except BaseException as exc:  # every subscriber re-raises it
            run.error = exc
        with self._lock:
            self._in_flight.pop(run.config, None)
            last = run.items[-1] if run.items else None
            if run.error is None and isinstance(last, TrainingResult):
                self._finished[run.config] = last
                while len(self._finished) > self.cache_size:
                    self._finished.popitem(last=False)
        with run.changed:
            run.done = True
            run.changed.notify_all()

    def _unsubscribe(self, run: _Run) -> None:
        with self._lock:
            run.subscribers -= 1
            abandoned = run.subscribers == 0 and not run.done
            if abandoned and self._in_flight.get(run.config) is run:
                # Nobody is watching any more: a new request for these settings starts afresh.
                self._in_flight.pop(run.config)
        if abandoned:
            run.cancel.set()
