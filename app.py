"""Gradio demo: federated learning with Flower, then inference on encrypted data with Concrete ML.

``python app.py`` starts an FHE server on 127.0.0.1 (unless ``$FHE_SERVER_URL``
names one, with ``$FHE_ADMIN_TOKEN``) and serves the demo; it honours
``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``. This file only builds the
Blocks and launches them: each tab lives in :mod:`ui`, the visitor's story in
:mod:`story`, the logic in ``fl_training`` and ``fhe_model``.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from story import launch

if __name__ == "__main__":
    # The training runtime (Ray, the ClientApp actors) boots in its own process while this
    # one imports the UI: a visitor's first training no longer waits for both in a row.
    launch.start_training_runtime()

import gradio as gr  # noqa: E402 - after the runtime's start on purpose

from story import DEFAULT_IDLE_TTL_SECONDS, SessionRegistry  # noqa: E402
from story.forms import MAX_MODEL_FILE_BYTES, TRAINING_FORM  # noqa: E402
from ui import (  # noqa: E402
    about_tab,
    classroom_tab,
    compile_tab,
    evaluation_tab,
    files,
    image_guard,
    inference_tab,
    page,
    training_tab,
)
from ui.common import MAX_THREADS, DemoContext, bound_queued_per_session, pipeline_status  # noqa: E402

TITLE = "Private ML end to end: federated learning + encrypted inference"
#: Gradio's cached files that no session holds (sample pictures, sketches) are
#: deleted every 15 minutes once older than a session's idle TTL; files that a
#: session holds go when it ends (see ``ui.files.serve_file``).
DELETE_CACHE = (900, int(DEFAULT_IDLE_TTL_SECONDS))
#: Sessions whose UI state Gradio keeps in memory (it keeps ~0.3-1 MB per session,
#: closed ones included, up to 10,000 by default): as many as the registry's sessions
#: (``story.registry.DEFAULT_MAX_SESSIONS``), at most ~256 MB; a session pushed out keeps
#: its work, which ``story.SessionRegistry`` holds.
STATE_SESSION_CAPACITY = 256
#: Events waiting in Gradio's queue, all pages together: a lecture of 150 visitors, each with a
#: step and the redraws it causes waiting (5 events), fits; one page alone holds at most
#: ``ui.common.MAX_QUEUED_PER_SESSION`` of them.
QUEUE_MAX_SIZE = 1024
#: The page's styles: phone and projector layouts, tables, charts, tab 3's picture.
CSS = (Path(__file__).parent / "ui" / "style.css").read_text()


def build_demo(registry: SessionRegistry | None = None) -> gr.Blocks:
    """Build the demo's Blocks (starts nothing).

    Parameters
    ----------
    registry : SessionRegistry, optional
        Sessions and the FHE server they use; by default one configured from
        ``$FHE_SERVER_URL`` / ``$FHE_ADMIN_TOKEN`` (a local server otherwise,
        started on first use).

    Returns
    -------
    gr.Blocks
        The demo, with its queue configured; ``demo.registry`` is the registry.
    """
    if registry is None:
        registry = launch.registry_from_env()
    image_guard.install()  # image inputs are checked before Gradio decodes them
    with gr.Blocks(title="FL + FHE demo", delete_cache=DELETE_CACHE) as demo:
        state = gr.State(None, delete_callback=functools.partial(page.close_state, registry))
        gr.Markdown(f"# {TITLE}")
        pipeline = gr.Markdown(pipeline_status(None), elem_id="pipeline")
        notice = gr.Markdown(elem_id="notice")
        ctx = DemoContext(demo=demo, registry=registry, state=state, pipeline=pipeline)
        with gr.Tabs() as tabs:
            with gr.Tab("1 · Federated training", id="train"):
                training_tab.build(ctx)
            with gr.Tab("2 · Convert & compile", id="compile"):
                compile_tab.build(ctx)
            with gr.Tab("3 · Encrypted inference", id="inference") as inference:
                inference_tab.build(ctx, inference)
            with gr.Tab("4 · Encrypted evaluation", id="evaluation"):
                evaluation_tab.build(ctx)
            with gr.Tab("5 · Classroom", id="classroom"):
                classroom = classroom_tab.build(ctx)
            with gr.Tab("6 · About", id="about"):
                about_tab.build()
        # A reload resumes the model and the class place; closing the tab deletes the private key.
        started = page.build(ctx, notice)
        classroom_tab.show_resumed_place(ctx, classroom, started, tabs)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    bound_queued_per_session(demo)  # one page cannot fill the queue for everyone
    demo.registry = registry  # type: ignore[attr-defined]
    return demo


def projector_theme() -> gr.themes.Base:
    """Gradio's Soft theme, legible on a projector: no text under 14 px, and every text of WCAG AA contrast.

    Soft's help texts, slider ends and small buttons are 12 px and its labels, selected tabs and
    primary buttons are orange-500 (2.3-2.8 : 1 against their background): the smallest sizes are
    raised to 14 px, and the orange of text, and behind white text, is the darker orange-700/800.
    """
    sizes = gr.themes.Size(
        xxs="14px", xs="14px", sm="14px", md="14px", lg="16px", xl="22px", xxl="26px", name="projector"
    )
    return gr.themes.Soft(primary_hue="orange", secondary_hue="blue", text_size=sizes).set(
        color_accent="*primary_700",
        body_text_color_subdued="*neutral_600",
        block_label_text_color="*primary_800",
        block_title_text_color="*primary_800",
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_hover="*primary_800",
        checkbox_label_background_fill_selected="*primary_700",
        input_placeholder_color="*neutral_500",
    )


def launch_options(registry: SessionRegistry) -> dict[str, Any]:
    """Keyword arguments of ``demo.launch`` shared by ``main`` and the tests.

    Parameters
    ----------
    registry : SessionRegistry
        Its key directory is blocked from file serving.

    Returns
    -------
    dict
        Theme, CSS, upload limit (larger uploads get HTTP 413), blocked paths,
        the bound on Gradio's per-session memory, and ``show_error``: handlers
        already turn every exception into a message for the user; this adds
        Gradio's own refusals of malformed API calls (e.g. a wrong number of
        values), which are otherwise reported without a message.
    """
    return {
        "theme": projector_theme(),
        "css": CSS,
        "max_file_size": MAX_MODEL_FILE_BYTES,
        "app_kwargs": {"middleware": [image_guard.body_limit(MAX_MODEL_FILE_BYTES),
                                      files.upload_space(MAX_MODEL_FILE_BYTES)]},
        "blocked_paths": [str(registry.keys_root)],
        "state_session_capacity": STATE_SESSION_CAPACITY,
        "max_threads": MAX_THREADS,
        "show_error": True,
        # Gradio would otherwise keep every call's inputs and outputs (drawings, predictions, download
        # links) in the browser's local storage: the browser keeps only an opaque page token.
        "run_history": False,
    }


def settle_long_lived_objects() -> None:
    """Keep the garbage collector's full passes off what lives as long as the app.

    The libraries (torch, Concrete, Gradio, Flower, scikit-learn) and the built
    demo are ~400,000 objects. A full collection walks them all, ~0.3 s holding
    every thread of the app, and a room's requests make one every few seconds:
    frozen, they are never walked again (``gc.freeze``); what sessions create
    is collected as before. Gradio also looks for bokeh on every chart's
    config, and a failed import searches every import path each time: an absent
    bokeh is marked absent once.
    """
    if "bokeh" not in sys.modules and importlib.util.find_spec("bokeh") is None:
        sys.modules["bokeh"] = None  # type: ignore[assignment] - import then fails at once
    gc.collect()
    gc.freeze()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start the FHE server, then serve the demo until interrupted (Ctrl-C or SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # `kill`, `docker stop` and systemd send SIGTERM: shut down as on Ctrl-C, so that the
    # sessions' keys, files and compiled circuits are deleted before the process ends.
    signal.signal(signal.SIGTERM, _interrupt)
    registry = launch.registry_from_env()
    # The defaults are trained, compiled and deployed while the FHE server and the UI start.
    registry.prepare(TRAINING_FORM)
    url = registry.server.start()
    logging.getLogger(__name__).info("FHE server: %s", url)
    demo = build_demo(registry)
    settle_long_lived_objects()
    # What the preparation builds (the default model, its circuit and deployment) lives as long too.
    threading.Thread(target=lambda: registry.prepared.wait() and settle_long_lived_objects(),
                     name="settle-prepared", daemon=True).start()
    try:
        demo.launch(**launch_options(registry))
    finally:
        launch.shut_down(registry)


if __name__ == "__main__":
    main()
