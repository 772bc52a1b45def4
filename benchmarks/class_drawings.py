"""Digits "drawn" by a simulated class: each participant writes in a font of their own, with their own slant.

No real handwriting ships offline, so a benchmark's participants render their digits
from the TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern): each
participant gets one font, a slant, a rotation and a stroke width of their own, and
each drawing a little jitter of its own. The images are dark strokes on a transparent
canvas, like the sketchpad's, and go through the app's own drawing preparation.
Like a real room, nobody writes like MNIST's writers (the MNIST model reads these
digits far worse than MNIST's own test images).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

#: Fonts whose digits look like digits (symbol fonts left out).
FONT_NAMES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf",
    "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)
CANVAS = 280


@dataclass(frozen=True)
class Writer:
    """One participant's handwriting."""

    font: str
    slant: float
    rotation: float
    stroke: int


def writers(count: int, seed: int = 0) -> list[Writer]:
    """``count`` participants, each with a handwriting of their own."""
    rng = np.random.default_rng(seed)
    return [
        Writer(FONT_NAMES[i % len(FONT_NAMES)], float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-12, 12)),
               int(rng.integers(0, 9)))
        for i in range(count)
    ]


@cache
def _font(name: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def draw(writer: Writer, digit: int, rng: np.random.Generator) -> np.ndarray:
    """One RGBA sketchpad image of ``digit`` in ``writer``'s hand (dark strokes, transparent canvas)."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(150, 200))
    image = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(image).text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=_font(writer.font, size),
                               anchor="mm", stroke_width=writer.stroke, stroke_fill=255)
    slant = writer.slant + float(rng.normal(0, 0.05))
    image = image.transform(image.size, Image.Transform.AFFINE, (1, slant, -slant * CANVAS / 2, 0, 1, 0),
                            resample=Image.Resampling.BILINEAR)
    image = image.rotate(writer.rotation + float(rng.normal(0, 3)), resample=Image.Resampling.BILINEAR)
    ink = np.asarray(image, dtype=np.uint8)
    rgba = np.zeros((CANVAS, CANVAS, 4), dtype=np.uint8)
    rgba[..., 3] = ink  # black strokes whose opacity is the ink
    return rgba


def drawings(writer: Writer, labels: list[int], seed: int) -> list[np.ndarray]:
    """``writer``'s sketchpad images of ``labels``, in order."""
    rng = np.random.default_rng(seed)
    return [draw(writer, digit, rng) for digit in labels]
