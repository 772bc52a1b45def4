"""Heavy packages imported once per process, under one lock.

Packages such as Concrete (``concrete.fhe`` ↔ ``concrete.ml``), ``datasets`` or
Flower's partitioners import each other's modules in cycles. When two threads import
such a package for the first time at once, Python's per-module import locks may
hand one thread a partially initialised module to avoid a deadlock; that thread
then fails (``module 'concrete.fhe' has no attribute 'tracing'``), and the broken
module stays in ``sys.modules`` for every later caller. Code that imports a heavy
package lazily, from a worker thread, goes through :func:`import_once` instead.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType

logger = logging.getLogger(__name__)

#: One lock for every heavy first import: the packages import one another (Concrete imports torch).
_LOCK = threading.RLock()
#: Packages whose import failed, logged once each with its cause.
_failed: set[str] = set()


def import_once(*names: str) -> tuple[ModuleType, ...]:
    """Import the modules ``names`` in order, one thread at a time.

    An import that is already complete costs a dictionary lookup under the lock.
    If one fails, every module of that top-level package is removed from
    ``sys.modules`` before the error propagates, so the next caller imports it
    afresh instead of reusing a half-initialised module.

    Parameters
    ----------
    *names : str
        Dotted module names, e.g. ``"concrete.fhe"``, ``"concrete.ml.sklearn"``.

    Returns
    -------
    tuple of module
        The modules, in the order asked.

    Raises
    ------
    ImportError
        Or whatever the package raised while importing (logged once per package).
    """
    with _LOCK:
        modules = []
        for name in names:
            try:
                modules.append(importlib.import_module(name))
            except BaseException as exc:
                package = name.partition(".")[0]
                purge(package)
                if package not in _failed:
                    _failed.add(package)
                    logger.error("importing %s failed (%s: %s); the next use imports it afresh",
                                 name, exc.__class__.__name__, exc)
                raise
        return tuple(modules)


def purge(package: str) -> list[str]:
    """Remove ``package`` and its submodules from ``sys.modules``; returns their names."""
    with _LOCK:
        gone = [m for m in list(sys.modules) if m == package or m.startswith(package + ".")]
        for module in gone:
            sys.modules.pop(module, None)
        return gone
