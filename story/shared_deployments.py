"""Identical compiles run once: one circuit and one server deployment per model and settings.

Visitors who trained the same model (a shared training, or the same uploaded
file) and compile it with the same ``n_bits`` and calibration share one
compiled circuit, its public ``client.zip``/``server.zip`` and its deployment
on the FHE server. Each holds a :class:`Lease`; the last lease to go deletes
the circuit's files and the server's copy. Keys are never shared: each session
generates its own against the shared deployment.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from concurrency.single_flight import SingleFlight
from fhe_model import developer
from fhe_model.connection import FHEServerHandle, RemoteDeployment
from fl_training.datasets import Dataset
from fl_training.preprocessing import model_preprocessing


def model_digest(model: LogisticRegression, dataset: str) -> str:
    """What a circuit is compiled from: the weights, the classes, the dataset, the preprocessing."""
    digest = hashlib.sha256(f"{dataset}:{model_preprocessing(model)}".encode())
    for array in (model.coef_, model.intercept_, model.classes_):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class _Entry:
    compiled: developer.CompiledModel
    files: developer.DeploymentFiles
    remote: RemoteDeployment
    directory: Path
    leases: int = 0


@dataclass
class Lease:
    """One session's use of a shared compiled deployment; :meth:`release` it when done."""

    compiled: developer.CompiledModel
    files: developer.DeploymentFiles
    remote: RemoteDeployment
    shared: bool
    give_back: Callable[[], None] = field(repr=False)
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        """Give the deployment back (idempotent); the last one out deletes it."""
        if not self._released:
            self._released = True
            self.give_back()


class SharedDeployments:
    """The compiled deployments of one app, one per (model, dataset, n_bits, calibration).

    Parameters
    ----------
    server : FHEServerHandle
        Where the deployments are uploaded (on first use, by :class:`RemoteDeployment`).
    root : path-like
        Parent of the deployments' public files (``client.zip``, ``server.zip``).
    """

    def __init__(self, server: FHEServerHandle, root: str | Path):
        self.server = server
        self.root = Path(root)
        self._lock = threading.Lock()
        self._entries: dict[tuple, _Entry] = {}
        self._flights = SingleFlight()
        #: How many times Concrete actually compiled (shared results excluded).
        self.compiles = 0

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, model: LogisticRegression, dataset: Dataset, n_bits: int, calibration: str) -> Lease:
        """A lease on the deployment of ``model`` at these settings, compiling it if nobody has.

        Parameters
        ----------
        model : LogisticRegression
            The fitted model.
        dataset : Dataset
            Its dataset (calibration inputs, the scored test split).
        n_bits : int
            Validated quantization bits.
        calibration : str
            Validated calibration mode.

        Returns
        -------
        Lease
            ``shared`` is True when another session had compiled it (or was compiling it).
        """
        key = (model_digest(model, dataset.name), n_bits, calibration)
        with self._flights.turn(key):  # one compile per key; others wait for it and share it
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.leases += 1
                    return self._lease(key, entry, shared=True)
            entry = self._build(model, dataset, n_bits, calibration)
            with self._lock:
                entry.leases += 1
                self._entries[key] = entry
                self.compiles += 1
                return self._lease(key, entry, shared=False)

    def _build(self, model: LogisticRegression, dataset: Dataset, n_bits: int, calibration: str) -> _Entry:
        compiled = developer.compile_model(model, dataset, n_bits=n_bits, calibration=calibration)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="deployment-", dir=self.root))
        try:
            files = developer.save_deployment(compiled, directory / "deployment")
        except BaseException:
            developer.remove_compiled_files(compiled)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        remote = RemoteDeployment(self.server, files.server_zip, files.client_zip)
        return _Entry(compiled, files, remote, directory)

    def _lease(self, key: tuple, entry: _Entry, shared: bool) -> Lease:
        return Lease(entry.compiled, entry.files, entry.remote, shared,
                     give_back=lambda: self._give_back(key, entry))

    def _give_back(self, key: tuple, entry: _Entry) -> None:
        with self._lock:
            entry.leases -= 1
            if entry.leases > 0:
                return
            if self._entries.get(key) is entry:
                del self._entries[key]
        developer.remove_compiled_files(entry.compiled)
        shutil.rmtree(entry.directory, ignore_errors=True)
        entry.remote.forget()

    def close(self) -> None:
        """Delete every deployment (app shutdown), leased or not."""
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            developer.remove_compiled_files(entry.compiled)
            shutil.rmtree(entry.directory, ignore_errors=True)
            entry.remote.forget()
