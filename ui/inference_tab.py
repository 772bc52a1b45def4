"""Tab 3: encrypted inference, one step at a time (keys, encryption, server, decryption)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from fl_training.drawings import drawing_to_features
from story import DemoSession
from story.inference import INPUT_SOURCES
from ui import figures
from ui.common import LIGHT, DemoContext, lenient, pipeline_status
from ui.errors import USER_ERRORS, user_errors
from ui.formatting import format_bytes

SKETCH_SIZE = 280


def _short(identifier: str) -> str:
    return f"`{identifier[:6]}…`"


def features_table(x: np.ndarray, names: tuple[str, ...], limit: int = 30) -> pd.DataFrame:
    """A tabular sample as a two-column table (first ``limit`` features)."""
    names = names or tuple(f"feature_{i}" for i in range(len(x)))
    rows = [[n, float(v)] for n, v in zip(names[:limit], x[:limit], strict=False)]
    return pd.DataFrame(rows, columns=["feature", "value"])


def keygen_markdown(result: dict[str, Any]) -> str:
    """Step ①'s keys: their sizes and where each one is."""
    return (
        f"**Keys generated in {result['seconds']:.3f} s** (fresh keys for this session).\n\n"
        f"| key | size | where it is |\n|---|---|---|\n"
        f"| private key | {format_bytes(result['private_key_bytes'])} | this session's key directory "
        f"on the host (owner-only permissions); deleted when you close the tab |\n"
        f"| evaluation keys | {format_bytes(result['evaluation_key_bytes'])} | sent to the FHE server "
        f"in {result['upload_seconds']:.3f} s → key id {_short(result['key_id'])} |\n\n"
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
        f"(left), then encrypted with the private key.\n\n"
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
    probabilities_plot: gr.Plot
    wrong_key: gr.Button
    wrong_key_md: gr.Markdown
    wrong_key_plot: gr.Plot


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
    with gr.Row():
        sample_index = lenient(gr.Number(value=0, precision=0, label="Test sample index", minimum=0))
        random_button = gr.Button("Random sample", size="sm")
    picture = gr.Image(
        label="Sample", type="numpy", image_mode="L", interactive=False, height=200, buttons=[],
    )
    table = gr.Dataframe(label="Sample features", interactive=False, visible=False, max_height=260)
    caption = gr.Markdown()
    sketch = gr.Sketchpad(
        label="Draw a digit", visible=False, type="numpy", image_mode="RGBA",
        canvas_size=(SKETCH_SIZE, SKETCH_SIZE), height=SKETCH_SIZE + 80, width=SKETCH_SIZE + 40,
        brush=gr.Brush(default_size=16, colors=["#000000"], color_mode="fixed"),
        layers=False, transforms=(),
    )
    return InputPanel(source, sample_index, random_button, picture, table, caption, sketch)


def _steps_panel() -> StepsPanel:
    with gr.Group():
        keygen = gr.Button("① Generate keys", variant="primary")
        keygen_md = gr.Markdown()
    with gr.Group():
        encrypt = gr.Button("② Encrypt the input", variant="primary")
        with gr.Row():
            quantized_picture = gr.Image(
                label="Quantized input (what gets encrypted)", type="numpy", image_mode="L",
                interactive=False, height=160, buttons=[], visible=True, scale=1,
            )
            encrypt_md = gr.Markdown()
    with gr.Group():
        run = gr.Button("③ Run on the FHE server", variant="primary")
        run_md = gr.Markdown()
    with gr.Group():
        decrypt = gr.Button("④ Decrypt the result", variant="primary")
        decrypt_md = gr.Markdown()
        probabilities_plot = gr.Plot(label="Class probabilities", format="png")
    with gr.Accordion("What does someone with the wrong key get?", open=False):
        wrong_key = gr.Button("Decrypt with a freshly generated (wrong) key")
        wrong_key_md = gr.Markdown()
        wrong_key_plot = gr.Plot(label="Probabilities with the wrong key", format="png")
    return StepsPanel(keygen, keygen_md, encrypt, quantized_picture, encrypt_md, run, run_md, decrypt,
                      decrypt_md, probabilities_plot, wrong_key, wrong_key_md, wrong_key_plot)


def _step_results() -> StepResults:
    with gr.Accordion("Step results (JSON, as the API returns them)", open=False):
        with gr.Row():
            return StepResults(gr.JSON(label="/keygen"), gr.JSON(label="/encrypt"), gr.JSON(label="/run_fhe"),
                               gr.JSON(label="/decrypt"))


def _wire_preview(ctx: DemoContext, panel: InputPanel, tab: gr.Tab) -> None:
    def preview(
        source: str, sample_index: Any, drawing: Any, state: DemoSession | None, request: gr.Request = None,
    ):
        session = ctx.session(state, request)
        dataset = session.dataset
        is_image = dataset is None or dataset.image_shape is not None
        hide = gr.update(visible=False)
        sketch_update = gr.update(visible=source == "drawing" and is_image)
        if dataset is None:
            return (gr.update(value=None, visible=True), hide,
                    "Train or upload a model in tab 1 (and compile it in tab 2) to pick a sample.",
                    sketch_update)
        high = float(np.max(dataset.feature_high))
        if source == "drawing":
            if not is_image:
                return (hide, hide, f"⚠ {dataset.name} is tabular: drawing works for image datasets only.",
                        sketch_update)
            try:
                x = drawing_to_features(drawing, dataset)
            except USER_ERRORS:
                return (gr.update(value=None, visible=True), hide,
                        "Draw a digit; it is downscaled to "
                        f"{dataset.image_shape[0]}×{dataset.image_shape[1]} "
                        f"pixels in 0–{high:g}, like {dataset.name}.", sketch_update)
            return (gr.update(value=figures.sample_image(x, dataset.image_shape, high), visible=True), hide,
                    f"Your drawing as the model sees it ({dataset.image_shape[0]}×{dataset.image_shape[1]}).",
                    sketch_update)
        try:
            x, label = session.sample(sample_index)
        except USER_ERRORS as exc:
            return gr.skip(), gr.skip(), f"⚠ {exc}", sketch_update
        caption = f"Test sample #{int(sample_index)} of {len(dataset.X_test)} · true label **{label}**"
        if is_image:
            return (gr.update(value=figures.sample_image(x, dataset.image_shape, high), visible=True), hide,
                    caption, sketch_update)
        return (hide, gr.update(value=features_table(x, dataset.feature_names), visible=True), caption,
                sketch_update)

    gr.on(
        [panel.source.change, panel.sample_index.change, panel.sketch.change, tab.select],
        preview, [panel.source, panel.sample_index, panel.sketch, ctx.state],
        [panel.picture, panel.table, panel.caption, panel.sketch],
        api_visibility="private", trigger_mode="always_last", show_progress="hidden", **LIGHT,
    )

    def random_sample(state: DemoSession | None, request: gr.Request = None) -> Any:
        dataset = ctx.session(state, request).dataset
        if dataset is None:
            return gr.skip()
        return int(np.random.default_rng().integers(len(dataset.X_test)))

    panel.random_button.click(random_sample, [ctx.state], [panel.sample_index], api_visibility="private",
                              queue=False)


def _wire_steps(ctx: DemoContext, inputs: InputPanel, steps: StepsPanel, results: StepResults) -> None:
    @user_errors
    def keygen(state: DemoSession | None = None, request: gr.Request = None):
        """Step ①: keys (API: /keygen)."""
        session = ctx.session(state, request)
        result = session.generate_keys()
        return (result, keygen_markdown(result), None, "", "", "", None, session, pipeline_status(session))

    steps.keygen.click(
        keygen, [ctx.state],
        [results.keygen, steps.keygen_md, steps.quantized_picture, steps.encrypt_md, steps.run_md,
         steps.decrypt_md, steps.probabilities_plot, ctx.state, ctx.pipeline],
        api_name="keygen", show_progress_on=[steps.keygen_md], **LIGHT,
    )

    @user_errors
    def encrypt(
        sample_index: int = 0,
        source: str = "test sample",
        drawing: Any = None,
        state: DemoSession | None = None,
        request: gr.Request = None,
    ):
        """Step ②: encryption (API: /encrypt)."""
        session = ctx.session(state, request)
        result = session.encrypt(source, sample_index, drawing)
        dataset = session.dataset
        picture = (figures.quantized_image(session.quantized_input, dataset.image_shape)
                   if dataset is not None and dataset.image_shape else None)
        return (result, encrypt_markdown(result), picture, "", "", None, session, pipeline_status(session))

    steps.encrypt.click(
        encrypt, [inputs.sample_index, inputs.source, inputs.sketch, ctx.state],
        [results.encrypt, steps.encrypt_md, steps.quantized_picture, steps.run_md, steps.decrypt_md,
         steps.probabilities_plot, ctx.state, ctx.pipeline],
        api_name="encrypt", show_progress_on=[steps.encrypt_md], **LIGHT,
    )

    @user_errors
    def run_fhe(state: DemoSession | None = None, request: gr.Request = None):
        """Step ③: the server computes on the ciphertext (API: /run_fhe)."""
        session = ctx.session(state, request)
        result = session.run_on_server()
        return result, run_markdown(result), "", None, session, pipeline_status(session)

    steps.run.click(
        run_fhe, [ctx.state],
        [results.run, steps.run_md, steps.decrypt_md, steps.probabilities_plot, ctx.state, ctx.pipeline],
        api_name="run_fhe", show_progress_on=[steps.run_md], **LIGHT,
    )

    @user_errors
    def decrypt(state: DemoSession | None = None, request: gr.Request = None):
        """Step ④: decryption (API: /decrypt)."""
        session = ctx.session(state, request)
        result = session.decrypt()
        plot = figures.probabilities_figure(result["probabilities"], session.class_names,
                                            result["clear_probabilities"])
        return result, decrypt_markdown(result), plot, session, pipeline_status(session)

    steps.decrypt.click(
        decrypt, [ctx.state],
        [results.decrypt, steps.decrypt_md, steps.probabilities_plot, ctx.state, ctx.pipeline],
        api_name="decrypt", show_progress_on=[steps.decrypt_md], **LIGHT,
    )


def _wire_wrong_key(ctx: DemoContext, steps: StepsPanel) -> None:
    @user_errors
    def wrong_key(state: DemoSession | None = None, request: gr.Request = None):
        """Decrypt the server's output with someone else's key (API: /decrypt_wrong_key)."""
        session = ctx.session(state, request)
        result = session.decrypt_with_wrong_key()
        if not result["decrypted"]:
            return result, f"Concrete refused the bytes: {result['error']}", None
        text = (
            "With a fresh key, decryption \"works\" but yields noise: "
            f"prediction **{result['prediction']}**, "
            f"raw scores {result['raw_scores'][:4]}… instead of the real ones. Without the private key, the "
            "ciphertext says nothing about the input or the result."
        )
        plot = figures.probabilities_figure(result["probabilities"], session.class_names)
        return result, text, plot

    wrong_key_json = gr.JSON(visible=False)
    steps.wrong_key.click(
        wrong_key, [ctx.state], [wrong_key_json, steps.wrong_key_md, steps.wrong_key_plot],
        api_name="decrypt_wrong_key", **LIGHT,
    )


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
        "The **client** (here: this browser session) owns the private key. The **server** (a separate "
        "HTTP service) runs the circuit on ciphertexts it cannot read. Run the four steps in order."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            inputs = _input_panel()
        with gr.Column(scale=3, min_width=380):
            steps = _steps_panel()
    results = _step_results()
    _wire_preview(ctx, inputs, tab)
    _wire_steps(ctx, inputs, steps, results)
    _wire_wrong_key(ctx, steps)
