"""Fixtures of the FHE tests (the compiled digits deployment itself is in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest

from tests.helpers import BODY_LIMIT


@pytest.fixture(scope="module")
def server(digits_deployment, admin_token):
    """The HTTP FHE server on 127.0.0.1, serving the digits deployment, with bodies capped at BODY_LIMIT."""
    from fhe_model.http_server import HTTPSettings, start_local_server

    settings = HTTPSettings(max_ciphertext_bytes=BODY_LIMIT, max_key_bytes=BODY_LIMIT,
                            max_deployment_bytes=1024 * 1024)
    handle = start_local_server(digits_deployment.files.directory, admin_token=admin_token, settings=settings)
    yield handle
    handle.stop()
