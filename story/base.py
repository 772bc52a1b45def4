"""A session's housekeeping: one step at a time, its own directories, and a complete wipe.

:class:`SessionCore` holds the records of the steps done so far (see
:mod:`story.stages`), refuses a step whose predecessors are missing, drops
what a replaced step made obsolete, and deletes everything (private key
included) when the session closes. Every record stored gets a new serial
number (:meth:`SessionCore.versions`), so that a view can tell whether what it
shows is still current, and what was handed out for one record (a download)
can be withdrawn when that record goes (:meth:`SessionCore.while_current`).
The steps themselves live in one module per act of the story and are
combined in :class:`story.session.DemoSession`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fl_training.datasets import Dataset, load_dataset
from story import errors
from story.errors import StepError
from story.shared_deployments import SharedDeployments
from story.shared_trainings import SharedTrainings
from story.stages import (
    CompiledStage,
    DecryptedStage,
    EncryptedStage,
    IntruderStage,
    KeyStage,
    ModelStage,
    Progress,
    ServerStage,
)

if TYPE_CHECKING:
    from fhe_model.connection import FHEServerHandle
    from fhe_model.evaluation import EvaluationReport
    from story.classes import Classes

logger = logging.getLogger(__name__)


class _Record:
    """One step's record on a session; storing a record (or None) stamps it with a new serial number."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, session: SessionCore | None, owner: type | None = None) -> Any:
        if session is None:
            return self
        return session.__dict__.get(self.name)

    def __set__(self, session: SessionCore, value: Any) -> None:
        previous = session.__dict__.get(self.name)
        session.__dict__[self.name] = value
        if value is not previous or self.name not in session._serials:
            session._stamp(self.name, value)


class StepScope:
    """Cleanups that belong to one record of a session (see :meth:`SessionCore.while_current`)."""

    def __init__(self, session: SessionCore, step: str, serial: int):
        self._session, self._step, self._serial = session, step, serial

    def add_cleanup(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once this record is replaced or dropped, or the session ends.

        Parameters
        ----------
        callback : callable
            Runs once; its exceptions are logged. Runs at once if the record
            is already gone.
        """
        self._session._add_scoped_cleanup(self._step, self._serial, callback)


class SessionCore:
    """What one visitor built, and the rules that keep it consistent.

    Parameters
    ----------
    server : FHEServerHandle
        The FHE server shared by all sessions.
    keys_root : path-like
        Parent of the sessions' private-key directories (each one ``0700``,
        random name, removed when the session closes).
    work_root : path-like, optional
        Parent of the session's directory of downloadable files (random name,
        removed when the session closes); the system temp directory by default.
    trainings : SharedTrainings, optional
        The app's trainings, shared by sessions with equal settings (a
        private one by default).
    deployments : SharedDeployments, optional
        The app's compiled deployments, shared by sessions with the same model
        and settings (a private one by default).
    classes : Classes, optional
        The app's classes, for a session that teaches one or holds a seat in one.
    """

    def __init__(
        self,
        server: FHEServerHandle,
        keys_root: str | os.PathLike,
        work_root: str | os.PathLike | None = None,
        *,
        trainings: SharedTrainings | None = None,
        deployments: SharedDeployments | None = None,
        classes: Classes | None = None,
    ):
        self._cleanup_lock = threading.Lock()
        self._serial_counter = itertools.count(1)
        self._serials: dict[str, int] = {}
        self._revision = 0
        self._scoped_cleanups: dict[str, list[tuple[int, Callable[[], None]]]] = {}
        self.server = server
        self._trainings = trainings if trainings is not None else SharedTrainings()
        self._deployments = deployments if deployments is not None else SharedDeployments(
            server, Path(work_root or tempfile.gettempdir()) / "deployments"
        )
        self._classes = classes
        self._keys_root = Path(keys_root)
        self._work_root = Path(work_root) if work_root is not None else None
        self._busy = threading.Lock()
        self._work_dir: Path | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._wiped = False
        self.closed = False
        #: Why the session ended, as its next step says it (None: the usual ending).
        self.end_message: str | None = None
        #: True if the registry closed it to make room while it held nothing (its page gets a fresh one).
        self.reclaimed_empty = False
        self._clock: Callable[[], float] = time.monotonic
        self.last_used = self._clock()
        self.model: ModelStage | None = None
        self.deployment: CompiledStage | None = None
        self.keys: KeyStage | None = None
        self.encrypted: EncryptedStage | None = None
        self.server_output: ServerStage | None = None
        self.decrypted: DecryptedStage | None = None
        self.intruder: IntruderStage | None = None
        self.evaluation: EvaluationReport | None = None

    # The records of the steps done so far; each assignment stamps a new serial number.
    model = _Record()
    deployment = _Record()
    keys = _Record()
    encrypted = _Record()
    server_output = _Record()
    decrypted = _Record()
    intruder = _Record()
    evaluation = _Record()

    # -- what was stored when ------------------------------------------------

    def _stamp(self, step: str, record: Any) -> None:
        with self._cleanup_lock:
            self._revision = next(self._serial_counter)
            self._serials[step] = self._revision if record is not None else 0
            stale = self._scoped_cleanups.pop(step, [])
        self._run_cleanups(callback for _serial, callback in stale)

    def versions(self) -> dict[str, int]:
        """The serial number of each step's current record (0 when there is none).

        A record replaced by another, even an equal one, gets a new number:
        a view that remembers the number it shows knows when to redraw.

        Returns
        -------
        dict
            ``{"model": 3, "deployment": 5, "keys": 0, ...}`` for ``model``,
            ``deployment``, ``keys``, ``encrypted``, ``server_output``,
            ``decrypted``, ``intruder`` and ``evaluation``.
        """
        with self._cleanup_lock:
            return dict(self._serials)

    def while_current(self, step: str) -> StepScope:
        """Cleanups for what was handed out for the current record of ``step`` (e.g. a served download).

        Parameters
        ----------
        step : str
            A key of :meth:`versions`, e.g. ``"deployment"``.

        Returns
        -------
        StepScope
            Its ``add_cleanup(callback)`` runs ``callback`` when that record is
            replaced or dropped, or when the session is wiped.
        """
        with self._cleanup_lock:
            if step not in self._serials:
                raise ValueError(f"Unknown step {step!r}; use one of {', '.join(self._serials)}.")
            return StepScope(self, step, self._serials[step])

    def _add_scoped_cleanup(self, step: str, serial: int, callback: Callable[[], None]) -> None:
        with self._cleanup_lock:
            if not self._wiped and serial != 0 and self._serials.get(step) == serial:
                self._scoped_cleanups.setdefault(step, []).append((serial, callback))
                return
        self._run_cleanups([callback])

    @staticmethod
    def _run_cleanups(callbacks: Iterable[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failed cleanup must not stop the others
                logger.exception("session cleanup failed")

    # -- what the UI may read ------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a step runs."""
        return self._busy.locked()

    @property
    def holds_nothing(self) -> bool:
        """True while nothing would be lost by closing it: no model, no class taught, no seat in one."""
        class_place = getattr(self, "teaching", None) or getattr(self, "seat", None)
        return self.model is None and class_place is None

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Measure this session's activity (:attr:`last_used`) with ``clock`` (its registry's)."""
        self._clock = clock
        self.last_used = clock()

    @property
    def dataset(self) -> Dataset | None:
        """The dataset of the current model, if any."""
        return load_dataset(self.model.dataset) if self.model else None

    @property
    def model_file(self) -> Path | None:
        """The current model as a ``.skops`` file the visitor may download."""
        return self.model.model_file if self.model else None

    @property
    def deployment_files(self) -> tuple[Path, Path] | None:
        """``(client.zip, server.zip)`` of the current deployment (public files, no key)."""
        if self.deployment is None:
            return None
        return self.deployment.files.client_zip, self.deployment.files.server_zip

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Names of the compiled model's classes, in the order of its scores."""
        return tuple(self.deployment.compiled.info.class_names) if self.deployment else None

    def progress(self) -> Progress:
        """Which steps are done (all undone once the session has ended)."""
        if self.closed:
            return Progress()
        model, deployment = self.model, self.deployment
        return Progress(
            model=model is not None,
            compiled=deployment is not None,
            keys=self.keys is not None,
            encrypted=self.encrypted is not None,
            server_ran=self.server_output is not None,
            decrypted=self.decrypted is not None,
            model_source=model.source if model else None,
            dataset=model.dataset if model else None,
            accuracy=model.summary["accuracy"] if model else None,
            n_bits=deployment.compiled.report.n_bits if deployment else None,
            revision=self._revision,
        )

    # -- one step at a time --------------------------------------------------

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Run one step at a time per session; refuse steps of a closed session.

        A session closed while a step runs is wiped when that step ends, so
        whatever the step built is deleted too.
        """
        if self.closed:
            raise StepError(self.end_message or errors.SESSION_ENDED)
        if not self._busy.acquire(blocking=False):
            raise StepError(
                f"Another step of this session is still running; wait for it to finish, then retry {name}."
            )
        if self.closed:  # closed between the check and the lock
            self._busy.release()
            self.close()
            raise StepError(self.end_message or errors.SESSION_ENDED)
        try:
            self.last_used = self._clock()
            yield
        finally:
            self.last_used = self._clock()
            self._busy.release()
            if self.closed:
                self.close()

    def _stop_if_closed(self) -> None:
        """Between two units of a long step (a compile of the sweep, a wrong key): stop once the page closed.

        Raises
        ------
        StepError
            If the session was closed meanwhile (its page closed, or it was reclaimed).
        """
        if self.closed:
            raise StepError(self.end_message or errors.SESSION_ENDED)

    # -- requirements, named after the step that provides them -------------

    def _require_model(self) -> ModelStage:
        if self.model is None:
            raise StepError(errors.NEEDS_MODEL)
        return self.model

    def _require_deployment(self) -> CompiledStage:
        if self.deployment is None:
            self._require_model()
            raise StepError(errors.NEEDS_COMPILE)
        return self.deployment

    def _require_keys(self) -> KeyStage:
        if self.keys is None:
            self._require_deployment()
            raise StepError(errors.NEEDS_KEYS)
        return self.keys

    def _require_encrypted(self) -> EncryptedStage:
        if self.encrypted is None:
            self._require_keys()
            raise StepError(errors.NEEDS_ENCRYPTION)
        return self.encrypted

    def _require_server_output(self) -> ServerStage:
        if self.server_output is None:
            self._require_encrypted()
            raise StepError(errors.NEEDS_SERVER_RUN)
        return self.server_output

    # -- replacing a step drops what depended on it ------------------------

    def _replace_model(self, stage: ModelStage) -> None:
        previous, self.model = self.model, stage
        if previous is not None:
            self._remove_public_dir(previous.model_file)
        self._replace_deployment(None)

    def _replace_deployment(self, stage: CompiledStage | None) -> None:
        previous, self.deployment = self.deployment, stage
        self._replace_keys(None)
        self._retire_deployment(previous)

    def _replace_keys(self, stage: KeyStage | None) -> None:
        previous, self.keys = self.keys, stage
        self._drop_keys(previous)
        self.encrypted = None
        self.evaluation = None
        self._clear_after_encryption()

    def _clear_after_encryption(self) -> None:
        self.server_output = None
        self.decrypted = None
        self.intruder = None

    def _drop_keys(self, keys: KeyStage | None) -> None:
        """Delete a private key and ask the server to forget its evaluation keys."""
        if keys is None:
            return
        shutil.rmtree(keys.key_dir, ignore_errors=True)
        keys.remote.forget()

    def _retire_deployment(self, stage: CompiledStage | None) -> None:
        """Give the deployment back; the last session using it deletes its circuit, files and server copy."""
        if stage is not None:
            stage.lease.release()

    # -- directories -------------------------------------------------------

    def _new_key_dir(self, prefix: str = "keys-") -> Path:
        """A fresh owner-only directory for a private key, never served."""
        self._keys_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self._keys_root))

    def _new_public_dir(self) -> Path:
        """A fresh directory for files the visitor may download (never keys)."""
        if self._work_dir is None:
            if self._work_root is not None:
                self._work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._work_dir = Path(tempfile.mkdtemp(prefix="session-", dir=self._work_root))
        return Path(tempfile.mkdtemp(dir=self._work_dir))

    def _remove_public_dir(self, path: Path) -> None:
        """Delete the public directory holding ``path`` (only inside this session's work dir)."""
        work_dir = self._work_dir
        if work_dir is None or work_dir not in path.parents:
            return
        directory = path
        while directory.parent != work_dir:
            directory = directory.parent
        shutil.rmtree(directory, ignore_errors=True)

    # -- a page reload -----------------------------------------------------

    def park(self) -> bool:
        """Keep the model and its deployment for a reloaded page; delete the private key now.

        The keys (the private key and the server's evaluation keys) and every
        later record go at once; what is left can be taken over with
        :meth:`resume_from`, and is deleted by :meth:`close`.

        Returns
        -------
        bool
            False (nothing changed) if there is no model, the session has
            ended, or a step is running.
        """
        if self.closed or self.model is None or not self._busy.acquire(blocking=False):
            return False
        try:
            self._replace_keys(None)
            return self.model is not None
        finally:
            self._busy.release()

    def resumable(self) -> bool:
        """True if a reloaded page has something to take over from this session."""
        return self.model is not None and not self.closed

    def resume_from(self, previous: SessionCore) -> bool:
        """Take over the model and deployment of this visitor's previous page (keys are never taken over).

        The model file is copied into this session's own directory; the
        deployment is shared with ``previous`` until that one is closed.

        Parameters
        ----------
        previous : SessionCore
            The session of the page that was reloaded (parked or still open).

        Returns
        -------
        bool
            False if this session already has a model of its own, or
            ``previous`` has none left.
        """
        with self._step("resuming the previous page"):
            model, deployment = previous.model, previous.deployment
            if self.model is not None or model is None or previous.closed:
                return False
            model_file = self._new_public_dir() / model.model_file.name
            try:
                shutil.copyfile(model.model_file, model_file)
            except OSError:  # the previous session was wiped meanwhile
                self._remove_public_dir(model_file)
                return False
            summary = {**model.summary, "resumed": True}
            self._replace_model(ModelStage(model.model, model.dataset, model.source, summary, model_file))
            if deployment is not None:
                report = deployment.compiled.report
                lease = self._deployments.acquire(
                    model.model, load_dataset(model.dataset), report.n_bits, report.calibration
                )
                self._replace_deployment(CompiledStage(lease, resumed=True))
            return True

    # -- the end -----------------------------------------------------------

    def add_cleanup(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the session is wiped (e.g. to delete a served copy of a file).

        Parameters
        ----------
        callback : callable
            Runs once; its exceptions are logged, not raised. Runs at once if
            the session has already been wiped.
        """
        with self._cleanup_lock:
            if not self._wiped:
                self._cleanups.append(callback)
                return
        callback()

    def close(self, reason: str | None = None, reclaimed_empty: bool = False) -> None:
        """Wipe the session: delete the private key, downloads and everything built.

        Safe to call more than once and from any thread. While a step runs,
        the wipe happens when that step ends (the step cannot store anything
        on a closed session that outlives it).

        Parameters
        ----------
        reason : str, optional
            What its next step tells the visitor (default: :data:`story.errors.SESSION_ENDED`).
        reclaimed_empty : bool
            Closed to make room while it held nothing (see :attr:`reclaimed_empty`).
        """
        if not self.closed:
            self.end_message, self.reclaimed_empty = reason, reclaimed_empty
        self.closed = True
        if not self._busy.acquire(blocking=False):
            return  # the running step calls close() again when it ends
        try:
            self._wipe()
        finally:
            self._busy.release()

    def _wipe(self) -> None:
        work_dir = self._work_dir
        with self._cleanup_lock:
            cleanups, self._cleanups, self._wiped = self._cleanups, [], True
        self._replace_deployment(None)
        self.model = None
        with self._cleanup_lock:
            scoped = [callback for entries in self._scoped_cleanups.values() for _serial, callback in entries]
            self._scoped_cleanups.clear()
        self._work_dir = None
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        self._run_cleanups(scoped + cleanups)
