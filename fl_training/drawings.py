"""Turning a drawing into one sample of an image dataset.

The data owner draws a digit on a sketchpad; :func:`drawing_to_features`
makes it look like the dataset's own images (light strokes on a dark
background, centred, downscaled, in the dataset's value range) so that the
model can classify it.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from fl_training.datasets import Dataset

#: Largest drawing accepted, in pixels per side (the sketchpad sends 280).
MAX_DRAWING_SIDE = 1024
#: Largest image file a drawing may arrive as (a 280 x 280 sketch is a few kB;
#: 1 MB is an incompressible 512 x 512 RGBA image).
MAX_DRAWING_FILE_BYTES = 1024 * 1024
#: Images one drawing may arrive as: the sketchpad's background, composite and layers.
MAX_DRAWING_IMAGES = 4
#: Formats a drawing may arrive in (what browsers' canvases export).
DRAWING_FORMATS = ("PNG", "WEBP", "JPEG")


class DrawingError(ValueError):
    """A drawing cannot be used: blank, not an image, too large or for a tabular dataset.

    The message says what to draw or send instead.
    """


def check_image_file(source: bytes | str | os.PathLike) -> tuple[int, int]:
    """Refuse an image file that would decode to more than a drawing, reading its header only.

    An image of a few hundred kB can decode to gigabytes (a solid 13,000 x
    13,000 PNG is 0.7 MB and 676 MB decoded); this reads the file's size and
    the header's dimensions, and never decodes a pixel.

    Parameters
    ----------
    source : bytes or path-like
        The encoded image.

    Returns
    -------
    tuple of int
        ``(width, height)``.

    Raises
    ------
    DrawingError
        If it is larger than :data:`MAX_DRAWING_FILE_BYTES`, not a
        :data:`DRAWING_FORMATS` image, or over :data:`MAX_DRAWING_SIDE` on a side.
    """
    size = len(source) if isinstance(source, (bytes, bytearray)) else os.stat(source).st_size
    if size > MAX_DRAWING_FILE_BYTES:
        raise DrawingError(
            f"The drawing's image file is {size:,} bytes; at most {MAX_DRAWING_FILE_BYTES:,} are accepted "
            "(the sketchpad sends a few kB)."
        )
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with Image.open(stream, formats=DRAWING_FORMATS) as image:  # reads the header, decodes nothing
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DrawingError(
            f"The drawing is not a {'/'.join(DRAWING_FORMATS)} image ({exc.__class__.__name__})."
        ) from exc
    if not (1 <= width <= MAX_DRAWING_SIDE and 1 <= height <= MAX_DRAWING_SIDE):
        raise DrawingError(
            f"The drawing must be 1 to {MAX_DRAWING_SIDE} pixels on a side, got {height}×{width}; "
            "it was refused before being decoded."
        )
    return width, height


def drawing_to_features(image: Any, dataset: Dataset) -> np.ndarray:
    """Turn a sketchpad drawing into one sample of an image dataset's raw features.

    Dark strokes on a light or transparent canvas become light strokes on a
    dark background, cropped to the drawing and prepared the way the dataset's
    own images were made. MNIST (28 x 28): scaled into a 20 x 20 box keeping
    the aspect ratio, anti-aliased, and placed so that its centre of mass is
    at the centre; pixels 0-255. The 8 x 8 digits: scaled into a 32 x 32
    bitmap keeping the aspect ratio and centred, then the ink pixels of each
    4 x 4 block counted; values 0-16.

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
        raw = np.asarray(image)  # no copy for an array; the shape is checked before any conversion
    except (TypeError, ValueError) as exc:
        raise DrawingError(
            f"Expected the drawing as an image (height × width × RGBA pixels), got {type(image).__name__}."
        ) from exc
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] not in (1, 3, 4)):
        raise DrawingError(
            "Expected the drawing as an image (height × width, with 1, 3 or 4 channels), "
            f"got an array of shape {raw.shape}."
        )
    if min(raw.shape[:2]) < 1 or max(raw.shape[:2]) > MAX_DRAWING_SIDE:
        raise DrawingError(
            f"The drawing must be 1 to {MAX_DRAWING_SIDE} pixels on a side, got "
            f"{raw.shape[0]}×{raw.shape[1]}."
        )
    try:
        pixels = raw.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DrawingError("The drawing's pixel values must be numbers from 0 to 255.") from exc
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
    height, width = dataset.image_shape
    high = float(np.max(dataset.feature_high))
    crop = _crop_to_ink(ink)
    if height >= 16:
        out = _like_mnist(crop, (height, width)) * (high / 255.0)
    else:
        out = _like_optdigits(crop, (height, width), high)
    if out.max() <= 0:
        raise DrawingError("The drawing is too faint: draw with thicker strokes.")
    return out.reshape(-1)


#: MNIST's digits were scaled to fit this share of the image (a 20 x 20 box in 28 x 28).
MNIST_BOX_FRACTION = 20 / 28
#: The 8 x 8 digits were made from 32 x 32 bitmaps: one feature counts the ink pixels of a 4 x 4 block.
OPTDIGITS_BLOCK = 4


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The drawing cut to the bounding box of its strokes (faint smudges ignored)."""
    mask = ink > 0.2 * ink.max()
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale so that the longer side is ``box`` pixels, keeping the aspect; area averaging anti-aliases."""
    scale = box / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    image = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.float64)


def _like_mnist(crop: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MNIST's recipe: fit into a 20 x 20 box keeping the aspect, centre the mass in 28 x 28; 0-255."""
    height, width = shape
    digit = _fit_box(crop, round(min(shape) * MNIST_BOX_FRACTION))
    if digit.max() <= 0:
        return np.zeros(shape)
    digit = digit / digit.max() * 255.0
    # Place the digit so that its centre of mass lands on the image's centre (pixel 14, 14 of 28).
    mass_row, mass_col = ndimage.center_of_mass(digit)
    top = int(np.clip(round(height / 2 - mass_row), 0, height - digit.shape[0]))
    left = int(np.clip(round(width / 2 - mass_col), 0, width - digit.shape[1]))
    out = np.zeros(shape)
    out[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return out


def _like_optdigits(crop: np.ndarray, shape: tuple[int, int], high: float) -> np.ndarray:
    """The 8 x 8 digits' recipe: a 32 x 32 bitmap, centred, then the ink pixels of each 4 x 4 block counted.

    The counts are scaled so that the fullest block reads 16, as in 98 % of the dataset's images
    (a thin stroke would otherwise fill no block).
    """
    height, width = shape
    bitmap_shape = (height * OPTDIGITS_BLOCK, width * OPTDIGITS_BLOCK)
    digit = _fit_box(crop, min(bitmap_shape))
    if digit.max() <= 0:
        return np.zeros(shape)
    bitmap = np.zeros(bitmap_shape, dtype=bool)
    top, left = (bitmap_shape[0] - digit.shape[0]) // 2, (bitmap_shape[1] - digit.shape[1]) // 2
    bitmap[top : top + digit.shape[0], left : left + digit.shape[1]] = digit >= 0.5 * digit.max()
    blocks = bitmap.reshape(height, OPTDIGITS_BLOCK, width, OPTDIGITS_BLOCK).sum(axis=(1, 3))
    return np.round(blocks * (high / max(1, blocks.max())))
