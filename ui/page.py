"""A page's start and end: a reload resumes the session's model and deployment (with a new private key).

The browser keeps one opaque token in its local storage (``gr.BrowserState``);
everything else stays on the host (see :mod:`story.resume`).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from story import DemoSession, SessionRegistry
from story.pages import close_page, open_page
from ui.common import REFRESH, DemoContext, pipeline_status

#: Where the browser keeps its token (local storage key; the value is an opaque random string).
BROWSER_KEY = "fl-fhe-demo-page"


def build(ctx: DemoContext, notice: gr.Markdown) -> Any:
    """Wire the page's load (resume) and unload (park, or wipe) events.

    Parameters
    ----------
    ctx : DemoContext
        Registry, session state and the status line.
    notice : gr.Markdown
        Where the page says what it resumed.

    Returns
    -------
    gradio event
        The page's start, for tabs that show what it resumed (``.then``).
    """
    token = gr.BrowserState(None, storage_key=BROWSER_KEY)

    def start(stored: Any, request: gr.Request) -> tuple:
        started = open_page(ctx.registry, request.session_hash, stored)
        if started.session is None:
            return started.token, gr.skip(), gr.skip(), ""
        session = started.session
        return started.token, session, pipeline_status(session), f"↻ {started.message}"

    started = ctx.demo.load(start, [token], [token, ctx.state, ctx.pipeline, notice],
                            api_visibility="private", show_progress="hidden")

    def banner(state: DemoSession | None, request: gr.Request) -> Any:
        # The banner describes the resumed model: it goes once another model (a retrain) replaces it.
        session = ctx.existing_session(state, request)
        record = session.training_record() if session is not None else None
        return gr.skip() if record is not None and record.resumed else ""

    ctx.pipeline.change(banner, [ctx.state], [notice], **REFRESH)

    def end(request: gr.Request) -> None:
        # The private key goes now; the model and deployment wait a while for a reload.
        close_page(ctx.registry, request.session_hash)

    ctx.demo.unload(end)
    return started


def close_state(registry: SessionRegistry, session: DemoSession | None) -> None:
    """``gr.State``'s delete callback: wipe the session unless it is parked for a reload."""
    if session is not None and not registry.resumptions.holds(session):
        session.close()
