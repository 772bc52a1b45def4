"""The Gradio demo: one module per tab, per-session orchestration in :mod:`ui.session`.

``ui.session`` and ``ui.figures`` do not import gradio; the tab modules only
turn widgets into calls of :class:`ui.session.DemoSession` and results into
widgets.
"""
