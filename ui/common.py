"""Gradio glue shared by the tabs: error translation, session lookup, lenient inputs, served files.

Kept small on purpose: the logic lives in :mod:`ui.session`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from fhe_model.client import FHEClientError
from fhe_model.http_client import FHEServerError
from fl_training.datasets import DatasetUnavailableError
from fl_training.model_io import ModelFileError
from ui.session import DemoSession, SessionRegistry, StepError

logger = logging.getLogger(__name__)

#: Federated trainings run one at a time (Flower's clients take both cores);
#: queued users see their place. A queue of its own: most of a training is
#: Ray starting up, and nobody's compile should wait behind someone's training.
TRAINING = {"concurrency_limit": 1, "concurrency_id": "training"}
#: Other heavy events (compiling, the n_bits sweep, batch evaluation) share one
#: worker: on 2 vCPUs, two of them at once only make both slow.
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


# Gradio serves a file a handler returns from a copy in its cache folder, and
# keeps uploads in that folder too; it deletes neither when the session ends.
# Copies are named by content hash, so sessions that produce identical bytes
# share one: each file is counted, and deleted when the last session holding it ends.
_held: dict[Path, int] = {}
_held_lock = threading.Lock()


def _gradio_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def _count_locked(path: Path) -> None:
    _held[path] = _held.get(path, 0) + 1


def _release(path: Path) -> None:
    with _held_lock:
        count = _held.pop(path, 1) - 1
        if count > 0:
            _held[path] = count
            return
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # its content-hash directory, once empty


def hold_upload(session: DemoSession, path: str | None) -> None:
    """Delete an uploaded file when ``session`` ends (files outside Gradio's folder are left alone).

    Parameters
    ----------
    session : DemoSession
        The session that uploaded it.
    path : str or None
        What the handler received.
    """
    if not path:
        return
    resolved = Path(path).resolve()
    if _gradio_folder() not in resolved.parents:
        return
    with _held_lock:
        _count_locked(resolved)
    session.add_cleanup(functools.partial(_release, resolved))  # runs at once if the session has ended


def serve_file(session: DemoSession, path: str | Path) -> str:
    """The path a handler returns to offer ``path`` for download during ``session`` only.

    Parameters
    ----------
    session : DemoSession
        The session the file belongs to.
    path : str or Path
        A file in the session's work directory (never a key directory:
        those are blocked from serving).

    Returns
    -------
    str
        Gradio's cached copy, deleted when the last session holding it ends.
    """
    from gradio.processing_utils import save_file_to_cache

    with _held_lock:  # a copy being deleted is never handed out meanwhile
        cached = Path(save_file_to_cache(path, str(_gradio_folder()))).resolve()
        _count_locked(cached)
    session.add_cleanup(functools.partial(_release, cached))
    return str(cached)


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
