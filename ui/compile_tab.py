"""Tab 2: convert the scikit-learn model with Concrete ML and compile it to an FHE circuit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from story import DemoSession
from story.forms import DEFAULT_N_BITS, SWEEP_N_BITS, SWEEP_SAMPLES, n_bits_bounds
from ui import figures
from ui.common import (
    COMPILE,
    HEAVY,
    REFRESH,
    DemoContext,
    lenient,
    outdated,
    pipeline_status,
    remember,
    show_result,
)
from ui.errors import user_errors
from ui.files import serve_file
from ui.formatting import format_bytes

#: Labels of :data:`fhe_model.developer.CALIBRATION_MODES`.
CALIBRATION_CHOICES = [
    ("Representative data (a sample of the training set)", "data"),
    ("Random inputs in the public feature range — the server holds no data", "random"),
]

ACCURACY_COLUMNS = ["model", "accuracy"]
SWEEP_COLUMNS = ["n_bits", "bit width", "compile (s)", "clear", "FHE (sim.)"]


def accuracy_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Clear vs quantized vs FHE-simulated accuracy, one row each."""
    return pd.DataFrame(
        [
            ["scikit-learn model (float, clear)", f"{summary['accuracy_clear']:.2%}"],
            [f"quantized to {summary['n_bits']} bits (clear)", f"{summary['accuracy_quantized']:.2%}"],
            ["compiled circuit, FHE-simulated", f"{summary['accuracy_fhe_simulated']:.2%}"],
            ["FHE predictions equal to the clear model's", f"{summary['fhe_clear_agreement']:.2%}"],
        ],
        columns=ACCURACY_COLUMNS,
    )


def sweep_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The sweep's rows, accuracies in percent."""
    return pd.DataFrame(
        [[r["n_bits"], r["max_bit_width"], f"{r['compile_seconds']:.2f}", f"{r['accuracy_clear']:.1%}",
          f"{r['accuracy_fhe_simulated']:.1%}"] for r in rows],
        columns=SWEEP_COLUMNS,
    )


def compile_markdown(summary: dict[str, Any]) -> str:
    """Compile time, bit width and file sizes."""
    if summary.get("resumed"):
        origin = "Your compiled model from before the page reload (nothing was compiled again).\n\n"
    elif summary.get("shared"):
        origin = ("This same model was already compiled at these settings (by another participant, or "
                  "ahead of time when the app started): you share its circuit and server deployment "
                  "(your keys stay your own).\n\n")
    else:
        origin = ""
    return origin + (
        f"### Compiled in {summary['compile_seconds']:.2f} s "
        f"(+ {summary['conversion_seconds']:.2f} s quantization)\n\n"
        f"Widest encrypted integer in the circuit: **{summary['max_bit_width']} bits** "
        f"(n_bits = {summary['n_bits']}, calibration: {summary['calibration']}). Accuracies below: "
        f"{summary['evaluation_samples']} test samples. "
        f"Every input, even an extreme one, stays in range: "
        f"{'yes ✓' if summary['range_check_passed'] else 'no ⚠'}.\n\n"
        f"`client.zip` {format_bytes(summary['client_zip_bytes'])} "
        "(quantizers and crypto parameters, public) · "
        f"`server.zip` {format_bytes(summary['server_zip_bytes'])} (the circuit)."
    )


def waiting_markdown(session: DemoSession | None) -> str:
    """What the compile panel says before anything is compiled."""
    if session is None or session.model is None:
        return "Train or upload a model in tab 1, then press **Compile**."
    return "Your model is ready: press **Compile**."


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

    def result_outputs(self) -> list[gr.components.Component]:
        return [self.result_json, self.message, self.table, self.client_zip, self.server_zip]


@dataclass
class SweepPanel:
    """Accuracy against n_bits."""

    button: gr.Button
    plot: gr.Plot
    table: gr.Dataframe


def _compile_panel() -> CompilePanel:
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            n_bits = lenient(gr.Slider(*n_bits_bounds(), value=DEFAULT_N_BITS, step=1, label="n_bits"))
            calibration = gr.Radio(
                CALIBRATION_CHOICES, value="data", label="Calibration inputs (fix the quantization ranges)",
            )
            button = gr.Button("Compile", variant="primary")
        with gr.Column(scale=3, min_width=300):
            message = gr.Markdown(waiting_markdown(None), elem_classes=["step-result"],
                                  elem_id="compile-result")
            table = gr.Dataframe(headers=ACCURACY_COLUMNS, label="Accuracy: clear vs FHE", interactive=False,
                                 wrap=True, column_widths=["70%", "30%"], elem_id="accuracy-table")
    with gr.Row():
        client_zip = gr.File(label="client.zip (for the client: quantizers, crypto parameters)",
                             interactive=False, min_width=240, elem_id="client-zip")
        server_zip = gr.File(label="server.zip (for the server: the circuit)", interactive=False,
                             min_width=240, elem_id="server-zip")
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
        plot = gr.Plot(label="Accuracy and bit width vs n_bits", format="png", show_label=False,
                       min_width=300, elem_id="sweep-plot")
        table = gr.Dataframe(headers=SWEEP_COLUMNS, label="Sweep", interactive=False, wrap=True,
                             min_width=300)
    return SweepPanel(button, plot, table)


def _compile_view(session: DemoSession | None) -> tuple:
    """The compile panel's values for the session's current deployment (or an empty panel)."""
    if session is None or session.deployment is None:
        return None, waiting_markdown(session), pd.DataFrame(columns=ACCURACY_COLUMNS), None, None
    summary = {**session.compile_summary(), "resumed": session.deployment.resumed}
    client_zip, server_zip = session.deployment_files
    # The copies served for download go with this deployment: once it is replaced, they are gone.
    scope = session.while_current("deployment")
    return (summary, compile_markdown(summary), accuracy_table(summary), serve_file(scope, client_zip),
            serve_file(scope, server_zip))


def _wire_compile(ctx: DemoContext, panel: CompilePanel, shown: gr.State) -> None:
    @user_errors
    def compile_model(
        n_bits: int = DEFAULT_N_BITS,
        calibration: str = "data",
        state: DemoSession | None = None,
        seen: dict | None = None,
        request: gr.Request = None,
    ):
        """Compile the session's model (API: /compile)."""
        session = ctx.session(state, request, opens=False)
        session.compile(n_bits, calibration)
        return (*_compile_view(session), session, pipeline_status(session),
                remember(seen, session, "deployment"))

    show_result(panel.button.click(
        compile_model, [panel.n_bits, panel.calibration, ctx.state, shown],
        [*panel.result_outputs(), ctx.state, ctx.pipeline, shown],
        api_name="compile", show_progress_on=[panel.message], **COMPILE,
    ), "compile-result")


def _wire_sweep(ctx: DemoContext, calibration: gr.Radio, panel: SweepPanel, shown: gr.State) -> None:
    @user_errors
    def sweep(
        calibration: str = "data", state: DemoSession | None = None, seen: dict | None = None,
        request: gr.Request = None,
    ):
        """Accuracy at several n_bits (API: /n_bits_sweep)."""
        session = ctx.session(state, request, opens=False)
        rows = session.n_bits_sweep(calibration=calibration)
        # The sweep belongs to the model it was run on: a new model clears it.
        seen = {**(seen or {}), "sweep": _model(session)}
        return figures.n_bits_figure(rows), sweep_table(rows), session, seen

    show_result(panel.button.click(
        sweep, [calibration, ctx.state, shown], [panel.plot, panel.table, ctx.state, shown],
        api_name="n_bits_sweep", show_progress_on=[panel.plot], **HEAVY,
    ), "sweep-plot")


def _model(session: DemoSession | None) -> int:
    return session.versions().get("model", 0) if session is not None else 0


def _wire_refresh(
    ctx: DemoContext, compile_panel: CompilePanel, sweep_panel: SweepPanel, shown: gr.State
) -> None:
    """Redraw the compile panel when the deployment changed; clear the sweep when the model did."""

    def refresh(state: DemoSession | None, seen: dict | None, request: gr.Request = None):
        session = ctx.existing_session(state, request)
        seen = seen or {}
        compile_values: tuple = (gr.skip(),) * len(compile_panel.result_outputs())
        if outdated(seen, session, "deployment"):
            compile_values = _compile_view(session)
        elif session is None or session.deployment is None:
            compile_values = (gr.skip(), waiting_markdown(session), gr.skip(), gr.skip(), gr.skip())
        sweep_values: tuple = (gr.skip(), gr.skip())
        new_seen = remember(seen, session, "deployment")
        if seen.get("sweep", 0) not in (0, _model(session)):
            sweep_values = (None, pd.DataFrame(columns=SWEEP_COLUMNS))
            new_seen["sweep"] = 0
        return (*compile_values, *sweep_values, *_resumed_settings(session, seen), new_seen)

    ctx.pipeline.change(
        refresh, [ctx.state, shown],
        [*compile_panel.result_outputs(), sweep_panel.plot, sweep_panel.table, compile_panel.n_bits,
         compile_panel.calibration, shown], **REFRESH,
    )


def _resumed_settings(session: DemoSession | None, seen: dict) -> tuple:
    """The form's n_bits and calibration for a deployment a reloaded page resumed (else unchanged)."""
    deployment = session.deployment if session is not None else None
    if deployment is None or not deployment.resumed or not outdated(seen, session, "deployment"):
        return gr.skip(), gr.skip()
    report = deployment.compiled.report
    return report.n_bits, report.calibration


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
    shown = gr.State({})
    compile_panel = _compile_panel()
    sweep_panel = _sweep_panel()
    _wire_compile(ctx, compile_panel, shown)
    _wire_sweep(ctx, compile_panel.calibration, sweep_panel, shown)
    _wire_refresh(ctx, compile_panel, sweep_panel, shown)
