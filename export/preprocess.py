"""The one decode path for every entry point: bytes -> uint8[256, 256, 3] or a DecodeError.

Imports Pillow and numpy only (serving images run it without torch). Steps, in order:
open under a pixel limit; first frame of animations; EXIF orientation; 16-bit scaled to 8-bit;
palette and alpha composited on white; any mode to RGB; plain resize to 256x256 (aspect not kept)
with the bilinear filter. JPEGs larger than twice the target use Pillow's draft mode (DCT-domain
downscaling) first, which decodes several times faster.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

WARP_SIZE = 256
MAX_PIXELS = 100_000_000  # a decompression bomb beyond this is refused, not decoded
RESAMPLE = Image.Resampling.BILINEAR


class DecodeError(ValueError):
    """A photo that cannot become a feature row; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def decode(data: bytes, size: int = WARP_SIZE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into a uint8 [size, size, 3] RGB array."""
    if not data:
        raise DecodeError("empty", "zero-byte input")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
            if getattr(image, "is_animated", False):
                image.seek(0)
            if image.format == "JPEG" and min(width, height) >= 2 * size:
                image.draft("RGB", (size, size))
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), RESAMPLE)
            return np.asarray(rgb, dtype=np.uint8)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError("not_an_image", "no decoder recognises these bytes") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError("corrupt", str(exc) or type(exc).__name__) from exc


def decode_file(path, size: int = WARP_SIZE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    with open(path, "rb") as f:
        return decode(f.read(), size=size, max_pixels=max_pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image
