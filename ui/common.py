"""What every tab shares: the queues, the caller's session, lenient inputs, progress, the status line."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from story import DemoSession, Progress, SessionRegistry

#: Federated trainings run one at a time (Flower's clients take both cores);
#: queued users see their place. A queue of its own: most of a training is
#: Ray starting up, and nobody's compile should wait behind someone's training.
TRAINING = {"concurrency_limit": 1, "concurrency_id": "training"}
#: Other heavy events (compiling, the n_bits sweep, batch evaluation) share one
#: worker: on 2 vCPUs, two of them at once only make both slow.
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy"}
#: The four steps take milliseconds to a second; a few may run at once.
LIGHT = {"concurrency_limit": 4, "concurrency_id": "light"}

#: Gradio spots a progress parameter by its default value; one shared instance
#: is what a default argument is anyway (the callback is per call, in a context variable).
PROGRESS = gr.Progress()

ComponentT = TypeVar("ComponentT", bound=gr.components.Component)


def _pass_through(payload: Any) -> Any:
    return payload


def lenient(component: ComponentT) -> ComponentT:
    """Let values reach the handler unchanged, so that the rule's owner validates them.

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


@dataclass
class DemoContext:
    """What every tab needs: the Blocks, the session registry, the session state and the status line."""

    demo: gr.Blocks
    registry: SessionRegistry
    state: gr.State
    pipeline: gr.Markdown

    def session(self, state: DemoSession | None, request: gr.Request | None) -> DemoSession:
        """The caller's session (created on first use)."""
        session_id = getattr(request, "session_hash", None) if request is not None else None
        return self.registry.resolve(state, session_id)


def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args, progress=callback, **kwargs)`` in a thread; yield its progress, then its result.

    Gradio only streams what a handler yields (``gr.Progress`` does nothing
    from a plain thread), so long calls that report progress through a
    callback are run beside the handler.

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
    progress = session.progress() if session is not None else Progress()
    parts = [f"{'✓' if done else '○'} {name}" for name, done in progress.steps()]
    detail = ""
    if progress.model:
        detail = (f" — {progress.model_source} model on **{progress.dataset}**, "
                  f"accuracy {progress.accuracy:.1%}")
        if progress.compiled:
            detail += f", compiled at n_bits={progress.n_bits}"
    return "**This session:** " + " · ".join(parts) + detail
