"""Files a session offers for download or received as uploads, deleted when the session ends.

Gradio serves a file a handler returns from a copy in its cache folder, and
keeps uploads in that folder too; it deletes neither when the session ends.
Copies are named by content hash, so sessions that produce identical bytes
share one: each file is counted, and deleted when the last session holding it ends.

A handler accepts a path into that folder only if its session holds the file
or Gradio received it as an upload (:func:`hold_upload`): a path to another
session's download is refused. The folder's total is bounded
(:data:`MAX_UPLOAD_SPACE_BYTES`): before an upload is received, the oldest files
no session holds are deleted to make room (:class:`UploadSpace`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from story import DemoSession, StepError
from story.base import StepScope

#: Bytes Gradio's cache folder may hold at once (uploads, served downloads, drawings). An upload
#: is at most 5 MB (``launch(max_file_size=...)``) and a session holds at most what it was served
#: (a model file of 63 KB and two zips of 13 KB for mnist) and its uploads: 1 GiB is 200 visitors
#: uploading the largest model file at once, 2 % of a Space's 50 GB disk.
MAX_UPLOAD_SPACE_BYTES = 1024**3
#: A file this young is never deleted to make room (an upload on its way to its event).
UPLOAD_GRACE_SECONDS = 60.0
#: What a path to a file the session neither holds nor uploaded gets.
NOT_YOUR_FILE = (
    "That file is not one this session uploaded or was given (it belongs to another session, or "
    "to the app): choose the .skops file on your computer and upload it."
)
#: What an upload gets when the folder is full of files that sessions hold.
UPLOAD_SPACE_FULL = (
    "The demo's space for uploads is full ({used_mb} MB held by open sessions); nothing was "
    "uploaded. Please retry in a few minutes."
)

#: While the folder is below half its bound, uploads are added to the last measure and the folder
#: is measured again in the background, at most this often (a class sends a few drawings a second:
#: walking the whole folder for each, as this did, cost the app ~0.1 s of CPU per upload with 1,500
#: files, and the walks piled up; README, "Classroom").
RESCAN_SECONDS = 5.0

_measured: dict[str, float] = {"at": float("-inf"), "total": 0, "during": 0, "walking": False}
_measured_lock = threading.Lock()
#: One walk of the folder at a time (in the background, or an upload that must make room).
_walk_lock = threading.Lock()
_held: dict[Path, int] = {}
_held_by: dict[int, set[Path]] = {}
_held_lock = threading.Lock()


def _gradio_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _count_locked(path: Path, session: DemoSession | StepScope) -> None:
    _held[path] = _held.get(path, 0) + 1
    _held_by.setdefault(_owner(session), set()).add(path)


def _owner(session: DemoSession | StepScope) -> int:
    return id(session._session if isinstance(session, StepScope) else session)


def _release(path: Path, owner: int | None = None) -> None:
    with _held_lock:
        if owner is not None and owner in _held_by:
            _held_by[owner].discard(path)
            if not _held_by[owner]:
                del _held_by[owner]
        count = _held.pop(path, 1) - 1
        if count > 0:
            _held[path] = count
            return
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # its content-hash directory, once empty


def hold_upload(session: DemoSession, path: str | None, uploads: Collection[str] = ()) -> None:
    """Let ``session`` use a file in Gradio's folder, deleted when it ends; refuse anyone else's.

    Files outside Gradio's folder are left alone (Gradio itself refuses such
    paths from the API, and never hands them to a handler).

    Parameters
    ----------
    session : DemoSession
        The session that names the file.
    path : str or None
        What the handler received.
    uploads : collection of str
        What Gradio received through its upload route (``demo.upload_file_set``).

    Raises
    ------
    StepError
        If the file is in Gradio's folder but the session does not hold it
        and Gradio did not receive it as an upload (e.g. another session's
        download): :data:`NOT_YOUR_FILE`. Nothing is held then.
    """
    if not path:
        return
    resolved = Path(path).resolve()
    if _gradio_folder() not in resolved.parents:
        return
    with _held_lock:
        if resolved in _held_by.get(id(session), ()):
            return
        if not any(Path(upload).resolve() == resolved for upload in _candidates(uploads, resolved)):
            raise StepError(NOT_YOUR_FILE)
        _count_locked(resolved, session)
    session.add_cleanup(functools.partial(_release, resolved, id(session)))  # at once if it has ended


def _candidates(uploads: Collection[str], resolved: Path) -> list[str]:
    """The uploads that may be ``resolved`` (same file name), so that few paths are resolved."""
    return [upload for upload in list(uploads) if upload.endswith(resolved.name)]


def make_room(incoming: int, limit: int | None = None) -> bool:
    """Delete the oldest files no session holds until ``incoming`` more bytes fit in Gradio's folder.

    Below half the bound, the last measure plus what arrived since will do: the
    upload goes on at once, and a measure older than :data:`RESCAN_SECONDS` is
    taken again in the background. Above it (or before the first measure), the
    folder is walked now, one upload at a time, and the oldest unheld files go.

    Parameters
    ----------
    incoming : int
        Bytes about to arrive.
    limit : int, optional
        The folder's bound (default: :data:`MAX_UPLOAD_SPACE_BYTES`).

    Returns
    -------
    bool
        False if they do not fit even so (every file left is held, or younger
        than :data:`UPLOAD_GRACE_SECONDS`).
    """
    limit = MAX_UPLOAD_SPACE_BYTES if limit is None else limit
    with _measured_lock:
        measured = _measured["at"] > float("-inf")
        if measured and _measured["total"] + incoming <= limit // 2:
            stale = time.monotonic() - _measured["at"] >= RESCAN_SECONDS and not _measured["walking"]
            if stale:  # counted from here: the walk may miss this upload, never count it twice
                _measured.update(walking=True, during=0)
            _measured["total"] += incoming
            _measured["during"] += incoming
        else:
            stale = None
    if stale is not None:
        if stale:
            threading.Thread(target=_measure_again, name="upload-space", daemon=True).start()
        return True
    with _walk_lock:
        return _make_room_now(incoming, limit)


def _measure_again() -> None:
    """Measure the folder again (a background thread); uploads arriving meanwhile add to the total."""
    try:
        with _walk_lock:
            folder = _gradio_folder()
            total = sum(size for _mtime, _path, size in _files_in(folder)) if folder.is_dir() else 0
            with _measured_lock:
                _measured.update(at=time.monotonic(), total=total + _measured["during"])
    finally:
        with _measured_lock:
            _measured["walking"] = False


def _make_room_now(incoming: int, limit: int) -> bool:
    folder = _gradio_folder()
    if not folder.is_dir():
        return incoming <= limit
    found = _files_in(folder)
    total = sum(size for _mtime, _path, size in found)
    young = time.time() - UPLOAD_GRACE_SECONDS
    with _held_lock:
        for mtime, name, size in sorted(found) if total + incoming > limit else ():
            if total + incoming <= limit:
                break
            path = Path(name)
            if mtime > young or path.resolve() in _held:
                continue
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # its content-hash directory, once empty
            total -= size
    fits = total + incoming <= limit
    with _measured_lock:
        _measured.update(at=time.monotonic(), total=total + (incoming if fits else 0), during=0)
    return fits


def _files_in(folder: Path) -> list[tuple[float, str, int]]:
    """``(mtime, path, size)`` of every regular file under ``folder`` (symbolic links left out).

    Other threads delete files and their folders meanwhile (a session's cleanup, another
    upload's :func:`make_room`): what vanishes during the walk is skipped, never an error
    that would refuse the upload. ``os.scandir`` reads each entry's type with the listing:
    a third of ``os.walk``'s time with ``lstat`` on each file.
    """
    found, pending = [], [os.fspath(folder)]
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        found.append((info.st_mtime, entry.path, info.st_size))
    return found


def held_bytes() -> int:
    """Bytes of the files sessions hold in Gradio's folder."""
    with _held_lock:
        paths = list(_held)
    return sum(path.stat().st_size for path in paths if path.is_file())


class UploadSpace:
    """ASGI middleware: before Gradio receives an upload, make room for it (:func:`make_room`), or answer 507.

    Parameters
    ----------
    app : ASGI app
        What it wraps.
    upload_path : str
        Gradio's upload route.
    max_upload_bytes : int
        What one upload may bring when it does not declare its length.
    """

    def __init__(self, app: ASGIApp, upload_path: str, max_upload_bytes: int):
        self.app, self.upload_path, self.max_upload_bytes = app, upload_path, max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == self.upload_path:
            from anyio import to_thread

            declared = dict(scope["headers"]).get(b"content-length", b"")
            incoming = int(declared) if declared.isdigit() else self.max_upload_bytes
            if not await to_thread.run_sync(make_room, incoming):
                await _refuse_upload(send)
                return
        await self.app(scope, receive, send)


async def _refuse_upload(send: Send) -> None:
    import json

    detail = UPLOAD_SPACE_FULL.format(used_mb=round(held_bytes() / 2**20))
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 507, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def upload_space(max_file_size: int) -> Middleware:
    """The :class:`UploadSpace` middleware for ``demo.launch(app_kwargs={"middleware": [...]})``."""
    from gradio.route_utils import API_PREFIX

    return Middleware(UploadSpace, upload_path=f"{API_PREFIX}/upload", max_upload_bytes=max_file_size)


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
        _count_locked(cached, session)
    session.add_cleanup(functools.partial(_release, cached, _owner(session)))
    return str(cached)
