"""Charts drawn once for everyone who sees the same thing.

Thirty visitors who press "Start" with the defaults share one training, so they
are shown the same chart after the same rounds. Drawing a matplotlib figure and
encoding it as an image takes a few hundred milliseconds of the app's one
Python thread at a time; a class of thirty paid it thirty times per chart.
:class:`PlotCache` keeps the encoded chart, keyed by what it shows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import gradio as gr
from gradio.data_classes import GradioModel
from matplotlib.figure import Figure

from concurrency.single_flight import SingleFlight

#: Encoded charts kept (a few tens of kB each).
DEFAULT_SIZE = 64


class PlotCache:
    """A bounded, thread-safe cache of encoded plots (least recently used out first).

    Parameters
    ----------
    size : int
        Charts kept.
    """

    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size
        self._lock = threading.Lock()
        self._plots: OrderedDict[Hashable, GradioModel] = OrderedDict()
        self._flights = SingleFlight()
        #: Charts actually drawn (cache misses).
        self.drawn = 0

    def __len__(self) -> int:
        return len(self._plots)

    def get(self, component: gr.Plot, key: Hashable, draw: Callable[[], Figure]) -> GradioModel:
        """The chart for ``key`` as ``component`` sends it, drawn with ``draw()`` only the first time.

        Parameters
        ----------
        component : gr.Plot
            The plot it is shown in (its format is used to encode it).
        key : hashable
            Everything the chart shows; equal keys must mean equal charts.
        draw : callable
            Returns the matplotlib figure (closed once encoded).

        Returns
        -------
        PlotData
            What a handler may return for ``component`` (sent as is).
        """
        with self._lock:
            plot = self._plots.get(key)
            if plot is not None:
                self._plots.move_to_end(key)
                return plot
        with self._flights.turn(key):  # viewers who arrive while it is drawn wait for that drawing
            with self._lock:
                plot = self._plots.get(key)
            if plot is None:
                plot = component.postprocess(draw())
                with self._lock:
                    self.drawn += 1
                    self._plots[key] = plot
                    while len(self._plots) > self.size:
                        self._plots.popitem(last=False)
        return plot
