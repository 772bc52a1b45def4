"""Tab 1: federated training with Flower, or uploading an existing model."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from fl_training.datasets import DATASET_NAMES, DEFAULT_DATASET
from fl_training.task import PARTITIONINGS, STRATEGIES
from ui import figures
from ui.common import (
    LIGHT,
    PROGRESS,
    TRAINING,
    DemoContext,
    hold_upload,
    lenient,
    pipeline_status,
    serve_file,
    user_errors,
)
from ui.session import (
    MAX_MODEL_FILE_BYTES,
    Baseline,
    DemoSession,
    StepError,
    get_dataset,
    label_distribution,
    training_config,
)

#: Defaults sized for a 2-core laptop: ~15 s for mnist-5k, Ray start-up included.
DEFAULT_CLIENTS = 5
DEFAULT_ROUNDS = 3
DEFAULT_LOCAL_EPOCHS = 10

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


def build(ctx: DemoContext, pipeline: gr.Markdown) -> None:
    """Create tab 1's widgets and events inside the current ``gr.Tab``.

    Parameters
    ----------
    ctx : DemoContext
        Registry and session state.
    pipeline : gr.Markdown
        The status line above the tabs, refreshed after each step.
    """
    gr.Markdown(
        "Several clients each train a logistic regression on **their own data**; a Flower server "
        "averages their weights round after round. No client ever sends a single image."
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            dataset = gr.Dropdown(
                list(DATASET_NAMES), value=DEFAULT_DATASET, label="Dataset",
                info="mnist-5k: 5,000 real MNIST digits (offline). digits: 8×8 digits, fastest. "
                     "mnist: full MNIST (needs internet once).",
            )
            with gr.Row():
                num_clients = lenient(gr.Slider(2, 50, value=DEFAULT_CLIENTS, step=1, label="Clients"))
                num_rounds = lenient(gr.Slider(1, 20, value=DEFAULT_ROUNDS, step=1, label="Rounds"))
            partitioning = gr.Radio(
                list(PARTITIONINGS), value="iid", label="Partitioning", info=PARTITIONING_HELP["iid"],
            )
            with gr.Row():
                alpha = lenient(
                    gr.Slider(0.05, 10.0, value=0.5, step=0.05, label="Dirichlet alpha", visible=False)
                )
                classes_per_client = lenient(gr.Slider(
                    1, 10, value=2, step=1, label="Classes per client (k)", visible=False
                ))
            with gr.Row():
                strategy = gr.Dropdown(list(STRATEGIES), value="fedavg", label="Strategy")
                local_epochs = lenient(
                    gr.Slider(1, 50, value=DEFAULT_LOCAL_EPOCHS, step=1, label="Local epochs")
                )
                seed = lenient(gr.Number(value=0, label="Seed", precision=0, minimum=0))
            with gr.Accordion("Differential privacy", open=False):
                differential_privacy = gr.Checkbox(
                    value=False, label="Clip client updates and add Gaussian noise on the server (fedavg)"
                )
                with gr.Row():
                    noise_multiplier = lenient(
                        gr.Slider(0.0, 5.0, value=0.5, step=0.1, label="Noise multiplier")
                    )
                    clipping_norm = lenient(gr.Slider(0.1, 20.0, value=5.0, step=0.1, label="Clipping norm"))
            start = gr.Button("Start federated training", variant="primary")
        with gr.Column(scale=3, min_width=360):
            distribution_plot = gr.Plot(label="Label distribution per client", format="png")
            distribution_note = gr.Markdown()
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

    with gr.Accordion("…or convert an existing scikit-learn model", open=False):
        gr.Markdown(
            "Upload a fitted `LogisticRegression` saved with `skops.io.dump(model, 'model.skops')`, "
            "trained on the raw features of the dataset selected above. Pickle files are refused: "
            "loading them runs code."
        )
        with gr.Row():
            upload = gr.File(
                label=f"Model file (.skops, at most {MAX_MODEL_FILE_BYTES // 2**20} MB)",
                file_types=[".skops"], type="filepath",
            )
            with gr.Column():
                use_upload = gr.Button("Use this model")
                upload_md = gr.Markdown()
        upload_json = gr.JSON(label="/upload_model result", visible=False)

    settings = [dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client, strategy,
                local_epochs, seed, differential_privacy, noise_multiplier, clipping_norm]

    def show_partitioning_options(choice: str) -> tuple[Any, Any, Any]:
        return (
            gr.update(visible=choice == "dirichlet"),
            gr.update(visible=choice == "pathological"),
            gr.update(info=PARTITIONING_HELP.get(choice, "")),
        )

    partitioning.change(
        show_partitioning_options, [partitioning], [alpha, classes_per_client, partitioning],
        api_visibility="private", queue=False,
    )

    def preview_distribution(
        dataset: str, num_clients: Any, num_rounds: Any, partitioning: str, alpha: Any,
        classes_per_client: Any, strategy: str, local_epochs: Any, seed: Any,
        differential_privacy: bool, noise_multiplier: Any, clipping_norm: Any,
    ) -> tuple[Any, str]:
        try:
            cfg = training_config(
                dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client,
                "fedavg", local_epochs, seed, False, noise_multiplier, clipping_norm,
            )
            counts = label_distribution(cfg)
            names = get_dataset(dataset).class_names
        except StepError as exc:
            return None, f"⚠ {exc}"
        note = (
            f"{cfg.num_clients} clients hold {samples_per_client(counts)} each; "
            f"on average {float((counts > 0).sum(axis=1).mean()):.1f} of {counts.shape[1]} labels."
        )
        return figures.label_distribution_figure(counts, names), note

    gr.on(
        [ctx.demo.load]
        + [c.change for c in (dataset, num_clients, partitioning, alpha, classes_per_client, seed)],
        preview_distribution, settings, [distribution_plot, distribution_note],
        api_visibility="private", trigger_mode="always_last", **LIGHT,
    )

    @user_errors
    def train(
        dataset: str = DEFAULT_DATASET,
        num_clients: int = DEFAULT_CLIENTS,
        num_rounds: int = DEFAULT_ROUNDS,
        partitioning: str = "iid",
        alpha: float = 0.5,
        classes_per_client: int = 2,
        strategy: str = "fedavg",
        local_epochs: int = DEFAULT_LOCAL_EPOCHS,
        seed: int = 0,
        differential_privacy: bool = False,
        noise_multiplier: float = 0.5,
        clipping_norm: float = 5.0,
        state: DemoSession | None = None,
        request: gr.Request = None,
        progress: gr.Progress = PROGRESS,
    ):
        """Train a model with Flower and stream each round (API: /train)."""
        cfg = training_config(
            dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client, strategy,
            local_epochs, seed, differential_privacy, noise_multiplier, clipping_norm,
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
                    serve_file(session, session.model.model_file),
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

    start.click(
        train, settings + [ctx.state],
        [summary_json, status, curves, log, summary_md, model_file, ctx.state, pipeline],
        api_name="train", show_progress="full", show_progress_on=[status], **TRAINING,
    )

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
        return summary, text, serve_file(session, session.model.model_file), session, pipeline_status(session)

    use_upload.click(
        upload_model, [upload, dataset, ctx.state],
        [upload_json, upload_md, model_file, ctx.state, pipeline],
        api_name="upload_model", **LIGHT,
    )

