"""The one place where the logic's errors become what the visitor reads."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from story import USER_ERRORS

logger = logging.getLogger(__name__)

__all__ = ["USER_ERRORS", "to_user_error", "user_errors"]


def to_user_error(exc: BaseException) -> gr.Error:
    """The ``gr.Error`` a visitor sees for ``exc`` (unexpected errors are logged in full).

    Parameters
    ----------
    exc : BaseException
        What a handler raised.

    Returns
    -------
    gr.Error
        Its message for the visitor's errors; for anything else, a message
        that says nothing changed and what to try.
    """
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
                raise to_user_error(exc) from exc

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise to_user_error(exc) from exc

    return wrapper
