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

from types import ModuleType, SimpleNamespace

from concurrency.imports import import_once

#: What the roles use, in the order they are imported.
CONCRETE_MODULES = ("concrete.fhe", "concrete.ml.sklearn", "concrete.ml.deployment")


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
