"""Concrete and Concrete ML, imported once per process, under one lock.

Every role (developer, client, server) imports Concrete lazily, from whichever
thread first needs it: the app's launch-time compile, a visitor's compile, keys,
an evaluation. Concrete's modules import each other in cycles, so two first
imports at once can leave a half-initialised ``concrete.fhe`` behind
(:mod:`concurrency.imports`). They all go through :func:`concrete` instead, which
imports the three modules the roles use, in one order, one thread at a time
(``concrete.ml.deployment`` imports the other two anyway: ~4.5 s, measured once).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import ModuleType, SimpleNamespace

from concurrency.imports import import_once

logger = logging.getLogger(__name__)

#: What the roles use, in the order they are imported.
CONCRETE_MODULES = ("concrete.fhe", "concrete.ml.sklearn", "concrete.ml.deployment")
#: Signals given back their previous handling once Concrete's dataflow runtime (HPX) has started.
#: Read with ``sigaction`` before and after ``concrete.compiler.init_dfr()``, HPX takes SIGPIPE,
#: SIGINT, SIGTERM, SIGHUP, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT and SIGUSR1. Left to it, a
#: browser that disconnects while the app writes to it (SIGPIPE) aborts the whole app: that one is
#: given back (ignored, as Python has it). The others are left to HPX as they always were here.
RUNTIME_SIGNALS = (signal.SIGPIPE,) if hasattr(signal, "SIGPIPE") else ()

_runtime_lock = threading.Lock()
_runtime_started = False


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` on Linux (handler, 1024-bit mask, flags, restorer)."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


def start_runtime_keeping_signals(init: Callable[[], object]) -> None:
    """Start Concrete's runtime once (``init``), then give every signal it took back its previous handler.

    Concrete starts its runtime on the first compile anyway; starting it here, at a
    known point, lets the process keep Python's handling of :data:`RUNTIME_SIGNALS`.
    Outside Linux (where ``struct sigaction`` differs) the runtime starts on first use,
    as Concrete does by itself.
    """
    global _runtime_started
    with _runtime_lock:
        if _runtime_started or not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        saved = {}
        for number in RUNTIME_SIGNALS:
            saved[number] = _SigAction()
            libc.sigaction(int(number), None, ctypes.byref(saved[number]))
        init()
        for number, action in saved.items():
            if libc.sigaction(int(number), ctypes.byref(action), None) != 0:
                logger.warning("could not restore the handler of %s after Concrete's runtime started",
                               signal.Signals(number).name)
        _runtime_started = True


def concrete() -> SimpleNamespace:
    """Concrete's modules the roles use, imported if this is the first call.

    Returns
    -------
    SimpleNamespace
        ``fhe`` (``concrete.fhe``), ``LogisticRegression`` (Concrete ML's),
        ``FHEModelDev``, ``FHEModelClient``, ``FHEModelServer``.

    Raises
    ------
    ImportError
        If Concrete cannot be imported (logged once; the next call tries afresh).
    """
    fhe, sklearn, deployment = import_once(*CONCRETE_MODULES)
    start_runtime_keeping_signals(import_once("concrete.compiler")[0].init_dfr)
    return SimpleNamespace(
        fhe=fhe,
        LogisticRegression=sklearn.LogisticRegression,
        FHEModelDev=deployment.FHEModelDev,
        FHEModelClient=deployment.FHEModelClient,
        FHEModelServer=deployment.FHEModelServer,
    )


def module(name: str) -> ModuleType:
    """One of Concrete's submodules (e.g. ``concrete.fhe.extensions.tag``), after :func:`concrete`."""
    concrete()
    (found,) = import_once(name)
    return found
