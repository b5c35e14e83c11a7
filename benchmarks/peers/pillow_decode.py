"""The decode a user writes with Pillow: every pixel of the file, then the colour conversion and a bilinear resize
with ``reducing_gap=3`` (elunet's before issue 29): benchmarks/image_classify.py's full-decode ceiling."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

REDUCING_GAP = 3.0


def full_decode(data: bytes, color_mode: str, width: int, height: int) -> np.ndarray:
    """float32 [C, height, width] in [0, 1]."""
    image = Image.open(io.BytesIO(data)).convert(color_mode)
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP), np.float32) / np.float32(255)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
