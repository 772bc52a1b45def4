"""The Classroom tab in a real Chromium: a teacher's console at 1366 px, a participant's phone at 390 px.

Phones reload (a locked screen, a pull on the page); a projector's laptop does too.
After a reload the participant is back in their seat with their drawings counted and
the brush ready, and the teacher is back at the console with the join code.
"""

from __future__ import annotations

import pytest

from tests.helpers import CHROMIUM
from tests.ui.test_browser import PHONE, PROJECTOR, TABS, draw_stroke, open_tab

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"),
]


def test_a_reload_brings_the_teacher_back_to_the_console_and_the_participant_to_their_seat(
    browser, launched_app
):
    from playwright.sync_api import expect

    teacher = browser.new_context(viewport=PROJECTOR).new_page()
    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=False).new_page()
    try:
        teacher.goto(launched_app.url)
        open_tab(teacher, TABS[4])
        open_tab(teacher, "Teacher's console")
        teacher.get_by_label("Class title").fill("Room 7")
        teacher.get_by_role("button", name="Open a class", exact=True).click()
        code = teacher.locator(".class-code-value").inner_text(timeout=30_000).strip()

        phone.goto(f"{launched_app.url}?class={code}")
        open_tab(phone, TABS[4])
        expect(phone.get_by_label("Class code")).to_have_value(code, timeout=30_000)  # from the QR link
        phone.get_by_label("Nickname").fill("maya")
        phone.get_by_role("button", name="Join", exact=True).click()
        expect(phone.get_by_text("You are maya")).to_be_visible(timeout=30_000)
        expect(phone.get_by_text("The class model: not trained yet (1 in the room)")).to_be_visible(
            timeout=30_000)  # every phone follows the class run
        for drawn in (1, 2):
            phone.wait_for_timeout(1000)  # the brush is selected again once the canvas is ready
            draw_stroke(phone, "#class-sketch")
            phone.get_by_role("button", name="Add this drawing").click()
            expect(phone.get_by_text(f"Draw a {drawn}", exact=False)).to_be_visible(timeout=30_000)

        phone.reload()
        # Back in the Classroom tab, in the same seat, with both drawings counted and the next digit asked.
        expect(phone.get_by_text("back after a reload", exact=False)).to_be_visible(timeout=60_000)
        expect(phone.get_by_text("Draw a 2", exact=False)).to_be_visible()
        expect(phone.get_by_text(f"your seat in class {code}", exact=False)).to_be_visible()
        phone.wait_for_timeout(1000)
        draw_stroke(phone, "#class-sketch")  # the brush is on: the stroke draws
        phone.get_by_role("button", name="Add this drawing").click()
        expect(phone.get_by_text("Draw a 3", exact=False)).to_be_visible(timeout=30_000)

        teacher.reload()
        back = teacher.get_by_text(f"your console of class {code}", exact=False)
        expect(back).to_be_visible(timeout=60_000)
        expect(teacher.locator(".class-code-value")).to_have_text(code)
        # The console refreshes again: one participant, three drawings.
        expect(teacher.get_by_role("gridcell", name="maya")).to_be_visible(timeout=30_000)
        expect(teacher.get_by_role("gridcell", name="3", exact=True).first).to_be_visible()
        sessions = [s for s in launched_app.registry._sessions.values() if s.seat is not None]
        assert len(sessions) == 1, "the reload made a second seat"
    finally:
        teacher.context.close()
        phone.context.close()
