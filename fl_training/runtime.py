"""A warm training runtime: Flower's simulation engine, ready before the click.

:class:`TrainingRuntime` keeps one worker process (:mod:`fl_training.runtime_worker`)
with Ray up and the ClientApp actors started, and hands it one run at a time.
What a click then costs is the federated work itself: on 2 cores a default run
(mnist-5k, 5 clients × 3 rounds) finishes in about 1.5 s instead of ~15 s.

- Runs wait their turn in order; a waiting caller is told its place in the
  queue and an estimate of the wait (``on_wait``).
- The final model is returned the moment the last round ends; the engine's
  teardown happens after, before the next run starts.
- A run that stays silent longer than its stall limit, a worker that dies,
  and a caller that leaves mid-run all end that worker's whole process group;
  a fresh worker is started at once, so the next caller does not inherit the fault.

The worker runs in its own process group because Ray starts processes of its
own, can deadlock when it forks beside BLAS work in other threads, and keeps
memory the caller (a web app) should not hold.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fl_training.config import TrainingConfig
from fl_training.runtime_worker import read_frame, write_frame
from fl_training.server_app import RoundRecord

logger = logging.getLogger(__name__)

#: A run that finishes no round for this long (plus 3× its slowest round so far) counts as stalled.
STALL_SECONDS = 30.0
#: How long a worker may take to start (Ray, actors, warm-up run) before it counts as failed.
START_TIMEOUT_SECONDS = 120.0
#: A run's duration before any run has been timed, for the first wait estimates.
FIRST_RUN_ESTIMATE_SECONDS = 3.0
#: Expected start-up of a worker (Ray, the actors, their preload), for the wait estimates.
START_ESTIMATE_SECONDS = 12.0
#: A runtime chosen for a run (:meth:`TrainingRuntime.reserve`) counts it as queued until the
#: run joins the queue, or for this long at most.
RESERVATION_SECONDS = 5.0


@dataclass(frozen=True)
class QueueStatus:
    """Where a waiting run stands: ``position`` runs go before it (1 = next)."""

    position: int
    eta_seconds: float


@dataclass
class RunOutcome:
    """A finished run as the worker reports it."""

    model: Any
    history: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0


class RunCancelled(RuntimeError):
    """The caller cancelled the run (``cancel`` was set) before it finished."""


class RuntimeFailure(RuntimeError):
    """The runtime could not run a training (stalled, crashed, or could not start); it was replaced."""


class _LostBeforeStart(RuntimeError):
    """The worker ended before a run it was sent had started (it had died while idle)."""


class _Worker:
    """One worker process and the thread that routes its events."""

    def __init__(self, warm_up: bool, flower_logs: bool, on_exit: Callable[[_Worker], None]):
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fl_training.runtime_worker", str(write_fd),
                 "1" if warm_up else "0", "1" if flower_logs else "0"],
                pass_fds=(write_fd,),
                stdin=subprocess.PIPE,
                env={**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
                start_new_session=True,  # the worker and its Ray processes stop as one group
            )
        finally:
            os.close(write_fd)
        self.ready = threading.Event()
        self.started = time.monotonic()
        self.failed: str | None = None
        self.idle = threading.Event()
        self.idle.set()
        self.runs: dict[int, queue.Queue] = {}
        self.ended = False
        self._runs_lock = threading.Lock()
        self._on_exit = on_exit
        self._send_lock = threading.Lock()
        router = threading.Thread(target=self._route, args=(read_fd,), name="runtime-events", daemon=True)
        router.start()

    def _route(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            while (event := read_frame(pipe)) is not None:
                kind = event[0]
                if kind == "ready":
                    self.ready.set()
                elif kind == "finished":
                    self.runs.pop(event[1], None)
                    self.idle.set()
                elif event[1] in self.runs:
                    self.runs[event[1]].put(event)
                elif kind == "error" and event[1] is None:
                    self.failed = event[2][1]
        with self._runs_lock:
            self.failed = self.failed or "the training runtime's process ended"
            self.ended = True
            for events in self.runs.values():
                events.put(None)
        self.ready.set()  # wake anyone waiting for it; ``failed`` says why
        self.idle.set()
        self._on_exit(self)

    def register(self, run_id: int) -> queue.Queue:
        """The queue that will receive run ``run_id``'s events (ended at once if the worker has gone)."""
        events: queue.Queue = queue.Queue()
        with self._runs_lock:
            self.runs[run_id] = events
            if self.ended:
                events.put(None)
        return events

    def send(self, request: tuple) -> None:
        with self._send_lock:
            assert self.process.stdin is not None
            write_frame(self.process.stdin, request)

    def alive(self) -> bool:
        return self.process.poll() is None and self.failed is None

    def stop(self, graceful: bool = False) -> None:
        """End the worker and every process it started.

        Gracefully: ask it to stop (it shuts Ray down itself), then end what is
        left. Otherwise its whole process group is killed at once: nothing of a
        worker being discarded (stalled, abandoned mid-run) is worth waiting for.
        """
        if graceful and self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send(("stop",))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()


def _get(events: queue.Queue, timeout: float, cancel: threading.Event) -> Any:
    """The next event, waiting at most ``timeout`` seconds, and no longer once ``cancel`` is set."""
    deadline = time.monotonic() + timeout
    while True:
        if cancel.is_set():
            raise RunCancelled
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        try:
            return events.get(timeout=min(left, 0.2))
        except queue.Empty:
            continue


class TrainingRuntime:
    """Flower's simulation engine in a warm worker process, one run at a time.

    Parameters
    ----------
    warm_up : bool, default=True
        Preload the ClientApp, the default dataset and its partitions in the
        actors while starting, so that the first real run is as fast as the
        next ones (a web app wants this; a one-off CLI run does not).
    flower_logs : bool, default=False
        Let Flower's INFO log through to the console.
    stall_seconds : float, default=STALL_SECONDS
        A run that finishes no round for this long (plus 3× its slowest
        round so far) is stopped and the worker replaced.
    """

    def __init__(self, *, warm_up: bool = True, flower_logs: bool = False,
                 stall_seconds: float = STALL_SECONDS):
        self.warm_up = warm_up
        self.flower_logs = flower_logs
        self.stall_seconds = stall_seconds
        self._worker: _Worker | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._turns = threading.Condition()
        self._waiting: deque[object] = deque()
        self._reserved: deque[float] = deque()
        self._running: object | None = None
        self._run_started = 0.0
        self._durations: deque[float] = deque(maxlen=8)
        self._next_run_id = 0
        self.restarts = 0
        atexit.register(self.close)

    # -- the worker --------------------------------------------------------

    def start(self) -> None:
        """Start a worker in the background if none is alive (returns at once)."""
        with self._lock:
            if self._closed:
                raise RuntimeFailure("The training runtime has been shut down.")
            if self._worker is None or not self._worker.alive():
                old, self._worker = self._worker, _Worker(self.warm_up, self.flower_logs, self._worker_exited)
                if old is not None:
                    threading.Thread(target=old.stop, daemon=True).start()

    def _worker_exited(self, worker: _Worker) -> None:
        with self._lock:
            replace = worker is self._worker and not self._closed
        if replace:
            logger.warning("training runtime ended (%s); starting a fresh one", worker.failed)
            self.restarts += 1
            with contextlib.suppress(RuntimeFailure):
                self.start()

    def _replace(self, worker: _Worker, reason: str) -> None:
        logger.warning("replacing the training runtime: %s", reason)
        with self._lock:
            if worker is self._worker:
                self._worker = None
        worker.stop()  # before the next one starts: two Ray clusters would not fit beside each other
        self.restarts += 1
        with contextlib.suppress(RuntimeFailure):
            self.start()

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> bool:
        """Start a worker if needed and wait until it can take a run; False if it failed or timed out."""
        self.start()
        worker = self._worker
        return worker is not None and worker.ready.wait(timeout) and worker.alive()

    @property
    def worker_pid(self) -> int | None:
        """The current worker's process id (also its process group's), if one is running."""
        worker = self._worker
        return worker.process.pid if worker is not None and worker.process.poll() is None else None

    @property
    def pids(self) -> set[int]:
        """Process group of the current worker (itself and what Ray started), for tests and monitoring."""
        import psutil

        worker = self._worker
        if worker is None or worker.process.poll() is not None:
            return set()
        try:
            root = psutil.Process(worker.process.pid)
            return {root.pid} | {p.pid for p in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the worker has let go of its last run (Flower's teardown); False on timeout."""
        worker = self._worker
        return worker is None or worker.idle.wait(timeout)

    def close(self, graceful: bool = True) -> None:
        """Stop the worker and everything it started; later runs are refused.

        Parameters
        ----------
        graceful : bool, default=True
            Let the worker shut Ray down itself (a few seconds) before its
            process group is ended; a one-off run need not wait for that.
        """
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(graceful=graceful)
        with self._turns:
            self._turns.notify_all()

    # -- turns -------------------------------------------------------------

    def _estimate(self, position: int) -> float:
        durations = self._durations or [FIRST_RUN_ESTIMATE_SECONDS]
        typical = sum(durations) / len(durations)
        remaining = max(0.0, typical - (time.monotonic() - self._run_started)) if self._running else 0.0
        return remaining + typical * max(0, position - 1)

    def _take_turn(
        self, token: object, on_wait: Callable[[QueueStatus], None] | None, cancel: threading.Event
    ) -> None:
        reported = None
        with self._turns:
            self._waiting.append(token)
            if self._reserved:
                self._reserved.popleft()  # this run was one of them
            try:
                while self._running is not None or self._waiting[0] is not token:
                    if self._closed:
                        raise RuntimeFailure("The training runtime has been shut down.")
                    if cancel.is_set():
                        raise RunCancelled("The run was cancelled while it waited for its turn.")
                    position = list(self._waiting).index(token) + (1 if self._running is not None else 0)
                    if on_wait is not None and position != reported:
                        reported = position
                        status = QueueStatus(position, self._estimate(position))
                        self._turns.release()
                        try:
                            on_wait(status)
                        finally:
                            self._turns.acquire()
                        continue
                    self._turns.wait(timeout=1.0)
                self._running = token
                self._run_started = time.monotonic()
            finally:
                self._waiting.remove(token)
                self._turns.notify_all()

    def _end_turn(self, token: object) -> None:
        with self._turns:
            if self._running is token:
                self._running = None
            self._turns.notify_all()

    @property
    def waiting(self) -> int:
        """Runs waiting for their turn."""
        return len(self._waiting)

    @property
    def load(self) -> int:
        """Runs running, waiting, or sent here and about to wait."""
        with self._turns:
            return self._ahead_locked()

    def reserve(self) -> None:
        """Count a run sent here that has not asked for its turn yet (for :data:`RESERVATION_SECONDS`)."""
        with self._turns:
            self._reserved.append(time.monotonic())

    def _ahead_locked(self) -> int:
        expired = time.monotonic() - RESERVATION_SECONDS
        while self._reserved and self._reserved[0] < expired:
            self._reserved.popleft()
        return len(self._reserved) + len(self._waiting) + (1 if self._running is not None else 0)

    def expected_wait(self) -> float:
        """Seconds a run submitted now would likely wait before it starts (start-up included)."""
        worker = self._worker
        booting = 0.0
        if worker is None or not worker.ready.is_set():
            since = time.monotonic() - worker.started if worker is not None else 0.0
            booting = max(1.0, START_ESTIMATE_SECONDS - since)
        with self._turns:
            ahead = self._ahead_locked()
            return booting + (self._estimate(ahead) if ahead else 0.0)

    @property
    def ready(self) -> bool:
        """True when a live worker can take a run now (no start-up to wait for)."""
        worker = self._worker
        return worker is not None and worker.ready.is_set() and worker.alive()

    # -- a run -------------------------------------------------------------

    def run(
        self,
        config: TrainingConfig,
        on_wait: Callable[[QueueStatus], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[RoundRecord | RunOutcome]:
        """Run a federated training and yield each round, then the outcome.

        Parameters
        ----------
        config : TrainingConfig
            The run's settings.
        on_wait : callable, optional
            Called with a :class:`QueueStatus` while the run waits for its turn.
        cancel : threading.Event, optional
            Set from another thread to abandon the run (:class:`RunCancelled`);
            a run under way then ends its worker, as when the generator is closed.

        Yields
        ------
        RoundRecord
            Round 0 (the initial model), then each round as the server scores it.
        RunOutcome
            Last: the exported model and the history, before the engine's teardown.

        Raises
        ------
        ValueError
            If the run refused a value.
        RuntimeFailure
            If the run stalled, the worker died or could not start; it has been replaced.
        RunCancelled
            If ``cancel`` was set.

        Notes
        -----
        Closing the generator mid-run (the caller left) stops the worker and
        its Ray processes; a fresh one starts for the next run.
        """
        token = object()
        cancel = cancel if cancel is not None else threading.Event()
        self._take_turn(token, on_wait, cancel)
        try:
            try:
                yield from self._attempt(config, cancel)
            except _LostBeforeStart:
                # The worker had died while idle (nothing of this run happened yet): one more try.
                yield from self._attempt(config, cancel)
        except _LostBeforeStart as lost:
            raise RuntimeFailure(
                f"The Flower simulation failed ({lost}); the runtime was restarted."
            ) from None
        finally:
            self._end_turn(token)

    def _attempt(self, config: TrainingConfig, cancel: threading.Event) -> Iterator[RoundRecord | RunOutcome]:
        """One try at a run on the current worker (see :meth:`run`)."""
        worker: _Worker | None = None
        finished = False
        try:
            if not self.wait_ready():
                worker = self._worker
                reason = worker.failed if worker is not None and worker.failed else "it did not start in time"
                if worker is not None:
                    self._replace(worker, reason)
                    worker = None
                raise RuntimeFailure(
                    f"The training runtime is not available ({reason}); try again in a moment."
                )
            worker = self._worker
            assert worker is not None
            self.wait_idle()  # the previous run's teardown
            self._next_run_id += 1
            run_id = self._next_run_id
            events = worker.register(run_id)
            worker.idle.clear()
            start = time.monotonic()
            try:
                worker.send(("run", run_id, config.to_dict()))
            except (OSError, ValueError):
                events.put(None)  # the worker is gone: handled below like an ended stream
            slowest, last, rounds = 0.0, start, 0
            while True:
                limit = self.stall_seconds + 3 * slowest
                try:
                    event = _get(events, limit, cancel)
                except RunCancelled:
                    raise RunCancelled("The run was cancelled.") from None
                except queue.Empty:
                    self._replace(worker, f"no round finished in {limit:.0f} s")
                    worker = None
                    raise RuntimeFailure(
                        f"The Flower simulation stalled (no round finished in {limit:.0f} s); the training "
                        "runtime was restarted. Press the button again."
                    ) from None
                if event is None:
                    reason = worker.failed or "the worker ended"
                    self._replace(worker, reason)
                    worker = None
                    if rounds == 0:
                        raise _LostBeforeStart(reason)
                    raise RuntimeFailure(
                        f"The Flower simulation failed ({reason}); the runtime was restarted."
                    )
                kind, _, payload = event
                now = time.monotonic()
                if kind == "round":
                    slowest, last, rounds = max(slowest, now - last), now, rounds + 1
                    yield payload
                elif kind == "result":
                    model, history = payload
                    finished = True
                    self._durations.append(now - start)
                    yield RunOutcome(model=model, history=history, seconds=now - start)
                    return
                else:
                    error_kind, message = payload
                    finished = True  # the worker reports "finished" (or exits) by itself
                    if error_kind == "value":
                        raise ValueError(message)
                    raise RuntimeFailure(f"The Flower simulation failed: {message}")
        finally:
            if worker is not None and not finished:
                # The caller left mid-run: Flower cannot abandon a run, so the worker goes.
                self._replace(worker, "the caller left mid-run")
