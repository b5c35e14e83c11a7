"""Image files -> model input pixels: the one decode that training and serving share.

Every mode Pillow opens is either converted faithfully to [0, 1] or refused,
naming it: 8-bit modes through Pillow's own conversions (/ 255), 16-bit
greyscale by its full range (/ 65535, not clipped at 255), float greyscale as
it is when it lies in [0, 1]. Modes whose values have no agreed range (32-bit
integers) or no conversion in Pillow (LAB) are refused, and so are images with
several frames or with transparent pixels (what lies behind them is not known).
EXIF orientation is applied, as a viewer shows the image.

Only what the model needs is decoded: a JPEG is scaled in the DCT domain while
it is decoded (Pillow's draft mode), other 8-bit images are reduced by an
integer factor right after decoding, both down to no less than REDUCING_GAP
times the model's input size, the rule of Pillow's ``reducing_gap``; the
orientation and colour conversions then run on the reduced image.
tests/test_image_decode.py bounds what this costs in fidelity.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from elunet.errors import ElunetError

# Modes Pillow converts to L and RGB itself; their samples are 8-bit.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
FLOAT_MODE = "F"
ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
# The 8-bit modes Image.reduce accepts (it refuses palettes, bilevel and the rest).
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX"})
REFUSED_MODES = {
    "I": "32-bit integer samples (Pillow's mode also for 16-bit PGM) have no agreed range",
    "LAB": "Pillow has no conversion from LAB",
}
# The formats opened; no others: Pillow's EPS plugin, for one, runs Ghostscript on the client's PostScript.
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "TGA")
# A large image is first reduced by an integer factor (for JPEG: in the DCT domain) down to no less than
# this many times the target size, then filtered bilinearly: far cheaper than a bilinear filter over it
# and, at 3, indistinguishable from one (Pillow's docs on reducing_gap).
REDUCING_GAP = 3.0
# EXIF orientations that swap width and height (transpose, rotations by 90 and 270 degrees, transverse).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112
# Pillow's message for a pointer-like repr, e.g. "<_io.BytesIO object at 0x7f...>": not for a user's eyes.
_INTERNALS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")

ImageProblem = Literal["undecodable_image", "too_large", "unsupported_image_mode"]


class ImageError(ElunetError):
    """An image that is not decoded; ``problem`` says which kind of refusal it is."""

    def __init__(self, problem: ImageProblem, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.problem = problem


def decode_image(data: bytes, color_mode: str, width: int, height: int, channels: int, *,
                 name: str = "image", max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file (one of FORMATS) to float32 [channels, height, width] in [0, 1].

    ``color_mode`` is "L" or "RGB" (the model card's preprocessing); ``max_pixels`` bounds the file's
    own size (None: Pillow's decompression-bomb limit).
    """
    size = (width, height)
    image = _open(data, name, max_pixels, size)
    if image.mode in EIGHT_BIT_MODES:
        # Convert only when needed: converting to the same mode copies the whole image while holding the interpreter lock.
        if image.mode == "HSV":
            image = image.convert("RGB")  # Pillow converts HSV to RGB only
        if image.mode != color_mode:
            image = image.convert(color_mode)
        pixels = np.asarray(_resized(image, size), dtype=np.float32) / np.float32(255.0)
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
    grey = np.asarray(_resized(Image.fromarray(grey, mode=FLOAT_MODE), size), dtype=np.float32)
    return np.repeat(grey[None], channels, axis=0)


def _open(data: bytes, name: str, max_pixels: int | None, size: tuple[int, int]) -> Image.Image:
    """The decoded image, reduced towards ``size`` and upright (EXIF orientation applied); refused past
    ``max_pixels`` and for what cannot be decoded faithfully: broken data, several frames, transparency."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow refuses before it tells the size any other way
        raise _too_many_pixels(name, pixels.group(1) if pixels else "too many", max_pixels) from None
    except UnidentifiedImageError:
        raise _undecodable(name, data, f"not an image in a format decoded here ({', '.join(FORMATS)})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise _broken(name, data, exc) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise _too_many_pixels(name, width * height, max_pixels)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise _unsupported(name, image.mode, f"it has {frames} frames (animated or multi-page), and one picture is classified",
                           fix="send each frame as an image of its own")
    try:
        # Nothing is reduced by less than half, so a small file skips reading its EXIF data twice.
        reducible = max(image.size) >= 2 * REDUCING_GAP * min(size)
        # The target as the file lies, before the orientation turns it.
        stored = size[::-1] if reducible and image.getexif().get(_EXIF_ORIENTATION) in _SWAPPING_ORIENTATIONS else size
        if reducible and image.format == "JPEG":
            image.draft(image.mode, (int(stored[0] * REDUCING_GAP), int(stored[1] * REDUCING_GAP)))
        image.load()
        transparent = _has_transparency(image)  # before any reduction, which could average it away
        image = ImageOps.exif_transpose(_reduced(image, stored) if reducible else image)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _broken(name, data, exc) from None
    if transparent:
        raise _unsupported(name, image.mode, "it has transparent pixels, and what lies behind them is not known",
                           fix="flatten it onto its background first")
    return image


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _reduced(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` reduced by the integer factors Image.resize's reducing_gap would choose for ``size``."""
    if image.mode not in REDUCIBLE_MODES:
        return image
    factors = tuple(max(1, int(have / want / REDUCING_GAP)) for have, want in zip(image.size, size))
    return image.reduce(factors) if factors != (1, 1) else image


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)


def _undecodable(name: str, data: bytes, why: str) -> ImageError:
    return ImageError("undecodable_image", f"image {name!r} ({len(data)} bytes) could not be decoded: {why}")


def _broken(name: str, data: bytes, exc: Exception) -> ImageError:
    return _undecodable(name, data, f"broken or truncated image data ({_INTERNALS.sub('the data', str(exc)) or type(exc).__name__})")


def _too_many_pixels(name: str, pixels, limit: int | None) -> ImageError:
    return ImageError("too_large", f"image {name!r} has {pixels} pixels; the limit is {limit if limit is not None else Image.MAX_IMAGE_PIXELS}")


def _unsupported(name: str, mode: str, why: str, fix: str = "send 8-bit or 16-bit greyscale or RGB, or float greyscale in [0, 1]") -> ImageError:
    return ImageError("unsupported_image_mode", f"image {name!r} (Pillow mode {mode}) is not decoded: {why}; {fix}")
