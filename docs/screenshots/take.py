"""The screenshots of README and docs/WORKSHOP.md: the workshop's walk at 1366 px, then on a 390 px phone.

    .venv/bin/python docs/screenshots/take.py

Launches the demo (and its FHE server) on a free loopback port, walks it in
Debian's Chromium with the form's defaults (mnist-5k, 5 clients × 3 rounds),
and writes ``N-<tab>.png`` (1366 px wide, whole page) and ``phone-N-<tab>.png``
(390 px) next to this file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.helpers import running_app  # noqa: E402
from tests.ui.test_browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PHONE,
    PROJECTOR,
    TABS,
    draw_stroke,
    open_tab,
    step,
)

NAMES = ["1-federated-training", "2-convert-compile", "3-encrypted-inference", "4-encrypted-evaluation",
         "5-classroom-console", "6-about"]


def walk(page, prefix: str = "") -> None:
    """The workshop's flow; a screenshot of each tab once it shows its results."""
    from playwright.sync_api import expect

    def shot(name: str) -> None:
        page.wait_for_timeout(800)
        page.evaluate("window.scrollTo(0, 0)")  # tab 3's picture sticks where the window was scrolled to
        page.wait_for_timeout(300)
        page.screenshot(path=str(HERE / f"{prefix}{name}.png"), full_page=True)

    page.get_by_role("button", name="Start federated training").click()
    trained = re.compile(r"✓ model .*federated model on mnist-5k")
    expect(page.get_by_text(trained)).to_be_visible(timeout=240_000)
    if not prefix:
        page.get_by_text("Differential privacy: accuracy against ε").click()
    shot(NAMES[0])
    open_tab(page, TABS[1])
    page.get_by_role("button", name="Compile", exact=True).click()
    expect(page.get_by_text(re.compile(r"Compiled in"))).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Run the n_bits sweep").click()
    expect(page.locator("[data-testid='matplotlib'] img:visible").first).to_be_visible(timeout=180_000)
    shot(NAMES[1])
    open_tab(page, TABS[2])
    for button, done in [("① Generate keys", r"Keys ready in"), ("② Encrypt the input", r"Encrypted test"),
                         ("③ Run on the FHE server", r"The server computed"),
                         ("④ Decrypt the result", r"Prediction: \d")]:
        step(page, button, done)
    page.get_by_text("What does someone with the wrong key get?").click()
    step(page, "Decrypt with freshly generated (wrong) keys", r"Over 20 test samples")
    shot(NAMES[2])
    if not prefix:
        page.get_by_text("drawing", exact=True).click()
        page.wait_for_timeout(1500)
        draw_stroke(page, "#sketch")
        drawn = page.get_by_text("Your drawing as the model sees it", exact=False)
        expect(drawn).to_be_visible(timeout=30_000)
        for button, done in [("② Encrypt the input", r"Encrypted your drawing"),
                             ("③ Run on the FHE server", r"The server computed"),
                             ("④ Decrypt the result", r"Prediction: \d")]:
            step(page, button, done)
        shot("3b-drawing")
    open_tab(page, TABS[3])
    page.get_by_role("button", name="Evaluate on encrypted data").click()
    expect(page.get_by_text(re.compile(r"on the first \d+ of the"))).to_be_visible(timeout=300_000)
    shot(NAMES[3])
    open_tab(page, TABS[5])
    shot(NAMES[5])


def classroom(browser, url: str) -> None:
    """The teacher's console on a projector (1366 px), a participant's page on a phone (390 px)."""
    from gradio_client import Client, handle_file
    from PIL import Image
    from playwright.sync_api import expect

    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    from class_drawings import drawings, writers

    teacher = browser.new_context(viewport=PROJECTOR).new_page()
    teacher.goto(url)
    teacher.wait_for_timeout(2000)
    open_tab(teacher, TABS[4])
    open_tab(teacher, "Teacher's console")
    teacher.get_by_label("Class title").fill("Room 101")
    teacher.get_by_role("button", name="Open a class", exact=True).click()
    code = teacher.locator(".class-code-value").inner_text(timeout=30_000).strip()
    for k, hand in enumerate(writers(3, seed=3)):  # three participants who joined from their phones
        client = Client(url, verbose=False)
        client.predict(class_code=code, nickname=["ada", "bo", "chen"][k], api_name="/class_join")
        for i, image in enumerate(drawings(hand, list(range(10)), seed=k)):
            path = HERE / f".sketch-{k}-{i}.png"
            Image.fromarray(image).save(path)
            client.predict(drawing={"background": None, "layers": [], "composite": handle_file(str(path))},
                           label=i, api_name="/class_add_drawing")
            path.unlink()
    phone = browser.new_context(viewport=PHONE).new_page()
    phone.goto(f"{url}?class={code}")
    phone.wait_for_timeout(2000)
    open_tab(phone, TABS[4])
    phone.get_by_label("Nickname").fill("maya")
    phone.get_by_role("button", name="Join", exact=True).click()
    expect(phone.get_by_text("You are maya")).to_be_visible(timeout=30_000)
    for drawn in (1, 2):
        phone.wait_for_timeout(1500)  # the brush is selected again once the canvas is cleared
        draw_stroke(phone, "#class-sketch")
        phone.get_by_role("button", name="Add this drawing").click()
        expect(phone.get_by_text(f"Draw a {drawn}", exact=False)).to_be_visible(timeout=30_000)
    phone.wait_for_timeout(800)
    phone.screenshot(path=str(HERE / "phone-5-classroom.png"), full_page=True)
    teacher.wait_for_timeout(4000)  # the console's next refresh
    teacher.get_by_role("button", name="Train the class model", exact=True).click()
    expect(teacher.get_by_text("Class model: reads")).to_be_visible(timeout=240_000)
    teacher.wait_for_timeout(4000)
    teacher.screenshot(path=str(HERE / f"{NAMES[4]}.png"), full_page=True)


def main(only_classroom: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    with running_app() as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for viewport, prefix in () if only_classroom else ((PROJECTOR, ""), (PHONE, "phone-")):
            context = browser.new_context(viewport=viewport)
            page = context.new_page()
            page.goto(app.url)
            page.wait_for_timeout(2000)
            walk(page, prefix)
            context.close()
        classroom(browser, app.url)
        browser.close()
    print(f"wrote {len(list(HERE.glob('*.png')))} screenshots to {HERE}")


if __name__ == "__main__":
    main(only_classroom="--classroom" in sys.argv)
