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
from story.registry import (
    DEFAULT_MAX_SESSIONS,
    KEYS_ROOT_PREFIX,
    MAX_SESSIONS_ENV,
    RECLAIM_EMPTY_IDLE_SECONDS,
    WORK_ROOT_PREFIX,
    max_sessions_from_env,
    remove_stale_roots,
)
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
    registry = registry_factory(max_sessions=2, idle_ttl_seconds=600, reclaim_idle_seconds=300, clock=clock)
    first, second = registry.resolve(None, "tab-1"), registry.resolve(None, "tab-2")
    first.model = second.model = object()  # each holds something a visitor built
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


def test_a_step_that_needs_a_model_creates_no_session(registry_factory):
    registry = registry_factory(max_sessions=2)
    for k in range(40):  # a script's failing calls from fresh clients
        blank = registry.resolve(None, f"script-{k}", opens=False)
        with pytest.raises(StepError, match="No model yet"):
            blank.compile(8)
    assert len(registry) == 0 and registry.get("script-0") is None
    visitor = registry.resolve(None, "visitor")
    assert registry.resolve(None, "visitor", opens=False) is visitor


def test_at_the_bound_the_least_recently_active_idle_session_makes_room(registry_factory):
    clock = FakeClock()
    registry = registry_factory(max_sessions=3, reclaim_idle_seconds=180, clock=clock)
    visitor = registry.resolve(None, "visitor")
    visitor.model = object()
    scripted = []
    for k in range(2):
        scripted.append(registry.resolve(None, f"script-{k}"))
        scripted[-1].model = object()
        clock.now += 60
    # Everyone used within the last 3 minutes: nobody is pushed out.
    with pytest.raises(StepError, match="all were used in the last 3 minutes"):
        registry.resolve(None, "late")
    clock.now += 70  # the visitor: idle 190 s, script-0 130 s, script-1 70 s
    registry.resolve(None, "visitor")  # the visitor clicks again
    clock.now += 60  # the visitor: 60 s, script-0 190 s, script-1 130 s
    newcomer = registry.resolve(None, "newcomer")
    assert scripted[0].closed and not visitor.closed and not scripted[1].closed and not newcomer.closed
    with pytest.raises(StepError, match="closed to make room for another visitor"):
        scripted[0].compile()
    # A flood pushes out its own sessions, oldest first, never the active visitor's.
    for k in range(5):
        clock.now += 181
        registry.resolve(None, "visitor")
        registry.resolve(None, f"flood-{k}").model = object()
    assert not visitor.closed and set(registry._sessions) == {"visitor", "flood-3", "flood-4"}


def test_sessions_holding_nothing_make_room_first_and_their_page_carries_on(registry_factory):
    clock = FakeClock()
    registry = registry_factory(max_sessions=2, reclaim_idle_seconds=180, clock=clock)
    empty = registry.resolve(None, "empty")  # e.g. a training that failed: nothing built
    holder = registry.resolve(None, "holder")
    holder.model = object()
    clock.now += RECLAIM_EMPTY_IDLE_SECONDS + 1
    registry.resolve(None, "newcomer")
    assert empty.closed and not holder.closed
    # The emptied page's next click gets a fresh session, as if it were its first.
    clock.now += RECLAIM_EMPTY_IDLE_SECONDS + 1
    again = registry.resolve(empty, "empty")
    assert again is not empty and not again.closed and registry.get("empty") is again


def test_a_busy_session_is_never_wiped_to_make_room(registry_factory):
    clock = FakeClock()
    registry = registry_factory(max_sessions=1, idle_ttl_seconds=10, clock=clock)
    session = registry.resolve(None, "tab-1")
    with session._step("a long step"):
        clock.now += 3600
        with pytest.raises(StepError, match="at capacity"):
            registry.resolve(None, "tab-2")
        assert not session.closed


def test_the_session_bound_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(MAX_SESSIONS_ENV, raising=False)
    assert max_sessions_from_env() == DEFAULT_MAX_SESSIONS >= 200
    monkeypatch.setenv(MAX_SESSIONS_ENV, "12")
    assert max_sessions_from_env() == 12
    monkeypatch.setenv(MAX_SESSIONS_ENV, "0")
    with pytest.raises(ValueError, match=MAX_SESSIONS_ENV):
        max_sessions_from_env()


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
