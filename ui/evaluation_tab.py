"""Tab 4: many test samples through the whole encrypted path, scored against the clear model."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from story import DemoSession
from story.evaluation import MAX_EVALUATION_SAMPLES, RunningScore
from ui.common import (
    HEAVY,
    PROGRESS,
    REFRESH,
    DemoContext,
    lenient,
    outdated,
    remember,
    run_in_thread,
    show_progress_of,
)
from ui.errors import user_errors

DEFAULT_SAMPLES = 50
RESULT_COLUMNS = ["measure", "value"]
#: How often the running accuracy is redrawn while the batch runs.
RUNNING_UPDATE_SAMPLES = 5


def results_table(result: dict[str, Any]) -> pd.DataFrame:
    """The evaluation's headline figures as a table."""
    rows = [
        ["accuracy, encrypted (FHE) path", f"{result['accuracy_fhe']:.2%}"],
        ["accuracy, clear scikit-learn model", f"{result['accuracy_clear']:.2%}"],
        ["FHE predictions equal to the clear model's", f"{result['agreement']:.2%}"],
        ["samples", f"{result['samples']}"],
        ["latency per sample (encrypt + server + decrypt)", f"{result['seconds_per_sample'] * 1000:.0f} ms"],
        ["of which encrypt / server / decrypt",
         f"{result['mean_encrypt_seconds'] * 1000:.0f} / {result['mean_server_seconds'] * 1000:.0f} / "
         f"{result['mean_decrypt_seconds'] * 1000:.1f} ms"],
        ["throughput", f"{result['samples_per_second']:.2f} samples/s ({result['workers']} in flight)"],
        ["total time", f"{result['total_seconds']:.1f} s"],
    ]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def headline(result: dict[str, Any], test_samples: int) -> str:
    """The result in one line: encrypted vs clear accuracy, and on how many of the test samples."""
    return (
        f"### Encrypted accuracy **{result['accuracy_fhe']:.1%}** "
        f"vs clear **{result['accuracy_clear']:.1%}**\n\n"
        f"on the first {result['samples']:,} of the {test_samples:,} test samples."
    )


def running_text(score: RunningScore) -> str:
    """Progress while the batch runs: samples done, and the accuracy so far."""
    return (
        f"**{score.done} / {score.total}** samples through encrypt → server → decrypt. So far: encrypted "
        f"accuracy **{score.encrypted_accuracy:.1%}**, clear {score.clear_accuracy:.1%}, "
        f"{score.agreeing} of {score.done} predictions identical."
    )


def intro(session: DemoSession | None) -> str:
    """What this tab does, and what to expect for the session's model."""
    text = ("Runs the first N test samples through **encrypt → FHE server → decrypt** with this session's "
            "keys and compares with the clear model. ")
    if session is None or session.deployment is None:
        return text + "Generate keys first (tab 3, step ①): the evaluation uses them."
    summary = session.compile_summary()
    text += (f"Expect about **{summary['accuracy_fhe_simulated']:.1%}**: what the compiled circuit scored "
             f"(simulated) on {summary['evaluation_samples']} test samples of {summary['dataset']} in tab 2.")
    if session.keys is None:
        text += " Generate keys first (tab 3, step ①): the evaluation uses them."
    return text


def _limit(session: DemoSession | None) -> int:
    return session.evaluation_limit() if session is not None else MAX_EVALUATION_SAMPLES


def _test_samples(session: DemoSession | None) -> int:
    dataset = session.dataset if session is not None else None
    return len(dataset.X_test) if dataset is not None else MAX_EVALUATION_SAMPLES


def build(ctx: DemoContext) -> None:
    """Create tab 4's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    """
    about = gr.Markdown(intro(None))
    with gr.Row(equal_height=True):
        num_samples = lenient(
            gr.Slider(1, MAX_EVALUATION_SAMPLES, value=DEFAULT_SAMPLES, step=1, min_width=240,
                      label=f"Test samples (at most {MAX_EVALUATION_SAMPLES:,})")
        )
        run_button = gr.Button("Evaluate on encrypted data", variant="primary", min_width=200)
    status = gr.Markdown(elem_classes=["step-result"], elem_id="evaluation-status")
    table = gr.Dataframe(headers=RESULT_COLUMNS, label="Encrypted vs clear", interactive=False, wrap=True,
                         column_widths=["62%", "38%"])
    with gr.Accordion("Result (JSON, as the API returns it)", open=False):
        result_json = gr.JSON(label="/evaluate_encrypted")
    shown = gr.State({})

    @user_errors
    def evaluate_encrypted(
        num_samples: int = DEFAULT_SAMPLES,
        state: DemoSession | None = None,
        request: gr.Request = None,
        progress: gr.Progress = PROGRESS,
    ):
        """Encrypted batch evaluation (API: /evaluate_encrypted)."""
        session = ctx.session(state, request, opens=False)
        latest: list[RunningScore] = []
        skip = gr.skip()
        yield skip, "Starting: encrypting the first samples …", skip, session
        for kind, value in run_in_thread(session.evaluate, num_samples, score=latest.append):
            if kind == "progress":
                done, total = value
                progress((done, total), desc=f"{done}/{total} encrypted samples", unit="samples")
                if latest and (done % RUNNING_UPDATE_SAMPLES == 0 or done == total):
                    yield skip, running_text(latest[-1]), skip, session
                continue
            yield value, headline(value, _test_samples(session)), results_table(value), session

    show_progress_of(run_button, "evaluation-status")
    run_button.click(
        evaluate_encrypted, [num_samples, ctx.state], [result_json, status, table, ctx.state],
        api_name="evaluate_encrypted", show_progress="hidden", **HEAVY,
    )

    def refresh(state: DemoSession | None, seen: dict | None, request: gr.Request = None):
        """The evaluation of the current keys, the limits and the expectation of the current model."""
        session = ctx.existing_session(state, request)
        values: tuple = (gr.skip(),) * 3
        # The evaluation's handler cannot tell what it drew (its API answer has four values): with no
        # evaluation on record (new keys, a new model), the panel is emptied whatever it shows.
        if outdated(seen, session, "evaluation") or session is None or session.evaluation is None:
            if session is not None and session.evaluation is not None:
                result = session.evaluation_summary()
                values = (result, headline(result, _test_samples(session)), results_table(result))
            else:
                values = (None, "", pd.DataFrame(columns=RESULT_COLUMNS))
        limit = _limit(session)
        slider = gr.update(maximum=limit, label=f"Test samples (at most {limit:,})")
        return (*values, intro(session), slider, remember(seen, session, "evaluation"))

    ctx.pipeline.change(refresh, [ctx.state, shown], [result_json, status, table, about, num_samples, shown],
                        **REFRESH)
