"""Tab 3: encrypted inference, one step at a time (keys, encryption, server, decryption)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from story import DemoSession
from story.holdings import holdings
from story.inference import INPUT_SOURCES
from ui import figures
from ui.bars_view import probabilities_html
from ui.common import (
    FHE_SERVER,
    LIGHT,
    PINNED_CLASS,
    PROGRESS,
    REFRESH,
    DemoContext,
    lenient,
    outdated,
    pipeline_status,
    remember,
    select_brush_js,
    show_result,
)
from ui.errors import USER_ERRORS, user_errors
from ui.formatting import format_bytes
from ui.holdings_view import holdings_html

SKETCH_SIZE = 280
#: Brush width on the 280-pixel sketchpad: a digit drawn across most of it then has
#: strokes as thick, relative to its size, as MNIST's pen strokes.
BRUSH_PX = 22
#: Selects the sketchpad's brush once it shows, and again after "Clear canvas", so that a stroke draws.
SELECT_BRUSH_JS = select_brush_js("sketch")


def _short(identifier: str) -> str:
    return f"`{identifier[:6]}…`"


def features_table(x: np.ndarray, names: tuple[str, ...], limit: int = 30) -> pd.DataFrame:
    """A tabular sample as a two-column table (first ``limit`` features)."""
    names = names or tuple(f"feature_{i}" for i in range(len(x)))
    rows = [[n, float(v)] for n, v in zip(names[:limit], x[:limit], strict=False)]
    return pd.DataFrame(rows, columns=["feature", "value"])


def keygen_markdown(result: dict[str, Any]) -> str:
    """Step ①'s keys: how long the step took, their sizes and who holds each."""
    why = ("New keys for this page: it was reloaded, and the previous page's private key was deleted. "
           if result.get("reason") == "page reloaded" else "")
    return (
        f"{why}**Keys ready in {result['seconds']:.2f} s**: loading client.zip "
        f"{result['setup_seconds']:.2f} s, generating the keys {result['keygen_seconds']:.3f} s, sending "
        f"the evaluation keys to the FHE server {result['upload_seconds']:.2f} s (the first time, the "
        "server also loads the circuit).\n\n"
        "| key | size | who holds it |\n|---|---|---|\n"
        f"| private key | {format_bytes(result['private_key_bytes'])} | the client only: an owner-only "
        "directory on this app's host, deleted when you close the tab |\n"
        f"| evaluation keys | {format_bytes(result['evaluation_key_bytes'])} | the client, and the FHE "
        f"server (key id {_short(result['key_id'])}) |\n\n"
        "Evaluation keys let the server *compute* on ciphertexts, never decrypt them. "
        "This linear model needs no bootstrapping, so they are tiny."
    )


def encrypt_markdown(result: dict[str, Any]) -> str:
    """Step ②: what was encrypted, and the ciphertext's size."""
    what = (f"test sample #{result['sample_index']} (true label {result['label']})"
            if result["source"] == "test sample" else "your drawing")
    return (
        f"**Encrypted {what} in {result['seconds']:.3f} s.**\n\n"
        f"The input was quantized to integers in [{result['quantized_min']}, {result['quantized_max']}] "
        f"(the picture below), then encrypted with the private key.\n\n"
        f"Ciphertext: **{format_bytes(result['ciphertext_bytes'])}**. A few of its bytes:\n\n"
        f"`{result['ciphertext_preview']}`"
    )


def run_markdown(result: dict[str, Any]) -> str:
    """Step ③: what the server holds, and what it sent back."""
    retried = ""
    if result["keys_uploaded_again"]:
        retried = " (the server had forgotten the keys; they were uploaded again)"
    return (
        f"**The server computed the prediction on encrypted data in {result['seconds']:.3f} s** "
        f"(HTTP round trip included){retried}.\n\n"
        f"| the server holds | | |\n|---|---|---|\n"
        f"| server.zip (the circuit) | deployment {_short(result['deployment_id'])} | ✓ |\n"
        f"| evaluation keys | {format_bytes(result['evaluation_key_bytes'])} | ✓ |\n"
        f"| the encrypted input | {format_bytes(result['input_ciphertext_bytes'])} | ✓ |\n"
        f"| the private key | — | ✗ never sent |\n"
        f"| the image / features in clear | — | ✗ never sent |\n\n"
        f"It returned an **encrypted output of {format_bytes(result['output_ciphertext_bytes'])}**: "
        "the class scores, which only the private key can read."
    )


def decrypt_markdown(result: dict[str, Any]) -> str:
    """Step ④: the prediction beside the clear model's."""
    same = "✓ identical" if result["matches_clear"] else "⚠ different (quantization changed the decision)"
    label = "" if result["label"] is None else f" · true label: **{result['label']}**"
    return (
        f"## Prediction: {result['class_name']}\n\n"
        f"Decrypted in {result['seconds']:.4f} s · clear scikit-learn model on the same input: "
        f"**{result['clear_prediction']}** ({same}){label}"
    )


def wrong_key_markdown(result: dict[str, Any], class_names: tuple[str, ...]) -> str:
    """What wrong keys yield: random numbers, a random class, chance-level answers."""
    if not result["decrypted"]:
        return f"Concrete refused the bytes: {result['error']}"
    name = dict(zip(result["class_labels"], class_names, strict=False))
    real, wrong = result["real_raw_scores"], result["raw_scores"]
    pairs = ", ".join(f"{w:,} instead of {r:,}" for w, r in list(zip(wrong, real, strict=False))[:2])
    spread = len(set(result["wrong_predictions"]))
    text = (
        "A wrong key \"decrypts\" without complaint, but what it gets are random integers "
        f"({pairs}, …), which the softmax turns into a confident-looking bar for class "
        f"**{name.get(result['prediction'], result['prediction'])}**: an arbitrary class, not a prediction. "
        f"The {result['tries']} wrong keys tried on this result pointed at {spread} different classes."
    )
    if result["samples"]:
        n = result["samples"]
        text += (
            f"\n\nOver {n} test samples, each encrypted, computed by the server and decrypted with a new "
            f"wrong key: **{result['wrong_key_right']} right ({result['wrong_key_right'] / n:.0%})**, "
            f"where a blind guess gets {result['chance']:.0%}. With the private key: "
            f"{result['private_key_right']} right ({result['private_key_right'] / n:.0%}). "
            "Without the private key the ciphertext says nothing about the input or the result."
        )
    return text


@dataclass
class InputPanel:
    """What to encrypt: a test sample or a drawing, and its preview."""

    source: gr.Radio
    sample_index: gr.Number
    random_button: gr.Button
    picture: gr.Image
    table: gr.Dataframe
    caption: gr.Markdown
    sketch: gr.Sketchpad

    def preview_outputs(self) -> list[gr.components.Component]:
        return [self.picture, self.table, self.caption, self.sketch, self.sample_index, self.random_button]


@dataclass
class StepsPanel:
    """The four steps, each a button and its result, and the wrong-key demo."""

    keygen: gr.Button
    keygen_md: gr.Markdown
    encrypt: gr.Button
    quantized_picture: gr.Image
    encrypt_md: gr.Markdown
    run: gr.Button
    run_md: gr.Markdown
    decrypt: gr.Button
    decrypt_md: gr.Markdown
    probabilities: gr.HTML
    wrong_key: gr.Button
    wrong_key_md: gr.Markdown
    wrong_key_plot: gr.Plot
    wrong_key_json: gr.JSON


@dataclass
class StepResults:
    """Each step's JSON, as the API returns it."""

    keygen: gr.JSON
    encrypt: gr.JSON
    run: gr.JSON
    decrypt: gr.JSON


def _input_panel() -> InputPanel:
    gr.Markdown("#### Input")
    source = gr.Radio(list(INPUT_SOURCES), value="test sample", label="Encrypt")
    with gr.Row(equal_height=True):
        sample_index = lenient(gr.Number(value=0, precision=0, label="Test sample index", minimum=0,
                                         min_width=120))
        random_button = gr.Button("Random sample", size="sm", min_width=120)
    picture = gr.Image(
        label="Sample", show_label=False, type="numpy", image_mode="L", interactive=False, height=200,
        buttons=[],
    )
    table = gr.Dataframe(headers=["feature", "value"], label="Sample features", interactive=False,
                         visible=False, max_height=260, wrap=True)
    caption = gr.Markdown()
    sketch = gr.Sketchpad(
        label="Draw a digit", show_label=False, visible=False, type="numpy", image_mode="RGBA",
        canvas_size=(SKETCH_SIZE, SKETCH_SIZE), height=SKETCH_SIZE + 80, width=SKETCH_SIZE + 40,
        brush=gr.Brush(default_size=BRUSH_PX, colors=["#000000"], color_mode="fixed"),
        layers=False, transforms=(), elem_id="sketch",
    )
    return InputPanel(source, sample_index, random_button, picture, table, caption, sketch)


def _steps_panel() -> StepsPanel:
    with gr.Group():
        keygen = gr.Button("① Generate keys", variant="primary")
        keygen_md = gr.Markdown(elem_classes=["step-result"], elem_id="keygen-result")
    with gr.Group():
        encrypt = gr.Button("② Encrypt the input", variant="primary")
        encrypt_md = gr.Markdown(elem_classes=["step-result"], elem_id="encrypt-result")
        quantized_picture = gr.Image(
            label="Quantized input (what gets encrypted)", show_label=False, type="numpy", image_mode="L",
            interactive=False, height=160, buttons=[],
        )
    with gr.Group():
        run = gr.Button("③ Run on the FHE server", variant="primary")
        run_md = gr.Markdown(elem_classes=["step-result"], elem_id="run-result")
    with gr.Group():
        decrypt = gr.Button("④ Decrypt the result", variant="primary")
        decrypt_md = gr.Markdown(elem_classes=["step-result"], elem_id="decrypt-result")
        probabilities = gr.HTML(elem_id="probabilities")
    with gr.Accordion("What does someone with the wrong key get?", open=False):
        wrong_key = gr.Button("Decrypt with freshly generated (wrong) keys")
        wrong_key_md = gr.Markdown(elem_classes=["step-result"], elem_id="wrong-key-result")
        wrong_key_plot = gr.Plot(label="Wrong keys", format="png", show_label=False)
        wrong_key_json = gr.JSON(visible=False)
    return StepsPanel(keygen, keygen_md, encrypt, quantized_picture, encrypt_md, run, run_md, decrypt,
                      decrypt_md, probabilities, wrong_key, wrong_key_md, wrong_key_plot, wrong_key_json)


def _step_results() -> StepResults:
    with gr.Accordion("Step results (JSON, as the API returns them)", open=False):
        with gr.Row():
            return StepResults(gr.JSON(label="/keygen"), gr.JSON(label="/encrypt"), gr.JSON(label="/run_fhe"),
                               gr.JSON(label="/decrypt"))


def _preview(session: DemoSession | None, source: str, sample_index: Any, drawing: Any) -> tuple:
    """The input panel for the session's dataset: picture or table, caption, sketchpad, index controls."""
    dataset = session.dataset if session is not None else None
    is_image = dataset is None or dataset.image_shape is not None
    drawing_mode = source == "drawing" and is_image
    hide = gr.update(visible=False)
    sketch = gr.update(visible=drawing_mode)
    index_controls = (gr.update(visible=not drawing_mode), gr.update(visible=not drawing_mode))
    if dataset is None:
        return (gr.update(value=None, visible=True), hide,
                "Train or upload a model in tab 1 (and compile it in tab 2) to pick a sample.", sketch,
                *index_controls)
    high = float(np.max(dataset.feature_high))
    if source == "drawing":
        if not is_image:
            return (hide, hide, f"⚠ {dataset.name} is tabular: drawing works for image datasets only.",
                    sketch, *index_controls)
        shape = f"{dataset.image_shape[0]}×{dataset.image_shape[1]}"
        try:
            x = session.prepare_drawing(drawing)
        except USER_ERRORS:
            return (gr.update(value=None, visible=True), hide,
                    f"Draw a digit; it is prepared like {dataset.name}'s own images ({shape} pixels, "
                    f"0–{high:g}).", sketch, *index_controls)
        steps = "cropped, scaled, centred" + (", deskewed" if session.input_preprocessing == "deskew" else "")
        return (gr.update(value=figures.sample_image(x, dataset.image_shape, high), visible=True), hide,
                f"Your drawing as the model sees it ({shape}: {steps}, like {dataset.name}'s images).",
                sketch, *index_controls)
    try:
        x, label = session.sample(sample_index)
    except USER_ERRORS as exc:
        return gr.skip(), gr.skip(), f"⚠ {exc}", sketch, *index_controls
    caption = f"Test sample #{int(sample_index)} of {len(dataset.X_test)} · true label **{label}**"
    if is_image:
        return (gr.update(value=figures.sample_image(x, dataset.image_shape, high), visible=True), hide,
                caption, sketch, *index_controls)
    return (hide, gr.update(value=features_table(x, dataset.feature_names), visible=True), caption, sketch,
            *index_controls)


def _wire_preview(ctx: DemoContext, panel: InputPanel, tab: gr.Tab) -> None:
    def preview(
        source: str, sample_index: Any, drawing: Any, state: DemoSession | None, request: gr.Request = None,
    ):
        session = ctx.existing_session(state, request)
        # A new input makes the old one's ciphertext and results obsolete: the status line then
        # changes, and the panels of steps ② to ④ empty (see _wire_refresh).
        status = gr.skip()
        try:
            if session is not None and session.choose_input(source, sample_index, drawing):
                status = pipeline_status(session)
        except USER_ERRORS:
            pass  # another step of this session runs; its own result redraws the panels
        return (*_preview(session, source, sample_index, drawing), status)

    gr.on(
        [panel.source.change, panel.sample_index.change, panel.sketch.change, tab.select],
        preview, [panel.source, panel.sample_index, panel.sketch, ctx.state],
        [*panel.preview_outputs(), ctx.pipeline],
        api_visibility="private", trigger_mode="always_last", show_progress="hidden", **LIGHT,
    )
    panel.source.change(None, None, None, js=SELECT_BRUSH_JS)
    panel.sketch.clear(None, None, None, js=SELECT_BRUSH_JS)

    def random_sample(state: DemoSession | None, request: gr.Request = None) -> Any:
        session = ctx.existing_session(state, request)
        dataset = session.dataset if session is not None else None
        if dataset is None:
            return gr.skip()
        return int(np.random.default_rng().integers(len(dataset.X_test)))

    panel.random_button.click(random_sample, [ctx.state], [panel.sample_index], api_visibility="private",
                              queue=False)


def _diagram(session: DemoSession | None) -> str:
    from story.holdings import Holdings

    if session is None:
        return holdings_html(Holdings((), (), ()))
    return holdings_html(holdings(session))


def _panel_outputs(steps: StepsPanel, results: StepResults) -> dict[str, list[gr.components.Component]]:
    """Each record's panel (the order of :data:`PANEL_VIEWS`)."""
    return {
        "keys": [results.keygen, steps.keygen_md],
        "encrypted": [results.encrypt, steps.encrypt_md, steps.quantized_picture],
        "server_output": [results.run, steps.run_md],
        "decrypted": [results.decrypt, steps.decrypt_md, steps.probabilities],
        "intruder": [steps.wrong_key_json, steps.wrong_key_md, steps.wrong_key_plot],
    }


def _wire_steps(ctx: DemoContext, inputs: InputPanel, steps: StepsPanel, results: StepResults,
                diagram: gr.HTML, shown: gr.State) -> None:
    """The four steps. Each one draws its own panel and empties the panels of the steps after it
    (their records are gone), so that no panel shows a result of an earlier run."""
    panels = _panel_outputs(steps, results)
    order = [step for step, _ in PANEL_VIEWS]

    def outputs(step: str) -> list[gr.components.Component]:
        later = [c for name in order[order.index(step):] for c in panels[name]]
        return [*later, ctx.state, ctx.pipeline, diagram, shown]

    def views(session: DemoSession, seen: dict | None, step: str) -> tuple:
        values = [v for _name, view in PANEL_VIEWS[order.index(step):] for v in view(session)]
        seen = remember(seen, session, *order)
        return (*values, session, pipeline_status(session), _diagram(session), seen)

    @user_errors
    def keygen(state: DemoSession | None = None, seen: dict | None = None, request: gr.Request = None):
        """Step ①: keys (API: /keygen)."""
        session = ctx.session(state, request, opens=False)
        session.generate_keys()
        return views(session, seen, "keys")

    show_result(steps.keygen.click(keygen, [ctx.state, shown], outputs("keys"), api_name="keygen",
                                   show_progress_on=[steps.keygen_md], **LIGHT), "keygen-result")

    @user_errors
    def encrypt(
        sample_index: int = 0,
        source: str = "test sample",
        drawing: Any = None,
        state: DemoSession | None = None,
        seen: dict | None = None,
        request: gr.Request = None,
    ):
        """Step ②: encryption (API: /encrypt)."""
        session = ctx.session(state, request, opens=False)
        session.encrypt(source, sample_index, drawing)
        return views(session, seen, "encrypted")

    encrypting = steps.encrypt.click(
        encrypt, [inputs.sample_index, inputs.source, inputs.sketch, ctx.state, shown], outputs("encrypted"),
        api_name="encrypt", show_progress_on=[steps.encrypt_md], **LIGHT,
    )
    show_result(encrypting, "encrypt-result")

    @user_errors
    def run_fhe(state: DemoSession | None = None, seen: dict | None = None, request: gr.Request = None):
        """Step ③: the server computes on the ciphertext (API: /run_fhe)."""
        session = ctx.session(state, request, opens=False)
        session.run_on_server()
        return views(session, seen, "server_output")

    show_result(steps.run.click(run_fhe, [ctx.state, shown], outputs("server_output"), api_name="run_fhe",
                                show_progress_on=[steps.run_md], **FHE_SERVER), "run-result")

    @user_errors
    def decrypt(state: DemoSession | None = None, seen: dict | None = None, request: gr.Request = None):
        """Step ④: decryption (API: /decrypt)."""
        session = ctx.session(state, request, opens=False)
        session.decrypt()
        return views(session, seen, "decrypted")

    show_result(steps.decrypt.click(decrypt, [ctx.state, shown], outputs("decrypted"), api_name="decrypt",
                                    show_progress_on=[steps.decrypt_md], **LIGHT), "decrypt-result")


def _quantized_picture(session: DemoSession) -> np.ndarray | None:
    dataset = session.dataset
    if dataset is None or not dataset.image_shape or session.quantized_input is None:
        return None
    return figures.quantized_image(session.quantized_input, dataset.image_shape)


def _probabilities(session: DemoSession, result: dict[str, Any]) -> str:
    names = session.class_names or [str(i) for i in range(len(result["probabilities"]))]
    return probabilities_html(result["probabilities"], names, result["clear_probabilities"])


def _wire_wrong_key(ctx: DemoContext, steps: StepsPanel) -> None:
    @user_errors
    def wrong_key(
        state: DemoSession | None = None, request: gr.Request = None, progress: gr.Progress = PROGRESS,
    ):
        """Decrypt with someone else's keys, many times (API: /decrypt_wrong_key)."""
        session = ctx.session(state, request, opens=False)
        result = session.decrypt_with_wrong_key(
            progress=lambda done, total: progress((done, total), desc="test samples with wrong keys")
        )
        return _wrong_key_view(session, result)

    show_result(steps.wrong_key.click(
        wrong_key, [ctx.state], [steps.wrong_key_json, steps.wrong_key_md, steps.wrong_key_plot],
        api_name="decrypt_wrong_key", show_progress_on=[steps.wrong_key_md], **LIGHT,
    ), "wrong-key-result")


def _wrong_key_view(session: DemoSession, result: dict[str, Any]) -> tuple[Any, str, Any]:
    names = session.class_names or ()
    plot = figures.wrong_key_figure(result, names) if result["decrypted"] else None
    return result, wrong_key_markdown(result, names), plot


def _keys_view(session: DemoSession | None) -> tuple:
    if session is None or session.keys is None:
        return None, ""
    result = session.keys_summary()
    return result, keygen_markdown(result)


def _encrypted_view(session: DemoSession | None) -> tuple:
    if session is None or session.encrypted is None:
        return None, "", None
    result = session.encryption_summary()
    return result, encrypt_markdown(result), _quantized_picture(session)


def _server_view(session: DemoSession | None) -> tuple:
    if session is None or session.server_output is None:
        return None, ""
    result = session.server_summary()
    return result, run_markdown(result)


def _decrypted_view(session: DemoSession | None) -> tuple:
    if session is None or session.decrypted is None:
        return None, "", ""
    result = session.decryption_summary()
    return result, decrypt_markdown(result), _probabilities(session, result)


def _intruder_view(session: DemoSession | None) -> tuple:
    summary = session.wrong_key_summary() if session is not None else None
    return _wrong_key_view(session, summary) if summary else (None, "", None)


#: Tab 3's panels in the order of their components: the record each shows, and how to draw it.
PANEL_VIEWS = (
    ("keys", _keys_view), ("encrypted", _encrypted_view), ("server_output", _server_view),
    ("decrypted", _decrypted_view), ("intruder", _intruder_view),
)


def _wire_refresh(ctx: DemoContext, inputs: InputPanel, steps: StepsPanel, results: StepResults,
                  diagram: gr.HTML, shown: gr.State) -> None:
    """Redraw every panel whose record changed since it was drawn (or is gone), when the session changes.

    Listening to the status line means this also runs after steps of other tabs (a new model
    empties this tab) and after a page reload resumed a session; it also clears the Error badge
    a failed step left on its panel.
    """
    panels = _panel_outputs(steps, results)
    outputs = [*inputs.preview_outputs(), *(c for step, _ in PANEL_VIEWS for c in panels[step])]
    widths = [len(panels[step]) for step, _ in PANEL_VIEWS]

    def refresh(source: str, sample_index: Any, state: DemoSession | None, seen: dict | None,
                request: gr.Request = None):
        session = ctx.existing_session(state, request)
        values: list[Any] = [gr.skip()] * len(inputs.preview_outputs())
        if outdated(seen, session, "model"):
            drawing_mode = source == "drawing"
            if session is not None and session.dataset is not None:
                sample_index = min(max(0, int(sample_index or 0)), len(session.dataset.X_test) - 1)
            index_controls = [gr.update(value=sample_index, visible=not drawing_mode),
                              gr.update(visible=not drawing_mode)]
            # A drawing is read again when it changes (not sent here: uploading it on every refresh is slow).
            values = [*_preview(session, source, sample_index, None)[:-2], *index_controls]
        for (step, view), width in zip(PANEL_VIEWS, widths, strict=True):
            # The wrong-key demo's handler cannot tell what it drew (its API answer has three values):
            # with no demo on record, its panel is emptied whatever it shows.
            unknown = step == "intruder" and (session is None or session.intruder is None)
            values += list(view(session)) if unknown or outdated(seen, session, step) else [gr.skip()] * width
        revision = session.progress().revision if session is not None else 0
        picture = _diagram(session) if (seen or {}).get("revision") != revision else gr.skip()
        steps_shown = ("model", *(step for step, _ in PANEL_VIEWS))
        new_seen = {**remember(seen, session, *steps_shown), "revision": revision}
        return (*values, picture, new_seen)

    ctx.pipeline.change(refresh, [inputs.source, inputs.sample_index, ctx.state, shown],
                        [*outputs, diagram, shown], **REFRESH)


def build(ctx: DemoContext, tab: gr.Tab) -> None:
    """Create tab 3's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    tab : gr.Tab
        This tab (its selection refreshes the sample preview).
    """
    gr.Markdown(
        "The **client** role runs on this app's host, for you: it generates your private key, keeps it in a "
        "directory of its own, encrypts and decrypts. The **FHE server** is a separate service: it computes "
        "on ciphertexts it cannot read. Your browser only shows the results. Run the four steps in order "
        "and watch what each side holds.",
        elem_id="inference-intro",
    )
    shown = gr.State({})
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            inputs = _input_panel()
        with gr.Column(scale=3, min_width=320):
            steps = _steps_panel()
    # After the steps in the page, so that step ① is near the top on a phone; on a wider screen the
    # style sheet shows it above them and keeps it in view while the steps scroll by (ui/style.css).
    diagram = gr.HTML(_diagram(None), elem_id="holdings", elem_classes=[PINNED_CLASS])
    results = _step_results()
    _wire_preview(ctx, inputs, tab)
    _wire_steps(ctx, inputs, steps, results, diagram, shown)
    _wire_wrong_key(ctx, steps)
    _wire_refresh(ctx, inputs, steps, results, diagram, shown)

