"""The one decode path for every entry point: bytes -> uint8[256, 256, 3] or a DecodeError.

Imports Pillow and numpy only (serving images run it without torch). Steps, in order:
1. open with Pillow and refuse more than `max_pixels` pixels before decoding any (a
   decompression bomb costs a header read, not memory);
2. first frame of animations (GIF, APNG, WebP): Pillow opens on frame 0;
3. JPEG draft mode: the DCT decoder scales by 1/2, 1/4 or 1/8 while it decodes, never below
   the target size, which is several times faster on large photos;
4. EXIF orientation applied in place (a malformed EXIF block is ignored, not fatal);
5. 16-bit samples scaled to 8 bits (round(v / 257)); mode I is read as 16-bit, mode F as [0, 1];
6. palette, colour-key and alpha transparency composited on white;
7. any mode to RGB (Pillow's conversions: CMYK, YCbCr, LAB, HSV, 1, L, ...);
8. plain resize to size x size (aspect not kept) with Pillow's antialiased bilinear filter.

tests/preprocess pins all of this with golden vectors (docs/preprocess.md says how to regenerate).
A failure is a DecodeError whose `reason` is one of DECODE_ERROR_REASONS; the batch job writes it
into the feature table's `error` column, the service into its 4xx reply.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

WARP_SIZE = 256
MAX_PIXELS = 100_000_000  # a decompression bomb beyond this is refused, not decoded
RESAMPLE = Image.Resampling.BILINEAR
WHITE = (255, 255, 255)

# reason -> what it means (the documented vocabulary of DecodeError.reason)
DECODE_ERROR_REASONS: dict[str, str] = {
    "empty": "zero bytes",
    "not_an_image": "no decoder recognises the bytes (text, PDF, an unsupported format, ...)",
    "truncated": "the file ends before the image data does",
    "corrupt": "a recognised format whose data cannot be decoded",
    "too_many_pixels": "width x height above the pixel limit (decompression bomb guard)",
    "unsupported": "a recognised image that this Pillow build cannot decode or convert to RGB",
    "not_found": "decode_file: no such file",
    "unreadable": "decode_file: the file could not be read (permission, I/O error)",
}


class DecodeError(ValueError):
    """A photo that cannot become a feature row; `reason` is one of DECODE_ERROR_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in DECODE_ERROR_REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def decode(data: bytes, size: int = WARP_SIZE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes into a uint8 [size, size, 3] RGB array.

    Pillow itself refuses images beyond 2 * Image.MAX_IMAGE_PIXELS (about 179 M) whatever
    `max_pixels` says; both give reason "too_many_pixels".
    """
    if not data:
        raise DecodeError("empty", "zero-byte input")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        known = _signature(data)
        if known:  # an image's magic bytes, but Pillow cannot read even its header
            raise DecodeError("corrupt", f"{known} signature but an unreadable header") from exc
        raise DecodeError("not_an_image", "no decoder recognises these bytes") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _classify(exc) from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise DecodeError("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
        if width < 1 or height < 1:
            raise DecodeError("corrupt", f"{width}x{height} image")
        try:
            if image.format == "JPEG":
                image.draft(None, (size, size))
            image.load()
            image = _upright(image)
            rgb = _to_rgb(image)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), RESAMPLE)
            array = np.asarray(rgb, dtype=np.uint8)
        except DecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise DecodeError("too_many_pixels", str(exc)) from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
            raise _classify(exc) from exc
    if array.shape != (size, size, 3):
        raise DecodeError("unsupported", f"decoded to {list(array.shape)}")
    return array


def decode_file(path: str | os.PathLike, size: int = WARP_SIZE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise DecodeError("not_found", str(path)) from exc
    except OSError as exc:
        raise DecodeError("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    return decode(data, size=size, max_pixels=max_pixels)


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP"}


def _signature(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)


def _classify(exc: BaseException) -> DecodeError:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, EOFError) or "truncated" in lowered or "premature end" in lowered:
        return DecodeError("truncated", text)
    if "not available" in lowered or "not supported" in lowered or "unsupported" in lowered:
        return DecodeError("unsupported", text)
    return DecodeError("corrupt", f"{type(exc).__name__}: {text}")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation in place (an upright photo's pixels are not copied: a copy of a
    24-megapixel one is 96 MB more); a photo whose EXIF block is malformed keeps its pixels."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # Pillow raises many types on bad EXIF; the pixels are still good
        pass
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.floor(array / 257.0 + 0.5), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.floor(np.nan_to_num(array) * 255.0 + 0.5), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError as exc:
        raise DecodeError("unsupported", f"mode {image.mode}: {exc}") from exc
