"""One image, one set of features on every path: the app's session, its drawing preview, the remote client.

The training's clients are held to the same function in ``tests/fl_training/test_preprocessing.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_training.drawings import drawing_to_features
from fl_training.model_io import save_model
from fl_training.preprocessing import DESKEW, deskew_images
from tests.fl_training.test_evaluate_cli import write_idx

ROOT = Path(__file__).resolve().parents[2]


def _digit_drawing() -> np.ndarray:
    """A slanted 1 on a white RGBA canvas, as the sketchpad sends it."""
    canvas = np.full((280, 280, 4), 255, dtype=np.uint8)
    for row in range(40, 240):
        col = 120 + (row - 140) // 3
        canvas[row, col : col + 18, :3] = 0
    return canvas


@pytest.mark.slow
def test_the_same_image_gives_the_same_features_in_the_app_and_the_remote_client(
    registry, deskew_deployment, tmp_path
):
    dataset = deskew_deployment.dataset
    index = 5
    x, label = dataset.X_test[index], int(dataset.y_test[index])
    reference = deskew_images(x[None], (8, 8))[0]

    session = registry.new_session()
    session.use_uploaded_model(save_model(deskew_deployment.model, tmp_path / "deskew.skops"), "digits")
    assert session.input_preprocessing == DESKEW
    drawing = _digit_drawing()
    np.testing.assert_allclose(
        session.prepare_drawing(drawing),
        deskew_images(drawing_to_features(drawing, dataset)[None], (8, 8))[0],
    )
    session.compile(n_bits=8)
    session.generate_keys()
    session.encrypt("test sample", index)
    np.testing.assert_allclose(session.encrypted.encryption.model_input, reference)
    session.run_on_server()
    decrypted = session.decrypt()
    expected = int(deskew_deployment.expected(reference[None])[0])
    assert decrypted["prediction"] == expected and decrypted["matches_clear"]

    # The remote client: python -m fhe_model client, against a server that holds only the circuit.
    from fhe_model.http_server import start_local_server

    images = write_idx(tmp_path / "images", x.reshape(1, 8, 8))
    labels = write_idx(tmp_path / "labels", np.array([label]))
    server = start_local_server(deskew_deployment.files.directory)
    try:  # in a process of its own, as a participant runs it (and nothing of it stays in this one)
        done = subprocess.run(
            [sys.executable, "-m", "fhe_model", "client", "--server", server.url, "--dataset", "digits",
             "--images", str(images), "--labels", str(labels), "--json"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    captured = done
    report = json.loads(captured.stdout.strip().splitlines()[-1])
    assert report["preprocessing"] == DESKEW and report["predictions"] == [expected]
