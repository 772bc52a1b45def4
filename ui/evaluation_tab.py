"""Tab 4: many test samples through the whole encrypted path, scored against the clear model."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from story import DemoSession
from story.evaluation import MAX_EVALUATION_SAMPLES
from ui.common import HEAVY, PROGRESS, DemoContext, lenient, run_in_thread
from ui.errors import user_errors

DEFAULT_SAMPLES = 50


def results_table(result: dict[str, Any]) -> pd.DataFrame:
    """The evaluation's headline figures as a table."""
    rows = [
        ["accuracy, encrypted (FHE) path", f"{result['accuracy_fhe']:.2%}"],
        ["accuracy, clear scikit-learn model", f"{result['accuracy_clear']:.2%}"],
        ["FHE predictions equal to the clear model's", f"{result['agreement']:.2%}"],
        ["samples", f"{result['samples']}"],
        ["latency per sample (encrypt + server + decrypt)", f"{result['seconds_per_sample'] * 1000:.0f} ms"],
        ["  of which: encrypt / server / decrypt",
         f"{result['mean_encrypt_seconds'] * 1000:.0f} / {result['mean_server_seconds'] * 1000:.0f} / "
         f"{result['mean_decrypt_seconds'] * 1000:.1f} ms"],
        ["throughput", f"{result['samples_per_second']:.2f} samples/s ({result['workers']} in flight)"],
        ["total time", f"{result['total_seconds']:.1f} s"],
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def build(ctx: DemoContext) -> None:
    """Create tab 4's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    """
    gr.Markdown(
        "Runs the first N test samples through **encrypt → FHE server → decrypt** with this session's "
        "keys, and compares with the clear model. Reference: ~92% on encrypted MNIST. "
        "Needs steps ① (keys) of tab 3."
    )
    with gr.Row():
        num_samples = lenient(
            gr.Slider(1, MAX_EVALUATION_SAMPLES, value=DEFAULT_SAMPLES, step=1, label="Test samples")
        )
        run_button = gr.Button("Evaluate on encrypted data", variant="primary")
    status = gr.Markdown()
    table = gr.Dataframe(label="Encrypted vs clear", interactive=False)
    with gr.Accordion("Result (JSON, as the API returns it)", open=False):
        result_json = gr.JSON(label="/evaluate_encrypted")

    @user_errors
    def evaluate_encrypted(
        num_samples: int = DEFAULT_SAMPLES,
        state: DemoSession | None = None,
        request: gr.Request = None,
        progress: gr.Progress = PROGRESS,
    ):
        """Encrypted batch evaluation (API: /evaluate_encrypted)."""
        session = ctx.session(state, request)
        for kind, value in run_in_thread(session.evaluate, num_samples):
            if kind == "progress":
                done, total = value
                progress((done, total), desc=f"{done}/{total} encrypted samples", unit="samples")
                continue
            text = (
                f"### Encrypted accuracy **{value['accuracy_fhe']:.1%}** "
                f"vs clear **{value['accuracy_clear']:.1%}** "
                f"on {value['samples']} samples (limit {MAX_EVALUATION_SAMPLES})"
            )
            yield value, text, results_table(value), session

    run_button.click(
        evaluate_encrypted, [num_samples, ctx.state], [result_json, status, table, ctx.state],
        api_name="evaluate_encrypted", show_progress_on=[status], **HEAVY,
    )
