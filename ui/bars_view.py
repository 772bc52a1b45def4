"""Step ④'s class probabilities as HTML bars (no gradio, no matplotlib).

The decrypted probabilities are drawn once per visitor, at the busiest moment of a
class: as a matplotlib chart, drawing and encoding the PNG took ~0.1 s of the app's
Python thread each (0.19 s under load, the largest share of a visitor's work in the
app). As HTML the browser draws them: crisp on a projector and a phone, the numbers
readable as text, and nearly free for the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def _percent(value: float) -> str:
    """Whole percents; a probability that rounds to 0 but is not 0 reads "<1%"."""
    return "<1%" if 0 < value < 0.005 else f"{value:.0%}"


def _bar(kind: str, value: float) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return f'<span class="bar {kind}" style="width:{width:.1f}%"></span>'


def probabilities_html(
    probabilities: Sequence[float],
    class_names: Sequence[str],
    clear_probabilities: Sequence[float] | None = None,
) -> str:
    """One row per class: the decrypted probability's bar and value, the clear model's beside it.

    Parameters
    ----------
    probabilities : sequence of float
        Decrypted (FHE) probabilities.
    class_names : sequence of str
        One per class.
    clear_probabilities : sequence of float, optional
        The clear scikit-learn model's probabilities.

    Returns
    -------
    str
        The chart; the most probable decrypted class is marked.
    """
    if len(class_names) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probabilities for {len(class_names)} class names")
    if clear_probabilities is not None and len(clear_probabilities) != len(probabilities):
        raise ValueError(
            f"{len(clear_probabilities)} clear probabilities for {len(probabilities)} decrypted ones")
    best = max(range(len(probabilities)), key=lambda i: probabilities[i]) if len(probabilities) else -1
    legend = '<span class="key fhe"></span>decrypted (FHE)'
    if clear_probabilities is not None:
        legend += ' <span class="key clear"></span>clear model'
    rows = []
    for i, (name, p) in enumerate(zip(class_names, probabilities, strict=True)):
        bars = _bar("fhe", p)
        values = escape(_percent(p))
        if clear_probabilities is not None:
            bars += _bar("clear", clear_probabilities[i])
            values += f' <span class="clear-value">{escape(_percent(clear_probabilities[i]))}</span>'
        top = ' class="top"' if i == best else ""
        rows.append(f'<li{top}><span class="name">{escape(str(name))}</span>'
                    f'<span class="bars">{bars}</span><span class="value">{values}</span></li>')
    return (f'<div class="probabilities" role="img" aria-label="class probabilities">'
            f'<p class="legend">{legend}</p><ol>{"".join(rows)}</ol></div>')
