"""Image files -> model input pixels, as the model card prescribes (for /v1/.../classify).

Every mode Pillow opens is either converted faithfully to [0, 1] or refused
with 415 naming it: 8-bit modes through Pillow's own conversions (/ 255),
16-bit greyscale by its full range (/ 65535, not clipped at 255), float
greyscale as it is when it lies in [0, 1]. Modes whose values have no agreed
range (32-bit integers) or no conversion in Pillow (LAB) are refused, and so
are images with several frames or with transparent pixels (what lies behind
them is not known). EXIF orientation is applied, as a viewer shows the image.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from elunet.card import Preprocessing
from elunet.serve.errors import ServeError

# Modes Pillow converts to L and RGB itself; their samples are 8-bit.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
FLOAT_MODE = "F"
ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
REFUSED_MODES = {
    "I": "32-bit integer samples (Pillow's mode also for 16-bit PGM) have no agreed range",
    "LAB": "Pillow has no conversion from LAB",
}
# The formats opened; no others: Pillow's EPS plugin, for one, runs Ghostscript on the client's PostScript.
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "TGA")
# Pillow's message for a pointer-like repr, e.g. "<_io.BytesIO object at 0x7f...>": not for clients' eyes.
_INTERNALS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def image_pixels(data: bytes, pre: Preprocessing, name: str, max_pixels: int) -> np.ndarray:
    """Decode one image (one of FORMATS) to float32 [C, H, W] in [0, 1]."""
    image = _open(data, name, max_pixels)
    if image.mode in EIGHT_BIT_MODES:
        # Convert only when needed: converting to the same mode copies the whole image while holding the interpreter lock.
        if image.mode == "HSV":
            image = image.convert("RGB")  # Pillow converts HSV to RGB only
        if image.mode != pre.color_mode:
            image = image.convert(pre.color_mode)
        pixels = np.asarray(_resized(image, pre), dtype=np.float32) / np.float32(255.0)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / np.float32(65535.0)
    elif image.mode == FLOAT_MODE:
        grey = np.asarray(image, dtype=np.float32)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            finite = grey[np.isfinite(grey)]
            found = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "no finite value"
            raise _unsupported(name, image.mode, f"float samples must be finite and in [0, 1]; this image has {found}"
                               f"{' and NaN or Inf' if finite.size < grey.size else ''}")
    else:
        raise _unsupported(name, image.mode, REFUSED_MODES.get(image.mode, "no faithful conversion to greyscale or RGB"))
    # Resize in float, so that 16 bits keep their precision; greyscale fills every channel the model has.
    grey = np.asarray(_resized(Image.fromarray(grey, mode=FLOAT_MODE), pre), dtype=np.float32)
    return np.repeat(grey[None], pre.channels, axis=0)


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The decoded image, upright (EXIF orientation applied); 413 past ``max_pixels``, 415 for what cannot be
    served faithfully: broken data, several frames, transparency."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow refuses before it tells the size any other way
        raise _too_many_pixels(name, pixels.group(1) if pixels else "too many", max_pixels) from None
    except UnidentifiedImageError:
        raise _undecodable(name, data, f"not an image in a format served here ({', '.join(FORMATS)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise _broken(name, data, exc) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, width * height, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise _unsupported(name, image.mode, f"it has {frames} frames (animated or multi-page), and one picture is classified",
                           fix="send each frame as an image of its own")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001
        raise _broken(name, data, exc) from None
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        if image.convert("RGBA").getchannel("A").getextrema()[0] < 255:
            raise _unsupported(name, image.mode, "it has transparent pixels, and what lies behind them is not known",
                               fix="flatten it onto its background first")
    return image


def _resized(image: Image.Image, pre: Preprocessing) -> Image.Image:
    if image.size == (pre.width, pre.height):
        return image
    # reducing_gap: a large image is first reduced by an integer factor, which is far cheaper
    # than a bilinear filter over it and, at a gap of 3, indistinguishable from one (Pillow's docs).
    return image.resize((pre.width, pre.height), Image.Resampling.BILINEAR, reducing_gap=3.0)


def _undecodable(name: str, data: bytes, why: str) -> ServeError:
    return ServeError(415, f"image {name!r} ({len(data)} bytes) could not be decoded: {why}", reason="undecodable_image")


def _broken(name: str, data: bytes, exc: Exception) -> ServeError:
    return _undecodable(name, data, f"broken or truncated image data ({_INTERNALS.sub('the data', str(exc)) or type(exc).__name__})")


def _too_many_pixels(name: str, pixels, limit: int) -> ServeError:
    return ServeError(
        413, f"image {name!r} has {pixels} pixels; the limit is {limit} (the server's --max-image-pixels): send it scaled down",
        reason="too_large",
    )


def _unsupported(name: str, mode: str, why: str, fix: str = "send 8-bit or 16-bit greyscale or RGB, or float greyscale in [0, 1]") -> ServeError:
    return ServeError(415, f"image {name!r} (Pillow mode {mode}) is not served: {why}; {fix}", reason="unsupported_image_mode")


def images_pixels(named_images: list[tuple[str, bytes]], pre: Preprocessing, max_pixels: int) -> np.ndarray:
    """Several (name, file bytes) decoded into one float32 batch [n, C, H, W]."""
    return np.stack([image_pixels(data, pre, name, max_pixels) for name, data in named_images])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
