"""Tab 1: federated training with Flower, or uploading an existing model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fl_training import task
from fl_training.datasets import DATASET_NAMES, DEFAULT_DATASET, load_dataset
from fl_training.model_io import MAX_MODEL_FILE_BYTES
from fl_training.task import PARTITIONINGS, STRATEGIES, TrainingConfig
from story import Baseline, DemoSession
from ui import figures
from ui.common import LIGHT, PROGRESS, TRAINING, DemoContext, lenient, pipeline_status
from ui.errors import USER_ERRORS, user_errors
from ui.files import hold_upload, serve_file

#: Defaults sized for a 2-core laptop: ~15 s for mnist-5k, Ray start-up included.
DEFAULT_CLIENTS = 5
DEFAULT_ROUNDS = 3
_DEFAULTS = TrainingConfig()

ROUND_LOG_COLUMNS = ["round", "accuracy", "loss", "clients' accuracy", "seconds", "ε"]

PARTITIONING_HELP = {
    "iid": "IID: every client gets a random, similar share of every label.",
    "dirichlet": "Dirichlet: label shares drawn from Dir(alpha); small alpha → very skewed clients.",
    "pathological": "Pathological: each client holds only k labels.",
}


def round_log(history: list[Any]) -> pd.DataFrame:
    """The table of rounds shown under the live plot."""
    rows = []
    for r in history:
        rows.append([
            r.round,
            round(r.accuracy, 4),
            round(r.loss, 4),
            None if r.client_accuracy is None else round(r.client_accuracy, 4),
            round(r.seconds, 2),
            None if r.epsilon is None else round(r.epsilon, 3),
        ])
    return pd.DataFrame(rows, columns=ROUND_LOG_COLUMNS)


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


def summary_markdown(summary: dict[str, Any]) -> str:
    """Accuracy beside the centralized baseline (and ε under differential privacy)."""
    lines = [f"### Federated model: **{summary['accuracy']:.1%}** test accuracy"]
    baseline = summary.get("baseline_accuracy")
    if baseline is not None:
        gap = summary["accuracy"] - baseline
        lines.append(
            f"Centrally trained baseline (all data in one place): **{baseline:.1%}** "
            f"({gap:+.1%} for federated learning, where no client shared its data)."
        )
    if summary.get("epsilon") is not None:
        lines.append(
            f"Differential privacy: **ε = {summary['epsilon']:.2f}** at δ = {summary['delta']:g} "
            "(smaller ε = stronger privacy; the noise usually costs accuracy)."
        )
    lines.append(
        f"{summary['clients']} clients × {summary['rounds']} rounds, {summary['partitioning']} "
        f"partitioning, {summary['strategy']}, {summary['seconds']:.1f} s (Flower/Ray start-up included)."
    )
    return "\n\n".join(lines)


@dataclass
class Settings:
    """The training settings' widgets, in the order of ``/train``'s parameters."""

    dataset: gr.Dropdown
    num_clients: gr.Slider
    num_rounds: gr.Slider
    partitioning: gr.Radio
    alpha: gr.Slider
    classes_per_client: gr.Slider
    strategy: gr.Dropdown
    local_epochs: gr.Slider
    seed: gr.Number
    differential_privacy: gr.Checkbox
    noise_multiplier: gr.Slider
    clipping_norm: gr.Slider
    start: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.dataset, self.num_clients, self.num_rounds, self.partitioning, self.alpha,
                self.classes_per_client, self.strategy, self.local_epochs, self.seed,
                self.differential_privacy, self.noise_multiplier, self.clipping_norm]


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


def _settings_panel() -> Settings:
    dataset = gr.Dropdown(
        list(DATASET_NAMES), value=DEFAULT_DATASET, label="Dataset",
        info="mnist-5k: 5,000 real MNIST digits (offline). digits: 8×8 digits, fastest. "
             "mnist: full MNIST (needs internet once).",
    )
    with gr.Row():
        num_clients = lenient(gr.Slider(task.MIN_CLIENTS, task.MAX_CLIENTS, value=DEFAULT_CLIENTS, step=1,
                                        label="Clients"))
        num_rounds = lenient(gr.Slider(task.MIN_ROUNDS, task.MAX_ROUNDS, value=DEFAULT_ROUNDS, step=1,
                                       label="Rounds"))
    partitioning = gr.Radio(
        list(PARTITIONINGS), value="iid", label="Partitioning", info=PARTITIONING_HELP["iid"],
    )
    with gr.Row():
        # The slider shows the useful part of the range; the API accepts task.ALPHA_RANGE.
        alpha = lenient(gr.Slider(0.05, 10.0, value=_DEFAULTS.alpha, step=0.05, label="Dirichlet alpha",
                                  visible=False))
        classes_per_client = lenient(gr.Slider(
            1, 10, value=_DEFAULTS.classes_per_client, step=1, label="Classes per client (k)", visible=False
        ))
    with gr.Row():
        strategy = gr.Dropdown(list(STRATEGIES), value=_DEFAULTS.strategy, label="Strategy")
        local_epochs = lenient(gr.Slider(task.MIN_LOCAL_EPOCHS, task.MAX_LOCAL_EPOCHS,
                                         value=_DEFAULTS.local_epochs, step=1, label="Local epochs"))
        seed = lenient(gr.Number(value=_DEFAULTS.seed, label="Seed", precision=0, minimum=0,
                                 maximum=task.MAX_SEED))
    with gr.Accordion("Differential privacy", open=False):
        differential_privacy = gr.Checkbox(
            value=False, label="Clip client updates and add Gaussian noise on the server (fedavg)"
        )
        with gr.Row():
            noise_multiplier = lenient(gr.Slider(task.NOISE_MULTIPLIER_RANGE[0], 5.0,
                                                 value=_DEFAULTS.noise_multiplier, step=0.1,
                                                 label="Noise multiplier"))
            clipping_norm = lenient(gr.Slider(0.1, 20.0, value=_DEFAULTS.clipping_norm, step=0.1,
                                              label="Clipping norm"))
    start = gr.Button("Start federated training", variant="primary")
    return Settings(dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client, strategy,
                    local_epochs, seed, differential_privacy, noise_multiplier, clipping_norm, start)


def _results_panel(distribution_plot: gr.Plot, distribution_note: gr.Markdown) -> Results:
    status = gr.Markdown("Press **Start federated training**. Flower first starts Ray (~10 s).")
    with gr.Row():
        curves = gr.Plot(label="Accuracy and loss per round (live)", format="png")
    with gr.Row():
        with gr.Column(scale=3):
            log = gr.Dataframe(
                headers=ROUND_LOG_COLUMNS, label="Round log", interactive=False, max_height=260,
            )
        with gr.Column(scale=2):
            summary_md = gr.Markdown()
            model_file = gr.File(label="Trained model (.skops)", interactive=False)
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
                label=f"Model file (.skops, at most {MAX_MODEL_FILE_BYTES // 2**20} MB)",
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
            gr.update(info=PARTITIONING_HELP.get(choice, "")),
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
    ) -> tuple[Any, str]:
        try:
            cfg = TrainingConfig.from_values(
                dataset=dataset, num_clients=num_clients, num_rounds=num_rounds, partitioning=partitioning,
                alpha=alpha, classes_per_client=classes_per_client, local_epochs=local_epochs, seed=seed,
            )
            counts = task.label_distribution(cfg)
            names = load_dataset(dataset).class_names
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


def _wire_training(ctx: DemoContext, settings: Settings, results: Results) -> None:
    @user_errors
    def train(
        dataset: str = DEFAULT_DATASET,
        num_clients: int = DEFAULT_CLIENTS,
        num_rounds: int = DEFAULT_ROUNDS,
        partitioning: str = _DEFAULTS.partitioning,
        alpha: float = _DEFAULTS.alpha,
        classes_per_client: int = _DEFAULTS.classes_per_client,
        strategy: str = _DEFAULTS.strategy,
        local_epochs: int = _DEFAULTS.local_epochs,
        seed: int = _DEFAULTS.seed,
        differential_privacy: bool = False,
        noise_multiplier: float = _DEFAULTS.noise_multiplier,
        clipping_norm: float = _DEFAULTS.clipping_norm,
        state: DemoSession | None = None,
        request: gr.Request = None,
        progress: gr.Progress = PROGRESS,
    ):
        """Train a model with Flower and stream each round (API: /train)."""
        cfg = TrainingConfig.from_values(
            dataset=dataset, num_clients=num_clients, num_rounds=num_rounds, partitioning=partitioning,
            alpha=alpha, classes_per_client=classes_per_client, strategy=strategy, local_epochs=local_epochs,
            seed=seed, differential_privacy=differential_privacy, noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
        )
        session = ctx.session(state, request)
        history: list[Any] = []
        baseline = None
        skip = gr.skip()
        progress(0, desc="Training the centralized baseline …")
        yield (skip, "… Training a centralized baseline for comparison …",
               figures.training_figure([], cfg.num_rounds), round_log([]), skip, skip, session, skip)
        for item in session.train(cfg):
            if isinstance(item, Baseline):
                baseline = item.accuracy
                progress(0, desc="Starting Flower (Ray) …")
                yield (skip, "… Starting the Flower simulation (Ray start-up takes ~10 s) …",
                       figures.training_figure([], cfg.num_rounds, baseline), skip, skip, skip, session, skip)
                continue
            if isinstance(item, dict):
                summary = item
                yield (
                    summary,
                    f"✓ Done: {cfg.num_rounds} rounds with {cfg.num_clients} clients "
                    f"in {summary['seconds']:.1f} s.",
                    figures.training_figure(history, cfg.num_rounds, summary.get("baseline_accuracy")),
                    round_log(history),
                    summary_markdown(summary),
                    serve_file(session, session.model_file),
                    session,
                    pipeline_status(session),
                )
                return
            history.append(item)
            progress((item.round, cfg.num_rounds), desc=f"Round {item.round}/{cfg.num_rounds}")
            text = f"… Round {item.round}/{cfg.num_rounds}: accuracy {item.accuracy:.1%}"
            if item.epsilon is not None:
                text += f", ε = {item.epsilon:.2f}"
            yield (skip, text, figures.training_figure(history, cfg.num_rounds, baseline), round_log(history),
                   skip, skip, session, skip)

    settings.start.click(
        train, settings.inputs() + [ctx.state],
        [results.summary_json, results.status, results.curves, results.log, results.summary_md,
         results.model_file, ctx.state, ctx.pipeline],
        api_name="train", show_progress="full", show_progress_on=[results.status], **TRAINING,
    )


def _wire_upload(ctx: DemoContext, settings: Settings, results: Results, upload: Upload) -> None:
    @user_errors
    def upload_model(
        file: str | None = None,
        dataset: str = DEFAULT_DATASET,
        state: DemoSession | None = None,
        request: gr.Request = None,
    ):
        """Use an uploaded .skops model instead of training (API: /upload_model)."""
        session = ctx.session(state, request)
        try:
            summary = session.use_uploaded_model(file, dataset)
        finally:
            hold_upload(session, file)  # the upload is deleted with the session, used or refused
        text = (
            f"✓ Using the uploaded model: **{summary['accuracy']:.1%}** test accuracy "
            f"on {summary['dataset']}. "
            "Continue with tab 2."
        )
        return summary, text, serve_file(session, session.model_file), session, pipeline_status(session)

    upload.button.click(
        upload_model, [upload.file, settings.dataset, ctx.state],
        [upload.result_json, upload.message, results.model_file, ctx.state, ctx.pipeline],
        api_name="upload_model", **LIGHT,
    )


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
            settings = _settings_panel()
        with gr.Column(scale=3, min_width=360):
            distribution_plot = gr.Plot(label="Label distribution per client", format="png")
            distribution_note = gr.Markdown()
    results = _results_panel(distribution_plot, distribution_note)
    upload = _upload_panel()
    _wire_partitioning_help(settings)
    _wire_preview(ctx, settings, results)
    _wire_training(ctx, settings, results)
    _wire_upload(ctx, settings, results, upload)
