"""Fault injection for ``tests/fl_training/test_faulty_clients.py``: a Flower client that crashes or hangs.

Put this directory on ``PYTHONPATH`` and ``$FL_TEST_FAULT_FILE`` in the
environment of the processes that run Flower's clients. The first
``fl_training.task.fit_local`` call that finds the file takes it (a rename:
exactly one client) and then, per its content, exits at once (``crash``) or
sleeps for an hour (``hang``). Without the file, nothing changes. Processes
without the variable are not touched at all.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

FAULT_FILE = os.environ.get("FL_TEST_FAULT_FILE")


def _take_fault() -> str | None:
    taken = f"{FAULT_FILE}.taken-{os.getpid()}"
    try:
        os.rename(FAULT_FILE, taken)
    except OSError:
        return None  # no fault armed, or another client took it
    with open(taken) as fh:
        return fh.read().strip()


def _faulty(fit_local):
    def fit_local_with_fault(*args, **kwargs):
        fault = _take_fault()
        if fault == "crash":
            os._exit(1)
        if fault == "hang":
            time.sleep(3600)
        return fit_local(*args, **kwargs)

    return fit_local_with_fault


class _PatchTask(importlib.abc.MetaPathFinder):
    """Wrap ``fl_training.task.fit_local`` the moment that module has run, before anyone imports it."""

    def find_spec(self, name, path, target=None):
        if name != "fl_training.task":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.fit_local = _faulty(module.fit_local)

        spec.loader.exec_module = exec_module
        return spec


if FAULT_FILE:
    sys.meta_path.insert(0, _PatchTask())
