"""Fixtures of the story tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A session registry with the app's own local FHE server process, one per module."""
    from fhe_model.connection import FHEServerHandle
    from story import SessionRegistry

    registry = SessionRegistry(FHEServerHandle(), temp_dir=tmp_path_factory.mktemp("registry"))
    yield registry
    registry.close_all()
    registry.server.stop()
