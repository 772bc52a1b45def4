"""Image decompression bombs are refused before Gradio decodes them, in bounded memory.

A solid 13,000 x 13,000 PNG is ~0.2 MB on the wire and 676 MB once Gradio
has decoded it to RGBA. It is sent here as every part of a sketchpad drawing
through the API, and as a blob the way the browser streams drawings; the
app's peak memory (VmHWM, reset just before) must grow by less than 200 MB.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from fl_training.drawings import MAX_DRAWING_FILE_BYTES, MAX_DRAWING_SIDE, DrawingError, check_image_file
from tests.app_fixtures import launched_app  # noqa: F401 - fixture
from ui.image_guard import MAX_PENDING_BLOB_BYTES, MAX_REQUEST_BODY_BYTES

MAX_GROWTH_BYTES = 200 * 1024 * 1024
SIDE = 13_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, side: int = SIDE) -> Path:
    """A solid grayscale PNG of side x side pixels, written row by row (never held decoded)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + black pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < MAX_DRAWING_FILE_BYTES
    return path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


class PeakMemory:
    """Growth of this process's peak RSS while the block runs (the app runs in this process)."""

    def __enter__(self) -> PeakMemory:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *_exc) -> None:
        self.growth = _status_kb("VmHWM") * 1024 - self.before


def test_the_header_check_reads_no_pixel(bomb, tmp_path):
    with PeakMemory() as peak, pytest.raises(DrawingError, match=f"1 to {MAX_DRAWING_SIDE} pixels on a side"):
        check_image_file(bomb)
    assert peak.growth < 20 * 1024 * 1024
    small = tmp_path / "small.png"
    Image.new("RGBA", (280, 280)).save(small)
    assert check_image_file(small) == (280, 280) == check_image_file(small.read_bytes())
    with pytest.raises(DrawingError, match="not a PNG/WEBP/JPEG image"):
        check_image_file(b"GIF89a" + bytes(100))
    with pytest.raises(DrawingError, match="at most"):
        check_image_file(bytes(MAX_DRAWING_FILE_BYTES + 1))


def test_a_drawing_made_of_bombs_is_refused_through_the_api_in_bounded_memory(launched_app, bomb):  # noqa: F811
    client = Client(launched_app.url, verbose=False, download_files=False)
    part = handle_file(str(bomb))
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


def test_streamed_blobs_are_checked_on_arrival_and_bounded(launched_app, bomb, tmp_path):  # noqa: F811
    sketch = _sketchpad(launched_app.demo)
    with PeakMemory() as peak:
        response = _send_blob(launched_app.url, sketch._id, bomb.read_bytes(), "bomb")
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


def test_request_bodies_are_capped_before_gradio_reads_them(launched_app):  # noqa: F811
    too_big = bytes(MAX_REQUEST_BODY_BYTES + 1)
    with httpx.Client(base_url=launched_app.url, timeout=60) as http:
        for path in ("gradio_api/component_server", "gradio_api/queue/join"):
            assert http.post(path, content=too_big).status_code == 413, path
            # No declared length: reading stops at the cap (Gradio may word the refusal itself).
            chunked = http.post(path, content=(too_big[i:i + 65536] for i in range(0, len(too_big), 65536)))
            assert chunked.status_code in (400, 413), path
