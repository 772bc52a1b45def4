"""The app's lifetime, without any UI: the training runtime first, the sessions' registry, the shutdown."""

from __future__ import annotations

from fhe_model.connection import FHEServerHandle
from fl_training import simulation
from story.registry import SessionRegistry, max_sessions_from_env


def start_training_runtime() -> None:
    """Boot the training runtime (Ray and the ClientApp actors, in a process of its own) now.

    The app calls this before it imports the UI, so a visitor's first training does
    not wait for both in a row.
    """
    simulation.prepare()


def registry_from_env() -> SessionRegistry:
    """The app's sessions, using the FHE server that ``$FHE_SERVER_URL`` names (a local one otherwise),
    bounded by ``$FHE_DEMO_MAX_SESSIONS`` (see :func:`story.registry.max_sessions_from_env`)."""
    return SessionRegistry(FHEServerHandle.from_env(), max_sessions=max_sessions_from_env())


def shut_down(registry: SessionRegistry) -> None:
    """Wipe every session, stop the local FHE server and the training runtimes."""
    try:
        registry.close_all()
        registry.server.stop()
    finally:
        simulation.shutdown()
