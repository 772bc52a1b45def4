"""A session's housekeeping: one step at a time, its own directories, and a complete wipe.

:class:`SessionCore` holds the records of the steps done so far (see
:mod:`story.stages`), refuses a step whose predecessors are missing, drops
what a replaced step made obsolete, and deletes everything (private key
included) when the session closes. The steps themselves live in one module
per act of the story and are combined in :class:`story.session.DemoSession`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fl_training.datasets import Dataset, load_dataset
from story import errors
from story.errors import StepError
from story.stages import (
    CompiledStage,
    DecryptedStage,
    EncryptedStage,
    KeyStage,
    ModelStage,
    Progress,
    ServerStage,
)

if TYPE_CHECKING:
    from fhe_model.connection import FHEServerHandle
    from fhe_model.evaluation import EvaluationReport

logger = logging.getLogger(__name__)


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
    """

    def __init__(
        self,
        server: FHEServerHandle,
        keys_root: str | os.PathLike,
        work_root: str | os.PathLike | None = None,
    ):
        self.server = server
        self._keys_root = Path(keys_root)
        self._work_root = Path(work_root) if work_root is not None else None
        self._busy = threading.Lock()
        self._work_dir: Path | None = None
        self._cleanups: list[Callable[[], None]] = []
        self._cleanup_lock = threading.Lock()
        self._wiped = False
        self.closed = False
        self.last_used = time.monotonic()
        self.model: ModelStage | None = None
        self.deployment: CompiledStage | None = None
        self.keys: KeyStage | None = None
        self.encrypted: EncryptedStage | None = None
        self.server_output: ServerStage | None = None
        self.decrypted: DecryptedStage | None = None
        self.evaluation: EvaluationReport | None = None

    # -- what the UI may read ------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a step runs."""
        return self._busy.locked()

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
        )

    # -- one step at a time --------------------------------------------------

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[None]:
        """Run one step at a time per session; refuse steps of a closed session.

        A session closed while a step runs is wiped when that step ends, so
        whatever the step built is deleted too.
        """
        if self.closed:
            raise StepError(errors.SESSION_ENDED)
        if not self._busy.acquire(blocking=False):
            raise StepError(
                f"Another step of this session is still running; wait for it to finish, then retry {name}."
            )
        if self.closed:  # closed between the check and the lock
            self._busy.release()
            self.close()
            raise StepError(errors.SESSION_ENDED)
        try:
            self.last_used = time.monotonic()
            yield
        finally:
            self.last_used = time.monotonic()
            self._busy.release()
            if self.closed:
                self.close()

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

    def _drop_keys(self, keys: KeyStage | None) -> None:
        """Delete a private key and ask the server to forget its evaluation keys."""
        if keys is None:
            return
        shutil.rmtree(keys.key_dir, ignore_errors=True)
        keys.remote.forget()

    def _retire_deployment(self, stage: CompiledStage | None) -> None:
        """Free Concrete's compiled circuits, the deployment files and the server's copy."""
        from fhe_model.developer import remove_compiled_files

        if stage is None:
            return
        remove_compiled_files(stage.compiled)
        self._remove_public_dir(stage.files.directory)
        stage.remote.forget()

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

    def close(self) -> None:
        """Wipe the session: delete the private key, downloads and everything built.

        Safe to call more than once and from any thread. While a step runs,
        the wipe happens when that step ends (the step cannot store anything
        on a closed session that outlives it).
        """
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
        self._work_dir = None
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        for callback in cleanups:
            try:
                callback()
            except Exception:  # one failed cleanup must not stop the others
                logger.exception("session cleanup failed")
