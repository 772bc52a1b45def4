"""Tab 1: federated training with Flower, or uploading an existing model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from story import Baseline, DemoSession, Joined, QueueStatus, forms
from ui import dp_panel, figures, training_form, updates_panel
from ui.common import (
    LIGHT,
    PROGRESS,
    REFRESH,
    TRAINING,
    DemoContext,
    outdated,
    pipeline_status,
    remember,
    show_progress_of,
)
from ui.errors import USER_ERRORS, to_user_error, user_errors
from ui.files import hold_upload, serve_file
from ui.plot_cache import PlotCache
from ui.training_form import Settings

#: What the form and ``/train`` start from (``story.forms.TRAINING_FORM``, trained once at launch).
START = training_form.START

#: Training charts, shared by every visitor of a shared run (see ui.plot_cache).
CHARTS = PlotCache()

#: Updates of one training closer together than this are merged into the next: the rounds of a run
#: another visitor started arrive at once, and every update costs the app's event loop a postprocess
#: and a message to the page (a lecture hall's 120 visitors share one run: ~9 updates each became 2).
MIN_UPDATE_SECONDS = 0.3

#: The round log's columns; "elapsed (s)" counts from the start of the run.
ROUND_LOG_COLUMNS = ["round", "accuracy", "loss", "clients' own accuracy", "elapsed (s)", "ε"]


def round_log(history: list[Any]) -> pd.DataFrame:
    """The table of rounds shown under the live plot (the ε column only under differential privacy)."""
    rows = []
    for r in history:
        rows.append([
            r.round,
            f"{r.accuracy:.1%}",
            f"{r.loss:.3f}",
            "" if r.client_accuracy is None else f"{r.client_accuracy:.1%}",
            f"{r.seconds:.1f}",
            "" if r.epsilon is None else f"{r.epsilon:.2f}",
        ])
    columns = ROUND_LOG_COLUMNS
    if not any(r.epsilon is not None for r in history):
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    return pd.DataFrame(rows, columns=columns)


def samples_per_client(counts: Any) -> str:
    """How many samples each client holds, as the label preview says it.

    Parameters
    ----------
    counts : ndarray of shape (n_clients, n_classes)
        Label counts per client.

    Returns
    -------
    str
        ``"800 samples"`` when every client holds as many, else ``"790–810 samples"``.
    """
    sizes = counts.sum(axis=1)
    low, high = int(sizes.min()), int(sizes.max())
    return f"{low:,} samples" if low == high else f"{low:,}–{high:,} samples"


def joined_text(joined: Joined) -> str:
    """What a visitor reads when their training is shared with another participant's."""
    if joined.finished:
        return ("Identical run already finished (for another participant, or ahead of time when the "
                "app started): its result is reused, no new training.")
    if joined.at_round < 0:
        return "Identical run started by another participant: joined it before its first round."
    return f"Identical run started by another participant: joined at round {joined.at_round}."


def waiting_text(status: QueueStatus) -> str:
    """A waiting visitor's place in the queue and the estimated wait."""
    ahead = "1 training" if status.position == 1 else f"{status.position} trainings"
    return f"Waiting for the training runtime: {ahead} ahead of you, about {status.eta_seconds:.0f} s."


def done_text(rounds: int, clients: int, seconds: float, waited: float = 0.0) -> str:
    """The end of a training: how long it ran, and first how long it waited for the runtime, if it did.

    Parameters
    ----------
    rounds, clients : int
        The run's settings.
    seconds : float
        How long the run itself took.
    waited : float
        How long it queued for the training runtime before its first round (0: it did not).
    """
    if waited >= 0.5:
        return (f"✓ Done: {rounds} rounds with {clients} clients. Waited {waited:.1f} s for the training "
                f"runtime, then ran in {seconds:.1f} s.")
    return f"✓ Done: {rounds} rounds with {clients} clients in {seconds:.1f} s."


def summary_markdown(summary: dict[str, Any]) -> str:
    """Accuracy beside the centralized baseline (and ε under differential privacy).

    The gap to the baseline is in percentage points, and is put down to
    everything that differs from central training: federated rounds, a
    skewed split of the data, differential privacy's noise.
    """
    lines = [f"### Federated model: **{summary['accuracy']:.1%}** test accuracy"]
    baseline = summary.get("baseline_accuracy")
    if baseline is not None:
        gap = (summary["accuracy"] - baseline) * 100
        causes = ["training in a few rounds of averaged weights"]
        if summary.get("partitioning", "iid") != "iid":
            causes.append(f"the {summary['partitioning']} split (clients hold different labels)")
        if summary.get("epsilon") is not None:
            causes.append("differential privacy's noise (its price alone: the ε chart below)")
        lines.append(
            f"Centrally trained baseline (all data in one place): **{baseline:.1%}**. Difference: "
            f"**{gap:+.1f} points**, from {_joined(causes)}. No client shared its data."
        )
    if summary.get("epsilon") is not None:
        lines.append(
            f"Differential privacy: **ε = {summary['epsilon']:.2f}** at δ = {summary['delta']:g} "
            "(smaller ε = stronger privacy; the noise usually costs accuracy)."
        )
    lines.append(
        f"{summary['clients']} clients × {summary['rounds']} rounds, {summary['partitioning']} "
        f"partitioning, {summary['strategy']}, {summary['seconds']:.1f} s."
    )
    return "\n\n".join(lines)


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class Results:
    """Where a training shows its progress and its result."""

    distribution_plot: gr.Plot
    distribution_note: gr.Markdown
    status: gr.Markdown
    curves: gr.Plot
    log: gr.Dataframe
    summary_md: gr.Markdown
    model_file: gr.File
    summary_json: gr.JSON


@dataclass
class Upload:
    """The "bring your own model" panel."""

    file: gr.File
    button: gr.Button
    message: gr.Markdown
    result_json: gr.JSON


def _results_panel(distribution_plot: gr.Plot, distribution_note: gr.Markdown) -> Results:
    status = gr.Markdown("Press **Start federated training**.", elem_id="train-status")
    with gr.Row():
        curves = gr.Plot(label="Accuracy and loss per round (live)", format="png", elem_id="training-curves")
    with gr.Row():
        with gr.Column(scale=3):
            log = gr.Dataframe(
                headers=ROUND_LOG_COLUMNS, label="Round log", interactive=False, max_height=260,
                elem_id="round-log",
            )
        with gr.Column(scale=2):
            summary_md = gr.Markdown()
            model_file = gr.File(label="Trained model (.skops)", interactive=False, elem_id="model-file")
    with gr.Accordion("Training summary (JSON, as the API returns it)", open=False):
        summary_json = gr.JSON(label="/train result")
    return Results(distribution_plot, distribution_note, status, curves, log, summary_md, model_file,
                   summary_json)


def _upload_panel() -> Upload:
    with gr.Accordion("…or convert an existing scikit-learn model", open=False):
        gr.Markdown(
            "Upload a fitted `LogisticRegression` saved with `skops.io.dump(model, 'model.skops')`, "
            "trained on the raw features of the dataset selected above. Pickle files are refused: "
            "loading them runs code."
        )
        with gr.Row():
            file = gr.File(
                label=f"Model file (.skops, at most {forms.MAX_MODEL_FILE_BYTES // 2**20} MB)",
                file_types=[".skops"], type="filepath",
            )
            with gr.Column():
                button = gr.Button("Use this model")
                message = gr.Markdown()
        result_json = gr.JSON(label="/upload_model result", visible=False)
    return Upload(file, button, message, result_json)


def _wire_partitioning_help(settings: Settings) -> None:
    def show_partitioning_options(choice: str) -> tuple[Any, Any, Any]:
        return (
            gr.update(visible=choice == "dirichlet"),
            gr.update(visible=choice == "pathological"),
            gr.update(info=training_form.PARTITIONING_HELP.get(choice, "")),
        )

    settings.partitioning.change(
        show_partitioning_options, [settings.partitioning],
        [settings.alpha, settings.classes_per_client, settings.partitioning],
        api_visibility="private", queue=False,
    )


def _wire_preview(ctx: DemoContext, settings: Settings, results: Results) -> None:
    def preview_distribution(
        dataset: str, num_clients: Any, num_rounds: Any, partitioning: str, alpha: Any,
        classes_per_client: Any, strategy: str, local_epochs: Any, seed: Any,
        differential_privacy: bool, noise_multiplier: Any, clipping_norm: Any,
        secure_aggregation: bool = False,
    ) -> tuple[Any, str]:
        try:
            counts, names, cfg = forms.label_preview(
                dataset=dataset, num_clients=num_clients, num_rounds=num_rounds, partitioning=partitioning,
                alpha=alpha, classes_per_client=classes_per_client, local_epochs=local_epochs, seed=seed,
            )
        except USER_ERRORS as exc:
            return None, f"⚠ {exc}"
        note = (
            f"{cfg.num_clients} clients hold {samples_per_client(counts)} each; "
            f"on average {float((counts > 0).sum(axis=1).mean()):.1f} of {counts.shape[1]} labels."
        )
        return figures.label_distribution_figure(counts, names), note

    s = settings
    watched = (s.dataset, s.num_clients, s.partitioning, s.alpha, s.classes_per_client, s.seed)
    gr.on(
        [ctx.demo.load] + [c.change for c in watched],
        preview_distribution, settings.inputs(), [results.distribution_plot, results.distribution_note],
        api_visibility="private", trigger_mode="always_last", **LIGHT,
    )


def _history_key(history: list[Any]) -> tuple:
    """What the training chart shows of each round (equal keys, equal charts)."""
    return tuple((r.round, r.accuracy, r.loss, r.client_accuracy, r.client_loss, r.epsilon) for r in history)


def _chart(results: Results, history: list[Any], total_rounds: int, baseline: float | None = None) -> Any:
    """The rounds so far, drawn once for every visitor who sees the same run."""
    key = ("training", _history_key(history), total_rounds, baseline)
    return CHARTS.get(results.curves, key, lambda: figures.training_figure(history, total_rounds, baseline))


def _model_view(session: DemoSession | None, results: Results, note: str = "") -> tuple:
    """Tab 1's results for the session's current model, whichever page made it (after a reload, a
    failed training): summary JSON, status line, chart, round log, summary, download.

    ``note`` (a failed training's message) leads the status line.
    """
    record = session.training_record() if session is not None else None
    lead = f"{note} " if note else ""
    if record is None:
        return None, lead + "Press **Start federated training**.", None, round_log([]), "", None
    summary = record.summary
    model_file = serve_file(session.while_current("model"), session.model_file)
    if record.source != "federated":
        text = (f"Current model: {record.source}, **{summary['accuracy']:.1%}** test accuracy on "
                f"{summary['dataset']}.")
        return summary, lead + text, None, round_log([]), text, model_file
    if record.resumed:
        status = (f"↻ Your model from before the page reload: {summary['rounds']} rounds with "
                  f"{summary['clients']} clients.")
    else:
        status = done_text(summary["rounds"], summary["clients"], summary["seconds"])
    chart = _chart(results, record.history, summary["rounds"], summary.get("baseline_accuracy"))
    return (summary, lead + status, chart, round_log(record.history), summary_markdown(summary), model_file)


def _stream_training(session: DemoSession, cfg: forms.TrainingConfig, results: Results,
                     progress: gr.Progress) -> Iterator[tuple]:
    """Each update of a training as tab 1 shows it: status, chart, round log, and last the result."""
    history: list[Any] = []
    baseline = None
    shared_note = ""
    waiting_since, waited = 0.0, 0.0
    skip = gr.skip()
    progress(0, desc="Training the centralized baseline …")
    yield (skip, "… Training a centralized baseline for comparison …",
           _chart(results, [], cfg.num_rounds), round_log([]), skip, skip, session, skip)
    last_update = time.monotonic()

    def due() -> bool:  # a shared run's rounds arrive at once: merged into the next update
        nonlocal last_update
        if time.monotonic() - last_update < MIN_UPDATE_SECONDS:
            return False
        last_update = time.monotonic()
        return True

    for item in session.train(cfg):
        if isinstance(item, Baseline):
            baseline = item.accuracy
            if due():
                progress(0, desc="Starting the Flower simulation …")
                yield (skip, "… Starting the Flower simulation …",
                       _chart(results, [], cfg.num_rounds, baseline), skip, skip, skip, session, skip)
        elif isinstance(item, Joined):
            shared_note = joined_text(item)
            if due():
                yield (skip, f"… {shared_note}", skip, skip, skip, skip, session, skip)
        elif isinstance(item, QueueStatus):
            waiting_since = waiting_since or time.monotonic()
            if due():
                progress(0, desc=waiting_text(item))
                yield (skip, f"… {waiting_text(item)}", skip, skip, skip, skip, session, skip)
        elif isinstance(item, dict):
            summary = item
            done = done_text(cfg.num_rounds, cfg.num_clients, summary["seconds"], waited)
            yield (
                summary,
                f"{done} {shared_note}".strip(),
                _chart(results, history, cfg.num_rounds, summary.get("baseline_accuracy")),
                round_log(history),
                summary_markdown(summary),
                serve_file(session.while_current("model"), session.model_file),
                session,
                pipeline_status(session),
            )
            return
        else:
            if waiting_since and not waited:  # the first round: the wait is over
                waited = time.monotonic() - waiting_since
            history.append(item)
            if not due():
                continue
            progress((item.round, cfg.num_rounds), desc=f"Round {item.round}/{cfg.num_rounds}")
            text = f"… Round {item.round}/{cfg.num_rounds}: accuracy {item.accuracy:.1%}"
            if item.epsilon is not None:
                text += f", ε = {item.epsilon:.2f}"
            yield (skip, text, _chart(results, history, cfg.num_rounds, baseline), round_log(history), skip,
                   skip, session, skip)


def _wire_training(ctx: DemoContext, settings: Settings, results: Results, shown: gr.State) -> None:
    def train(
        dataset: str = START.dataset,
        num_clients: int = START.num_clients,
        num_rounds: int = START.num_rounds,
        partitioning: str = START.partitioning,
        alpha: float = START.alpha,
        classes_per_client: int = START.classes_per_client,
        strategy: str = START.strategy,
        local_epochs: int = START.local_epochs,
        seed: int = START.seed,
        differential_privacy: bool = False,
        noise_multiplier: float = START.noise_multiplier,
        clipping_norm: float = START.clipping_norm,
        secure_aggregation: bool = False,
        state: DemoSession | None = None,
        seen: dict | None = None,
        request: gr.Request = None,
        progress: gr.Progress = PROGRESS,
    ):
        """Train a model with Flower and stream each round (API: /train)."""
        session = None
        try:
            cfg = forms.TrainingConfig.from_values(
                dataset=dataset, num_clients=num_clients, num_rounds=num_rounds, partitioning=partitioning,
                alpha=alpha, classes_per_client=classes_per_client, strategy=strategy,
                local_epochs=local_epochs, seed=seed, differential_privacy=differential_privacy,
                noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
                secure_aggregation=secure_aggregation,
            )
            forms.check_runnable(cfg)  # refused before a session is opened for it
            session = ctx.session(state, request)
            for update in _stream_training(session, cfg, results, progress):
                done = isinstance(update[-1], str)  # the last update carries the new status line
                yield (*update, remember(seen, session, "model") if done else gr.skip())
        except GeneratorExit:
            raise
        except Exception as exc:
            error = to_user_error(exc)
            session = session or ctx.existing_session(state, request)
            # The tab shows the current model again (the one before this training), under the reason.
            failed = f"✗ Training failed: {error.message}"
            restored = _model_view(session, results, failed)
            yield (*restored, gr.skip(), gr.skip(), remember(seen, session, "model"))
            raise error from exc

    show_progress_of(settings.start, "train-status")
    shows = [results.summary_json, results.status, results.curves, results.log, results.summary_md,
             results.model_file]
    training = settings.start.click(
        train, [*settings.inputs(), ctx.state, shown], [*shows, ctx.state, ctx.pipeline, shown],
        # The handler's own status line says what runs (unfaded, nothing printed over it).
        api_name="train", show_progress="hidden", **TRAINING,
    )
    # A failed training already shows the current model again under its reason (and a pop-up):
    # the Error badges Gradio puts on its outputs would only say that the model shown failed.
    badged = [*shows, ctx.pipeline]
    training.failure(lambda: (gr.skip(),) * len(badged), None, badged, **REFRESH)


def _wire_refresh(ctx: DemoContext, settings: Settings, results: Results, upload: Upload,
                  shown: gr.State) -> None:
    """Redraw tab 1 for a model this page's training did not draw: a reload's resumed model (its form
    settings too), an upload, the class model; a model that is gone empties it. (Any redraw, even one
    that skips every value, also takes away the Error badge a failed upload left on its message.)"""

    def refresh(state: DemoSession | None, seen: dict | None, request: gr.Request = None):
        session = ctx.existing_session(state, request)
        form = [gr.skip()] * len(settings.inputs())
        if not outdated(seen, session, "model"):
            return (*[gr.skip()] * 6, *form, gr.skip(), gr.skip())
        record = session.training_record() if session is not None else None
        if record is not None and record.resumed and record.settings:
            form = [record.settings.get(name, gr.skip()) for name in training_form.FIELDS]
        return (*_model_view(session, results), *form, gr.skip(), remember(seen, session, "model"))

    ctx.pipeline.change(
        refresh, [ctx.state, shown],
        [results.summary_json, results.status, results.curves, results.log, results.summary_md,
         results.model_file, *settings.inputs(), upload.message, shown], **REFRESH,
    )


def _wire_upload(ctx: DemoContext, settings: Settings, results: Results, upload: Upload) -> None:
    @user_errors
    def upload_model(
        file: str | None = None,
        dataset: str = START.dataset,
        state: DemoSession | None = None,
        request: gr.Request = None,
    ):
        """Use an uploaded .skops model instead of training (API: /upload_model)."""
        session = ctx.session(state, request, opens=bool(file))
        # Another session's file is refused before anything reads it; an upload is deleted with the session.
        hold_upload(session, file, ctx.demo.upload_file_set)
        summary = session.use_uploaded_model(file, dataset)
        text = (
            f"✓ Using the uploaded model: **{summary['accuracy']:.1%}** test accuracy "
            f"on {summary['dataset']}. "
            "Continue with tab 2."
        )
        # The copy served for download goes with this model: a later model makes it unreachable.
        model_file = serve_file(session.while_current("model"), session.model_file)
        return summary, text, model_file, session, pipeline_status(session)

    upload.button.click(
        upload_model, [upload.file, settings.dataset, ctx.state],
        [upload.result_json, upload.message, results.model_file, ctx.state, ctx.pipeline],
        api_name="upload_model", show_progress_on=[upload.message], **LIGHT,
    )
    # A failed upload leaves an Error badge on its own message only; the next step that succeeds
    # anywhere (the status line changes) takes it away: tab 1's redraw (_wire_refresh) outputs it.


def build(ctx: DemoContext) -> None:
    """Create tab 1's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    """
    gr.Markdown(
        "Several clients each train a logistic regression on **their own data**; a Flower server "
        "averages their weights round after round. No client ever sends a single image."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            settings = training_form.build()
            dp_panel.build(settings)
        with gr.Column(scale=3, min_width=360):
            distribution_plot = gr.Plot(label="Label distribution per client", format="png")
            distribution_note = gr.Markdown()
    results = _results_panel(distribution_plot, distribution_note)
    updates_panel.build(ctx, results.summary_json)
    upload = _upload_panel()
    _wire_partitioning_help(settings)
    _wire_preview(ctx, settings, results)
    shown = gr.State({})
    _wire_training(ctx, settings, results, shown)
    _wire_upload(ctx, settings, results, upload)
    _wire_refresh(ctx, settings, results, upload, shown)
