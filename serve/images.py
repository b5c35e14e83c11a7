"""Image files -> model input pixels, as the model's image input prescribes (for /v1/.../classify).

The decode is the one training uses (elunet/images.py); here its refusals
become answers: 413 for an image past --max-image-pixels, 415 for the rest.
"""

from __future__ import annotations

import numpy as np

from elunet.images import ImageError, decode_image
from elunet.serve.errors import ServeError
from elunet.serve.interface import ImageInput


def image_pixels(data: bytes, pre: ImageInput, name: str, max_pixels: int, refused_status: int = 415) -> np.ndarray:
    """Decode one image to float32 [C, H, W] in [0, 1]; an image refused for what it holds is answered ``refused_status``
    (/v1 classify's 415, an unsupported file; V2's 400, a bad tensor element, as Triton answers any)."""
    try:
        return decode_image(data, pre.color_mode, pre.width, pre.height, pre.channels, name=name, max_pixels=max_pixels)
    except ImageError as exc:
        if exc.problem == "too_large":
            raise ServeError(413, f"{exc.message} (the server's --max-image-pixels): send it scaled down", reason=exc.problem) from None
        raise ServeError(refused_status, exc.message, reason=exc.problem) from None


def images_pixels(named_images: list[tuple[str, bytes]], pre: ImageInput, max_pixels: int, refused_status: int = 415) -> np.ndarray:
    """Several (name, file bytes) decoded into one float32 batch in the input's layout ([n, C, H, W] or [n, H, W, C])."""
    return pre.arranged(np.stack([image_pixels(data, pre, name, max_pixels, refused_status) for name, data in named_images]))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
