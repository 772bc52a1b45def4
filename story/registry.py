"""The live sessions of a running app, by session id: bounded, swept, and wiped at the end.

Every session's private keys live under one owner-only directory per app
(``fhe-demo-keys-*`` in the temp directory), and its downloadable files under
another (``fhe-demo-work-*``). The app holds a lock on both for as long as it
runs; the kernel releases it however the app ends, so an app that starts
after another was killed (out of memory, ``kill -9``) finds those directories
unlocked and deletes them, private keys included.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from fhe_model.connection import FHEServerHandle
from fhe_model.developer import DEFAULT_N_BITS
from fl_training.datasets import load_dataset
from fl_training.simulation import TrainingResult
from fl_training.task import TrainingConfig, baseline_accuracy
from story.classes import Classes
from story.errors import SESSION_RECLAIMED, StepError
from story.forms import TRAINING_FORM
from story.resume import Resumptions
from story.session import DemoSession
from story.shared_deployments import Lease, SharedDeployments
from story.shared_trainings import SharedTrainings

logger = logging.getLogger(__name__)

#: A session idle for this long is wiped even if the tab never said goodbye.
DEFAULT_IDLE_TTL_SECONDS = 3600.0
#: Sessions alive at once, sized from what one costs (``benchmarks/session_cost.py``, mnist-5k):
#: an idle session < 5 KB; a full one (model, keys, ciphertexts, decryption, an evaluation) sharing
#: the defaults' deployment 0.2 MB and 85 KB of disk; a full one with a compile of its own 7.6 MB in
#: the app, 5.6 MB in the FHE server (which keeps at most 16 deployments) and 99 KB of disk. 256 of
#: the costliest kind take ~2 GB besides the app's own 3.7–5 GB (README, "Memory"): well within a
#: 16 GB Space, with room for compiles' and evaluations' peaks. CPU, not memory, limits a room.
DEFAULT_MAX_SESSIONS = 256
#: Environment variable: the session bound of this app (a whole number ≥ 1).
MAX_SESSIONS_ENV = "FHE_DEMO_MAX_SESSIONS"
#: Once the bound is reached, a session idle this long may be closed to make room for a new
#: visitor, the least recently active first: long enough that a visitor reading, listening or
#: drawing between two steps keeps theirs, short enough that sessions a script opened and left
#: make room within minutes. Active and busy sessions are never reclaimed.
RECLAIM_IDLE_SECONDS = 180.0
#: A session that holds nothing (no model, no class) may be reclaimed after this much idleness:
#: nothing is lost, and its page gets a fresh session on its next click.
RECLAIM_EMPTY_IDLE_SECONDS = 30.0
#: What a visitor past the bound reads (no session could be reclaimed).
SESSIONS_FULL = (
    "The demo is at capacity: {count} visitors' sessions are open and all were used in the last "
    "{reclaim} minutes. Nothing was started for you; please retry in a few minutes (a session idle "
    "for {reclaim} minutes makes room)."
)
#: Logged once :meth:`SessionRegistry.prepare`'s work is done (``could not prepare`` if it failed).
PREPARED_MESSAGE = "the app's defaults are ready"
#: Prefixes of the app's directories in the temp directory.
KEYS_ROOT_PREFIX = "fhe-demo-keys-"
WORK_ROOT_PREFIX = "fhe-demo-work-"
#: An unlocked root younger than this may be one another app is creating right now.
_STALE_GRACE_SECONDS = 60.0


def max_sessions_from_env() -> int:
    """The session bound: ``$FHE_DEMO_MAX_SESSIONS`` or :data:`DEFAULT_MAX_SESSIONS`.

    Raises
    ------
    ValueError
        If the variable is set to anything but a whole number ≥ 1 (the app does not start).
    """
    raw = os.environ.get(MAX_SESSIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_SESSIONS
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{MAX_SESSIONS_ENV} must be a whole number of sessions ≥ 1 (the default is "
                         f"{DEFAULT_MAX_SESSIONS}), got {raw[:40]!r}.")
    return int(raw)


def _lock_dir(path: Path) -> int:
    """Hold an exclusive lock on ``path`` for as long as the returned descriptor stays open."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_stale_roots(temp_dir: str | os.PathLike | None = None) -> list[Path]:
    """Delete the key and work directories of apps that ended without cleaning up.

    A directory is stale when it is ours (same user, a real directory, not a
    link), no running app holds its lock, and it is older than a minute.

    Parameters
    ----------
    temp_dir : path-like, optional
        Where apps create them (default: the system temp directory).

    Returns
    -------
    list of Path
        What was deleted.
    """
    removed = []
    root = Path(temp_dir or tempfile.gettempdir())
    now = time.time()
    for path in root.iterdir():
        if not path.name.startswith((KEYS_ROOT_PREFIX, WORK_ROOT_PREFIX)):
            continue
        try:
            info = path.lstat()
            if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
                continue
            if now - info.st_mtime < _STALE_GRACE_SECONDS:
                continue
            fd = _lock_dir(path)
        except OSError:  # locked by a running app, or gone meanwhile
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        logger.warning("removed %d directories left by an app that did not shut down: %s",
                       len(removed), ", ".join(p.name for p in removed))
    return removed


class SessionRegistry:
    """The live sessions of one app, by session id, with cleanup.

    Sessions share the app's trainings (:attr:`trainings`: equal settings run
    once) and compiled deployments (:attr:`deployments`); each keeps its own
    keys and files.

    Parameters
    ----------
    server : FHEServerHandle
        Shared by all sessions.
    idle_ttl_seconds : float
        A session unused for this long is wiped (the backstop for tabs whose
        close was never reported).
    max_sessions : int
        Sessions with an id alive at once; past it, :meth:`resolve` first
        wipes expired ones, then reclaims the least recently active session
        idle for ``reclaim_idle_seconds`` (one holding nothing after
        :data:`RECLAIM_EMPTY_IDLE_SECONDS`), then refuses new sessions with
        :data:`SESSIONS_FULL`. A busy session is never reclaimed.
    reclaim_idle_seconds : float
        Idleness after which a session may be reclaimed once the bound is reached.
    temp_dir : path-like, optional
        Where the key and work directories go (default: the system temp
        directory); stale ones found there are deleted first.
    clock : callable, optional
        Monotonic time source of the idle TTL (injectable for tests).
    """

    def __init__(
        self,
        server: FHEServerHandle,
        idle_ttl_seconds: float = DEFAULT_IDLE_TTL_SECONDS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        reclaim_idle_seconds: float = RECLAIM_IDLE_SECONDS,
        temp_dir: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.server = server
        self.idle_ttl_seconds = idle_ttl_seconds
        self.max_sessions = max_sessions
        self.reclaim_idle_seconds = reclaim_idle_seconds
        self._clock = clock
        remove_stale_roots(temp_dir)
        #: Parent of every session's private-key directory; never served.
        self.keys_root = Path(tempfile.mkdtemp(prefix=KEYS_ROOT_PREFIX, dir=temp_dir))
        #: Parent of every session's directory of downloadable files (served
        #: only through the copies handlers return).
        self.work_root = Path(tempfile.mkdtemp(prefix=WORK_ROOT_PREFIX, dir=temp_dir))
        self._root_locks = [_lock_dir(self.keys_root), _lock_dir(self.work_root)]
        #: Trainings shared by sessions with equal settings.
        self.trainings = SharedTrainings()
        #: Compiled deployments shared by sessions with the same model and settings.
        self.deployments = SharedDeployments(server, self.work_root / "deployments")
        #: The classes whose participants' drawings train a class model (story.classes).
        self.classes = Classes(self.trainings, TRAINING_FORM, root=self.work_root,
                               deployments=self.deployments)
        self._sessions: dict[str, DemoSession] = {}
        #: Sessions of closed pages, kept for a while so that a reload resumes them (story.resume).
        self.resumptions = Resumptions()
        #: Every live session, with or without an id, so that shutdown wipes them all.
        self._all: weakref.WeakSet[DemoSession] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        #: Deployments made ahead of any visitor (:meth:`prepare`), released at shutdown.
        self._ahead: list[Lease] = []
        #: Set once :meth:`prepare`'s background work has ended (done or failed).
        self.prepared = threading.Event()

    def prepare(
        self, config: TrainingConfig, n_bits: int = DEFAULT_N_BITS, calibration: str = "data"
    ) -> None:
        """Do at launch what the first visitors will ask for: the app's default training and compile.

        The training runtime warms up, the dataset's central baseline is
        computed, ``config`` is trained, and its model is
        compiled at ``n_bits``/``calibration`` and deployed on the FHE server,
        all in the background. The deployment is kept until :meth:`close_all`
        (one circuit), so visitors who keep the defaults share it at once.
        Keys are never made ahead: each session generates its own.

        Parameters
        ----------
        config : TrainingConfig
            Settings most visitors will send untouched.
        n_bits, calibration
            The compile form's defaults.
        """
        from fl_training import simulation

        simulation.prepare()
        self.trainings.prefetch(config)
        threading.Thread(target=self._deploy_ahead, args=(config, n_bits, calibration),
                         name="deployment-prefetch", daemon=True).start()

    def _deploy_ahead(self, config: TrainingConfig, n_bits: int, calibration: str) -> None:
        try:
            baseline_accuracy(config.dataset)  # every visitor's chart shows it; computed once
            result = None
            for item in self.trainings.stream(config):
                result = item if isinstance(item, TrainingResult) else result
            if result is None or self._stop.is_set():
                return
            lease = self.deployments.acquire(result.model, load_dataset(config.dataset), n_bits, calibration)
            with self._lock:
                if self._stop.is_set():
                    lease.release()
                    return
                self._ahead.append(lease)
            self.server.start()
            lease.remote.ensure()  # the server loads it (and its FHE runtime) before the first keygen
            logger.info("%s: prepared ahead of any visitor (trained, compiled at n_bits %d, deployed)",
                        PREPARED_MESSAGE, n_bits)
        except Exception:  # a visitor's own click will meet (and report) the same problem
            logger.warning("could not prepare the default deployment ahead of time", exc_info=True)
        finally:
            self.prepared.set()

    def new_session(self) -> DemoSession:
        """A session not tied to an id (tests, scripts); :meth:`close_all` wipes it too."""
        session = DemoSession(self.server, self.keys_root, self.work_root,
                              trainings=self.trainings, deployments=self.deployments, classes=self.classes)
        session.use_clock(self._clock)
        with self._all_lock:
            self._all.add(session)
        return session

    def resolve(
        self, session: DemoSession | None, session_id: str | None, *, opens: bool = True
    ) -> DemoSession:
        """Return the caller's session, creating it on first use.

        Parameters
        ----------
        session : DemoSession or None
            What the UI state holds.
        session_id : str or None
            The UI framework's id of the browser session (a dictionary key,
            never part of a path).
        opens : bool
            False for a step that cannot succeed without something a session
            built (a model): a caller who has no session gets a blank one that
            is neither kept nor counted, on which the step refuses with its own
            message (its values first, then the missing step); a scripted
            ``/decrypt`` from a fresh client leaves nothing behind.

        Returns
        -------
        DemoSession
            The session; a closed one is returned as is (its steps explain),
            unless it was reclaimed holding nothing (then a fresh one).

        Raises
        ------
        StepError
            If a new session would exceed ``max_sessions`` and none can be
            reclaimed (nothing is created).
        """
        self._ensure_sweeper()
        leaving: list[tuple[DemoSession, str | None, bool]] = []
        try:
            with self._lock:
                if session is None and session_id is not None:
                    session = self._sessions.get(session_id)
                if session is not None and session.closed and session.reclaimed_empty:
                    session = None  # it held nothing: the page carries on with a fresh one
                if session is None and not opens:
                    return self.new_session()  # blank, never registered: gone after the call
                known = session is not None and any(s is session for s in self._sessions.values())
                if session_id is not None and not known and (session is None or not session.closed):
                    self._make_room_locked(leaving)
                if session is None:
                    session = self.new_session()
                if session_id is not None and not session.closed:
                    self._sessions[session_id] = session
                session.last_used = self._clock()
            return session
        finally:  # wiping talks to the FHE server: never while holding the registry's lock
            for gone, reason, empty in leaving:
                gone.close(reason=reason, reclaimed_empty=empty)

    def _make_room_locked(self, leaving: list[tuple[DemoSession, str | None, bool]]) -> None:
        """Make room for one session; what must be wiped is added to ``leaving`` (wiped after the lock)."""
        if len(self._sessions) < self.max_sessions:
            return
        leaving += [(session, None, False) for session in self._pop_idle_locked()]
        if len(self._sessions) < self.max_sessions:
            return
        reclaimed = self._pop_reclaimable_locked()
        if reclaimed is not None:
            empty = reclaimed.holds_nothing
            logger.info("reclaimed a session idle for %.0f s to make room (%s)",
                        self._clock() - reclaimed.last_used, "empty" if empty else "with a model or class")
            leaving.append((reclaimed, None if empty else SESSION_RECLAIMED, empty))
            return
        logger.warning("refused a new session: %d sessions open, none idle", len(self._sessions))
        raise StepError(SESSIONS_FULL.format(count=len(self._sessions),
                                             reclaim=round(self.reclaim_idle_seconds / 60)))

    def _pop_reclaimable_locked(self) -> DemoSession | None:
        """The least recently active session that may make room (empty ones first), removed from the map."""
        now = self._clock()

        def reclaimable(s: DemoSession) -> bool:
            idle = now - s.last_used
            return not s.busy and (
                idle >= self.reclaim_idle_seconds or (s.holds_nothing and idle >= RECLAIM_EMPTY_IDLE_SECONDS)
            )

        candidates = [(not s.holds_nothing, s.last_used, sid) for sid, s in self._sessions.items()
                      if reclaimable(s)]
        if not candidates:
            return None
        session_id = min(candidates)[2]
        self.resumptions.forget_page(session_id)
        return self._sessions.pop(session_id)

    def _pop_idle_locked(self) -> list[DemoSession]:
        now = self._clock()
        stale = [
            sid for sid, s in self._sessions.items()
            if s.closed or (not s.busy and now - s.last_used > self.idle_ttl_seconds)
        ]
        for sid in stale:
            self.resumptions.forget_page(sid)  # their pages' tokens expire with them
        return [self._sessions.pop(sid) for sid in stale]

    def get(self, session_id: str | None) -> DemoSession | None:
        """The open session of ``session_id``, if any (nothing is created)."""
        with self._lock:
            session = self._sessions.get(session_id) if session_id is not None else None
        return session if session is not None and not session.closed else None

    def detach(self, session_id: str | None) -> DemoSession | None:
        """Forget ``session_id`` and return its session, still open (the caller parks or closes it)."""
        if session_id is None:
            return None
        with self._lock:
            return self._sessions.pop(session_id, None)

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
        self.resumptions.forget_page(session_id)  # its page's token expires with it
        if session is not None:
            session.close()

    def sweep(self) -> int:
        """Wipe sessions idle for longer than the TTL.

        Returns
        -------
        int
            Number of sessions wiped.
        """
        with self._lock:
            sessions = self._pop_idle_locked()
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
        with self._lock:
            ahead, self._ahead = self._ahead, []
        for lease in ahead:
            lease.release()
        self.classes.close_all()
        shutil.rmtree(self.keys_root, ignore_errors=True)
        shutil.rmtree(self.work_root, ignore_errors=True)
        for fd in self._root_locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._root_locks = []
