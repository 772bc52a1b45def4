"""What a view needs from the story: serial numbers of records, cleanups bound to a record, parked pages.

No FHE and no UI here: records are stand-ins, sessions of closed pages are fakes.
"""

from __future__ import annotations

import pytest

from story.base import SessionCore
from story.resume import Resumptions, new_token


@pytest.fixture
def core(tmp_path):
    return SessionCore(server=None, keys_root=tmp_path / "keys", work_root=tmp_path / "work")


def test_every_record_stored_gets_a_new_serial_number(core):
    before = core.versions()
    assert set(before) == {"model", "deployment", "keys", "encrypted", "server_output", "decrypted",
                           "intruder", "evaluation"}
    assert all(serial == 0 for serial in before.values())
    first, second = object(), object()
    core.keys = first
    assert core.versions()["keys"] > 0 and core.progress().revision == core.versions()["keys"]
    serial = core.versions()["keys"]
    core.keys = first  # the same record again: nothing changed
    assert core.versions()["keys"] == serial
    core.keys = second  # another record, even an equal one, is a change
    assert core.versions()["keys"] > serial
    core.keys = None
    assert core.versions()["keys"] == 0


def test_what_was_handed_out_for_a_record_goes_with_it(core):
    gone: list[str] = []
    core.deployment = object()
    core.while_current("deployment").add_cleanup(lambda: gone.append("client.zip"))
    core.keys = object()  # another record: the deployment's download stays
    assert gone == []
    core.deployment = object()  # replaced: the old one's download goes
    assert gone == ["client.zip"]
    core.deployment = None
    core.while_current("deployment").add_cleanup(lambda: gone.append("nothing to hold"))
    assert gone == ["client.zip", "nothing to hold"]  # no record: runs at once
    with pytest.raises(ValueError, match="Unknown step"):
        core.while_current("model file")


class FakeSession:
    """A session that has a model and can be parked."""

    def __init__(self, parks: bool = True):
        self.model = object()
        self.parks = parks
        self.parked = self.closed = False

    def park(self) -> bool:
        self.parked = self.parks
        return self.parks

    def close(self) -> None:
        self.closed = True


def test_a_closed_page_is_parked_for_its_browser_and_taken_once():
    resumptions = Resumptions()
    token = new_token()
    resumptions.remember("page-1", token)
    session = FakeSession()
    assert resumptions.park("page-1", session) and session.parked and resumptions.holds(session)
    assert resumptions.take("not a token") is None and resumptions.take(new_token()) is None
    assert resumptions.take(token) is session and not resumptions.holds(session)
    assert resumptions.take(token) is None


def test_only_the_newest_page_of_a_browser_is_parked():
    resumptions = Resumptions()
    token = new_token()
    resumptions.remember("old tab", token)
    resumptions.remember("new tab", token)  # the same browser, a newer page
    old = FakeSession()
    assert not resumptions.park("old tab", old) and not old.parked
    assert resumptions.page_of(token) == "new tab"
    assert not resumptions.park("unknown page", FakeSession())


def test_parked_sessions_expire_and_are_bounded():
    now = [0.0]
    resumptions = Resumptions(park_seconds=60, max_parked=2, clock=lambda: now[0])
    sessions = []
    for i in range(3):
        token = new_token()
        resumptions.remember(f"page-{i}", token)
        sessions.append(FakeSession())
        resumptions.park(f"page-{i}", sessions[-1])
        now[0] += 1
    assert sessions[0].closed and len(resumptions) == 2  # the oldest made room
    now[0] += 61
    assert resumptions.sweep() == 2 and all(s.closed for s in sessions)
    resumptions.close_all()
    assert len(resumptions) == 0
