"""A page of the app opens and closes: a reload resumes the visitor's model (see :mod:`story.resume`)."""

from __future__ import annotations

from dataclasses import dataclass

from story.errors import StepError
from story.registry import SessionRegistry
from story.session import DemoSession


@dataclass(frozen=True)
class PageStart:
    """What a page that just loaded got.

    Attributes
    ----------
    token : str
        The browser's token (the one it sent, or a new one): the only thing the browser keeps.
    session : DemoSession or None
        The page's session if it resumed a previous one, else None (created on first use).
    message : str
        What to tell the visitor ("" when there was nothing to resume).
    """

    token: str
    session: DemoSession | None
    message: str


def open_page(registry: SessionRegistry, page_id: str, token: object) -> PageStart:
    """Start a page: resume the model and deployment of the same browser's previous page, with new keys.

    Parameters
    ----------
    registry : SessionRegistry
        The app's sessions.
    page_id : str
        The new page's UI session id.
    token : object
        What the browser sent: a token from an earlier :class:`PageStart`, or
        anything else (then nothing is resumed).

    Returns
    -------
    PageStart
        A new token to keep in the browser (the one sent is retired: it works
        once), and the resumed session, if any.
    """
    resumptions = registry.resumptions
    resumptions.sweep()
    parked = resumptions.take(token)
    previous = parked or registry.get(resumptions.page_of(token))
    token = resumptions.rotate(token)  # the token sent works once: a copy of it resumes nothing
    resumptions.remember(page_id, token)
    if previous is None or previous is registry.get(page_id) or not previous.resumable():
        if parked is not None:
            parked.close()
        return PageStart(token, None, "")
    try:
        session = registry.resolve(None, page_id)
        resumed = session.resume_from(previous)
    finally:
        if parked is not None:
            parked.close()
    if not resumed:
        return PageStart(token, None, "")
    return PageStart(token, session, _resumed_message(session))


def _resumed_message(session: DemoSession) -> str:
    """What the reloaded page took over: the model (and its deployment, with new keys), its class place."""
    parts = []
    if session.model is not None:
        parts.append(_resumed_model(session))
    if session.teaching is not None:
        parts.append(f"your console of class {session.teaching[0]} (tab 5)")
    if session.seat is not None:
        parts.append(f"your seat in class {session.seat[0]} with your drawings (tab 5)")
    return "Resumed " + "; and ".join(parts) + "."


def _resumed_model(session: DemoSession) -> str:
    message = "your model from before the reload"
    if session.deployment is not None:
        message += " and its compiled deployment"
        try:
            session.generate_keys(reason="page reloaded")
            message += "; a new private key was generated for this page (the old one was deleted)"
        except (StepError, ValueError, RuntimeError) as exc:
            message += f"; new keys could not be generated ({exc}): run step ① again"
    return message


def close_page(registry: SessionRegistry, page_id: str | None) -> None:
    """A page closed: park its session for a reload (keys deleted at once), or wipe it.

    Parameters
    ----------
    registry : SessionRegistry
        The app's sessions.
    page_id : str or None
        The closed page's UI session id.
    """
    session = registry.detach(page_id)
    if session is not None and registry.resumptions.park(page_id, session):
        return
    if page_id is not None:
        registry.resumptions.forget_page(page_id)  # its token expires with it
    if session is not None:
        session.close()
