"""Image files -> model input pixels, as the model card prescribes (for /v1/.../classify)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from elunet.card import Preprocessing
from elunet.serve.errors import ServeError


def image_pixels(data: bytes, pre: Preprocessing, name: str) -> np.ndarray:
    """Decode one image (any format Pillow reads) to float32 [C, H, W] in [0, 1]."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise ServeError(
            415,
            f"image {name!r} ({len(data)} bytes) could not be decoded: {type(exc).__name__}: {exc}",
            reason="undecodable_image",
        ) from None
    # Palette, CMYK, 16-bit, alpha ...: convert to what the model was trained on.
    image = image.convert(pre.color_mode)
    if image.size != (pre.width, pre.height):
        image = image.resize((pre.width, pre.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
