"""A reload keeps a page's place in a class: the teacher's console, or a participant's seat and drawings.

Phones reload (a locked screen, a pulled-down page): a participant must come back to
their own seat and drawings, never be asked to join again under another name.
"""

from __future__ import annotations

import numpy as np

from story.pages import close_page, open_page


def sketch(value: float = 255.0) -> np.ndarray:
    """A sketchpad image (RGBA) with one thick dark stroke."""
    image = np.zeros((200, 200, 4), dtype=np.uint8)
    image[40:160, 90:110] = [0, 0, 0, value]
    return image


def test_a_reload_brings_back_the_console_and_the_seat_with_its_drawings(registry):
    teacher_page = open_page(registry, "teacher-1", None)
    opened = registry.resolve(None, "teacher-1").open_class("Reloads")
    pupil_page = open_page(registry, "pupil-1", None)
    pupil = registry.resolve(None, "pupil-1")
    pupil.join_class(opened["class_code"], "Ana")
    pupil.add_class_drawing(sketch(), 0)
    pupil.add_class_drawing(sketch(), 1)

    close_page(registry, "pupil-1")
    close_page(registry, "teacher-1")
    assert registry.get("pupil-1") is None and registry.get("teacher-1") is None

    back = open_page(registry, "pupil-2", pupil_page.token)
    assert back.session is not None and "your seat in class" in back.message
    seat = back.session.class_place()["seat"]
    assert seat["nickname"] == "Ana" and seat["drawings"] == 2
    assert seat["per_label"][:2] == [1, 1] and seat["next_label"] == 2
    assert back.session.add_class_drawing(sketch(), 2)["drawings"] == 3  # the same seat, not a new one

    console = open_page(registry, "teacher-2", teacher_page.token)
    assert console.session is not None and "your console of class" in console.message
    teaching = console.session.class_place()["teaching"]
    assert teaching["class_code"] == opened["class_code"] and teaching["teacher_key"] == opened["teacher_key"]
    status = console.session.class_status()
    assert [p["nickname"] for p in status["per_participant"]] == ["Ana"] and status["drawings"] == 3


def test_a_page_with_nothing_to_keep_is_not_parked_and_a_closed_class_is_forgotten(registry):
    idle_page = open_page(registry, "idle-1", None)
    registry.resolve(None, "idle-1")
    close_page(registry, "idle-1")
    assert open_page(registry, "idle-2", idle_page.token).session is None

    teacher = registry.resolve(None, "teacher-3")
    opened = teacher.open_class("Short")
    pupil_page = open_page(registry, "pupil-3", None)
    registry.resolve(None, "pupil-3").join_class(opened["class_code"], "Bo")
    close_page(registry, "pupil-3")
    teacher.close_class()
    back = open_page(registry, "pupil-4", pupil_page.token)
    assert back.session is not None  # it had a seat when its page closed
    assert back.session.class_place() == {"teaching": None, "seat": None}  # the class is gone
    assert back.session.seat is None
