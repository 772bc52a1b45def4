"""Charts and images of the demo (matplotlib, no gradio).

Figures are built with matplotlib's object API (no pyplot state), so handlers
of different sessions can draw at the same time.

Every chart is drawn for a projector and a phone at once: it is
:data:`FIGURE_WIDTH_INCHES` wide and no text in it is smaller than
:data:`MIN_FONT_PT`, so text is at least 3.5 % of the chart's width. The page
shows charts as wide as their column, at most :data:`MAX_DISPLAY_PX` (the
app's CSS): at 1366 px a chart is 480-680 px wide and its smallest text
17-24 px; on a 390 px phone it is 300-330 px wide and its text 10-11 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

ACCENT = "#f97316"
CLEAR = "#2563eb"
MUTED = "#94a3b8"
WRONG = "#b91c1c"

#: Width of every chart, and the resolution of its PNG (sharp on phones and projectors).
FIGURE_WIDTH_INCHES = 5.0
DPI = 150
#: The smallest text of any chart (tick labels, legends); titles and axis labels are larger.
MIN_FONT_PT = 12.5
LABEL_PT = 13.5
#: The widest a chart is shown (CSS in app.py), in CSS pixels.
MAX_DISPLAY_PX = 680


def _figure(height: float, width: float = FIGURE_WIDTH_INCHES) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _style(ax: Any, grid: bool = True) -> None:
    ax.tick_params(labelsize=MIN_FONT_PT)
    ax.xaxis.label.set_fontsize(LABEL_PT)
    ax.yaxis.label.set_fontsize(LABEL_PT)
    ax.title.set_fontsize(LABEL_PT)
    if grid:
        ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _legend(ax: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("fontsize", MIN_FONT_PT)
    kwargs.setdefault("frameon", False)
    legend = ax.legend(*args, **kwargs)
    if legend.get_title():
        legend.get_title().set_fontsize(MIN_FONT_PT)
    return legend


def min_font_pt(fig: Figure) -> float:
    """The size of the smallest visible text in ``fig``, in points (tests check it)."""
    fig.canvas.draw()  # tick labels exist once drawn
    sizes = [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize"))
             if t.get_visible() and getattr(t, "get_text", lambda: "")().strip()]
    return min(sizes) if sizes else float("inf")


def label_distribution_figure(counts: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Stacked bars: how many samples of each label every client holds.

    Parameters
    ----------
    counts : ndarray of shape (num_clients, n_classes)
        From :func:`fl_training.task.label_distribution`.
    class_names : sequence of str
        Legend entries.

    Returns
    -------
    Figure
        The chart, its legend under the bars.
    """
    counts = np.asarray(counts)
    n_clients, n_classes = counts.shape
    fig = _figure(3.6)
    ax = fig.add_subplot()
    colors = [_palette(i, n_classes) for i in range(n_classes)]
    bottom = np.zeros(n_clients)
    x = np.arange(n_clients)
    for label in range(n_classes):
        ax.bar(x, counts[:, label], bottom=bottom, color=colors[label], label=str(class_names[label]),
               width=0.8)
        bottom += counts[:, label]
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_ylim(0, max(1, bottom.max()) * 1.05)
    step = max(1, int(np.ceil(n_clients / 10)))
    ax.set_xticks(x[::step], [str(i) for i in x[::step]])
    _style(ax, grid=False)
    _legend(ax, title="label", ncols=min(n_classes, 5), loc="upper center", bbox_to_anchor=(0.5, -0.28),
            handlelength=1.0, columnspacing=0.8)
    return fig


def _palette(i: int, n: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return cmap(i % cmap.N)


def training_figure(
    history: Sequence[Any], total_rounds: int, baseline_accuracy: float | None = None
) -> Figure:
    """Accuracy (top) and loss (bottom) of the global model per round, drawn while training runs.

    Parameters
    ----------
    history : sequence of RoundRecord (or dicts with the same keys)
        Rounds so far (round 0 is the initial model).
    total_rounds : int
        Planned rounds, to fix the x axis from the start.
    baseline_accuracy : float, optional
        Accuracy of a centrally trained model, drawn as a dotted line.

    Returns
    -------
    Figure
        Two panels sharing the round axis.
    """
    def get(record: Any, key: str) -> Any:
        return record[key] if isinstance(record, dict) else getattr(record, key)

    rounds = [get(r, "round") for r in history]
    accuracy = [get(r, "accuracy") for r in history]
    loss = [get(r, "loss") for r in history]
    client_accuracy = [get(r, "client_accuracy") for r in history]
    fig = _figure(4.4)
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    ax_acc.plot(rounds, accuracy, "o-", color=ACCENT, label="global model (server's test split)")
    pairs = [(r, a) for r, a in zip(rounds, client_accuracy, strict=False) if a is not None]
    if pairs:
        client_rounds, client_values = zip(*pairs, strict=True)
        ax_acc.plot(client_rounds, client_values, "s--", color=MUTED, markersize=4,
                    label="clients' own validation")
    if baseline_accuracy is not None:
        ax_acc.axhline(baseline_accuracy, color=CLEAR, linestyle=":", label="central baseline")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_ylabel("accuracy")
    ax_loss.plot(rounds, loss, "o-", color=ACCENT)
    ax_loss.set_ylabel("log loss")
    ax_loss.set_xlabel("round")
    ticks = range(0, max(1, total_rounds) + 1, max(1, int(np.ceil(total_rounds / 8))))
    for ax in (ax_acc, ax_loss):
        ax.set_xlim(-0.3, max(1, total_rounds) + 0.3)
        ax.set_xticks(list(ticks))
        _style(ax)
    if history or baseline_accuracy is not None:
        _legend(ax_acc, loc="lower right")
    return fig


def wrong_key_figure(result: dict[str, Any], class_names: Sequence[str]) -> Figure:
    """What wrong keys make of encrypted results, beside what the private key makes of them.

    Parameters
    ----------
    result : dict
        From :meth:`story.DemoSession.decrypt_with_wrong_key`.
    class_names : sequence of str
        One per class.

    Returns
    -------
    Figure
        Top: the probabilities decrypted from the current result with the
        private key and with one wrong key (whose random integers the softmax
        turns into a confident bar for an arbitrary class). Bottom, when the
        check ran: right answers over the test samples, private key vs wrong
        keys, against a blind guess.
    """
    real = np.asarray(result["real_probabilities"], dtype=float)
    wrong = np.asarray(result["probabilities"], dtype=float)
    x = np.arange(len(real))
    checked = bool(result.get("samples"))
    fig = _figure(5.4 if checked else 3.0)
    if checked:
        ax_scores, ax_right = fig.subplots(2, 1, height_ratios=[3, 2])
    else:
        ax_scores, ax_right = fig.add_subplot(), None
    ax_scores.bar(x - 0.2, real, 0.4, color=CLEAR, label="private key")
    ax_scores.bar(x + 0.2, wrong, 0.4, color=WRONG, alpha=0.8, label="a wrong key")
    ax_scores.set_ylabel("probability")
    ax_scores.set_xlabel("class")
    ax_scores.set_ylim(0, 1.05)
    ax_scores.set_xticks(x, [str(c) for c in class_names], rotation=0 if len(x) <= 10 else 45)
    _legend(ax_scores, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2)
    _style(ax_scores, grid=False)
    if ax_right is not None:
        n = result["samples"]
        shares = [result["private_key_right"] / n, result["wrong_key_right"] / n]
        bars = ax_right.barh([1, 0], shares, 0.6, color=[CLEAR, WRONG])
        ax_right.axvline(result["chance"], color="black", linestyle="--", label="blind guess")
        for bar, share in zip(bars, shares, strict=True):
            ax_right.annotate(f"{share:.0%}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                              xytext=(4, 0), textcoords="offset points", va="center", fontsize=MIN_FONT_PT)
        ax_right.set_yticks([1, 0], ["private key", "wrong keys"])
        ax_right.set_xlim(0, 1.15)
        ax_right.set_xlabel(f"right answers over {n} test samples")
        _legend(ax_right, loc="lower right")
        _style(ax_right, grid=False)
    return fig


def n_bits_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """Accuracy and circuit bit width against ``n_bits`` (the sweep of tab 2).

    Parameters
    ----------
    rows : sequence of dict
        ``n_bits``, ``accuracy_clear``, ``accuracy_fhe_simulated``, ``max_bit_width``,
        ``compile_seconds``.

    Returns
    -------
    Figure
        Accuracy on the left axis, the circuit's bit width on the right.
    """
    bits = [r["n_bits"] for r in rows]
    fig = _figure(3.6)
    ax = fig.add_subplot()
    ax.plot(bits, [r["accuracy_fhe_simulated"] for r in rows], "o-", color=ACCENT, label="FHE (simulated)")
    ax.plot(bits, [r["accuracy_clear"] for r in rows], "--", color=CLEAR, label="clear model")
    ax.set_xlabel("n_bits")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(bits)
    twin = ax.twinx()
    twin.bar(bits, [r["max_bit_width"] for r in rows], width=0.35, color=MUTED, alpha=0.35,
             label="bit width")
    twin.set_ylabel("circuit bit width")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    _style(ax)
    _style(twin, grid=False)
    twin.spines["right"].set_visible(True)
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    _legend(ax, handles[0] + twin_handles[0], handles[1] + twin_handles[1], loc="lower right")
    return fig


def dp_tradeoff_figure(
    points: Sequence[dict[str, Any]], no_dp_accuracy: float | None, default_noise: float | None = None
) -> Figure:
    """Test accuracy against ε: the price of differential privacy.

    Parameters
    ----------
    points : sequence of dict
        ``noise_multiplier``, ``epsilon``, ``accuracy`` (mean over seeds) and
        optionally ``accuracy_min`` / ``accuracy_max``.
    no_dp_accuracy : float or None
        The same training without DP, drawn as a line.
    default_noise : float, optional
        The app's default noise multiplier, circled.

    Returns
    -------
    Figure
        ε on a log axis (left: more privacy), one point per noise multiplier.
    """
    points = sorted(points, key=lambda p: p["epsilon"])
    eps = [p["epsilon"] for p in points]
    acc = [p["accuracy"] for p in points]
    fig = _figure(3.8)
    ax = fig.add_subplot()
    if all("accuracy_min" in p for p in points):
        low = [p["accuracy"] - p["accuracy_min"] for p in points]
        high = [p["accuracy_max"] - p["accuracy"] for p in points]
        ax.errorbar(eps, acc, yerr=[low, high], fmt="none", ecolor=MUTED, capsize=3)
    ax.plot(eps, acc, "o-", color=ACCENT, label="with DP")
    if default_noise is not None:
        chosen = [p for p in points if abs(p["noise_multiplier"] - default_noise) < 1e-9]
        if chosen:
            ax.plot([chosen[0]["epsilon"]], [chosen[0]["accuracy"]], "o", markersize=14,
                    markerfacecolor="none", markeredgecolor=CLEAR, markeredgewidth=2, label="default")
    if no_dp_accuracy is not None:
        ax.axhline(no_dp_accuracy, color=CLEAR, linestyle=":", label="no DP")
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if min(eps) / 1.5 <= t <= max(eps) * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("ε at δ = 1e-5 (smaller: more privacy)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    _style(ax)
    _legend(ax, loc="lower right")
    _label_points(fig, ax, [(p["epsilon"], p["accuracy"]) for p in points],
                  [f"σ={p['noise_multiplier']:g}" for p in points])
    return fig


#: Where a point's label may go (points from the point): below, above, right, left, then the diagonals.
LABEL_OFFSETS = ((0, -16), (0, 16), (12, 0), (-12, 0), (12, 14), (-12, 14), (12, -14), (-12, -14))


def _drawn_points(ax: Any) -> np.ndarray:
    """Every line, marker and error bar of ``ax`` as screen points 2 px apart (what labels must not cover)."""
    segments = []
    around = np.linspace(0, 2 * np.pi, 16)
    for line in ax.get_lines():
        vertices = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        segments.append(vertices)
        if line.get_marker() not in (None, "", "None", " "):
            radius = line.get_markersize() / 2 * ax.figure.dpi / 72
            circle = radius * np.column_stack([np.cos(around), np.sin(around)])
            segments.extend(v + circle for v in vertices)
    for collection in ax.collections:
        for segment in getattr(collection, "get_segments", list)():
            segments.append(ax.transData.transform(np.asarray(segment, dtype=float)))
    points = []
    for path in segments:
        points.append(path)
        for start, end in zip(path[:-1], path[1:], strict=False):
            steps = max(2, int(np.hypot(*(end - start)) / 2))
            points.append(start + np.linspace(0, 1, steps)[:, None] * (end - start))
    return np.vstack(points) if points else np.empty((0, 2))


def _label_points(fig: Figure, ax: Any, xy: Sequence[tuple[float, float]], texts: Sequence[str]) -> None:
    """Label each point where its text covers no line, error bar, marker, axis, the legend or another label.

    Each label takes the first of :data:`LABEL_OFFSETS` that is clear (else the least covered one).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # where the lines, ticks and legend are on screen
    renderer = canvas.get_renderer()
    drawn = _drawn_points(ax)
    frame = ax.get_window_extent(renderer)  # labels stay inside the axes: off them they hit ticks or get cut
    taken = [legend.get_window_extent(renderer)] if (legend := ax.get_legend()) is not None else []
    for (x, y), text in zip(xy, texts, strict=True):
        best = None
        for dx, dy in LABEL_OFFSETS:
            align = "center" if dx == 0 else ("left" if dx > 0 else "right")
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                                fontsize=MIN_FONT_PT, ha=align, va="center")
            box = label.get_window_extent(renderer).padded(2)
            inside = ((drawn[:, 0] >= box.x0) & (drawn[:, 0] <= box.x1)
                      & (drawn[:, 1] >= box.y0) & (drawn[:, 1] <= box.y1))
            outside = not (frame.x0 <= box.x0 and box.x1 <= frame.x1
                           and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            covered = int(inside.sum()) + sum(box.overlaps(other) for other in taken) + 100 * outside
            if best is None or covered < best[0]:
                if best is not None:
                    best[1].remove()
                best = (covered, label, box)
            else:
                label.remove()
            if covered == 0:
                break
        taken.append(best[2])


def sample_image(x: np.ndarray, shape: tuple[int, int], high: float, size: int = 196) -> np.ndarray:
    """Upscale one image sample to a crisp uint8 picture (nearest neighbour).

    Parameters
    ----------
    x : ndarray of shape (h*w,)
        Raw pixel values in ``[0, high]``.
    shape : tuple of int
        ``(h, w)``.
    high : float
        Largest raw value (255 for MNIST, 16 for digits).
    size : int
        Target height in pixels (rounded to a multiple of ``h``).

    Returns
    -------
    ndarray of uint8, shape (H, W)
        Grayscale image, light strokes on black like the dataset.
    """
    image = np.asarray(x, dtype=float).reshape(shape)
    image = np.clip(image / (high or 1.0) * 255.0, 0, 255).astype(np.uint8)
    factor = max(1, size // shape[0])
    return np.kron(image, np.ones((factor, factor), dtype=np.uint8))


def quantized_image(q: np.ndarray, shape: tuple[int, int], size: int = 196) -> np.ndarray:
    """Show the integers that get encrypted as an image (their own range mapped to 0-255).

    Parameters
    ----------
    q : ndarray of int
        Quantized input, one integer per pixel.
    shape : tuple of int
        ``(h, w)``.
    size : int
        Target height.

    Returns
    -------
    ndarray of uint8
        Grayscale image.
    """
    q = np.asarray(q, dtype=float)
    span = q.max() - q.min()
    scaled = (q - q.min()) / span * 255.0 if span > 0 else np.zeros_like(q)
    return sample_image(scaled, shape, 255.0, size)
