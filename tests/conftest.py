"""Test-wide settings (headless plotting, quiet Ray, nothing from the network) and shared fixtures.

- ``launched_app``: the demo launched on 127.0.0.1, one per test module;
- ``digits_model``, ``digits_deployment``, ``other_deployment``, ``keyed_client``,
  ``admin_token``: a small digits model compiled to FHE once per session;
- ``deskew_digits_model``, ``deskew_deployment``: the same, deskewing its inputs;
- ``image_bomb``: a PNG that is tiny on disk and huge once decoded.

Fixtures of one package's tests only live in that folder's ``conftest.py``;
plain helpers in ``tests/helpers.py``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.helpers import LaunchedApp, running_app

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from fhe_model.developer import CompiledModel, DeploymentFiles
    from fl_training.datasets import Dataset

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# Gradio's folder (uploads, served files) of this test process and the apps it starts: the two workers
# of README's test command each launch apps, and one app's upload-space cleanup must not see the other's.
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="gradio-tests-"))
atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

#: The longest test files (a full run's durations on 2 cores: 1-6 minutes each), started first. README's
#: test command runs the files on two workers, one file at a time each: a long file started last would
#: leave the other core idle until it ends.
LONGEST_FIRST = (
    "tests/fl_training/test_deployment_engine.py",
    "tests/ui/test_browser.py",
    "tests/ui/test_browser_classroom.py",
    "tests/fl_training/test_runtime_pool.py",
    "tests/fl_training/test_faulty_clients.py",
    "tests/ui/test_repeated_use.py",
    "tests/fl_training/test_drawing_preparation.py",
    "tests/fl_training/test_runtime.py",
    "tests/fl_training/test_simulation.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run :data:`LONGEST_FIRST`'s files first; every other test keeps its place (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = Path(config.rootpath)

    def place(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(root).as_posix(), len(rank))
        except ValueError:  # a file outside the project (a test's own pytest run)
            return len(rank)

    items.sort(key=place)

ADMIN_TOKEN = "test-admin-token"


# -- the launched demo --------------------------------------------------------------


@pytest.fixture(scope="module")
def launched_app() -> Iterator[LaunchedApp]:
    """One launched demo (and its local FHE server) per test module."""
    with running_app() as app:
        yield app


# -- a small digits model, compiled once per session ------------------------------------


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
    from fhe_model.developer import compile_model, save_deployment
    from fl_training.datasets import load_dataset

    dataset = load_dataset("digits")
    compiled = compile_model(model, dataset, n_bits=n_bits, evaluation_samples=120)
    return Built(dataset, model, compiled, save_deployment(compiled, directory))


@pytest.fixture(scope="session")
def digits_model() -> LogisticRegression:
    """A LogisticRegression trained centrally on digits."""
    from sklearn.linear_model import LogisticRegression

    from fl_training.datasets import load_dataset

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


@pytest.fixture(scope="session")
def deskew_digits_model() -> LogisticRegression:
    """A LogisticRegression trained on deskewed digits, recording it (as a deskewing MNIST model does)."""
    from sklearn.linear_model import LogisticRegression

    from fl_training.datasets import load_dataset
    from fl_training.preprocessing import DESKEW, dataset_features, record_preprocessing

    dataset = load_dataset("digits")
    X_train = dataset_features(dataset, DESKEW)[0]
    return record_preprocessing(LogisticRegression(max_iter=3000).fit(X_train, dataset.y_train), DESKEW)


@pytest.fixture(scope="session")
def deskew_deployment(deskew_digits_model, tmp_path_factory) -> Built:
    """The deskewing digits model, n_bits=8, data calibration: its client deskews before it encrypts."""
    return _build(deskew_digits_model, tmp_path_factory.mktemp("fhe") / "digits-deskew-8", 8)


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


# -- a decompression bomb ----------------------------------------------------------------

#: Side of the bomb: a solid 13,000 x 13,000 PNG is ~0.2 MB on the wire and 676 MB decoded to RGBA.
BOMB_SIDE = 13_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A solid grayscale PNG of side x side pixels, written row by row (never held decoded)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + black pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


@pytest.fixture(scope="session")
def image_bomb(tmp_path_factory) -> Path:
    """A solid PNG small enough to be accepted as a drawing file, 676 MB once decoded to RGBA."""
    from fl_training.drawings import MAX_DRAWING_FILE_BYTES

    path = write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < MAX_DRAWING_FILE_BYTES
    return path
