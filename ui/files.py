"""Files a session offers for download or received as uploads, deleted when the session ends.

Gradio serves a file a handler returns from a copy in its cache folder, and
keeps uploads in that folder too; it deletes neither when the session ends.
Copies are named by content hash, so sessions that produce identical bytes
share one: each file is counted, and deleted when the last session holding it ends.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path

from story import DemoSession
from story.base import StepScope

_held: dict[Path, int] = {}
_held_lock = threading.Lock()


def _gradio_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _count_locked(path: Path) -> None:
    _held[path] = _held.get(path, 0) + 1


def _release(path: Path) -> None:
    with _held_lock:
        count = _held.pop(path, 1) - 1
        if count > 0:
            _held[path] = count
            return
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # its content-hash directory, once empty


def hold_upload(session: DemoSession, path: str | None) -> None:
    """Delete an uploaded file when ``session`` ends (files outside Gradio's folder are left alone).

    Parameters
    ----------
    session : DemoSession
        The session that uploaded it.
    path : str or None
        What the handler received.
    """
    if not path:
        return
    resolved = Path(path).resolve()
    if _gradio_folder() not in resolved.parents:
        return
    with _held_lock:
        _count_locked(resolved)
    session.add_cleanup(functools.partial(_release, resolved))  # runs at once if the session has ended


def serve_file(session: DemoSession | StepScope, path: str | Path) -> str:
    """The path a handler returns to offer ``path`` for download during ``session`` only.

    Parameters
    ----------
    session : DemoSession or StepScope
        The session the file belongs to, or one of its records
        (``session.while_current("model")``): the copy goes with it.
    path : str or Path
        A file in the session's work directory (never a key directory:
        those are blocked from serving).

    Returns
    -------
    str
        Gradio's cached copy, deleted when the last session holding it ends.
    """
    from gradio.processing_utils import save_file_to_cache

    with _held_lock:  # a copy being deleted is never handed out meanwhile
        cached = Path(save_file_to_cache(path, str(_gradio_folder()))).resolve()
        _count_locked(cached)
    session.add_cleanup(functools.partial(_release, cached))
    return str(cached)
