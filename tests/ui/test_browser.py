"""A person's walk through the demo in a real Chromium (Playwright + Debian's chromium), 1366 and 390 px wide.

At 1366 px (a laptop on a projector) one page trains digits with 3 clients ×
2 rounds, compiles, runs the four steps of tab 3, the wrong-key demo and an
encrypted evaluation, checking what is on screen: panels true to the current
model (a retrain on another dataset leaves no number of the old one, and the
old downloads are gone), Error badges that leave with the next success, chart
text large enough for a projector, a reload that resumes the model with new
keys, and a closed tab whose private key is deleted at once. At 390 px (a
phone) every tab is one tap away and nothing needs sideways scrolling. Last,
a visitor trains in the clear, then with secure aggregation, and sees what the
server received each time and that the model is the same.
"""

from __future__ import annotations

import os
import re
import time

import httpx
import pytest

from tests.helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: F401 - CHROMIUM_ARGS for the screenshot walk
from ui.figures import DPI, MIN_FONT_PT

#: In CI (``.ci/run`` sets ``CI``) this test is required: without Chromium it fails, never skips.
REQUIRED = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

if REQUIRED and not CHROMIUM.exists():
    pytest.fail(f"CI requires the browser test, but {CHROMIUM} does not exist: apt-get install -y chromium.",
                pytrace=False)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium (required in CI)",
    ),
]

PROJECTOR = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
#: Smallest chart text: readable from the back of a room at 1366 px, readable in the hand at 390 px.
PROJECTOR_MIN_FONT_PX = 14
PHONE_MIN_FONT_PX = 9.5
TABS = ["1 · Federated training", "2 · Convert & compile", "3 · Encrypted inference",
        "4 · Encrypted evaluation", "5 · Classroom", "6 · About"]


@pytest.fixture(scope="module")
def desktop(browser, launched_app):
    """One visitor's page at 1366 px, shared by the tests below in their order (they continue its story)."""
    context = browser.new_context(viewport=PROJECTOR)
    page = context.new_page()
    page.goto(launched_app.url)
    yield page
    context.close()


# -- helpers ---------------------------------------------------------------------


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def train(page, dataset: str, clients: int = 3, rounds: int = 2) -> None:
    from playwright.sync_api import expect

    open_tab(page, TABS[0])
    page.get_by_label("Dataset").click()
    page.get_by_role("option", name=dataset, exact=True).click()
    set_number(page, "Clients", clients)
    set_number(page, "Rounds", rounds)
    expect(page.get_by_text(f"{clients} clients hold")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Start federated training").click()
    # The status line names the new model once the training has replaced the old one.
    trained = re.compile(rf"✓ model · ○ compiled .*federated model on {re.escape(dataset)}")
    expect(page.get_by_text(trained)).to_be_visible(timeout=180_000)
    expect(page.get_by_text(re.compile(rf"Done: {rounds} rounds with {clients} clients"))).to_be_visible()
    assert in_view(page, "#train-status"), "the training's progress and result are out of sight"


def compile_model(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, TABS[1])
    page.get_by_role("button", name="Compile", exact=True).click()
    expect(page.get_by_text(re.compile(r"Compiled in \d+\.\d+ s"))).to_be_visible(timeout=120_000)
    page.wait_for_timeout(300)
    assert in_view(page, "#compile-result"), "the compile's result is out of sight"


#: Where each main button of tab 3 shows its result.
STEP_RESULTS = {"① Generate keys": "#keygen-result", "② Encrypt the input": "#encrypt-result",
                "③ Run on the FHE server": "#run-result", "④ Decrypt the result": "#decrypt-result",
                "Decrypt with freshly generated (wrong) keys": "#wrong-key-result"}


def step(page, button: str, done: str) -> None:
    """Press a button of tab 3 and wait for its result, which must then be in view."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=button).click()
    expect(page.get_by_text(re.compile(done)).first).to_be_visible(timeout=60_000)
    result = STEP_RESULTS.get(button)
    if result:
        deadline = time.monotonic() + 5
        while not in_view(page, result) and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert in_view(page, result), f"the result of {button} is out of sight"


def error_badges(page) -> int:
    """Visible "Error" badges that Gradio puts on a failed event's outputs."""
    return sum(b.is_visible() for b in page.locator("[data-testid='status-tracker'] .error").all())


def chart_fonts_px(page) -> list[float]:
    """The smallest text of each visible chart, in CSS pixels, as shown (ui.figures: MIN_FONT_PT at DPI)."""
    scales = page.evaluate("""() => Array.from(document.querySelectorAll('[data-testid="matplotlib"] img'))
        .filter(img => img.offsetParent !== null && img.naturalWidth > 0)
        .map(img => img.getBoundingClientRect().width / img.naturalWidth)""")
    return [MIN_FONT_PT * DPI / 72 * scale for scale in scales]


def overflowing(page) -> list[str]:
    """Visible elements wider than their box: tables and their scroll boxes, the pictures of tabs 3 and 5."""
    return page.evaluate("""() => {
        const out = [];
        const check = (el, what) => {
            if (el.offsetParent === null) return;
            if (el.scrollWidth > el.clientWidth + 1) {
                out.push(`${what}: ${el.scrollWidth} > ${el.clientWidth}`);
            }
        };
        document.querySelectorAll('.virtual-table-viewport, .table-wrap')
            .forEach(el => check(el, 'data table'));
        document.querySelectorAll('.prose').forEach(el => check(el, 'text ' + el.innerText.slice(0, 30)));
        document.querySelectorAll('#holdings, .pipeline-diagram, .probabilities')
            .forEach(el => check(el, 'diagram'));
        const doc = document.documentElement;
        if (doc.scrollWidth > window.innerWidth) out.push(`page: ${doc.scrollWidth} > ${window.innerWidth}`);
        return out;
    }""")


#: Every visible text smaller than 14 px or below WCAG AA contrast (4.5:1, 3:1 from 24 px or 18.66 px bold),
#: its colour blended over the backgrounds and opacities it is drawn on.
ILLEGIBLE_JS = r"""() => {
  const parse = c => {
    const m = c.match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const channel = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = el => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (const c of layers.reverse()) out = out.map((v, i) => v * (1 - c[3]) + c[i] * c[3]);
    return out;
  };
  const opacity = el => {
    let o = 1;
    for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
    return o;
  };
  const out = [], seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement, text = walker.currentNode.textContent.trim();
    if (!text || !el || seen.has(el)) continue;
    seen.add(el);
    if (el.closest('svg, script, style, [aria-hidden="true"], .sr-only, .visually-hidden')) continue;
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    if (!box.width || !box.height || el.offsetParent === null || style.visibility === 'hidden') continue;
    const size = parseFloat(style.fontSize), fg = parse(style.color), bg = background(el);
    const alpha = fg[3] * opacity(el);
    const shown = fg.slice(0, 3).map((v, i) => v * alpha + bg[i] * (1 - alpha));
    const ratio = (Math.max(lum(shown), lum(bg)) + 0.05) / (Math.min(lum(shown), lum(bg)) + 0.05);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (size < 14 || ratio < (large ? 3 : 4.5)) {
      out.push(`${text.slice(0, 40)}: ${size} px, ${ratio.toFixed(2)}:1`);
    }
  }
  return out;
}"""


def illegible(page) -> list[str]:
    """Texts on screen under 14 px or of less than WCAG AA contrast."""
    return page.evaluate(ILLEGIBLE_JS)


def in_view(page, selector: str) -> bool:
    """True when the top of ``selector`` is inside the window (below what is pinned to its top)."""
    return page.evaluate("""(selector) => {
        const el = document.querySelector(selector);
        if (!el || el.offsetParent === null) return false;
        let top = 0;
        document.querySelectorAll('.pinned').forEach(p => {
            const bottom = p.getBoundingClientRect().bottom;
            if (getComputedStyle(p).position === 'sticky') top = Math.max(top, bottom);
        });
        const start = el.getBoundingClientRect().top;
        return start >= top - 1 && start < window.innerHeight - 20;
    }""", selector)


def fully_in_view(page, selector: str) -> bool:
    """True when all of ``selector`` is inside the window."""
    return page.evaluate("""(selector) => {
        const r = document.querySelector(selector).getBoundingClientRect();
        return r.top >= 0 && r.bottom <= window.innerHeight;
    }""", selector)


def misaligned_headers(page) -> list[str]:
    """Visible data tables whose header cells do not line up with their first row's cells."""
    return page.evaluate("""() => {
        const out = [];
        document.querySelectorAll('.table-wrap').forEach(wrap => {
            if (wrap.offsetParent === null) return;
            const head = wrap.querySelectorAll('thead th'), row = wrap.querySelector('.virtual-row');
            if (!row || !head.length) return;
            Array.from(row.querySelectorAll('.body-cell')).forEach((cell, i) => {
                const a = head[i] && head[i].getBoundingClientRect(), b = cell.getBoundingClientRect();
                if (a && (Math.abs(a.left - b.left) > 1.5 || Math.abs(a.right - b.right) > 1.5)) {
                    const name = head[i].innerText.trim();
                    out.push(`${name}: header ${a.left}-${a.right}, cells ${b.left}-${b.right}`);
                }
            });
        });
        return out;
    }""")


def draw_stroke(page, canvas_selector: str) -> None:
    """A "7": two mouse strokes across the sketchpad."""
    canvas = page.locator(f"{canvas_selector} canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.28, box["y"] + box["height"] * 0.22)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.72, box["y"] + box["height"] * 0.22, steps=12)
    page.mouse.move(box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.82, steps=18)
    page.mouse.up()


def no_result_of_the_old_input(page) -> None:
    """Steps ② to ④ show nothing, the status line says so, and ③ ④ ask for this input to be encrypted."""
    from playwright.sync_api import expect

    status = page.get_by_text("✓ keys · ○ encrypted · ○ server ran · ○ decrypted")
    expect(status).to_be_visible(timeout=30_000)
    for result in ("#encrypt-result", "#run-result", "#decrypt-result"):
        expect(page.locator(result)).to_have_text("", timeout=10_000)
    assert not page.get_by_role("heading", name=re.compile(r"Prediction: \d")).is_visible()
    assert not held(page, "server") or not any("encrypted input" in item for item in held(page, "server"))
    refused = (("③ Run on the FHE server", "#run-result"), ("④ Decrypt the result", "#decrypt-result"))
    for button, result in refused:
        page.get_by_role("button", name=button).click()
        expect(page.locator(f"{result} [data-testid='status-tracker'] .error")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("encrypt this input first").first).to_be_visible()


def held(page, side: str) -> list[str]:
    """What tab 3's picture shows as held by the client or the server."""
    return page.locator(f"#holdings section.{side} li.held").all_inner_texts()


# -- the walk at 1366 px ----------------------------------------------------------


def test_empty_tables_show_their_column_names(desktop):
    from playwright.sync_api import expect

    open_tab(desktop, TABS[1])
    expect(desktop.get_by_role("columnheader", name="accuracy").first).to_be_visible(timeout=30_000)
    for tab in TABS[1:4]:
        open_tab(desktop, tab)
        headers = [h for h in desktop.get_by_role("columnheader").all() if h.is_visible()]
        assert not any(re.fullmatch(r"\d+", h.inner_text().strip()) for h in headers), tab


def test_a_visitor_trains_compiles_and_runs_the_four_steps(desktop, launched_app):
    from playwright.sync_api import expect

    page = desktop
    train(page, "digits")
    expect(page.get_by_text("Centrally trained baseline")).to_be_visible()
    expect(page.get_by_text(re.compile(r"Difference: [+-]\d+\.\d points"))).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(r"federated_model\.skops"))).to_be_visible()
    compile_model(page)
    expect(page.get_by_text("compiled circuit, FHE-simulated")).to_be_visible()
    expect(page.get_by_text("client.zip", exact=True).first).to_be_visible()

    open_tab(page, TABS[2])
    expect(page.get_by_text(re.compile(r"Test sample #0 of 360"))).to_be_visible(timeout=30_000)
    assert not held(page, "server")
    assert "client.zip (quantizers, crypto parameters)" in " ".join(held(page, "client"))
    # A step out of order explains itself; its Error badge leaves with the next success.
    page.get_by_role("button", name="② Encrypt the input").click()
    refusal = page.get_by_text("No keys yet: run step ① Key generation first.").first
    expect(refusal).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='status-tracker'] .error").first).to_be_visible()
    step(page, "① Generate keys", r"Keys ready in \d+\.\d+ s")
    expect(page.locator("[data-testid='status-tracker'] .error")).to_have_count(0, timeout=10_000)
    # The time shown is the whole step, its parts named; sizes in KB with the exact bytes.
    parts = re.compile(r"generating the keys \d+\.\d+ s, sending the evaluation keys")
    expect(page.get_by_text(parts)).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile(r"^\d+\.\d KB \([\d,]+ bytes\)$"))).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile(r"^\d+ bytes$"))).to_be_visible()
    assert any("private key" in item for item in held(page, "client"))
    assert any("evaluation keys" in item for item in held(page, "server"))

    step(page, "② Encrypt the input", r"Encrypted test sample #0 \(true label \d\)")
    assert any("your input, in clear" in item for item in held(page, "client"))
    assert not any("encrypted input" in item for item in held(page, "server"))
    step(page, "③ Run on the FHE server", r"The server computed the prediction on encrypted data")
    # While the steps scroll by, the client | server picture stays in view beside their results.
    assert fully_in_view(page, "#holdings") and in_view(page, "#run-result")
    assert "encrypted result → client" in page.locator("#holdings .wire").inner_text()
    expect(page.get_by_text("never sent").first).to_be_visible()
    assert any("the encrypted input" in item for item in held(page, "server"))
    assert not any("private key" in item for item in held(page, "server"))
    step(page, "④ Decrypt the result", r"Prediction: \d")
    assert fully_in_view(page, "#holdings")
    expect(page.get_by_role("heading", name=re.compile(r"Prediction: \d"))).to_be_visible()
    expect(page.get_by_text("identical")).to_be_visible()
    all_done = "✓ model · ✓ compiled · ✓ keys · ✓ encrypted · ✓ server ran · ✓ decrypted"
    expect(page.get_by_text(all_done)).to_be_visible()


def test_a_failed_training_is_announced_and_leaves_the_current_model_on_screen(desktop, monkeypatch,
                                                                               tmp_path):
    """Full MNIST on a host that is offline and has not downloaded it."""
    import urllib.error

    from playwright.sync_api import expect

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("FL_DATA_DIR", str(tmp_path))  # the app runs in this process
    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)
    page = desktop
    open_tab(page, TABS[0])
    model = page.locator("#model-file a[href]").first.get_attribute("href")
    summary = page.get_by_text(re.compile(r"Federated model: \d+\.\d%")).inner_text()
    page.get_by_label("Dataset").click()
    page.get_by_role("option", name="mnist", exact=True).click()
    # Said before Start: the preview does not download, it tells.
    download = page.get_by_text(re.compile(r"mnist is not on this host yet: Start first downloads it"))
    expect(download).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Start federated training").click()
    failed = page.get_by_text(re.compile(r"✗ Training failed: Full MNIST could not be downloaded"))
    expect(failed).to_be_visible(timeout=60_000)
    assert in_view(page, "#train-status")
    # No Error badge claims that the model shown failed: the reason is in the status line (and a pop-up).
    expect(page.locator("[data-testid='status-tracker'] .error")).to_have_count(0, timeout=10_000)
    # The tab shows the current model again: its summary, chart, round log and download; no host path.
    expect(page.get_by_text(summary)).to_be_visible()
    assert page.locator("#model-file a[href]").first.get_attribute("href")
    assert page.locator("#round-log .virtual-row").count() == 3  # the digits run's rounds 0, 1, 2
    expect(page.locator("#training-curves img")).to_be_visible()
    text = page.locator("body").inner_text()
    assert str(tmp_path) not in text and "/root" not in text and "scikit_learn_data" not in text
    assert model  # the previous download is still offered
    expect(page.get_by_text(re.compile(r"✓ model · ✓ compiled .*federated model on digits"))).to_be_visible()
    page.get_by_label("Dataset").click()
    page.get_by_role("option", name="digits", exact=True).click()
    expect(page.get_by_text("3 clients hold")).to_be_visible(timeout=30_000)


def test_wrong_keys_yield_random_numbers_and_chance_level_answers(desktop):
    from playwright.sync_api import expect

    page = desktop
    open_tab(page, TABS[2])
    page.get_by_text("What does someone with the wrong key get?").click()
    page.get_by_role("button", name="Decrypt with freshly generated (wrong) keys").click()
    summary = page.get_by_text(re.compile(r"Over 20 test samples"))
    expect(summary).to_be_visible(timeout=120_000)
    expect(page.get_by_text(re.compile(r"random integers \(-?[\d,]+ instead of -?[\d,]+"))).to_be_visible()
    text = summary.inner_text()
    wrong = int(re.search(r"wrong key: (\d+) right", text).group(1))
    private = int(re.search(r"With the private key: (\d+) right", text).group(1))
    assert "a blind guess gets 10%" in text
    # 20 samples, 10 classes: a blind guess gets 2 right; 8 or more happens less than once in 10,000 runs.
    assert wrong < 8 and private >= 14, text


def test_charts_read_from_the_back_of_a_room(desktop):
    from playwright.sync_api import expect

    page = desktop
    sizes = chart_fonts_px(page)  # tab 3: the wrong keys (the probabilities are text, scanned with all text)
    open_tab(page, TABS[1])
    page.get_by_role("button", name="Run the n_bits sweep").click()
    expect(page.locator("[data-testid='matplotlib'] img:visible").first).to_be_visible(timeout=180_000)
    sizes += chart_fonts_px(page)
    open_tab(page, TABS[0])
    page.get_by_text("Differential privacy: accuracy against ε").click()
    page.wait_for_timeout(500)
    sizes += chart_fonts_px(page)  # label distribution, rounds, DP trade-off
    print(f"smallest chart text at 1366 px: {min(sizes):.1f} px over {len(sizes)} charts")
    assert len(sizes) >= 4 and min(sizes) >= PROJECTOR_MIN_FONT_PX, sizes


def test_the_evaluation_shows_progress_and_the_running_accuracy(desktop):
    from playwright.sync_api import expect

    page = desktop
    open_tab(page, TABS[3])
    expect(page.get_by_text("Test samples (at most 360)")).to_be_visible()
    assert page.get_by_role("slider").last.get_attribute("max") == "360"
    intro = page.get_by_text(re.compile(r"Expect about \d+\.\d%")).inner_text()
    assert "digits" in intro and "MNIST" not in intro and "Needs steps" not in intro
    set_number(page, "Test samples (at most 360)", 40)
    page.get_by_role("button", name="Evaluate on encrypted data").click()
    expect(page.get_by_text(re.compile(r"\d+ / 40\b.*So far: encrypted accuracy \d+\.\d%"))).to_be_visible(
        timeout=60_000)
    done = page.get_by_text(re.compile(r"on the first 40 of the 360 test samples"))
    expect(done).to_be_visible(timeout=120_000)
    expect(page.get_by_role("columnheader", name="measure")).to_be_visible()


def test_every_text_is_legible_from_the_back_of_a_room(desktop):
    """At 1366 px: no text under 14 px, every text of WCAG AA contrast, tables aligned, sliders whole."""
    page = desktop
    problems = {}
    for name in TABS:
        open_tab(page, name)
        page.wait_for_timeout(500)
        problems[name] = illegible(page) + misaligned_headers(page)
    assert not any(problems.values()), problems
    open_tab(page, TABS[0])
    epochs = page.locator(".block", has=page.get_by_label("number input for Local epochs"))
    assert epochs.locator(".max_value").inner_text() == "200"
    assert epochs.evaluate("el => el.scrollWidth <= el.clientWidth && el.scrollHeight <= el.clientHeight + 1")


def test_a_retrain_leaves_no_trace_of_the_old_model(desktop, launched_app):
    from playwright.sync_api import expect

    page = desktop
    open_tab(page, TABS[0])
    old_model = page.locator("#model-file a[href]").first.get_attribute("href")
    open_tab(page, TABS[1])
    old_zip = page.locator("#client-zip a[href]").first.get_attribute("href")
    old_numbers = re.findall(r"\d+\.\d\d%", page.locator("#accuracy-table").inner_text())
    open_tab(page, TABS[2])
    old_texts = [page.get_by_role("heading", name=re.compile(r"Prediction: \d")).inner_text(),
                 page.locator("code", has_text="…").first.inner_text()]
    open_tab(page, TABS[3])
    old_texts.append(page.get_by_text(re.compile(r"Encrypted accuracy")).first.inner_text())
    assert old_zip and old_numbers and httpx.get(httpx.URL(launched_app.url).join(old_zip)).status_code == 200
    assert old_model and httpx.get(httpx.URL(launched_app.url).join(old_model)).status_code == 200

    train(page, "mnist-5k")
    open_tab(page, TABS[1])
    expect(page.get_by_text("Your model is ready: press Compile.")).to_be_visible(timeout=30_000)
    for tab in TABS[1:4]:
        open_tab(page, tab)
        shown = page.locator("main, body").first.inner_text()
        for old in old_numbers + old_texts:
            assert old not in shown, f"{tab} still shows {old!r} of the old model"
    open_tab(page, TABS[2])
    expect(page.get_by_text(re.compile(r"Test sample #0 of 1000"))).to_be_visible(timeout=30_000)
    assert not held(page, "server")
    # The old model's deployment files are no longer served (Gradio refuses files it does not hold).
    assert httpx.get(httpx.URL(launched_app.url).join(old_zip)).status_code in (403, 404)
    # Nor is the old model's download in tab 1; the new model's is.
    open_tab(page, TABS[0])
    new_model = page.locator("#model-file a[href]").first.get_attribute("href")
    assert new_model != old_model
    assert httpx.get(httpx.URL(launched_app.url).join(old_model)).status_code in (403, 404)
    assert httpx.get(httpx.URL(launched_app.url).join(new_model)).status_code == 200


def test_a_failed_upload_marks_its_own_panel_until_the_next_success(desktop, tmp_path):
    from playwright.sync_api import expect

    page = desktop
    open_tab(page, TABS[0])
    page.get_by_text("…or convert an existing scikit-learn model").click()
    bad = tmp_path / "model.skops"
    bad.write_bytes(b"not a model")
    upload = page.locator(".block", has_text="Model file (.skops").locator("input[type=file]")
    upload.set_input_files(str(bad))
    page.get_by_role("button", name="Use this model").click()
    expect(page.locator("[data-testid='status-tracker'] .error").first).to_be_visible(timeout=30_000)
    assert error_badges(page) == 1  # on the upload's message only: not the status line, not the download
    expect(page.get_by_role("row", name=re.compile(r"federated_model\.skops"))).to_be_visible()
    compile_model(page)
    expect(page.locator("[data-testid='status-tracker'] .error")).to_have_count(0, timeout=10_000)
    open_tab(page, TABS[0])
    assert error_badges(page) == 0


def test_a_new_input_shows_no_result_of_the_old_one_and_a_cleared_canvas_draws(desktop):
    from playwright.sync_api import expect

    page = desktop
    open_tab(page, TABS[2])
    four_steps = [("① Generate keys", r"Keys ready in"), ("② Encrypt the input", r"Encrypted test sample #0"),
                  ("③ Run on the FHE server", r"The server computed"),
                  ("④ Decrypt the result", r"Prediction: \d")]
    for button, done in four_steps:
        step(page, button, done)
    index = page.get_by_label("Test sample index")
    index.fill("1")
    index.press("Enter")
    expect(page.get_by_text(re.compile(r"Test sample #1 of 1000"))).to_be_visible(timeout=30_000)
    no_result_of_the_old_input(page)
    for button, done in four_steps[1:]:  # the new input goes through
        step(page, button, done.replace("#0", "#1"))

    page.get_by_text("drawing", exact=True).click()  # switching to a drawing forgets sample #1's results
    no_result_of_the_old_input(page)
    draw_stroke(page, "#sketch")
    expect(page.get_by_text("Your drawing as the model sees it")).to_be_visible(timeout=30_000)
    step(page, "② Encrypt the input", r"Encrypted your drawing")
    page.locator("#sketch button[aria-label='Clear canvas']").click()  # clearing it forgets the drawing's
    no_result_of_the_old_input(page)
    # The brush is still selected after "Clear canvas": a mouse stroke draws, and is encrypted.
    expect(page.locator("#sketch button[aria-label='Brush']")).to_have_class(re.compile(r"\bhighlight\b"),
                                                                             timeout=10_000)
    draw_stroke(page, "#sketch")
    expect(page.get_by_text("Your drawing as the model sees it")).to_be_visible(timeout=30_000)
    for button, done in [("② Encrypt the input", r"Encrypted your drawing"), *four_steps[2:]]:
        step(page, button, done)
    page.get_by_text("test sample", exact=True).click()


def test_a_reload_resumes_the_model_and_deployment_with_a_new_private_key(desktop, launched_app):
    from playwright.sync_api import expect

    page = desktop
    registry = launched_app.registry
    open_tab(page, TABS[2])
    step(page, "① Generate keys", r"Keys ready in")
    session = next(s for s in registry._sessions.values() if s.keys is not None)
    old_key_dir = session.keys.key_dir
    page.reload()
    resumed = page.get_by_text(re.compile(r"Resumed your model .* a new private key"))
    expect(resumed).to_be_visible(timeout=60_000)
    status = re.compile(r"✓ model · ✓ compiled · ✓ keys · ○ encrypted .*mnist-5k")
    expect(page.get_by_text(status)).to_be_visible()
    # Tab 1 shows the resumed model whole: its chart, round log, summary and download, and its settings.
    open_tab(page, TABS[0])
    expect(page.get_by_text(re.compile(r"Your model from before the page reload: 2 rounds with 3 clients"))
           ).to_be_visible(timeout=30_000)
    expect(page.get_by_text(re.compile(r"Federated model: \d+\.\d%"))).to_be_visible()
    assert page.locator("#round-log .virtual-row").count() == 3
    expect(page.locator("#model-file a[href]").first).to_be_attached()
    assert page.get_by_label("number input for Clients").input_value() == "3"  # the form's default is 5
    assert page.get_by_label("number input for Rounds").input_value() == "2"
    assert "mnist-5k" in page.get_by_label("Dataset").input_value()
    expect(page.locator("#training-curves img")).to_be_visible()
    open_tab(page, TABS[1])
    expect(page.get_by_text("Your compiled model from before the page reload")).to_be_visible(timeout=30_000)
    open_tab(page, TABS[2])
    expect(page.get_by_text(re.compile(r"New keys for this page: it was reloaded"))).to_be_visible()
    deadline = time.monotonic() + 30
    while old_key_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not old_key_dir.exists(), "the previous page's private key outlived it"
    # The browser keeps one opaque value (Gradio stores it encrypted), and nothing else of the session.
    stored = page.evaluate("() => Object.fromEntries(Object.entries(localStorage))")
    assert set(stored) == {"fl-fhe-demo-page"}, sorted(stored)  # no run history of inputs and outputs
    assert len(stored["fl-fhe-demo-page"]) < 200
    step(page, "② Encrypt the input", r"Encrypted test sample")
    step(page, "③ Run on the FHE server", r"The server computed")
    step(page, "④ Decrypt the result", r"Prediction: \d")
    # The banner describes the resumed model: a retrain replaces that model, and the banner goes.
    train(page, "mnist-5k", rounds=3)
    expect(resumed).to_be_hidden(timeout=30_000)
    compile_model(page)
    open_tab(page, TABS[2])
    step(page, "① Generate keys", r"Keys ready in")


def test_closing_the_tab_deletes_the_private_key_at_once(desktop, launched_app):
    registry = launched_app.registry
    sessions = [s for s in registry._sessions.values() if s.keys is not None]
    assert len(sessions) == 1
    session, key_dir = sessions[0], sessions[0].keys.key_dir
    assert key_dir.is_dir()
    desktop.close()
    deadline = time.monotonic() + 30
    while key_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not key_dir.exists()
    # The model and deployment wait for a reload for a while (story.resume), without any key.
    assert registry.resumptions.holds(session) and session.keys is None


# -- a phone ----------------------------------------------------------------------


def test_on_a_phone_every_tab_is_one_tap_away_and_nothing_scrolls_sideways(browser, launched_app):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(launched_app.url)
        for name in TABS:
            expect(page.get_by_role("tab", name=name)).to_be_visible(timeout=30_000)
        assert not page.locator(".overflow-menu button").first.is_visible()
        train(page, "digits")  # shared with the run above: reused at once
        compile_model(page)
        open_tab(page, TABS[2])
        # Step ① comes right after the input, within a scroll of the tab's top (the picture comes after).
        first = page.get_by_role("button", name="① Generate keys").evaluate(
            "b => b.getBoundingClientRect().top + window.scrollY")
        print(f"step ① at {first:.0f} px on a {PHONE['height']} px phone")
        assert first < 1.75 * PHONE["height"], first
        steps = [("① Generate keys", r"Keys ready in"), ("② Encrypt the input", r"Encrypted test"),
                 ("③ Run on the FHE server", r"The server computed"),
                 ("④ Decrypt the result", r"Prediction: \d")]
        for button, done in steps:
            step(page, button, done)
        open_tab(page, TABS[3])
        set_number(page, "Test samples (at most 360)", 10)
        page.get_by_role("button", name="Evaluate on encrypted data").click()
        expect(page.get_by_text(re.compile(r"on the first 10 of the 360"))).to_be_visible(timeout=120_000)
        problems, sizes = {}, []
        for name in TABS:
            open_tab(page, name)
            page.wait_for_timeout(500)
            problems[name] = overflowing(page)
            sizes += chart_fonts_px(page)
        assert not any(problems.values()), problems
        print(f"smallest chart text at 390 px: {min(sizes):.1f} px over {len(sizes)} charts")
        assert sizes and min(sizes) >= PHONE_MIN_FONT_PX, sizes
    finally:
        context.close()


# -- what the server receives (secure aggregation) ---------------------------------


def test_a_visitor_sees_clear_updates_then_masked_ones(browser, launched_app):
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
