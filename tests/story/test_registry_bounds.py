"""The registry's bounds: how many sessions live at once, and what an app killed mid-run leaves.

No FHE server is started here: a session that has not reached the
encrypted steps never contacts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhe_model.connection import FHEServerHandle
from story import SessionRegistry, StepError
from story.registry import KEYS_ROOT_PREFIX, WORK_ROOT_PREFIX, remove_stale_roots
from tests.helpers import ROOT, FakeClock


@pytest.fixture()
def registry_factory(tmp_path):
    made: list[SessionRegistry] = []

    def make(**kwargs) -> SessionRegistry:
        registry = SessionRegistry(FHEServerHandle("http://127.0.0.1:9"), temp_dir=tmp_path, **kwargs)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close_all()


def test_sessions_past_the_bound_are_refused_politely_and_nothing_is_created(registry_factory):
    clock = FakeClock()
    registry = registry_factory(max_sessions=2, idle_ttl_seconds=600, clock=clock)
    first, second = registry.resolve(None, "tab-1"), registry.resolve(None, "tab-2")
    with pytest.raises(StepError, match="at capacity: 2 visitors' sessions .* retry in a few minutes"):
        registry.resolve(None, "tab-3")
    assert len(registry) == 2
    # Known sessions keep working, through their id or their UI state.
    assert registry.resolve(None, "tab-1") is first and registry.resolve(second, "tab-2") is second
    # A closed tab makes room.
    registry.close("tab-1")
    third = registry.resolve(None, "tab-3")
    assert first.closed and not third.closed and len(registry) == 2
    # So does a session idle past the TTL, wiped on the spot when room is needed.
    clock.now += 601
    registry.resolve(None, "tab-3")  # in use: stays
    fourth = registry.resolve(None, "tab-4")
    assert second.closed and not third.closed and not fourth.closed
    assert set(registry._sessions) == {"tab-3", "tab-4"}


def test_a_busy_session_is_never_wiped_to_make_room(registry_factory):
    clock = FakeClock()
    registry = registry_factory(max_sessions=1, idle_ttl_seconds=10, clock=clock)
    session = registry.resolve(None, "tab-1")
    with session._step("a long step"):
        clock.now += 11
        with pytest.raises(StepError, match="at capacity"):
            registry.resolve(None, "tab-2")
        assert not session.closed


_KILLED_APP = """
import sys, time
from fhe_model.connection import FHEServerHandle
from story import SessionRegistry
registry = SessionRegistry(FHEServerHandle("http://127.0.0.1:9"), temp_dir=sys.argv[1])
session = registry.resolve(None, "tab")
key_dir = session._new_key_dir()
(key_dir / "secret.key").write_bytes(b"private key material")
print(registry.keys_root, registry.work_root, flush=True)
time.sleep(600)
"""


def _age(path: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_private_keys_of_a_killed_app_are_removed_at_the_next_start(tmp_path, registry_factory):
    app = subprocess.Popen([sys.executable, "-c", _KILLED_APP, str(tmp_path)], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    try:
        keys_root, work_root = map(Path, app.stdout.readline().split())
    finally:
        app.send_signal(signal.SIGKILL)  # as the OOM killer does: no cleanup runs
        app.wait(30)
    assert list(keys_root.rglob("secret.key"))
    running = registry_factory()  # another app, alive, in the same temp directory
    for path in (keys_root, work_root, running.keys_root, running.work_root):
        _age(path)
    unrelated = tmp_path / "someone-else"
    unrelated.mkdir()

    starting = registry_factory()
    assert not keys_root.exists() and not work_root.exists()
    assert running.keys_root.is_dir() and running.work_root.is_dir(), "a live app's directories were removed"
    assert starting.keys_root.is_dir() and unrelated.is_dir()


def test_only_stale_directories_that_are_ours_are_removed(tmp_path):
    fresh = tmp_path / f"{KEYS_ROOT_PREFIX}fresh"
    fresh.mkdir()  # unlocked, but young: maybe an app creating it right now
    link = tmp_path / f"{WORK_ROOT_PREFIX}link"
    target = tmp_path / "target"
    target.mkdir()
    link.symlink_to(target)
    _age(target)
    old = tmp_path / f"{KEYS_ROOT_PREFIX}old"
    old.mkdir()
    _age(old)
    assert remove_stale_roots(tmp_path) == [old]
    assert fresh.is_dir() and target.is_dir() and link.is_symlink()
