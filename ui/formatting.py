"""Numbers as the visitor reads them."""

from __future__ import annotations


def format_bytes(n_bytes: int) -> str:
    """Human-readable size that never rounds a small size to zero.

    Parameters
    ----------
    n_bytes : int
        A size in bytes.

    Returns
    -------
    str
        e.g. ``"64 bytes"``, ``"19.2 KB (19,650 bytes)"``, ``"3.1 MB (3,250,000 bytes)"``.
    """
    n = int(n_bytes)
    if n < 1024:
        return f"{n:,} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB ({n:,} bytes)"
    return f"{n / (1024 * 1024):.1f} MB ({n:,} bytes)"
