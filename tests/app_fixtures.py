"""Shared helpers of the UI tests: a demo launched on 127.0.0.1, handler lookup.

Import the fixtures you need into a test module (``from tests.app_fixtures import
launched_app``); each module then gets one app for all its tests.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pytest

from app import build_demo, launch_options
from fhe_model.connection import FHEServerHandle
from story import SessionRegistry

#: The smallest meaningful federated run: ~12 s on 2 cores, Ray start-up included.
SMALL_TRAINING = {"dataset": "digits", "num_clients": 3, "num_rounds": 2}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LaunchedApp:
    """A running demo: its URL, Blocks and session registry."""

    url: str
    demo: gr.Blocks
    registry: SessionRegistry


@contextlib.contextmanager
def running_app() -> Iterator[LaunchedApp]:
    """Launch the demo (and its local FHE server) on free loopback ports; stop both after."""
    registry = SessionRegistry(FHEServerHandle())
    registry.server.start()
    demo = build_demo(registry)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        **launch_options(registry),
    )
    try:
        yield LaunchedApp(f"http://127.0.0.1:{port}/", demo, registry)
    finally:
        demo.close()
        registry.close_all()
        registry.server.stop()


@pytest.fixture(scope="module")
def launched_app() -> Iterator[LaunchedApp]:
    """One launched demo per test module."""
    with running_app() as app:
        yield app


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[gr.Blocks, SessionRegistry]]:
    """The demo's Blocks and registry, not launched (handlers are called directly); one per module."""
    registry = SessionRegistry(FHEServerHandle())
    demo = build_demo(registry)
    yield demo, registry
    registry.close_all()
    registry.server.stop()


def handler(demo: gr.Blocks, api_name: str) -> Callable:
    """The function behind the event with ``api_name`` (as wrapped for gradio)."""
    for block_fn in demo.fns.values():
        if block_fn.api_name == api_name:
            return block_fn.fn
    raise KeyError(f"no event with api_name={api_name!r}")


def digit_drawing(size: int = 280) -> np.ndarray:
    """An RGBA sketch of a "1": a thick black vertical stroke on a transparent canvas."""
    image = np.zeros((size, size, 4), dtype=np.uint8)
    image[size // 6 : size - size // 6, size // 2 - 12 : size // 2 + 12] = (0, 0, 0, 255)
    return image
