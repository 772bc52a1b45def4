"""A benchmark's visitor: one ``gradio_client`` session, as light on this machine as a phone is for the app.

``gradio_client`` makes a fresh TLS context for every request it sends (reading the CA bundle:
~40 ms of CPU, even for ``http://``). The benchmarks run every simulated visitor on the app's
own two cores, so that cost was charged to the app: with 20 visitors it was 19 of the 28
CPU-seconds sampled in the load generator's threads, as much as the app used. Every visitor
here shares one context.

A browser waits for the app's answer to a click for as long as it takes; ``gradio_client``
gives up after httpx's 5 s on joining the queue or uploading a file. A visitor here waits
up to :data:`REQUEST_TIMEOUT_SECONDS` per request, as a person would before reloading: a slow
answer then shows in the step's time, not as an error no browser would have had.
"""

from __future__ import annotations

import ssl
from typing import Any

import certifi
from gradio_client import Client

#: The TLS context every visitor's requests share (verification as ``gradio_client``'s default).
TLS = ssl.create_default_context(cafile=certifi.where())
#: How long a visitor waits for one request (joining the queue, an upload) before giving up.
REQUEST_TIMEOUT_SECONDS = 60.0


def visitor(url: str, **kwargs: Any) -> Client:
    """A new session of the app at ``url`` (``kwargs`` as ``gradio_client.Client``'s)."""
    kwargs.setdefault("httpx_kwargs", {"timeout": REQUEST_TIMEOUT_SECONDS})
    return Client(url, verbose=False, ssl_verify=TLS, **kwargs)
