"""Image decompression bombs are refused before Gradio decodes them, in bounded memory.

A solid 13,000 x 13,000 PNG (the ``image_bomb`` fixture) is ~0.2 MB on the wire
and 676 MB once Gradio has decoded it to RGBA. It is sent here as every part
of a sketchpad drawing through the API, and as a blob the way the browser
streams drawings; the app's peak memory (VmHWM, reset just before) must grow
by less than 200 MB. The header check itself is tested in
``tests/fl_training/test_drawings.py``.
"""

from __future__ import annotations

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.helpers import PeakMemory, new_client
from ui.image_guard import MAX_PENDING_BLOB_BYTES, MAX_REQUEST_BODY_BYTES

MAX_GROWTH_BYTES = 200 * 1024 * 1024


def test_a_drawing_made_of_bombs_is_refused_through_the_api_in_bounded_memory(launched_app, image_bomb):
    client = new_client(launched_app)
    part = handle_file(str(image_bomb))
    drawing = {"background": part, "layers": [part, part], "composite": part}
    with PeakMemory() as peak, pytest.raises(AppError, match="refused before being decoded"):
        client.predict(source="drawing", drawing=drawing, api_name="/encrypt")
    print(f"peak RSS growth while a drawing of 4 bombs was refused: {peak.growth / 2**20:.1f} MB")
    assert peak.growth < MAX_GROWTH_BYTES, f"{peak.growth / 2**20:.0f} MB"
    # Too many parts are refused too, whatever their size.
    with pytest.raises(AppError, match="at most 4 images"):
        client.predict(source="drawing", drawing={**drawing, "layers": [part] * 5}, api_name="/encrypt")


def _sketchpad(demo: gr.Blocks) -> gr.ImageEditor:
    return next(b for b in demo.blocks.values() if isinstance(b, gr.ImageEditor))


def _send_blob(url: str, component_id: int, content: bytes, blob_id: str, kind: str = "composite",
               index: str = "null") -> httpx.Response:
    fields = {"id": blob_id, "type": kind, "index": index, "session_hash": "blob-test",
              "component_id": str(component_id), "fn_name": "accept_blobs"}
    return httpx.post(f"{url}gradio_api/component_server", timeout=60, data=fields,
                      files={"file": ("blob.png", content)})


def test_streamed_blobs_are_checked_on_arrival_and_bounded(launched_app, image_bomb, tmp_path):
    sketch = _sketchpad(launched_app.demo)
    with PeakMemory() as peak:
        response = _send_blob(launched_app.url, sketch._id, image_bomb.read_bytes(), "bomb")
    assert response.status_code != 200 and "bomb" not in sketch.blob_storage
    print(f"peak RSS growth while a streamed bomb blob was refused: {peak.growth / 2**20:.1f} MB")
    assert peak.growth < MAX_GROWTH_BYTES
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 500, 4), dtype=np.uint8)).save(small)
    content = small.read_bytes()
    assert _send_blob(launched_app.url, sketch._id, content, "layers", "layer", str(10**7)).status_code != 200
    assert "layers" not in sketch.blob_storage
    for n in range(MAX_PENDING_BLOB_BYTES // len(content) + 5):  # more than the cap, never consumed
        assert _send_blob(launched_app.url, sketch._id, content, f"pending-{n}").status_code == 200
    held = sum(len(blob.composite or b"") for blob in sketch.blob_storage.values())
    assert 0 < held <= MAX_PENDING_BLOB_BYTES


def test_request_bodies_are_capped_before_gradio_reads_them(launched_app):
    too_big = bytes(MAX_REQUEST_BODY_BYTES + 1)
    with httpx.Client(base_url=launched_app.url, timeout=60) as http:
        for path in ("gradio_api/component_server", "gradio_api/queue/join"):
            assert http.post(path, content=too_big).status_code == 413, path
            # No declared length: reading stops at the cap (Gradio may word the refusal itself).
            chunked = http.post(path, content=(too_big[i:i + 65536] for i in range(0, len(too_big), 65536)))
            assert chunked.status_code in (400, 413), path
