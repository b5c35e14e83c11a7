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
    # Palette, CMYK, 16-bit, alpha ...: convert to what the model was trained on (and only then:
    # converting to the same mode copies the whole image while holding the interpreter lock).
    if image.mode != pre.color_mode:
        image = image.convert(pre.color_mode)
    if image.size != (pre.width, pre.height):
        # reducing_gap: a large image is first reduced by an integer factor, which is far cheaper
        # than a bilinear filter over it and, at a gap of 3, indistinguishable from one (Pillow's docs).
        image = image.resize((pre.width, pre.height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def images_pixels(named_images: list[tuple[str, bytes]], pre: Preprocessing) -> np.ndarray:
    """Several (name, file bytes) decoded into one float32 batch [n, C, H, W]."""
    return np.stack([image_pixels(data, pre, name) for name, data in named_images])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
