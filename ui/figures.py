"""Charts and images of the demo (matplotlib, no gradio).

Figures are built with matplotlib's object API (no pyplot state), so handlers
of different sessions can draw at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

ACCENT = "#f97316"
CLEAR = "#2563eb"
MUTED = "#94a3b8"


def _figure(width: float = 7.0, height: float = 3.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    # Leave the top strip free: gradio draws the component's label badge over it.
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.9))
    return fig


def label_distribution_figure(counts: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Stacked bars: how many samples of each label every client holds.

    Parameters
    ----------
    counts : ndarray of shape (num_clients, n_classes)
        From :func:`ui.session.label_distribution`.
    class_names : sequence of str
        Legend entries.

    Returns
    -------
    Figure
        The chart.
    """
    counts = np.asarray(counts)
    n_clients, n_classes = counts.shape
    fig = _figure(7.0, 3.0)
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
    ax.set_ylim(0, max(1, bottom.max()) * 1.08)
    step = max(1, n_clients // 20)
    ax.set_xticks(x[::step], [str(i) for i in x[::step]])
    ax.legend(title="label", fontsize=7, title_fontsize=8, ncols=1 if n_classes <= 10 else 2,
              loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _palette(i: int, n: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return cmap(i % cmap.N)


def training_figure(
    history: Sequence[Any], total_rounds: int, baseline_accuracy: float | None = None
) -> Figure:
    """Accuracy and loss of the global model per round, drawn while training runs.

    Parameters
    ----------
    history : sequence of RoundRecord (or dicts with the same keys)
        Rounds so far (round 0 is the initial model).
    total_rounds : int
        Planned rounds, to fix the x axis from the start.
    baseline_accuracy : float, optional
        Accuracy of a centrally trained model, drawn as a dashed line.

    Returns
    -------
    Figure
        Two panels: accuracy and loss.
    """
    def get(record: Any, key: str) -> Any:
        return record[key] if isinstance(record, dict) else getattr(record, key)

    rounds = [get(r, "round") for r in history]
    accuracy = [get(r, "accuracy") for r in history]
    loss = [get(r, "loss") for r in history]
    client_accuracy = [get(r, "client_accuracy") for r in history]
    fig = _figure(7.5, 3.0)
    ax_acc, ax_loss = fig.subplots(1, 2)
    ax_acc.plot(rounds, accuracy, "o-", color=ACCENT, label="global model (server test split)")
    pairs = [(r, a) for r, a in zip(rounds, client_accuracy, strict=False) if a is not None]
    if pairs:
        client_rounds, client_values = zip(*pairs, strict=True)
        ax_acc.plot(client_rounds, client_values, "s--", color=MUTED, markersize=4,
                    label="clients' own validation")
    if baseline_accuracy is not None:
        ax_acc.axhline(baseline_accuracy, color=CLEAR, linestyle=":", label="centralized baseline")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_ylabel("accuracy")
    ax_loss.plot(rounds, loss, "o-", color=ACCENT)
    ax_loss.set_ylabel("log loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlim(-0.3, max(1, total_rounds) + 0.3)
        ax.set_xlabel("round")
        ax.set_xticks(range(0, max(1, total_rounds) + 1, max(1, total_rounds // 10)))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    ax_acc.legend(fontsize=7, loc="lower right")
    return fig


def probabilities_figure(
    probabilities: Sequence[float],
    class_names: Sequence[str],
    clear_probabilities: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Bars of the decrypted probabilities, beside the clear model's.

    Parameters
    ----------
    probabilities : sequence of float
        Decrypted (FHE) probabilities.
    class_names : sequence of str
        One per class.
    clear_probabilities : sequence of float, optional
        The clear scikit-learn model's probabilities.
    title : str, optional
        Chart title (the UI's component label usually says it already).

    Returns
    -------
    Figure
        The chart.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    x = np.arange(len(probabilities))
    width = 0.4 if clear_probabilities is not None else 0.7
    fig = _figure(6.5, 2.8)
    ax = fig.add_subplot()
    offset = -width / 2 if clear_probabilities is not None else 0
    colors = [ACCENT if i == int(np.argmax(probabilities)) else "#fdba74" for i in x]
    ax.bar(x + offset, probabilities, width, color=colors, label="FHE (decrypted)")
    if clear_probabilities is not None:
        ax.bar(x + width / 2, np.asarray(clear_probabilities, dtype=float), width, color=CLEAR,
               alpha=0.6, label="clear model")
        ax.legend(fontsize=8)
    ax.set_xticks(x, [str(c) for c in class_names], rotation=0 if len(x) <= 10 else 45)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability")
    if title:
        ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
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
        Accuracy on the left axis, the accumulator's bit width on the right.
    """
    bits = [r["n_bits"] for r in rows]
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    ax.plot(bits, [r["accuracy_fhe_simulated"] for r in rows], "o-", color=ACCENT, label="FHE (simulated)")
    ax.plot(bits, [r["accuracy_clear"] for r in rows], "--", color=CLEAR, label="clear model")
    ax.set_xlabel("n_bits (quantization of inputs and weights)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(bits)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.bar(bits, [r["max_bit_width"] for r in rows], width=0.35, color=MUTED, alpha=0.35,
             label="circuit bit width")
    twin.set_ylabel("max bit width (cost grows with it)")
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    ax.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=8, loc="lower right")
    return fig


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
