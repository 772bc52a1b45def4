"""The Gradio views of the demo: one module per tab, plus the widgets and glue they share.

The tabs turn widgets into calls of :class:`story.DemoSession` and its results
into widgets; the logic they call never imports gradio. :mod:`ui.errors` is the
one place that turns the logic's errors into what the visitor reads.
"""
