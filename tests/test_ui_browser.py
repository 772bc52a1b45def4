"""A person's walk through the demo in a real Chromium (Playwright + Debian's chromium).

Trains digits with 3 clients × 2 rounds, compiles, runs the four steps of
tab 3, and checks what is on screen; closing the tab must delete the session's
private key.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.app_fixtures import launched_app  # noqa: F401 - fixture

#: Debian's Chromium (``$CHROMIUM_PATH`` overrides it).
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync",
]
#: In CI (``.ci/run`` sets ``CI``) this test is required: without Chromium it fails, never skips.
REQUIRED = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

if REQUIRED and not CHROMIUM.exists():
    pytest.fail(f"CI requires the browser test, but {CHROMIUM} does not exist: apt-get install -y chromium.",
                pytrace=False)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium (required in CI)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def test_a_visitor_trains_compiles_and_runs_the_four_steps(browser, launched_app):  # noqa: F811
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(launched_app.url)

    # Tab 1: small settings, the label distribution follows them, then live training.
    page.get_by_label("Dataset").click()
    page.get_by_role("option", name="digits").click()
    set_number(page, "Clients", 3)
    set_number(page, "Rounds", 2)
    expect(page.get_by_text("3 clients hold")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Start federated training").click()
    expect(page.get_by_text(re.compile(r"Done: 2 rounds with 3 clients"))).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Centrally trained baseline")).to_be_visible()
    expect(page.get_by_text(re.compile(r"Federated model: \d+\.\d% test accuracy"))).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(r"federated_model\.skops"))).to_be_visible()

    # Tab 2: compile and read the accuracy table.
    page.get_by_role("tab", name="2 · Convert & compile").click()
    page.get_by_role("button", name="Compile", exact=True).click()
    expect(page.get_by_text(re.compile(r"Compiled in \d+\.\d+ s"))).to_be_visible(timeout=60_000)
    expect(page.get_by_text("compiled circuit, FHE-simulated")).to_be_visible()
    expect(page.get_by_text("client.zip", exact=True).first).to_be_visible()

    # Tab 3: a test sample is shown; steps out of order explain themselves.
    page.get_by_role("tab", name="3 · Encrypted inference").click()
    expect(page.get_by_text(re.compile(r"Test sample #0 of 360"))).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="② Encrypt the input").click()
    refusal = page.get_by_text("No keys yet: run step ① Key generation first.").first
    expect(refusal).to_be_visible(timeout=30_000)

    page.get_by_role("button", name="① Generate keys").click()
    expect(page.get_by_text(re.compile(r"Keys generated in \d+\.\d+ s"))).to_be_visible(timeout=30_000)
    # Sizes in KB with the exact bytes (the private key), or bytes (the tiny evaluation keys).
    expect(page.get_by_role("cell", name=re.compile(r"^\d+\.\d KB \([\d,]+ bytes\)$"))).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile(r"^\d+ bytes$"))).to_be_visible()
    expect(page.get_by_text("0.00 MB")).to_have_count(0)

    page.get_by_role("button", name="② Encrypt the input").click()
    encrypted = page.get_by_text(re.compile(r"Encrypted test sample #0 \(true label \d\)"))
    expect(encrypted).to_be_visible(timeout=30_000)

    page.get_by_role("button", name="③ Run on the FHE server").click()
    computed = page.get_by_text(re.compile(r"The server computed the prediction on encrypted data"))
    expect(computed).to_be_visible(timeout=30_000)
    expect(page.get_by_text("never sent").first).to_be_visible()

    page.get_by_role("button", name="④ Decrypt the result").click()
    expect(page.get_by_role("heading", name=re.compile(r"Prediction: \d"))).to_be_visible(timeout=30_000)
    expect(page.get_by_text("identical")).to_be_visible()
    all_done = "✓ model · ✓ compiled · ✓ keys · ✓ encrypted · ✓ server ran · ✓ decrypted"
    expect(page.get_by_text(all_done)).to_be_visible()

    # Closing the tab ends the session: its private key is deleted at once.
    sessions = [s for s in launched_app.registry._sessions.values() if s.keys is not None]
    assert len(sessions) == 1
    key_dir = sessions[0].keys.key_dir
    assert key_dir.is_dir()
    page.close()
    deadline = time.monotonic() + 30
    while key_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not key_dir.exists()
    assert sessions[0].closed
