"""Image inputs refused before Gradio decodes them: decompression bombs cost a header read, not RAM.

Gradio decodes every image an event receives (an ``Image``'s file, a
sketchpad's background, each layer and the composite) before the handler
runs, and keeps the blobs a sketchpad streams in memory until an event uses
them. A 0.7 MB PNG can decode to 676 MB. So, for every ``gr.Image`` and
``gr.ImageEditor`` (``gr.Sketchpad``) of the app:

* each image's header is read first (:func:`fl_training.drawings.check_image_file`:
  file size, format, dimensions), and only then does Gradio decode it;
* a drawing is at most :data:`~fl_training.drawings.MAX_DRAWING_IMAGES` images;
* blobs a sketchpad streams (``accept_blobs``) are checked the same way on
  arrival, and all sessions' pending blobs together hold at most
  :data:`MAX_PENDING_BLOB_BYTES` (the oldest go first);
* request bodies are capped before Gradio reads them (:func:`body_limit`).

The patch is on Gradio's classes, not on component instances, because Gradio
replaces a session's copy of a component with a fresh instance whenever a
handler returns ``gr.update`` for it. :func:`install` is idempotent.
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
import weakref
from collections import OrderedDict
from typing import Any

import gradio as gr
from gradio.components.image_editor import EditorData
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from story.errors import DrawingError
from story.forms import MAX_DRAWING_FILE_BYTES, MAX_DRAWING_IMAGES, check_image_file

#: Bytes all sketchpads together may hold in blobs waiting for their event.
MAX_PENDING_BLOB_BYTES = 16 * MAX_DRAWING_FILE_BYTES
#: Request bodies Gradio may read, outside file uploads (a drawing's blob, base64 included).
MAX_REQUEST_BODY_BYTES = 2 * MAX_DRAWING_FILE_BYTES
#: Slack for multipart headers on top of Gradio's own per-file upload limit.
_UPLOAD_OVERHEAD_BYTES = 1024 * 1024
_BLOB_TYPES = frozenset({"background", "composite", "layer"})

_installed = False
_install_lock = threading.Lock()
_pending: OrderedDict[tuple[int, str], tuple[weakref.ref, int]] = OrderedDict()
_pending_lock = threading.Lock()


def _refuse(exc: DrawingError) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def _check(source: bytes | str | None) -> None:
    if source is None:
        return
    try:
        check_image_file(source)
    except DrawingError as exc:
        raise _refuse(exc) from exc


def _check_file_data(file: Any) -> None:
    """A payload's image: a file in Gradio's cache, or a data URL."""
    if file is None:
        return
    url = getattr(file, "url", None)
    if isinstance(url, str) and url.startswith("data:"):
        encoded = url.partition(",")[2]
        if len(encoded) > MAX_DRAWING_FILE_BYTES * 4 // 3 + 4:
            raise _refuse(DrawingError(f"The image is larger than {MAX_DRAWING_FILE_BYTES:,} bytes."))
        try:
            _check(base64.b64decode(encoded, validate=False))
        except binascii.Error as exc:
            raise _refuse(DrawingError("The image's data URL is not valid base64.")) from exc
        return
    path = getattr(file, "path", None)
    if path is not None:
        _check(path)


def _guard_image_preprocess(original):
    @functools.wraps(original)
    def preprocess(self, payload):
        _check_file_data(payload)
        return original(self, payload)

    return preprocess


def _guard_editor_preprocess(original):
    @functools.wraps(original)
    def preprocess(self, payload: EditorData | None):
        if payload is not None and payload.id is None:
            count = (payload.background is not None) + (payload.composite is not None) + len(payload.layers)
            if count > MAX_DRAWING_IMAGES:
                raise _refuse(DrawingError(
                    f"A drawing is at most {MAX_DRAWING_IMAGES} images (background, composite and "
                    f"layers); got {count}."
                ))
        try:
            return original(self, payload)
        finally:
            if payload is not None and payload.id is not None:
                _forget(self, payload.id)

    return preprocess


def _guard_convert(original):
    @functools.wraps(original)
    def convert_and_format_image(self, file, *args, **kwargs):
        if isinstance(file, (bytes, bytearray, memoryview)):
            _check(bytes(file))
        else:
            _check_file_data(file)
        return original(self, file, *args, **kwargs)

    return convert_and_format_image


def _forget(editor: Any, blob_id: str) -> None:
    with _pending_lock:
        _pending.pop((id(editor), blob_id), None)


def _account(editor: Any, blob_id: str) -> None:
    """Record what ``editor`` holds for ``blob_id``; drop the oldest pending blobs past the cap."""
    stored = editor.blob_storage.get(blob_id)
    if stored is None:
        return
    size = sum(len(b) for b in [stored.background, stored.composite, *stored.layers] if b is not None)
    evicted = []
    with _pending_lock:
        _pending[(id(editor), blob_id)] = (weakref.ref(editor), size)
        _pending.move_to_end((id(editor), blob_id))
        total = sum(entry[1] for entry in _pending.values())
        while total > MAX_PENDING_BLOB_BYTES and len(_pending) > 1:
            (_, old_id), (ref, old_size) = _pending.popitem(last=False)
            total -= old_size
            evicted.append((ref, old_id))
    for ref, old_id in evicted:
        owner = ref()
        if owner is not None:
            owner.blob_storage.pop(old_id, None)


def _guard_accept_blobs(original):
    @functools.wraps(original)
    def accept_blobs(self, data):
        kind, index, blob_id = data.data.get("type"), data.data.get("index"), data.data.get("id")
        if kind not in _BLOB_TYPES or not isinstance(blob_id, str) or not 0 < len(blob_id) <= 64:
            raise gr.Error("Unexpected drawing data.", print_exception=False)
        if kind == "layer":
            try:
                position = int(index)
            except (TypeError, ValueError):
                raise gr.Error("Unexpected drawing layer.", print_exception=False) from None
            if not 0 <= position < MAX_DRAWING_IMAGES:
                raise gr.Error(f"A drawing has at most {MAX_DRAWING_IMAGES} layers.", print_exception=False)
        if len(data.files) != 1:
            raise gr.Error("Send one image per drawing blob.", print_exception=False)
        _check(bytes(data.files[0][1]))
        result = original(self, data)
        _account(self, blob_id)
        return result

    accept_blobs._is_server_fn = True  # type: ignore[attr-defined]  # Gradio looks for this mark
    return accept_blobs


def install() -> None:
    """Put the checks in front of every Image and ImageEditor (Sketchpad) of this process."""
    global _installed
    with _install_lock:
        if _installed:
            return
        image, editor = gr.components.Image, gr.components.ImageEditor
        image.preprocess = _guard_image_preprocess(image.preprocess)
        editor.preprocess = _guard_editor_preprocess(editor.preprocess)
        editor.convert_and_format_image = _guard_convert(editor.convert_and_format_image)
        editor.accept_blobs = _guard_accept_blobs(editor.accept_blobs)
        _installed = True


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies past a cap (413) before the app reads them.

    Parameters
    ----------
    app : ASGI app
        What it wraps.
    max_bytes : int
        Cap for every request but uploads.
    upload_path : str
        Gradio's file upload route, capped at ``max_upload_bytes`` instead.
    max_upload_bytes : int
        Cap for that route (Gradio checks each file against its own limit).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_path: str, max_upload_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_path = upload_path
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope["path"].rstrip("/") == self.upload_path else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = f'{{"detail": "Request body too large: at most {limit} bytes."}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def body_limit(max_file_size: int) -> Middleware:
    """The :class:`BodyLimit` middleware for ``demo.launch(app_kwargs={"middleware": [...]})``.

    Parameters
    ----------
    max_file_size : int
        The app's upload limit (``launch(max_file_size=...)``).

    Returns
    -------
    starlette.middleware.Middleware
        Caps every body at :data:`MAX_REQUEST_BODY_BYTES`, uploads at one file's limit plus headers.
    """
    from gradio.route_utils import API_PREFIX

    return Middleware(BodyLimit, max_bytes=MAX_REQUEST_BODY_BYTES, upload_path=f"{API_PREFIX}/upload",
                      max_upload_bytes=max_file_size + _UPLOAD_OVERHEAD_BYTES)
