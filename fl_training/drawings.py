"""Turning a drawing into one sample of an image dataset.

The data owner draws a digit on a sketchpad; :func:`drawing_to_features`
makes it look like the dataset's own images (light strokes on a dark
background, centred, downscaled, in the dataset's value range) so that the
model can classify it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_training.datasets import Dataset

#: Largest drawing accepted, in pixels per side (the sketchpad sends 280).
MAX_DRAWING_SIDE = 2048


class DrawingError(ValueError):
    """A drawing cannot be used: blank, not an image, too large or for a tabular dataset.

    The message says what to draw or send instead.
    """


def drawing_to_features(image: Any, dataset: Dataset) -> np.ndarray:
    """Turn a sketchpad drawing into one sample of an image dataset's raw features.

    Dark strokes on a light or transparent canvas become light strokes on a
    dark background, cropped to the drawing, centred with the dataset's usual
    margin (4 px of 28 for MNIST), downscaled to the dataset's image shape and
    scaled to its raw value range (0-255 for MNIST, 0-16 for digits).

    Parameters
    ----------
    image : ndarray, or dict with a ``"composite"`` entry, or None
        An RGB(A) or grayscale image as the sketchpad returns it.
    dataset : Dataset
        An image dataset (``image_shape`` set).

    Returns
    -------
    ndarray of shape (n_features,)
        Raw features.

    Raises
    ------
    DrawingError
        If the dataset is tabular, or the drawing is blank or not an image.
    """
    from PIL import Image

    if dataset.image_shape is None:
        raise DrawingError(
            f"{dataset.name} is tabular: drawing only works for image datasets (mnist-5k, digits). "
            "Pick a test sample instead."
        )
    if isinstance(image, dict):
        image = image.get("composite")
    if image is None:
        raise DrawingError("The drawing is blank: draw a digit on the sketchpad first.")
    try:
        pixels = np.asarray(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DrawingError(
            f"Expected the drawing as an image (height × width × RGBA pixels), got {type(image).__name__}."
        ) from exc
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise DrawingError(
            "Expected the drawing as an image (height × width, with 1, 3 or 4 channels), "
            f"got an array of shape {pixels.shape}."
        )
    if min(pixels.shape[:2]) < 1 or max(pixels.shape[:2]) > MAX_DRAWING_SIDE:
        raise DrawingError(
            f"The drawing must be 1 to {MAX_DRAWING_SIDE} pixels on a side, got "
            f"{pixels.shape[0]}×{pixels.shape[1]}."
        )
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise DrawingError("The drawing's pixel values must be numbers from 0 to 255 (no NaN or infinity).")
    if pixels.ndim == 3:
        gray = pixels[..., :3].mean(axis=2)
        alpha = pixels[..., 3] / 255.0 if pixels.shape[2] == 4 else np.ones(gray.shape)
        ink = alpha * (255.0 - gray)
    else:
        ink = 255.0 - pixels
    if ink.max() < 32:
        raise DrawingError("The drawing is blank: draw a digit on the sketchpad first.")
    rows = np.flatnonzero((ink > 0.2 * ink.max()).any(axis=1))
    cols = np.flatnonzero((ink > 0.2 * ink.max()).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape)
    square = np.zeros((side, side))
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop

    height, width = dataset.image_shape
    margin = height // 7 if height >= 16 else 0  # MNIST digits sit in a 20x20 box
    inner = (height - 2 * margin, width - 2 * margin)
    small = Image.fromarray(np.clip(square, 0, 255).astype(np.uint8)).resize(
        (inner[1], inner[0]), Image.Resampling.BOX
    )
    out = np.zeros((height, width))
    out[margin : margin + inner[0], margin : margin + inner[1]] = np.asarray(small, dtype=np.float64)
    if out.max() <= 0:
        raise DrawingError("The drawing is too faint: draw with thicker strokes.")
    high = float(np.max(dataset.feature_high))
    return (out / out.max() * high).reshape(-1)
