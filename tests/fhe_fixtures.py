"""Shared fixtures of the FHE tests: a small digits model, compiled once per session.

Test modules load this file with ``pytest_plugins = ["tests.fhe_fixtures"]``,
which registers the fixtures once for the whole session (importing them into
several modules would build them once per module).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fhe_model.developer import CompiledModel, DeploymentFiles, compile_model, save_deployment
from fl_training.datasets import Dataset, load_dataset

ADMIN_TOKEN = "test-admin-token"


@dataclass
class Built:
    """A compiled digits deployment and what it was built from."""

    dataset: Dataset
    model: LogisticRegression
    compiled: CompiledModel
    files: DeploymentFiles

    def expected(self, X: np.ndarray) -> np.ndarray:
        """What the circuit must output: the quantized model run in the clear."""
        return self.compiled.concrete_model.predict(np.atleast_2d(X))


def _build(model: LogisticRegression, directory: Path, n_bits: int) -> Built:
    dataset = load_dataset("digits")
    compiled = compile_model(model, dataset, n_bits=n_bits, evaluation_samples=120)
    return Built(dataset, model, compiled, save_deployment(compiled, directory))


@pytest.fixture(scope="session")
def digits_model() -> LogisticRegression:
    dataset = load_dataset("digits")
    return LogisticRegression(max_iter=3000).fit(dataset.X_train, dataset.y_train)


@pytest.fixture(scope="session")
def digits_deployment(digits_model, tmp_path_factory) -> Built:
    """digits, n_bits=8, data calibration."""
    return _build(digits_model, tmp_path_factory.mktemp("fhe") / "digits-8", 8)


@pytest.fixture(scope="session")
def other_deployment(digits_model, tmp_path_factory) -> Built:
    """Another circuit (n_bits=3: other crypto parameters) for mismatch tests."""
    return _build(digits_model, tmp_path_factory.mktemp("fhe") / "digits-3", 3)


@pytest.fixture()
def keyed_client(digits_deployment, tmp_path):
    """An FHEClient with fresh keys in a per-test key directory."""
    from fhe_model.client import FHEClient

    client = FHEClient(digits_deployment.files.directory, tmp_path / "keys")
    client.generate_keys()
    return client


@pytest.fixture(scope="session")
def admin_token() -> str:
    return ADMIN_TOKEN


def read_status(sock: socket.socket) -> int:
    """The HTTP status code of the response arriving on a raw socket."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])
