"""Charts that many visitors see are drawn once; the cache stays bounded."""

from __future__ import annotations

import threading

import gradio as gr
from matplotlib.figure import Figure

from ui.plot_cache import PlotCache


def _figure(value: float) -> Figure:
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, value])
    return fig


def test_visitors_asking_at_once_share_one_drawing():
    cache, plot = PlotCache(), gr.Plot(format="png")
    started, release, calls = threading.Event(), threading.Event(), []

    def draw() -> Figure:
        calls.append(1)
        started.set()
        release.wait(10)
        return _figure(1.0)

    results: list = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(plot, "k", draw))) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and cache.drawn == 1
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert results[0].type == "matplotlib" and results[0].plot.startswith("data:image/png")


def test_different_charts_are_drawn_apart_and_the_cache_is_bounded():
    cache, plot = PlotCache(size=2), gr.Plot(format="png")
    first = cache.get(plot, 1, lambda: _figure(1.0))
    second = cache.get(plot, 2, lambda: _figure(2.0))
    assert first.plot != second.plot
    cache.get(plot, 3, lambda: _figure(3.0))
    assert len(cache) == 2 and cache.drawn == 3
    cache.get(plot, 1, lambda: _figure(1.0))  # pushed out: drawn again
    assert cache.drawn == 4
