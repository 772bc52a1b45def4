"""A page's resume token: it works once (a new one is issued on every load) and expires with its session.

Real sessions with an uploaded digits model (no FHE server is contacted: nothing is compiled).
"""

from __future__ import annotations

import pytest

from fhe_model.connection import FHEServerHandle
from story import SessionRegistry
from story.pages import close_page, open_page
from story.resume import looks_like_token, new_token
from tests.helpers import FakeClock

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture()
def registry(tmp_path):
    registry = SessionRegistry(FHEServerHandle("http://127.0.0.1:9"), temp_dir=tmp_path, clock=FakeClock())
    yield registry
    registry.close_all()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from fl_training.model_io import save_model
    from tests.helpers import fit_logistic

    return save_model(fit_logistic("digits", max_iter=50), tmp_path_factory.mktemp("model") / "m.skops")


def _page_with_model(registry: SessionRegistry, page_id: str, model_file) -> str:
    started = open_page(registry, page_id, None)
    registry.resolve(None, page_id).use_uploaded_model(model_file, "digits")
    return started.token


def test_a_token_works_once_and_a_new_one_is_issued_on_every_load(registry, model_file):
    first = _page_with_model(registry, "page-1", model_file)
    close_page(registry, "page-1")  # parked for a reload
    reload = open_page(registry, "page-2", first)
    assert reload.session is not None and reload.session.model is not None
    assert looks_like_token(reload.token) and reload.token != first
    # A copy of the old token (leaked, or the same page loaded twice) takes nothing over.
    leaked = open_page(registry, "page-3", first)
    assert leaked.session is None and leaked.token not in (first, reload.token)
    assert registry.get("page-3") is None
    # The browser's new token resumes its page (a reload that arrives before the old page's goodbye).
    again = open_page(registry, "page-4", reload.token)
    assert again.session is not None and again.session is not reload.session
    assert again.token != reload.token


def test_a_token_expires_with_its_session(registry, model_file):
    token = _page_with_model(registry, "page-1", model_file)
    session = registry.get("page-1")
    registry._clock.now += registry.idle_ttl_seconds + 1
    assert registry.sweep() == 1 and session.closed  # the tab never said goodbye
    assert registry.resumptions.page_of(token) is None
    assert open_page(registry, "page-2", token).session is None
    # A page closed with nothing to keep forgets its token at once.
    empty = open_page(registry, "page-3", None)
    close_page(registry, "page-3")
    assert registry.resumptions.page_of(empty.token) is None


def test_a_parked_sessions_token_expires_with_it(registry, model_file):
    token = _page_with_model(registry, "page-1", model_file)
    close_page(registry, "page-1")
    resumptions = registry.resumptions
    assert len(resumptions) == 1
    resumptions._clock = lambda: 10**9  # long after PARK_SECONDS
    assert resumptions.sweep() == 1
    assert open_page(registry, "page-2", token).session is None
    assert open_page(registry, "page-3", new_token()).session is None
