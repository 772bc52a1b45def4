"""A public Space against scripts: failing calls open no session, and a flood pushes out only its own.

The demo is launched with a small session bound (8) so that what once locked
everyone out (each failing call from a fresh client left a session open) would
fill it many times over.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client.exceptions import AppError

from tests.helpers import FakeClock, LaunchedApp, new_client, running_app, upload_model

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

#: Sessions the launched app allows at once.
BOUND = 8
#: The app's clock, moved by hand: idleness is measured on it (no sleeping, no race with a busy machine).
CLOCK = FakeClock()


@pytest.fixture(scope="module")
def small_app() -> Iterator[LaunchedApp]:
    with running_app(max_sessions=BOUND, clock=CLOCK) as app:
        yield app


def _visitor_decrypts(app: LaunchedApp, model_file) -> dict:
    client = new_client(app)
    upload_model(client, model_file)
    client.predict(8, "data", api_name="/compile")
    client.predict(api_name="/keygen")
    client.predict(3, "test sample", None, api_name="/encrypt")
    client.predict(api_name="/run_fhe")
    return client.predict(api_name="/decrypt")[0]


def test_forty_failing_scripted_calls_then_a_new_visitor_works(small_app, model_files):
    calls = [
        "/decrypt",
        "/keygen",
        "/run_fhe",
        "/compile",
        "/n_bits_sweep",
        "/evaluate_encrypted",
        "/decrypt_wrong_key",
        "/encrypt",
        "/upload_model",
    ]
    for k in range(36):  # each from a fresh client, as a script would; each fails: no model (or file) yet
        api_name = calls[k % len(calls)]
        with pytest.raises(AppError, match="No model yet|No file"):
            new_client(small_app).predict(api_name=api_name)
    too_much = {"num_clients": 100, "num_rounds": 100, "local_epochs": 20, "secure_aggregation": True}
    for _ in range(4):  # a training past its work budget is refused before anything is opened for it
        with pytest.raises(AppError, match="too much work"):
            new_client(small_app).predict(**too_much, api_name="/train")
    assert len(small_app.registry) == 0, "a failing call left a session open"
    result = _visitor_decrypts(small_app, model_files["digits"])
    assert result["matches_clear"] and result["prediction"] == result["clear_prediction"]
    assert len(small_app.registry) == 1


def test_a_flood_of_scripted_sessions_pushes_out_its_own_never_an_active_visitor(small_app, model_files):
    registry = small_app.registry
    for session_id in list(registry._sessions):
        registry.close(session_id)
    visitor = new_client(small_app)
    upload_model(visitor, model_files["digits"])
    flood = [new_client(small_app) for _ in range(BOUND - 1)]
    for client in flood:  # the script fills every other place, one session a second
        CLOCK.now += 1
        upload_model(client, model_files["digits"])
    with pytest.raises(AppError, match="at capacity"):  # all used just now: nobody is pushed out
        upload_model(new_client(small_app), model_files["digits"])
    reclaim = registry.reclaim_idle_seconds
    CLOCK.now += reclaim / 2
    visitor.predict(8, "data", api_name="/compile")  # the visitor keeps working
    CLOCK.now += reclaim / 2 + 1
    # The script's sessions, idle longer than the visitor's, make room, the oldest first.
    more = [new_client(small_app) for _ in range(3)]
    for client in more:
        upload_model(client, model_files["digits"])
    sessions = registry._sessions
    assert visitor.session_hash in sessions and all(c.session_hash in sessions for c in more)
    assert sum(c.session_hash in sessions for c in flood) == BOUND - 1 - len(more)
    assert [c.session_hash in sessions for c in flood] == [False] * 3 + [True] * (BOUND - 4)
    visitor.predict(api_name="/keygen")  # nothing of the visitor's was lost
    with pytest.raises(AppError, match="closed to make room"):
        flood[0].predict(api_name="/keygen")
