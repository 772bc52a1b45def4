"""Gradio's folder of uploads and downloads: bounded in total, oldest unheld files first; nobody else's files.

The bound's bookkeeping is tested on a folder of its own (other apps on this
machine share Gradio's); the refusals go through a launched demo.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import new_client, raw_call, upload_model
from ui import files

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class _Holder:
    """Stands in for a session: takes cleanups, runs them when it ends."""

    def __init__(self) -> None:
        self.cleanups: list = []

    def add_cleanup(self, callback) -> None:
        self.cleanups.append(callback)

    def end(self) -> None:
        for callback in self.cleanups:
            callback()


@pytest.fixture()
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(files, "_gradio_folder", lambda: tmp_path.resolve())
    monkeypatch.setattr(files, "_measured",  # measured afresh
                        {"at": float("-inf"), "total": 0, "during": 0, "walking": False})
    return tmp_path.resolve()


def _file(folder: Path, name: str, size: int, age: float) -> Path:
    path = folder / name[:4] / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"x" * size)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def test_the_oldest_files_nobody_holds_make_room_first(folder):
    oldest = _file(folder, "oldest-upload", 400, age=3000)
    held = _file(folder, "held-download", 400, age=2000)
    older = _file(folder, "older-upload", 400, age=1000)
    newer = _file(folder, "newer-upload", 400, age=500)
    young = _file(folder, "young-upload", 400, age=1)  # on its way to its event
    holder = _Holder()
    files.hold_upload(holder, str(held), uploads=[str(held)])
    try:
        assert files.make_room(100, limit=2100)  # 2,000 on disk: fits
        assert files.make_room(500, limit=2100)  # 2,500: the oldest unheld file goes, nothing else
        assert not oldest.exists() and held.exists() and older.exists() and newer.exists()
        assert files.make_room(1000, limit=2100)  # 2,600: two more, oldest first
        assert not older.exists() and not newer.exists() and held.exists() and young.exists()
        assert not files.make_room(1400, limit=2100)  # only held and young files are left
        assert held.exists() and young.exists()
    finally:
        holder.end()
    assert not held.exists()  # the session that held it ended


def test_far_below_the_bound_the_folder_is_not_walked_for_every_upload(folder, monkeypatch):
    _file(folder, "old-upload", 400, age=3000)
    assert files.make_room(100, limit=10_000)  # measured: 400 + 100
    walks: list[Path] = []
    monkeypatch.setattr(files, "_gradio_folder", lambda: walks.append(folder) or folder)
    for _ in range(20):  # a class's drawings arriving: 20 × 100 more, still below half the bound
        assert files.make_room(100, limit=10_000)
    assert walks == []
    assert files.make_room(3000, limit=10_000)  # past half the bound: measured again
    assert walks == [folder]


def test_a_stale_measure_is_taken_again_in_the_background_one_walk_at_a_time(folder, monkeypatch):
    _file(folder, "old-upload", 400, age=3000)
    assert files.make_room(100, limit=10_000)  # the first measure: now
    _file(folder, "a-download", 1000, age=10)  # Gradio wrote it: no upload counted it
    walking = threading.Event()
    release = threading.Event()
    walks: list[str] = []
    real_walk = files._files_in

    def slow_walk(path):
        walks.append(threading.current_thread().name)
        walking.set()
        release.wait(10)
        return real_walk(path)

    monkeypatch.setattr(files, "_files_in", slow_walk)
    monkeypatch.setattr(files, "RESCAN_SECONDS", 0.0)
    started = time.monotonic()
    assert files.make_room(100, limit=10_000)  # stale: the upload goes on, a walk starts behind it
    assert walking.wait(10)
    for _ in range(10):  # uploads during the walk neither wait for it nor start another
        assert files.make_room(100, limit=10_000)
    assert time.monotonic() - started < 5 and walks == ["upload-space"]
    release.set()
    deadline = time.monotonic() + 10
    while files._measured["walking"] and time.monotonic() < deadline:
        time.sleep(0.01)
    # The walk found 1,400 bytes on disk; the upload that started it and the 10 during it are
    # added (they may be on disk after the walk passed).
    assert files._measured["total"] == 2500 and not files._measured["walking"]


def test_an_upload_past_the_bound_is_refused_with_what_to_do(launched_app, folder, monkeypatch):
    young = _file(folder, "someone-uploading", 4000, age=1)
    monkeypatch.setattr(files, "MAX_UPLOAD_SPACE_BYTES", 4500)
    url = f"{launched_app.url}gradio_api/upload"
    response = httpx.post(url, files={"files": ("drawing.png", b"y" * 1000)}, timeout=30)
    assert response.status_code == 507 and "space for uploads is full" in response.json()["detail"]
    os.utime(young, (time.time() - 3600,) * 2)  # no longer young, and nobody holds it
    response = httpx.post(url, files={"files": ("drawing.png", b"y" * 1000)}, timeout=30)
    assert response.status_code == 200 and not young.exists()


def test_upload_model_refuses_a_path_to_another_sessions_file(launched_app, model_files):
    owner = new_client(launched_app)
    served = owner.predict(
        file=_upload_arg(model_files["digits"]), dataset="digits", api_name="/upload_model"
    )[2]
    served_path = served["path"] if isinstance(served, dict) else served
    assert Path(served_path).is_file()
    # Another client names the owner's download as its "upload".
    body = json.dumps({"data": [{"path": served_path, "meta": {"_type": "gradio.FileData"}}, "digits"]})
    stream = raw_call(launched_app.url, "upload_model", body)
    assert "event: error" in stream and "not one this session uploaded" in stream, stream
    # Refused before anything held or read it: the owner's file is still there for the owner.
    assert Path(served_path).is_file()
    # Its own upload of the same model works.
    assert upload_model(new_client(launched_app), model_files["digits"])["dataset"] == "digits"


def _upload_arg(path: Path):
    from gradio_client import handle_file

    return handle_file(str(path))
