"""One page cannot fill the queue: past its own bound of waiting events, its next one is refused.

A launched demo; one visitor's n_bits sweep holds the one worker for heavy events while
a script queues batch evaluations behind it from a single page.
"""

from __future__ import annotations

import json

import httpx
import pytest

from app import QUEUE_MAX_SIZE
from tests.helpers import new_client, upload_model, wait_for
from ui.common import MAX_QUEUED_PER_SESSION

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _call(http: httpx.Client, api_name: str, data: list, session_hash: str) -> httpx.Response:
    body = json.dumps({"data": data, "session_hash": session_hash})
    return http.post(
        f"/gradio_api/call/{api_name}", content=body, headers={"Content-Type": "application/json"}
    )


def test_a_page_past_its_bound_of_waiting_events_is_told_to_wait(launched_app, model_files):
    assert MAX_QUEUED_PER_SESSION * 10 <= QUEUE_MAX_SIZE  # a page holds a small share of the queue
    visitor = new_client(launched_app)
    upload_model(visitor, model_files["digits"])
    queue = launched_app.demo._queue
    with httpx.Client(base_url=launched_app.url, timeout=30) as http:
        assert _call(http, "n_bits_sweep", ["data"], visitor.session_hash).status_code == 200
        wait_for(
            lambda: not any(q.queue for q in queue.event_queue_per_concurrency_id.values()),
            "the sweep to start",
        )
        accepted = [
            _call(http, "evaluate_encrypted", [10], "one-scripted-page")
            for _ in range(MAX_QUEUED_PER_SESSION)
        ]
        assert all(r.status_code == 200 for r in accepted), [r.text for r in accepted]
        refused = _call(http, "evaluate_encrypted", [10], "one-scripted-page")
        assert refused.status_code == 503
        assert f"already has {MAX_QUEUED_PER_SESSION} events waiting" in refused.json()["detail"]
        # Another page is not held up by it.
        assert _call(http, "evaluate_encrypted", [10], "another-page").status_code == 200
