"""A benchmark's visitor: one ``gradio_client`` session, as light on this machine as a phone is for the app.

``gradio_client`` makes a fresh TLS context for every request it sends (reading the CA bundle:
~40 ms of CPU, even for ``http://``). The benchmarks run every simulated visitor on the app's
own two cores, so that cost was charged to the app: with 20 visitors it was 19 of the load
generator's 28 CPU-seconds, more than the app used. Every visitor here shares one context.
"""

from __future__ import annotations

import ssl
from typing import Any

import certifi
from gradio_client import Client

#: The TLS context every visitor's requests share (verification as ``gradio_client``'s default).
TLS = ssl.create_default_context(cafile=certifi.where())


def visitor(url: str, **kwargs: Any) -> Client:
    """A new session of the app at ``url`` (``kwargs`` as ``gradio_client.Client``'s)."""
    return Client(url, verbose=False, ssl_verify=TLS, **kwargs)
