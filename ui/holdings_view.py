"""Tab 3's client | server picture: what each side holds, filled in step by step (HTML, no gradio)."""

from __future__ import annotations

from html import escape

from story.holdings import BROWSER_ROLE, CLIENT_ROLE, NEVER_SENT, SERVER_ROLE, Holdings, Item, Transfer
from ui.formatting import format_bytes


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return ""
    return format_bytes(n_bytes).split(" (")[0]  # "12.0 KB": the short form fits a phone


def _item(item: Item) -> str:
    detail = " · ".join(part for part in (_size(item.size_bytes) if item.held else "", item.note) if part)
    state = "held" if item.held else "pending"
    mark = "✓" if item.held else "○"
    small = f" <small>{escape(detail)}</small>" if detail else ""
    return (f'<li class="{state}"><span class="mark">{mark}</span>'
            f'<span class="what">{escape(item.name)}{small}</span>'
            f'<span class="step">{escape(item.step)}</span></li>')


def _transfer(transfer: Transfer) -> str:
    # Named after who receives it: "encrypted result → client" is the server's answer to the client.
    arrow = "→ server" if transfer.to_server else "→ client"
    size = f" <small>{escape(_size(transfer.size_bytes))}</small>" if transfer.done else ""
    state = "done" if transfer.done else "pending"
    return (f'<li class="{state}"><span class="what">{escape(transfer.name)} <b>{arrow}</b>{size}</span>'
            f'<span class="step">{escape(transfer.step)}</span></li>')


def holdings_html(holdings: Holdings) -> str:
    """The picture: the client's column, the wire, the server's column, and the browser's line.

    Parameters
    ----------
    holdings : Holdings
        From :func:`story.holdings.holdings`.

    Returns
    -------
    str
        HTML, styled by the app's CSS (``#holdings``).
    """
    client = "".join(_item(i) for i in holdings.client)
    server = "".join(_item(i) for i in holdings.server)
    wire = "".join(_transfer(t) for t in holdings.wire)
    never = ", ".join(NEVER_SENT)
    return (
        '<div class="holdings">'
        f'<section class="role client"><h4>{escape(CLIENT_ROLE)}</h4><ul>{client}</ul></section>'
        f'<section class="wire"><h4>On the wire</h4><ul>{wire}</ul>'
        f'<p class="never">Never sent: {escape(never)}.</p></section>'
        f'<section class="role server"><h4>{escape(SERVER_ROLE)}</h4><ul>{server}</ul>'
        '<p class="never">Cannot decrypt: it holds no private key.</p></section>'
        f'</div><p class="browser">{escape(BROWSER_ROLE)}.</p>'
    )
