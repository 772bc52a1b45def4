"""A class in the room: codes, the teacher's key, joining, drawings, bounds, expiry and threads.

In memory only: no network, no sleeping (a fake clock), no training.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from story import classroom
from story.class_rules import CLASS_CODE_ALPHABET, DEFAULT_CLASS_TITLE, next_label_to_draw
from story.classroom import (
    CLASS_IDLE_TTL_SECONDS,
    MAX_DRAWINGS_PER_PARTICIPANT,
    MAX_OPEN_CLASSES,
    MAX_PARTICIPANTS,
    ClassroomError,
    Classrooms,
)
from story.errors import USER_ERRORS, StepError
from tests.helpers import FakeClock

N_FEATURES = 784  # mnist-5k: 28 x 28 pixels


def drawing(value: float = 200.0, pixels: int = 50) -> np.ndarray:
    features = np.zeros(N_FEATURES)
    features[300 : 300 + pixels] = value
    return features


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def rooms(clock) -> Classrooms:
    return Classrooms(clock=clock)


@pytest.fixture()
def opened(rooms):
    return rooms.open_class("Year 9 maths")


def test_refusals_are_story_errors_a_visitor_reads():
    assert issubclass(ClassroomError, StepError)
    assert issubclass(ClassroomError, USER_ERRORS)


def test_class_codes_are_short_typeable_random_and_unique(rooms, monkeypatch):
    codes = [rooms.open_class(f"class {i}").class_code for i in range(MAX_OPEN_CLASSES)]
    assert len(set(codes)) == len(codes)
    for code in codes:
        assert 1 <= len(code) <= 6 and set(code) <= set(CLASS_CODE_ALPHABET)
    assert not set("0O1IL") & set(CLASS_CODE_ALPHABET)
    assert set(CLASS_CODE_ALPHABET) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

    # A drawn code already in use is drawn again.
    other = Classrooms()
    taken = other.open_class("first").class_code
    drawn = iter([taken, taken, "K7QX2M"])
    monkeypatch.setattr(classroom, "new_class_code", lambda: next(drawn))
    assert other.open_class("second").class_code == "K7QX2M"


def test_opening_gives_a_join_path_and_a_long_teacher_key(opened):
    assert opened.join_path == f"?class={opened.class_code}"
    assert len(opened.teacher_key) >= 32 and opened.teacher_key not in opened.join_path
    assert opened.title == "Year 9 maths"


def test_titles_are_tidied_bounded_and_blank_ones_get_a_default(rooms):
    assert rooms.open_class("  Room\n 12  ").title == "Room 12"
    assert rooms.open_class("   ").title == DEFAULT_CLASS_TITLE
    assert rooms.open_class().title == DEFAULT_CLASS_TITLE
    with pytest.raises(ClassroomError, match="at most 60 characters, got 61: type a shorter one"):
        rooms.open_class("x" * 61)
    with pytest.raises(ClassroomError, match="printable"):
        rooms.open_class("bell\x07")
    with pytest.raises(ClassroomError, match="must be text"):
        rooms.open_class(None)
    assert len(rooms) == 3


def test_codes_are_matched_ignoring_case_and_surrounding_spaces(rooms, opened):
    ada = rooms.join(f"  {opened.class_code.lower()} ", "Ada")
    assert ada.class_code == opened.class_code
    rooms.add_drawing(f" {opened.class_code.lower()}", ada.participant_id, drawing(), 3)
    assert rooms.status(opened.class_code.lower(), opened.teacher_key)["drawings"] == 1


@pytest.mark.parametrize("code", ["ZZZZZ0", "", "   ", None, 42])
def test_an_unknown_code_is_refused_with_what_to_do(rooms, opened, code):
    with pytest.raises(ClassroomError, match="No open class with code .*check the code on the projector"):
        rooms.join(code, "Ada")
    assert rooms.status(opened.class_code, opened.teacher_key)["participants"] == 0


def test_only_the_teacher_key_reads_status_and_data_or_closes_the_class(rooms, opened):
    ada = rooms.join(opened.class_code, "Ada")
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 1)
    second = rooms.open_class("Other room")
    for key in ["", "wrong", opened.teacher_key[:-1], second.teacher_key, None, ada.participant_id]:
        for call in (rooms.status, rooms.participants_data, rooms.close_class):
            with pytest.raises(ClassroomError, match="not the teacher key") as refused:
                call(opened.class_code, key)
            assert "Ada" not in str(refused.value) and "Year 9" not in str(refused.value)
    # Nothing was closed or changed.
    assert rooms.status(opened.class_code, opened.teacher_key)["drawings"] == 1
    assert len(rooms) == 2


def test_participants_get_an_opaque_random_id_not_their_nickname(rooms, opened):
    ada = rooms.join(opened.class_code, "  Ada  ")
    assert ada.nickname == "Ada" and "Ada" not in ada.participant_id and len(ada.participant_id) >= 16
    bob = rooms.join(opened.class_code, "Bob")
    assert bob.participant_id != ada.participant_id


def test_bad_nicknames_are_refused_and_nobody_joins(rooms, opened):
    for nickname, message in [("", "Type a nickname"), ("   ", "Type a nickname"),
                              ("x" * 25, "at most 24 characters"), ("tab\tinside", None),
                              ("null\x00", "printable"), (None, "must be text")]:
        if message is None:  # whitespace inside is tidied, not refused
            assert rooms.join(opened.class_code, nickname).nickname == "tab inside"
            continue
        with pytest.raises(ClassroomError, match=message):
            rooms.join(opened.class_code, nickname)
    assert rooms.join(opened.class_code, "y" * 24).nickname == "y" * 24
    assert rooms.status(opened.class_code, opened.teacher_key)["participants"] == 2


def test_a_nickname_is_unique_in_its_class_ignoring_case(rooms, opened):
    ada = rooms.join(opened.class_code, "Ada")
    with pytest.raises(ClassroomError, match="already called 'ADA': pick another nickname, e.g. 'ADA2'"):
        rooms.join(opened.class_code, "ADA")
    rooms.join(opened.class_code, "ada2")
    with pytest.raises(ClassroomError, match="e.g. 'ada3'"):
        rooms.join(opened.class_code, "ada")
    # Another class may have its own Ada; a nickname is free again once its holder leaves.
    rooms.join(rooms.open_class("Other").class_code, "Ada")
    rooms.leave(opened.class_code, ada.participant_id)
    rooms.join(opened.class_code, "ada")


def test_a_full_class_refuses_the_next_participant(rooms, opened):
    for i in range(MAX_PARTICIPANTS):
        rooms.join(opened.class_code, f"pupil {i}")
    full = f"is full: it has {MAX_PARTICIPANTS} participants.*open a second class"
    with pytest.raises(ClassroomError, match=full):
        rooms.join(opened.class_code, "latecomer")
    assert rooms.status(opened.class_code, opened.teacher_key)["participants"] == MAX_PARTICIPANTS


@pytest.mark.parametrize(("label", "features", "message"), [
    (-1, drawing(), "label must be a whole number from 0 to 9, got -1"),
    (10, drawing(), "from 0 to 9, got 10"),
    (3.5, drawing(), "from 0 to 9"),
    (True, drawing(), "from 0 to 9"),
    ("3", drawing(), "from 0 to 9"),
    (None, drawing(), "from 0 to 9"),
    (3, np.zeros(783) + 9, "vector of 784 pixel values, got shape \\(783,\\)"),
    (3, drawing().reshape(28, 28), "got shape \\(28, 28\\)"),
    (3, drawing(np.nan), "no NaN or infinity"),
    (3, drawing(np.inf), "no NaN or infinity"),
    (3, drawing(256.0), "from 0 to 255"),
    (3, drawing(-1.0), "from 0 to 255"),
    (3, np.zeros(N_FEATURES), "blank"),
    (3, drawing(0.4), "blank"),  # rounds to nothing
    (3, ["ink"] * N_FEATURES, "pixel values"),
    (3, None, "pixel values"),
])
def test_invalid_drawings_are_refused_and_nothing_changes(rooms, opened, label, features, message):
    ada = rooms.join(opened.class_code, "Ada")
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 5)
    with pytest.raises(ClassroomError, match=message):
        rooms.add_drawing(opened.class_code, ada.participant_id, features, label)
    assert rooms.summary(opened.class_code, ada.participant_id).drawings == 1


def test_drawings_need_a_participant_of_that_class(rooms, opened):
    with pytest.raises(ClassroomError, match="not in class .* join it again"):
        rooms.add_drawing(opened.class_code, "made-up-id", drawing(), 1)
    with pytest.raises(ClassroomError, match="No open class"):
        rooms.add_drawing("ZZZZZ0", "made-up-id", drawing(), 1)


def test_a_participant_keeps_a_bounded_number_of_drawings(rooms, opened):
    ada = rooms.join(opened.class_code, "Ada")
    for i in range(MAX_DRAWINGS_PER_PARTICIPANT):
        summary = rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), i % 10)
    assert summary.drawings == MAX_DRAWINGS_PER_PARTICIPANT
    with pytest.raises(ClassroomError, match=f"{MAX_DRAWINGS_PER_PARTICIPANT} drawings.*Delete yours"):
        rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 0)
    assert rooms.summary(opened.class_code, ada.participant_id).drawings == MAX_DRAWINGS_PER_PARTICIPANT
    rooms.delete_drawings(opened.class_code, ada.participant_id)
    assert rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 0).drawings == 1


def test_per_label_counts_and_the_next_label_cycle_through_the_digits(rooms, opened):
    ada = rooms.join(opened.class_code, "Ada")
    code, pid = opened.class_code, ada.participant_id
    assert rooms.next_label(code, pid) == 0
    drawn = []
    for _ in range(20):
        label = rooms.next_label(code, pid)
        drawn.append(label)
        summary = rooms.add_drawing(code, pid, drawing(), label)
    assert drawn == list(range(10)) * 2
    assert summary.drawings == 20 and summary.per_label == [2] * 10 and summary.next_label == 0
    summary = rooms.add_drawing(code, pid, drawing(), 7.0)
    assert summary.per_label[7] == 3 and summary.next_label == 0
    assert next_label_to_draw([3, 1, 2, 1, 5, 5, 5, 5, 5, 5]) == 1


def test_drawings_are_kept_as_rounded_uint8_and_handed_over_per_participant(rooms, opened):
    ada, bob = rooms.join(opened.class_code, "Ada"), rooms.join(opened.class_code, "Bob")
    rooms.join(opened.class_code, "Cy")  # no drawing: not a client
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(254.6), 4)
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(0.6), 2)
    rooms.add_drawing(opened.class_code, bob.participant_id, drawing(), 9)
    data = rooms.participants_data(opened.class_code, opened.teacher_key)
    assert [pid for pid, _, _ in data] == [ada.participant_id, bob.participant_id]
    _, X, y = data[0]
    assert X.dtype == np.uint8 and X.shape == (2, N_FEATURES) and y.tolist() == [4, 2]
    assert X[0, 300] == 255 and X[1, 300] == 1 and X[0, 0] == 0
    X[:] = 0  # a copy: the class keeps its drawings
    assert rooms.participants_data(opened.class_code, opened.teacher_key)[0][1][0, 300] == 255


def test_delete_drawings_and_leave_delete_at_once(rooms, opened):
    ada, bob = rooms.join(opened.class_code, "Ada"), rooms.join(opened.class_code, "Bob")
    for label in (1, 2, 3):
        rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), label)
        rooms.add_drawing(opened.class_code, bob.participant_id, drawing(), label)
    assert rooms.delete_drawings(opened.class_code, ada.participant_id) == 3
    summary = rooms.summary(opened.class_code, ada.participant_id)
    assert summary.drawings == 0 and summary.per_label == [0] * 10  # still in the class
    assert rooms.leave(opened.class_code, bob.participant_id) == 3
    status = rooms.status(opened.class_code, opened.teacher_key)
    assert status["participants"] == 1 and status["drawings"] == 0 and status["per_label"] == [0] * 10
    assert rooms.participants_data(opened.class_code, opened.teacher_key) == []
    with pytest.raises(ClassroomError, match="not in class"):
        rooms.add_drawing(opened.class_code, bob.participant_id, drawing(), 1)
    with pytest.raises(ClassroomError, match="not in class"):
        rooms.leave(opened.class_code, bob.participant_id)


def test_two_open_classes_never_share_drawings(rooms):
    first, second = rooms.open_class("A"), rooms.open_class("B")
    ada, bob = rooms.join(first.class_code, "Ada"), rooms.join(second.class_code, "Bob")
    rooms.add_drawing(first.class_code, ada.participant_id, drawing(), 1)
    rooms.add_drawing(second.class_code, bob.participant_id, drawing(), 2)
    rooms.add_drawing(second.class_code, bob.participant_id, drawing(), 2)
    # A participant's id is only good in their own class.
    with pytest.raises(ClassroomError, match="not in class"):
        rooms.add_drawing(second.class_code, ada.participant_id, drawing(), 1)
    def labels(opened):
        return [y.tolist() for _, _, y in rooms.participants_data(opened.class_code, opened.teacher_key)]

    assert labels(first) == [[1]] and labels(second) == [[2, 2]]
    rooms.close_class(first.class_code, first.teacher_key)
    assert rooms.status(second.class_code, second.teacher_key)["drawings"] == 2
    with pytest.raises(ClassroomError, match="No open class"):
        rooms.status(first.class_code, first.teacher_key)


def test_an_idle_class_expires_and_its_drawings_are_wiped(rooms, opened, clock, monkeypatch):
    ada = rooms.join(opened.class_code, "Ada")
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 1)
    clock.now += CLASS_IDLE_TTL_SECONDS - 1
    rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 2)  # activity: a new TTL
    clock.now += CLASS_IDLE_TTL_SECONDS - 10
    # The teacher's dashboard polling status does not keep the drawings alive.
    assert rooms.status(opened.class_code, opened.teacher_key)["expires_in_seconds"] == 10
    clock.now += 10
    with pytest.raises(ClassroomError, match="No open class with code .*ask your teacher to open a new"):
        rooms.status(opened.class_code, opened.teacher_key)
    with pytest.raises(ClassroomError, match="No open class"):
        rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), 3)
    assert len(rooms) == 0
    # Even a new class that draws the same code starts empty.
    monkeypatch.setattr(classroom, "new_class_code", lambda: opened.class_code)
    again = rooms.open_class("again")
    assert again.class_code == opened.class_code
    assert rooms.status(again.class_code, again.teacher_key)["participants"] == 0
    with pytest.raises(ClassroomError, match="not in class"):
        rooms.summary(again.class_code, ada.participant_id)


def test_open_classes_are_bounded_and_the_refusal_says_when_room_frees(rooms, clock):
    first = rooms.open_class("first")
    clock.now += 3600
    others = [rooms.open_class(f"class {i}") for i in range(MAX_OPEN_CLASSES - 1)]
    with pytest.raises(ClassroomError, match=f"{MAX_OPEN_CLASSES} classes are open.*next one closes in "
                                             "120 minutes.*after 3 hours without activity"):
        rooms.open_class("one too many")
    assert len(rooms) == MAX_OPEN_CLASSES
    rooms.close_class(others[0].class_code, others[0].teacher_key)  # closing makes room
    rooms.open_class("fits")
    with pytest.raises(ClassroomError, match="classes are open"):
        rooms.open_class("one too many")
    clock.now += 2 * 3600  # the first expires: room again
    rooms.open_class("fits too")
    with pytest.raises(ClassroomError, match="No open class"):
        rooms.status(first.class_code, first.teacher_key)


def test_status_shows_the_room_to_its_teacher(rooms, opened, clock):
    ada, bob = rooms.join(opened.class_code, "Ada"), rooms.join(opened.class_code, "Bob")
    for label in (0, 0, 3):
        rooms.add_drawing(opened.class_code, ada.participant_id, drawing(), label)
    rooms.add_drawing(opened.class_code, bob.participant_id, drawing(), 3)
    clock.now += 60
    status = rooms.status(opened.class_code, opened.teacher_key)
    assert status == {
        "class_code": opened.class_code,
        "title": "Year 9 maths",
        "state": "collecting",
        "participants": 2,
        "drawings": 4,
        "per_label": [2, 0, 0, 2, 0, 0, 0, 0, 0, 0],
        "per_participant": [
            {"nickname": "Ada", "drawings": 3, "per_label": [2, 0, 0, 1, 0, 0, 0, 0, 0, 0]},
            {"nickname": "Bob", "drawings": 1, "per_label": [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]},
        ],
        "rounds": [],
        "expires_in_seconds": int(CLASS_IDLE_TTL_SECONDS) - 60,
    }
    assert json.loads(json.dumps(status)) == status
    assert ada.participant_id not in json.dumps(status)


def test_concurrent_drawings_are_counted_exactly_and_the_bound_holds(rooms, opened):
    pupils = [rooms.join(opened.class_code, f"pupil {i}") for i in range(8)]
    shared = rooms.join(opened.class_code, "shared tab")
    start = threading.Barrier(8)
    refused = []

    def draw(pupil):
        start.wait()
        for i in range(30):
            rooms.add_drawing(opened.class_code, pupil.participant_id, drawing(), i % 10)
            try:  # 8 x 30 = 240 attempts on one participant: exactly the bound gets in
                rooms.add_drawing(opened.class_code, shared.participant_id, drawing(), i % 10)
            except ClassroomError:
                refused.append(1)

    threads = [threading.Thread(target=draw, args=(pupil,)) for pupil in pupils]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = rooms.status(opened.class_code, opened.teacher_key)
    assert status["drawings"] == 8 * 30 + MAX_DRAWINGS_PER_PARTICIPANT
    assert len(refused) == 8 * 30 - MAX_DRAWINGS_PER_PARTICIPANT
    assert all(p["per_label"] == [3] * 10 for p in status["per_participant"][:8])


def test_a_sketch_is_prepared_like_the_datasets_images(rooms, opened):
    ada = rooms.join(opened.class_code, "Ada")
    sketch = np.full((280, 280), 255, dtype=np.uint8)
    sketch[60:220, 130:150] = 0  # a dark stroke on a light canvas: a "1"
    summary = rooms.add_sketch(opened.class_code, ada.participant_id, sketch, 1)
    assert summary.drawings == 1 and summary.per_label[1] == 1
    [(_, X, y)] = rooms.participants_data(opened.class_code, opened.teacher_key)
    assert X.shape == (1, N_FEATURES) and X.max() == 255 and y.tolist() == [1]
    with pytest.raises(ClassroomError, match="blank"):
        rooms.add_sketch(opened.class_code, ada.participant_id, np.full((280, 280), 255, np.uint8), 2)
    with pytest.raises(ClassroomError, match="from 0 to 9"):
        rooms.add_sketch(opened.class_code, ada.participant_id, sketch, 12)
    with pytest.raises(ClassroomError, match="No open class"):
        rooms.add_sketch("ZZZZZ0", ada.participant_id, None, 1)
    assert rooms.summary(opened.class_code, ada.participant_id).drawings == 1
