"""A page that closes stops its long steps: the n_bits sweep and the wrong-key demo start nothing more.

Real Concrete ML and the app's FHE server process; the page closes (``story.pages.close_page``,
what ``demo.unload`` calls) from inside the step's progress callback, as a visitor closing the tab
mid-step would.
"""

from __future__ import annotations

import pytest

from story import StepError
from story.pages import close_page, open_page
from tests.helpers import fit_logistic

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from fl_training.model_io import save_model

    return save_model(fit_logistic("digits"), tmp_path_factory.mktemp("model") / "digits.skops")


def _page(registry, page_id: str, model_file):
    open_page(registry, page_id, None)
    session = registry.resolve(None, page_id)
    session.use_uploaded_model(model_file, "digits")
    return session


def test_the_n_bits_sweep_stops_when_its_page_closes(registry, model_file):
    session = _page(registry, "sweep-page", model_file)
    done: list[int] = []

    def close_after_first(finished: int, total: int) -> None:
        done.append(finished)
        if finished == 1:
            close_page(registry, "sweep-page")

    with pytest.raises(StepError, match="session has ended"):
        session.n_bits_sweep(n_bits_values=(2, 3, 4), samples=20, progress=close_after_first)
    assert done == [1] and session.closed
    assert session.model is None  # wiped once the step ended


@pytest.mark.slow
def test_the_wrong_key_demo_stops_when_its_page_closes(registry, model_file):
    session = _page(registry, "wrong-key-page", model_file)
    session.compile(6, "data")
    session.generate_keys()
    session.encrypt(sample_index=0)
    session.run_on_server()
    done: list[int] = []

    def close_after_first(finished: int, total: int) -> None:
        done.append(finished)
        if finished == 1:
            close_page(registry, "wrong-key-page")

    with pytest.raises(StepError, match="session has ended"):
        session.decrypt_with_wrong_key(tries=2, samples=10, progress=close_after_first)
    assert done == [1] and session.closed and session.keys is None
