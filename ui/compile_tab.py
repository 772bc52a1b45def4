"""Tab 2: convert the scikit-learn model with Concrete ML and compile it to an FHE circuit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fhe_model.developer import DEFAULT_N_BITS, N_BITS_MAX, N_BITS_MIN, SWEEP_N_BITS, SWEEP_SAMPLES
from story import DemoSession
from ui import figures
from ui.common import HEAVY, DemoContext, lenient, pipeline_status
from ui.errors import user_errors
from ui.files import serve_file
from ui.formatting import format_bytes

#: Labels of :data:`fhe_model.developer.CALIBRATION_MODES`.
CALIBRATION_CHOICES = [
    ("Representative data (a sample of the training set)", "data"),
    ("Random inputs in the public feature range — the server holds no data", "random"),
]

SWEEP_COLUMNS = {
    "n_bits": "n_bits", "max_bit_width": "bit width", "compile_seconds": "compile s",
    "accuracy_clear": "clear acc.", "accuracy_fhe_simulated": "FHE acc. (sim.)",
}


def accuracy_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Clear vs quantized vs FHE-simulated accuracy, one row each."""
    n = summary["evaluation_samples"]
    return pd.DataFrame(
        [
            ["scikit-learn model (float, clear)", f"{summary['accuracy_clear']:.2%}"],
            [f"quantized to {summary['n_bits']} bits (clear)", f"{summary['accuracy_quantized']:.2%}"],
            ["compiled circuit, FHE-simulated", f"{summary['accuracy_fhe_simulated']:.2%}"],
            ["FHE predictions equal to the clear model's", f"{summary['fhe_clear_agreement']:.2%}"],
        ],
        columns=[f"model (scored on {n} test samples)", "accuracy"],
    )


def compile_markdown(summary: dict[str, Any]) -> str:
    """Compile time, bit width and file sizes."""
    return (
        f"### Compiled in {summary['compile_seconds']:.2f} s "
        f"(+ {summary['conversion_seconds']:.2f} s quantization)\n\n"
        f"Widest encrypted integer in the circuit: **{summary['max_bit_width']} bits** "
        f"(n_bits = {summary['n_bits']}, calibration: {summary['calibration']}). "
        f"Every input, even an extreme one, stays in range: "
        f"{'yes ✓' if summary['range_check_passed'] else 'no ⚠'}.\n\n"
        f"`client.zip` {format_bytes(summary['client_zip_bytes'])} "
        "(quantizers and crypto parameters, public) · "
        f"`server.zip` {format_bytes(summary['server_zip_bytes'])} (the circuit)."
    )


@dataclass
class CompilePanel:
    """Settings, the compile result and the deployment files."""

    n_bits: gr.Slider
    calibration: gr.Radio
    button: gr.Button
    message: gr.Markdown
    table: gr.Dataframe
    client_zip: gr.File
    server_zip: gr.File
    result_json: gr.JSON


@dataclass
class SweepPanel:
    """Accuracy against n_bits."""

    button: gr.Button
    plot: gr.Plot
    table: gr.Dataframe


def _compile_panel() -> CompilePanel:
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            n_bits = lenient(gr.Slider(N_BITS_MIN, N_BITS_MAX, value=DEFAULT_N_BITS, step=1, label="n_bits"))
            calibration = gr.Radio(
                CALIBRATION_CHOICES, value="data", label="Calibration inputs (fix the quantization ranges)",
            )
            button = gr.Button("Compile", variant="primary")
        with gr.Column(scale=3, min_width=360):
            message = gr.Markdown("Train or upload a model in tab 1, then press **Compile**.")
            table = gr.Dataframe(label="Accuracy: clear vs FHE", interactive=False)
    with gr.Row():
        client_zip = gr.File(
            label="client.zip (for the client: quantizers, crypto parameters)", interactive=False
        )
        server_zip = gr.File(label="server.zip (for the server: the circuit)", interactive=False)
    with gr.Accordion("Compile report (JSON, as the API returns it)", open=False):
        result_json = gr.JSON(label="/compile result")
    return CompilePanel(n_bits, calibration, button, message, table, client_zip, server_zip, result_json)


def _sweep_panel() -> SweepPanel:
    gr.Markdown(
        f"#### Accuracy vs n_bits\nCompiles the model at n_bits = {', '.join(map(str, SWEEP_N_BITS))} and "
        f"scores each circuit (FHE-simulated) on {SWEEP_SAMPLES} test samples. Takes a few seconds per value."
    )
    with gr.Row():
        button = gr.Button("Run the n_bits sweep")
    with gr.Row():
        plot = gr.Plot(label="Accuracy and bit width vs n_bits", format="png")
        table = gr.Dataframe(label="Sweep", interactive=False)
    return SweepPanel(button, plot, table)


def _wire_compile(ctx: DemoContext, panel: CompilePanel) -> None:
    @user_errors
    def compile_model(
        n_bits: int = DEFAULT_N_BITS,
        calibration: str = "data",
        state: DemoSession | None = None,
        request: gr.Request = None,
    ):
        """Compile the session's model (API: /compile)."""
        session = ctx.session(state, request)
        summary = session.compile(n_bits, calibration)
        client_zip, server_zip = session.deployment_files
        return (
            summary, compile_markdown(summary), accuracy_table(summary),
            serve_file(session, client_zip), serve_file(session, server_zip), session,
            pipeline_status(session),
        )

    panel.button.click(
        compile_model, [panel.n_bits, panel.calibration, ctx.state],
        [panel.result_json, panel.message, panel.table, panel.client_zip, panel.server_zip, ctx.state,
         ctx.pipeline],
        api_name="compile", show_progress_on=[panel.message], **HEAVY,
    )


def _wire_sweep(ctx: DemoContext, calibration: gr.Radio, panel: SweepPanel) -> None:
    @user_errors
    def sweep(calibration: str = "data", state: DemoSession | None = None, request: gr.Request = None):
        """Accuracy at several n_bits (API: /n_bits_sweep)."""
        session = ctx.session(state, request)
        rows = session.n_bits_sweep(calibration=calibration)
        frame = pd.DataFrame(rows).rename(columns=SWEEP_COLUMNS)
        return figures.n_bits_figure(rows), frame, session

    panel.button.click(
        sweep, [calibration, ctx.state], [panel.plot, panel.table, ctx.state],
        api_name="n_bits_sweep", **HEAVY,
    )


def build(ctx: DemoContext) -> None:
    """Create tab 2's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    """
    gr.Markdown(
        "FHE computes on **integers**: Concrete ML quantizes the inputs and weights to `n_bits` and "
        "compiles the model into a circuit of encrypted integer operations. Fewer bits → a cheaper "
        "circuit, but a coarser model."
    )
    compile_panel = _compile_panel()
    sweep_panel = _sweep_panel()
    _wire_compile(ctx, compile_panel)
    _wire_sweep(ctx, compile_panel.calibration, sweep_panel)
