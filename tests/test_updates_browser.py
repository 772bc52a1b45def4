"""In a real Chromium: a visitor trains in the clear, then with secure aggregation, and sees
what the server received each time and that the model is the same."""

from __future__ import annotations

import re

from tests.app_fixtures import launched_app  # noqa: F401 - fixture
from tests.test_ui_browser import browser, pytestmark, set_number  # noqa: F401 - fixture and marks


def test_a_visitor_sees_clear_updates_then_masked_ones(browser, launched_app):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(launched_app.url)
    page.get_by_label("Dataset").click()
    page.get_by_role("option", name="digits").click()
    set_number(page, "Clients", 3)
    set_number(page, "Rounds", 2)
    expect(page.get_by_text("3 clients hold")).to_be_visible(timeout=30_000)
    page.get_by_text("What the server receives from a client (secure aggregation)").click()
    panel_note = page.get_by_text("No training yet.")
    expect(panel_note).to_be_visible()

    page.get_by_role("button", name="Start federated training").click()
    expect(page.get_by_text(re.compile(r"Done: 2 rounds with 3 clients"))).to_be_visible(timeout=120_000)
    clear = page.get_by_text(
        re.compile(r"Without secure aggregation: round 1, resemblance .* (0\.[6-9]\d|1\.00)")
    )
    expect(clear).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Train again with secure aggregation, same settings, to compare.")).to_be_visible(
        timeout=10_000
    )

    page.get_by_label("Secure aggregation (SecAgg+): the server only sees the sum of the updates").check()
    page.get_by_role("button", name="Start federated training").click()
    expect(page.get_by_text(re.compile(r"Same model either way"))).to_be_visible(timeout=120_000)
    masked = page.get_by_text(re.compile(r"With secure aggregation: round 1, resemblance .* -?0\.[0-2]\d "
                                         r"\(it shows noise\)"))
    expect(masked).to_be_visible()
    # Both pictures are drawn: the clear update and the masked one.
    expect(page.locator("#server-view-clear img")).to_be_visible()
    expect(page.locator("#server-view-masked img")).to_be_visible()
    page.close()
