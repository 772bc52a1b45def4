"""Tab 1's "what the server receives" panel: one client's update in the clear and masked.

Shows what :mod:`story.updates` rebuilds from the session's latest run without
and with secure aggregation, side by side, and whether both runs ended with
the same model. It follows every finished training (the summary's change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from matplotlib.figure import Figure

from story import DemoSession
from story.updates import AggregateComparison, ServerView, ServerViews, server_view
from ui.common import LIGHT, DemoContext

INTRO = (
    "Each round, every client sends its new weights to the server. For each class, a logistic "
    "regression has one weight per pixel, drawn here as an image. **Without secure aggregation** the "
    "server sees each client's update, and it looks like the digits the client trained on. **With "
    "secure aggregation** (SecAgg+) each client adds masks that only cancel out in the sum of all "
    "clients: the server sees noise from each client, and still computes the same aggregate. Train "
    "once with and once without (same settings) to compare."
)


@dataclass
class UpdatesPanel:
    """The panel's widgets."""

    clear_plot: gr.Plot
    secure_plot: gr.Plot
    verdict: gr.Markdown
    views: gr.State


def update_figure(view: ServerView) -> Figure:
    """One image per class of what the server received (diverging colours for clear weights).

    Parameters
    ----------
    view : ServerView
        What the server received from one client.

    Returns
    -------
    Figure
        A grid of up to two rows of images, titled by class.
    """
    count = len(view.images)
    columns = min(count, 5)
    rows = -(-count // columns)
    fig = Figure(figsize=(1.3 * columns, 1.45 * rows + 0.5), dpi=100, layout="constrained")
    # Leave the top strip free: gradio draws the component's label badge over it.
    fig.get_layout_engine().set(rect=(0, 0, 1, 0.88))
    axes = fig.subplots(rows, columns, squeeze=False)
    cmap, low, high = ("gray", 0.0, 1.0) if view.masked else ("RdBu_r", -1.0, 1.0)
    for ax, image, label in zip(axes.flat, view.images, view.labels, strict=False):
        ax.imshow(image, cmap=cmap, vmin=low, vmax=high, aspect="equal" if image.shape[0] > 1 else "auto")
        ax.set_title(label, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig


def view_caption(view: ServerView, kind: str) -> str:
    """One line about a view: which round, how much it looks like the data, dropouts."""
    looks = "noise" if view.masked else "the clients' digits"
    text = (f"**{kind}**: round {view.round}, resemblance to the average image of each class "
            f"**{view.resemblance:.2f}** (it shows {looks}); test accuracy {view.accuracy:.1%}.")
    if view.dropped_clients:
        text += (f" {view.dropped_clients} client(s) dropped out during this run; "
                 "the rounds still completed with the clients that remained.")
    return text


def verdict_markdown(views: ServerViews) -> str:
    """What the two runs show, and what to do next to see the rest."""
    lines = []
    if views.clear is not None:
        lines.append(view_caption(views.clear, "Without secure aggregation"))
    if views.secure is not None:
        lines.append(view_caption(views.secure, "With secure aggregation"))
    comparison = views.comparison()
    if comparison is not None:
        lines.append(comparison_markdown(comparison))
    elif views.clear is None or views.secure is None:
        missing = "with" if views.secure is None else "without"
        lines.append(f"Train again {missing} secure aggregation, same settings, to compare.")
    else:
        lines.append("The two runs had different settings: train both with the same ones to compare models.")
    return "\n\n".join(lines)


def comparison_markdown(comparison: AggregateComparison) -> str:
    """The two models side by side."""
    same = "**Same model either way**" if comparison.same_model else "**The models differ**"
    return (f"{same}: test accuracy {comparison.accuracy_clear:.1%} in the clear, "
            f"{comparison.accuracy_secure:.1%} with secure aggregation; the largest weight difference "
            f"is {comparison.weight_difference:.2e} of the largest weight (SecAgg+ rounds weights to "
            "2²⁴ levels).")


def build(ctx: DemoContext, summary_json: gr.JSON) -> UpdatesPanel:
    """Create the panel inside the current layout and follow ``summary_json`` (the /train result).

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    summary_json : gr.JSON
        The training summary; each finished training changes it.

    Returns
    -------
    UpdatesPanel
        The panel's widgets.
    """
    with gr.Accordion("What the server receives from a client (secure aggregation)", open=False):
        gr.Markdown(INTRO)
        with gr.Row():
            clear_plot = gr.Plot(label="Without secure aggregation: one client's update", format="png",
                                 elem_id="server-view-clear")
            secure_plot = gr.Plot(label="With secure aggregation: one client's masked update",
                                  format="png", elem_id="server-view-masked")
        verdict = gr.Markdown("No training yet.")
    panel = UpdatesPanel(clear_plot, secure_plot, verdict, gr.State(ServerViews()))

    def show_server_view(
        state: DemoSession | None, views: ServerViews | None, request: gr.Request = None
    ) -> tuple[Any, Any, str, ServerViews]:
        """Add the session's latest run to the views and draw both."""
        session = ctx.existing_session(state, request)  # drawing a panel never opens a session
        model = session.model if session is not None else None
        views = (views or ServerViews()).with_view(server_view(model))
        return (
            update_figure(views.clear) if views.clear is not None else None,
            update_figure(views.secure) if views.secure is not None else None,
            verdict_markdown(views) if views.clear or views.secure else "No federated training yet.",
            views,
        )

    summary_json.change(
        show_server_view, [ctx.state, panel.views],
        [panel.clear_plot, panel.secure_plot, panel.verdict, panel.views],
        api_visibility="private", **LIGHT,
    )
    return panel
