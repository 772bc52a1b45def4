"""What every tab shares: the queues, the caller's session, lenient inputs, progress, the status line."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from story import DemoSession, Progress, SessionRegistry

#: Training handlers mostly wait: the training runtime runs one training at a
#: time (its Flower clients take both cores) and tells each waiting visitor
#: their place; visitors with equal settings share one run. So many handlers
#: may wait at once, and a queue of its own keeps compiles from waiting behind them.
TRAINING = {"concurrency_limit": 32, "concurrency_id": "training"}
#: Compiles, two at a time: a compile is mostly single-threaded, so two different ones fill the 2
#: cores (README: 30 different compiles behind one slot waited 26 s at p50); equal ones are shared
#: (story.shared_deployments), and a visitor whose compile is already done is not held behind one
#: that runs.
COMPILE = {"concurrency_limit": 2, "concurrency_id": "compile"}
#: Other heavy events (the n_bits sweep, batch evaluation) share one worker:
#: on 2 vCPUs, two of them at once only make both slow.
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy"}
#: The four steps take milliseconds to a second; a few may run at once.
LIGHT = {"concurrency_limit": 4, "concurrency_id": "light"}
#: Step ③ waits for the FHE server, which computes in its own process: a queue of its own, as wide
#: as the server's compute slots (2 × its worker threads on 2 cores), so that waiting for it never
#: holds a slot that keys, encryption or decryption could use meanwhile, and the server is never
#: sent more than it can take at once (it would answer 503).
FHE_SERVER = {"concurrency_limit": 4, "concurrency_id": "fhe-server"}
#: A class's drawings: each takes a fraction of a second, and a room adds them all lesson long;
#: a queue of their own keeps them from waiting behind key generation or encryption.
CLASS_DRAWINGS = {"concurrency_limit": 4, "concurrency_id": "class-drawings"}
#: A page's periodic look at shared progress (a class run, from every phone in the room): cheap reads
#: of their own, so a room polling at once never delays anyone's step.
POLLS = {"concurrency_limit": 8, "concurrency_id": "polls"}
#: Redrawing panels from the session (no computation): never waits behind a step.
REFRESH = {"concurrency_limit": 8, "concurrency_id": "refresh", "show_progress": "hidden",
           "api_visibility": "private"}
#: Threads Gradio runs handlers on (``launch(max_threads=...)``, 40 by default): every queue's
#: limit above can be in use at once, plus 8 for the events that skip the queue.
MAX_THREADS = sum(queue["concurrency_limit"] for queue in (
    TRAINING, COMPILE, HEAVY, LIGHT, FHE_SERVER, CLASS_DRAWINGS, POLLS, REFRESH)) + 8

#: Events of one page waiting in the queue at once. A page's click queues one step, and the
#: change it makes queues a redraw of each of the 4 panels that follow the status line: 5. Twice
#: that, rounded up, leaves room for a double click; a script that queues more is told to wait,
#: so that one page can never fill the queue (``demo.queue(max_size=...)``) for everyone.
MAX_QUEUED_PER_SESSION = 12
#: What such an event gets (Gradio answers it 503 and shows this message).
QUEUED_PER_SESSION_FULL = (
    "This page already has {count} events waiting in the queue (at most {limit}); wait for them "
    "to finish, then retry."
)

#: Gradio spots a progress parameter by its default value; one shared instance
#: is what a default argument is anyway (the callback is per call, in a context variable).
PROGRESS = gr.Progress()

ComponentT = TypeVar("ComponentT", bound=gr.components.Component)


def bound_queued_per_session(demo: gr.Blocks, limit: int = MAX_QUEUED_PER_SESSION) -> None:
    """Refuse an event when its page already has ``limit`` events waiting (after ``demo.queue()``).

    Gradio bounds its queue as a whole only. Events waiting (not yet running)
    are counted per UI session; past ``limit`` the event is refused as a full
    queue is, with :data:`QUEUED_PER_SESSION_FULL`. (Patched on the instance,
    as :func:`lenient` does.)

    Parameters
    ----------
    demo : gr.Blocks
        The demo, its queue configured.
    limit : int
        Waiting events allowed per page.
    """
    queue = demo._queue
    push = queue.push

    async def bounded_push(body: Any, request: Any, username: Any) -> Any:
        session_hash = getattr(body, "session_hash", None)
        if session_hash is not None:
            waiting = sum(event.session_hash == session_hash
                          for events in list(queue.event_queue_per_concurrency_id.values())
                          for event in list(events.queue))
            if waiting >= limit:
                return False, QUEUED_PER_SESSION_FULL.format(count=waiting, limit=limit), "queue_full"
        return await push(body, request, username)

    queue.push = bounded_push  # type: ignore[method-assign]


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

    def session(
        self, state: DemoSession | None, request: gr.Request | None, opens: bool = True
    ) -> DemoSession:
        """The caller's session, created on first use (``opens=False``, for a step that needs a model:
        a caller without one gets a blank session that is not kept, and the step refuses)."""
        session_id = getattr(request, "session_hash", None) if request is not None else None
        return self.registry.resolve(state, session_id, opens=opens)

    def existing_session(self, state: DemoSession | None, request: gr.Request | None) -> DemoSession | None:
        """The caller's session if it has one (nothing is created: for views that only show)."""
        if state is not None:
            return state
        return self.registry.get(getattr(request, "session_hash", None) if request is not None else None)


def outdated(shown: dict[str, int] | None, session: DemoSession | None, step: str) -> bool:
    """True when a panel showing ``step``'s record (as remembered in ``shown``) is out of date.

    Parameters
    ----------
    shown : dict or None
        A page's memory of what its panels show: step name → serial number
        (:meth:`story.DemoSession.versions`), 0 for an empty panel.
    session : DemoSession or None
        The session (None: nothing to show).
    step : str
        e.g. ``"deployment"``.
    """
    current = session.versions().get(step, 0) if session is not None else 0
    return (shown or {}).get(step, 0) != current


def remember(shown: dict[str, int] | None, session: DemoSession | None, *steps: str) -> dict[str, int]:
    """``shown`` updated: the panels of ``steps`` now show the session's current records."""
    versions = session.versions() if session is not None else {}
    return {**(shown or {}), **{step: versions.get(step, 0) for step in steps}}


class CallerGone(Exception):
    """Raised into a step's progress callback once its handler has been closed."""


def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args, progress=callback, **kwargs)`` in a thread; yield its progress, then its result.

    Gradio only streams what a handler yields (``gr.Progress`` does nothing
    from a plain thread), so long calls that report progress through a
    callback are run beside the handler. When Gradio drops the event (the
    visitor cancelled or left) it closes this generator; the next progress
    callback then raises :class:`CallerGone` in ``fn``, so the work stops
    instead of running on after its queue slot was freed.

    Yields
    ------
    tuple
        ``("progress", (done, total))`` for each callback, then ``("result", value)``.
        An exception of ``fn`` is re-raised here.
    """
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    gone = threading.Event()

    def report(done: int, total: int) -> None:
        if gone.is_set():
            raise CallerGone("Nobody is waiting for this step any more.")
        events.put((done, total))

    def worker() -> None:
        try:
            outcome["result"] = fn(*args, progress=report, **kwargs)
        except BaseException as exc:  # re-raised in the handler's thread
            outcome["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=worker, name="demo-step", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not None:
            yield "progress", item
    finally:  # also when the handler is closed mid-step
        gone.set()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield "result", outcome["result"]


def pipeline_status(session: DemoSession | None) -> str:
    """One line of markdown: which steps this session has done.

    It ends with an invisible revision marker, so that the line changes
    (and its ``change`` event fires: every tab then redraws what went out of
    date) whenever the session does, even when the visible text stays the same.

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
    return "**This session:** " + " · ".join(parts) + detail + f" <!-- revision {progress.revision} -->"


def select_brush_js(elem_id: str) -> str:
    """JavaScript that selects the brush of the sketchpad ``#elem_id`` once it shows.

    Gradio's sketchpad starts, and is left after "Clear canvas" or a new value, with no tool
    selected: strokes would then select text instead of drawing. The brush is looked for every
    200 ms for up to 5 s (the pad may still be drawing, in a tab just shown), clicked only when it
    is not already the selected tool, and checked once more a second later (a clear may reset it).

    Parameters
    ----------
    elem_id : str
        The sketchpad's ``elem_id``.

    Returns
    -------
    str
        For an event's ``js=`` (it takes any inputs and returns none).
    """
    return f"""(...args) => {{
  let tries = 0;
  const select = (again) => {{
    const sketch = document.getElementById({elem_id!r});
    const brush = sketch && sketch.querySelector("button[aria-label='Brush'], button[title='Brush']");
    if (brush && brush.offsetParent !== null) {{
      if (!brush.classList.contains("highlight")) brush.click();
      if (again) setTimeout(() => select(false), 1000);
      return;
    }}
    if (++tries < 25) setTimeout(() => select(again), 200);
  }};
  setTimeout(() => select(true), 300);
  return [];
}}"""


#: Elements that stay at the top of the window while the page scrolls (tab 3's client | server picture).
PINNED_CLASS = "pinned"


def scroll_to_js(elem_id: str) -> str:
    """JavaScript that scrolls the page until the start of ``#elem_id`` is in view, if it is not.

    The element's top is brought just below whatever is pinned to the top of the window
    (:data:`PINNED_CLASS`), so that a result never lands under it or out of sight.

    Parameters
    ----------
    elem_id : str
        The result's ``elem_id``.

    Returns
    -------
    str
        For an event's ``js=`` (it takes any inputs and returns none).
    """
    return f"""(...args) => {{
  const target = document.getElementById({elem_id!r});
  if (!target || target.offsetParent === null) return [];
  let top = 8;
  document.querySelectorAll(".{PINNED_CLASS}").forEach(pinned => {{
    if (pinned.offsetParent !== null && getComputedStyle(pinned).position === "sticky") {{
      top = Math.max(top, pinned.getBoundingClientRect().bottom + 8);
    }}
  }});
  const start = target.getBoundingClientRect().top;
  if (start < top || start > window.innerHeight - 120) {{
    window.scrollBy({{top: start - top, behavior: "instant"}});
  }}
  return [];
}}"""


def show_result(event: Any, elem_id: str) -> None:
    """Once ``event`` (a button's click) has finished, scroll its result ``#elem_id`` into view.

    Parameters
    ----------
    event : gradio Dependency
        What ``button.click(...)`` returned.
    elem_id : str
        Where the event's result (or its error) is shown.
    """
    event.then(None, None, None, js=scroll_to_js(elem_id), queue=False, api_visibility="private")


def show_progress_of(button: gr.Button, elem_id: str) -> None:
    """When ``button`` is pressed, scroll to ``#elem_id``, where its progress and result will show."""
    button.click(None, None, None, js=scroll_to_js(elem_id), queue=False, api_visibility="private")
