"""Turning a sketchpad drawing into one sample of an image dataset, and checking image files first."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fl_training.datasets import load_dataset
from fl_training.drawings import (
    MAX_DRAWING_FILE_BYTES,
    MAX_DRAWING_SIDE,
    DrawingError,
    check_image_file,
    drawing_to_features,
)
from tests.helpers import PeakMemory


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize(
    ("drawing", "message"),
    [
        (None, "drawing is blank"),
        (np.full((280, 280, 4), 255, np.uint8), "drawing is blank"),
        (np.full((28, 28), np.nan), "no NaN or infinity"),
        (np.full((28, 28), 300.0), "from 0 to 255"),
        (np.zeros(784), "height × width"),
        (np.zeros((28, 28, 5)), "1, 3 or 4 channels"),
        (np.zeros((MAX_DRAWING_SIDE + 1, 1)), f"1 to {MAX_DRAWING_SIDE} pixels on a side"),
        (np.zeros((0, 28)), f"1 to {MAX_DRAWING_SIDE} pixels"),
        ("not an image", "Expected the drawing as an image"),
    ],
)
def test_bad_drawings_are_refused_with_a_message(digits, drawing, message):
    with pytest.raises(DrawingError, match=message):
        drawing_to_features({"composite": drawing}, digits)


def test_a_tabular_dataset_takes_no_drawing():
    with pytest.raises(DrawingError, match="breast-cancer is tabular"):
        drawing_to_features(np.zeros((28, 28)), load_dataset("breast-cancer"))


def test_a_vertical_stroke_becomes_ink_in_the_middle_columns(digits):
    canvas = np.full((280, 280, 4), 255, np.uint8)  # white, opaque
    canvas[40:240, 130:150, :3] = 0  # a black vertical bar
    features = drawing_to_features({"composite": canvas}, digits)
    assert features.shape == (64,)
    assert features.min() >= 0 and features.max() == 16
    image = features.reshape(8, 8)
    assert image[:, 3:5].sum() > 0.9 * image.sum()
    assert image[:, :2].sum() == 0 and image[:, 6:].sum() == 0


def test_the_header_check_reads_no_pixel(image_bomb, tmp_path):
    with PeakMemory() as peak, pytest.raises(DrawingError, match=f"1 to {MAX_DRAWING_SIDE} pixels on a side"):
        check_image_file(image_bomb)
    assert peak.growth < 20 * 1024 * 1024
    small = tmp_path / "small.png"
    Image.new("RGBA", (280, 280)).save(small)
    assert check_image_file(small) == (280, 280) == check_image_file(small.read_bytes())
    with pytest.raises(DrawingError, match="not a PNG/WEBP/JPEG image"):
        check_image_file(b"GIF89a" + bytes(100))
    with pytest.raises(DrawingError, match="at most"):
        check_image_file(bytes(MAX_DRAWING_FILE_BYTES + 1))
