"""A session against an FHE server that forgets, and work that must stop when its visitor has gone.

Real Concrete ML and the app's own FHE server process (``FHEServerHandle()``).
The server loses what a session uploaded in three ways: keys deleted (TTL,
eviction), the deployment deleted (its keys go with it), the whole process
killed (restart). Every loss is triggered by an event of the session itself
(a progress callback), never by a timer.
"""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from fl_training.model_io import save_model
from story import StepError
from story.errors import SESSION_ENDED
from tests.helpers import wait_for
from ui.common import run_in_thread


@pytest.fixture()
def session(registry, digits_model, tmp_path):
    session = registry.new_session()
    session.use_uploaded_model(save_model(digits_model, tmp_path / "digits.skops"), "digits")
    session.compile(n_bits=6)
    session.generate_keys()
    yield session
    session.close()


def _lose(kind: str, session) -> None:
    server = session.server
    if kind == "keys":
        server.client.delete_keys(session.keys.remote.key_id)
    elif kind == "deployment":
        server.client.delete_deployment(session.keys.remote.deployment_id, server.admin_token)
    else:
        import os

        pid = server.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not server._process.alive, "the server process to die")


#: What the server forgets. Keys expiring is the everyday case; the others are in the slow lane
#: (losing the whole process restarts it, seconds each).
LOSSES = ["keys", pytest.param("deployment", marks=pytest.mark.slow),
          pytest.param("server process", marks=pytest.mark.slow)]


@pytest.mark.parametrize("lost", LOSSES)
def test_a_session_goes_on_when_the_server_forgot_its_keys_or_deployment(session, lost):
    session.encrypt(sample_index=3)
    _lose(lost, session)
    served = session.run_on_server()
    assert served["keys_uploaded_again"] is True
    decrypted = session.decrypt()
    assert decrypted["prediction"] == decrypted["clear_prediction"]
    session.encrypt(sample_index=4)
    assert session.run_on_server()["keys_uploaded_again"] is False


@pytest.mark.parametrize("lost", LOSSES)
def test_a_batch_evaluation_meets_the_server_forgetting_half_way(session, lost):
    done_at: list[int] = []

    def progress(done: int, total: int) -> None:
        done_at.append(done)
        if done == 5:
            _lose(lost, session)

    result = session.evaluate(num_samples=12, progress=progress)
    assert result["samples"] == 12 and sorted(done_at) == list(range(1, 13))
    assert result["agreement"] == 1.0


def test_a_batch_stops_when_its_session_closes(session):
    seen: list[int] = []
    closer = threading.Thread(target=session.close)

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 3:
            closer.start()  # the tab closes while the batch runs

    key_dir = session.keys.key_dir
    with pytest.raises(StepError) as stopped:
        session.evaluate(num_samples=360, progress=progress)
    assert str(stopped.value) == SESSION_ENDED
    closer.join(30)
    # Samples already in flight finish (3 on 2 cores); none starts after.
    assert max(seen) <= 3 + 4, f"{max(seen)} samples ran, most of them after the session closed"
    assert not key_dir.exists()  # wiped once the step ended


def test_a_batch_stops_when_its_handler_is_closed(session):
    events = run_in_thread(session.evaluate, 360)
    kind, first = next(events)
    assert kind == "progress" and first[1] == 360
    events.close()  # what Gradio does when the visitor cancels or leaves
    wait_for(lambda: not session.busy, "the batch to stop", timeout=20)
    assert session.evaluation is None  # it did not complete
    # The session is still usable.
    assert session.evaluate(num_samples=2)["samples"] == 2


def test_two_callers_driving_one_session_at_once_get_one_step_each(session):
    gate, inside = threading.Event(), threading.Event()
    encrypt = session.keys.client.encrypt

    def slow_encrypt(x: np.ndarray):
        inside.set()
        assert gate.wait(30)
        return encrypt(x)

    session.keys.client.encrypt = slow_encrypt
    results: list = []
    first = threading.Thread(target=lambda: results.append(session.encrypt(sample_index=7)))
    first.start()
    try:
        assert inside.wait(30)
        for step in (session.generate_keys, session.run_on_server, lambda: session.evaluate(num_samples=2)):
            with pytest.raises(StepError, match="Another step of this session is still running"):
                step()
    finally:
        gate.set()
        first.join(30)
        session.keys.client.encrypt = encrypt
    assert results[0]["sample_index"] == 7
    session.run_on_server()
    decrypted = session.decrypt()
    assert decrypted["prediction"] == decrypted["clear_prediction"]
