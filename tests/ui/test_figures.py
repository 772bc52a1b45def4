"""Every chart keeps its text at least ui.figures.MIN_FONT_PT (the browser test measures it on screen)."""

from __future__ import annotations

import numpy as np
import pytest

from ui import figures
from ui.dp_panel import tradeoff

NAMES = [str(i) for i in range(10)]
ROUNDS = [{"round": r, "accuracy": 0.1 + 0.2 * r, "loss": 2.3 - 0.5 * r,
           "client_accuracy": None if r == 0 else 0.8} for r in range(4)]
WRONG_KEYS = {"real_probabilities": [0.05] * 9 + [0.55], "probabilities": [0.0] * 3 + [1.0] + [0.0] * 6,
              "samples": 20, "private_key_right": 17, "wrong_key_right": 2, "chance": 0.1}
SWEEP = [{"n_bits": b, "accuracy_clear": 0.9, "accuracy_fhe_simulated": 0.85, "max_bit_width": 10 + b}
         for b in (2, 4, 8)]
CHARTS = {
    "labels": lambda: figures.label_distribution_figure(np.full((5, 10), 80), NAMES),
    "rounds": lambda: figures.training_figure(ROUNDS, 3, 0.91),
    "wrong keys": lambda: figures.wrong_key_figure(WRONG_KEYS, NAMES),
    "n_bits": lambda: figures.n_bits_figure(SWEEP),
    "DP": lambda: figures.dp_tradeoff_figure(tradeoff()["points"], tradeoff()["no_dp_accuracy"], 1.5),
}


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_no_chart_text_is_smaller_than_the_projector_minimum(name):
    fig = CHARTS[name]()
    assert fig.get_figwidth() == figures.FIGURE_WIDTH_INCHES
    assert figures.min_font_pt(fig) >= figures.MIN_FONT_PT
    # At the widest the page shows a chart, its smallest text is at least 14 CSS px (projector at 1366 px).
    rendered_fraction = figures.MAX_DISPLAY_PX / (figures.FIGURE_WIDTH_INCHES * figures.DPI)
    assert figures.MIN_FONT_PT * figures.DPI / 72 * rendered_fraction >= 14


def test_the_shipped_dp_trade_off_covers_the_default_noise():
    from fl_training.config import TrainingConfig

    data = tradeoff()
    noises = [p["noise_multiplier"] for p in data["points"]]
    assert TrainingConfig().noise_multiplier in noises
    assert all(p["clipping_norm"] == TrainingConfig().clipping_norm for p in data["points"])
    epsilons = [p["epsilon"] for p in sorted(data["points"], key=lambda p: p["noise_multiplier"])]
    assert epsilons == sorted(epsilons, reverse=True)  # more noise, smaller ε


def test_the_dp_charts_labels_cover_no_line_error_bar_or_other_label():
    """On a projector "σ=1.5" once sat on the no-DP line and "σ=5" on an error bar."""
    data = tradeoff()
    fig = figures.dp_tradeoff_figure(data["points"], data["no_dp_accuracy"], 1.5)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ax = fig.axes[0]
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().startswith("σ=")]
    assert len(labels) == len(data["points"])
    boxes = [t.get_window_extent(renderer) for t in labels]
    # Every line (the curve, the no-DP line) and error bar, sampled every pixel on screen.
    paths = [line.get_transform().transform(line.get_xydata()) for line in ax.get_lines()]
    paths += [ax.transData.transform(s) for c in ax.collections for s in c.get_segments()]
    samples = np.vstack([a + t * (b - a) for path in paths for a, b in zip(path[:-1], path[1:], strict=False)
                         for t in np.linspace(0, 1, max(2, int(np.hypot(*(b - a)))))[:, None]])
    for label, box in zip(labels, boxes, strict=True):
        covered = samples[(samples[:, 0] >= box.x0) & (samples[:, 0] <= box.x1)
                          & (samples[:, 1] >= box.y0) & (samples[:, 1] <= box.y1)]
        assert not len(covered), f"{label.get_text()} covers a line or an error bar"
        assert ax.get_window_extent(renderer).contains(box.x0, box.y0), label.get_text()
        assert ax.get_window_extent(renderer).contains(box.x1, box.y1), label.get_text()
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1:]), labels[i].get_text()
