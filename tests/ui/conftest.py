"""Fixtures of the UI tests: the demo built but not launched, and model files to upload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_ARGS, fit_logistic


@pytest.fixture(scope="module")
def app() -> Iterator[tuple]:
    """The demo's Blocks and registry, not launched (handlers are called directly); one per module."""
    from app import build_demo
    from fhe_model.connection import FHEServerHandle
    from story import SessionRegistry

    registry = SessionRegistry(FHEServerHandle())
    demo = build_demo(registry)
    yield demo, registry
    registry.close_all()
    registry.server.stop()


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Model files: one per dataset, and some that fit no dataset of the demo."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from fl_training.model_io import save_model

    folder = tmp_path_factory.mktemp("models")
    with warnings.catch_warnings():  # fitted briefly: how well they converge does not matter here
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {
            "digits": save_model(fit_logistic("digits"), folder / "digits.skops"),
            "breast-cancer": save_model(fit_logistic("breast-cancer"), folder / "breast.skops"),
            "digits-0-4": save_model(fit_logistic("digits", classes=5), folder / "digits04.skops"),
            "5-features": save_model(fit_logistic("digits", features=5), folder / "five.skops"),
        }


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright, one per browser-test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
