"""Gradio glue shared by the tabs: error translation, session lookup, lenient inputs.

Kept small on purpose: the logic lives in :mod:`ui.session`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from fhe_model.client import FHEClientError
from fhe_model.http_client import FHEServerError
from fl_training.datasets import DatasetUnavailableError
from fl_training.model_io import ModelFileError
from ui.session import DemoSession, SessionRegistry, StepError

logger = logging.getLogger(__name__)

#: Heavy events (training, compiling, batch evaluation) share one worker: on
#: 2 vCPUs, two of them at once only make both slow. Queued users see their place.
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy"}
#: The four steps take milliseconds to a second; a few may run at once.
LIGHT = {"concurrency_limit": 4, "concurrency_id": "light"}

#: Errors whose message tells the user what to do.
USER_ERRORS = (StepError, ModelFileError, DatasetUnavailableError, FHEServerError, FHEClientError)


#: Gradio spots a progress parameter by its default value; one shared instance
#: is what a default argument is anyway (the callback is per call, in a context variable).
PROGRESS = gr.Progress()

ComponentT = TypeVar("ComponentT", bound=gr.components.Component)


def _pass_through(payload: Any) -> Any:
    return payload


def lenient(component: ComponentT) -> ComponentT:
    """Let values reach the handler unchanged, so that :mod:`ui.session` validates them.

    Gradio's own slider/number check rejects out-of-range API values with a
    message that does not name the parameter, and fails on NaN. (Patched on the
    instance: a Component subclass would make gradio write a .pyi file next to
    this module at import time.)

    Parameters
    ----------
    component : gr.components.Component
        A slider or number box.

    Returns
    -------
    gr.components.Component
        The same component.
    """
    component.preprocess = _pass_through  # type: ignore[method-assign]
    return component


def _translate(exc: BaseException) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, USER_ERRORS):
        return gr.Error(str(exc), print_exception=False)
    logger.exception("unexpected error in a handler", exc_info=exc)
    return gr.Error(
        f"Unexpected error ({exc.__class__.__name__}: {exc}). Nothing was changed; "
        "retry, or reload the page if it persists.",
        print_exception=False,
    )


def user_errors(fn: Callable) -> Callable:
    """Turn a handler's exceptions into ``gr.Error`` popups with the message intact.

    Works for plain functions and generators; ``functools.wraps`` keeps the
    signature, so gradio still sees the parameter names and ``gr.Request``.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as exc:
                raise _translate(exc) from exc

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _translate(exc) from exc

    return wrapper


@dataclass
class DemoContext:
    """What every tab needs: the Blocks, the session registry and the session state component."""

    demo: gr.Blocks
    registry: SessionRegistry
    state: gr.State

    def session(self, state: DemoSession | None, request: gr.Request | None) -> DemoSession:
        """The caller's session (created on first use)."""
        session_id = getattr(request, "session_hash", None) if request is not None else None
        return self.registry.resolve(state, session_id)


def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args, progress=callback, **kwargs)`` in a thread; yield its progress, then its result.

    Gradio only streams what a handler yields, so long calls that report
    progress through a callback are run beside the handler.

    Yields
    ------
    tuple
        ``("progress", (done, total))`` for each callback, then ``("result", value)``.
        An exception of ``fn`` is re-raised here.
    """
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["result"] = fn(*args, progress=lambda done, total: events.put((done, total)), **kwargs)
        except BaseException as exc:  # re-raised in the handler's thread
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=worker, name="demo-step", daemon=True)
    thread.start()
    while (item := events.get()) is not None:
        yield "progress", item
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield "result", outcome["result"]


def pipeline_status(session: DemoSession | None) -> str:
    """One line of markdown: which steps this session has done.

    Parameters
    ----------
    session : DemoSession or None
        The session.

    Returns
    -------
    str
        e.g. ``"✓ model · ✓ compiled · ○ keys · ○ encrypted · ○ server ran · ○ decrypted"``.
    """
    if session is None or session.closed:
        steps = [False] * 6
    else:
        steps = [
            session.model is not None,
            session.deployment is not None,
            session.keys is not None,
            session.encrypted is not None,
            session.server_output is not None,
            session.decrypted is not None,
        ]
    names = ["model", "compiled", "keys", "encrypted", "server ran", "decrypted"]
    parts = [f"{'✓' if done else '○'} {name}" for done, name in zip(steps, names, strict=False)]
    detail = ""
    if session is not None and session.model is not None:
        stage = session.model
        detail = f" — {stage.source} model on **{stage.dataset}**, accuracy {stage.summary['accuracy']:.1%}"
        if session.deployment is not None:
            detail += f", compiled at n_bits={session.deployment.compiled.report.n_bits}"
    return "**This session:** " + " · ".join(parts) + detail
