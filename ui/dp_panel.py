"""Tab 1's differential-privacy panel: the price of privacy (accuracy against ε), measured and shipped.

The figures come from ``benchmarks/bench_dp_tradeoff.py`` (``--output
ui/dp_tradeoff.json``): training a model for each point takes far longer than
a visitor should wait, and the chart is the same for everyone.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import gradio as gr

from story.forms import DP_CLIENTS, DP_TRAINING
from ui import figures
from ui.training_form import Settings

#: The measured trade-off (written by ``benchmarks/bench_dp_tradeoff.py``).
TRADEOFF_FILE = Path(__file__).with_name("dp_tradeoff.json")
#: Below this many clients the noise drowns the model at any useful ε (see the benchmark).
FEW_CLIENTS = 20


@lru_cache(maxsize=1)
def tradeoff() -> dict[str, Any]:
    """The measured points: ``settings``, ``no_dp_accuracy``, ``points`` (σ, ε, accuracy, min, max)."""
    return json.loads(TRADEOFF_FILE.read_text())


def tradeoff_markdown(data: dict[str, Any]) -> str:
    """What the chart shows, in words."""
    s = data["settings"]
    return (
        f"Measured on {s['dataset']} with {s['num_clients']} clients × {s['num_rounds']} rounds "
        f"({s['partitioning']}, {s['strategy']}, clipping norm C = {data['points'][0]['clipping_norm']:g}, "
        f"mean of {s['seeds']} seeds; `benchmarks/bench_dp_tradeoff.py`). More noise σ → smaller ε "
        f"(stronger privacy) → lower accuracy; without DP: {data['no_dp_accuracy']:.1%}. The noise is added "
        "once to the clients' average, so DP needs many clients: with 5, even ε ≈ 20 leaves the model "
        "close to guessing."
    )


def few_clients_note(differential_privacy: bool, num_clients: Any) -> str:
    """A warning when DP is on with too few clients for its noise."""
    try:
        clients = int(num_clients)
    except (TypeError, ValueError):
        return ""
    if differential_privacy and clients < FEW_CLIENTS:
        return (f"⚠ Differential privacy with {clients} clients: the noise will swamp the model. "
                f"Use at least {FEW_CLIENTS} clients (the button below sets {DP_CLIENTS}).")
    return ""


def build(settings: Settings) -> None:
    """The panel, under the training settings: a warning, a one-click DP setting, and the chart.

    Parameters
    ----------
    settings : Settings
        The training form (the button fills it in).
    """
    note = gr.Markdown()
    with gr.Accordion("Differential privacy: accuracy against ε", open=False):
        data = tradeoff()
        defaults = DP_TRAINING
        gr.Plot(figures.dp_tradeoff_figure(data["points"], data["no_dp_accuracy"], defaults.noise_multiplier),
                format="png", show_label=False, label="Accuracy against ε")
        gr.Markdown(tradeoff_markdown(data))
        use = gr.Button(f"Use DP with {DP_CLIENTS} clients, σ = {defaults.noise_multiplier:g}, "
                        f"C = {defaults.clipping_norm:g}", size="sm")

    gr.on([settings.differential_privacy.change, settings.num_clients.change], few_clients_note,
          [settings.differential_privacy, settings.num_clients], [note], queue=False,
          api_visibility="private", show_progress="hidden")

    def suggested() -> tuple:
        cfg = DP_TRAINING
        return (cfg.dataset, cfg.num_clients, cfg.num_rounds, cfg.partitioning, cfg.strategy, True,
                cfg.noise_multiplier, cfg.clipping_norm)

    form = [settings.dataset, settings.num_clients, settings.num_rounds, settings.partitioning,
            settings.strategy, settings.differential_privacy, settings.noise_multiplier,
            settings.clipping_norm]
    use.click(suggested, None, form, queue=False, api_visibility="private")
