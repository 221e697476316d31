"""Decode test inputs, generated deterministically with Pillow (and a few hand-made byte strings).

Each case is the encoded bytes plus what a correct decode must show, independent of the golden
file: the colour of each quadrant of the upright picture (within `tol`), or the error reason.
golden.json (written by make_golden.py) additionally pins the exact decoded arrays.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

W, H = 64, 48  # the upright picture, wider than tall so a missed rotation shows
RED, GREEN, BLUE, YELLOW = (220, 30, 30), (30, 200, 60), (30, 60, 220), (230, 220, 40)
WHITE = (255, 255, 255)
QUADRANTS = {"tl": RED, "tr": GREEN, "bl": BLUE, "br": YELLOW}
# EXIF orientation -> the transpose that undoes it (what a camera stored = upright.transpose(this))
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@dataclass
class Case:
    data: bytes
    quadrants: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    tol: int = 0  # per channel, at each quadrant's centre
    lossless: bool = True  # golden pins the exact array (else block means within GOLDEN_TOL)
    reason: str | None = None  # the expected DecodeError reason
    max_pixels: int | None = None


def upright() -> Image.Image:
    image = Image.new("RGB", (W, H))
    for name, colour in QUADRANTS.items():
        x = 0 if name[1] == "l" else W // 2
        y = 0 if name[0] == "t" else H // 2
        image.paste(colour, (x, y, x + W // 2, y + H // 2))
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def gradient16() -> np.ndarray:
    """uint16 [H, W]: every 16-bit level band from dark to bright, rows alike."""
    return np.tile(np.linspace(0, 65535, W).round().astype(np.uint16), (H, 1))


def frames(*colours) -> list[Image.Image]:
    return [Image.new("RGB", (W, H), c) for c in colours]


def build_cases() -> dict[str, Case]:
    up = upright()
    cases: dict[str, Case] = {}
    cases["png_rgb"] = Case(encode(up, "PNG"), QUADRANTS)
    cases["jpeg_rgb"] = Case(encode(up, "JPEG", quality=95, subsampling=0), QUADRANTS, tol=12, lossless=False)
    for orientation, transpose in STORED_AS.items():
        stored = up.transpose(transpose) if transpose is not None else up
        cases[f"jpeg_exif_orientation_{orientation}"] = Case(
            encode(stored, "JPEG", quality=95, subsampling=0, exif=exif_bytes(orientation)),
            QUADRANTS, tol=12, lossless=False)
    cases["png_exif_orientation_6"] = Case(encode(up.transpose(STORED_AS[6]), "PNG", exif=exif_bytes(6)), QUADRANTS)
    cases["jpeg_malformed_exif"] = Case(
        encode(up, "JPEG", quality=95, subsampling=0, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage"),
        QUADRANTS, tol=12, lossless=False)
    grey_up = up.convert("L")
    grey_quadrants = {k: (v,) * 3 for k, v in zip(QUADRANTS, (grey_up.getpixel((8, 8)), grey_up.getpixel((W - 8, 8)),
                                                            grey_up.getpixel((8, H - 8)),
                                                            grey_up.getpixel((W - 8, H - 8))), strict=True)}
    cases["png_grayscale"] = Case(encode(grey_up, "PNG"), grey_quadrants)
    cases["jpeg_grayscale"] = Case(encode(grey_up, "JPEG", quality=95), grey_quadrants, tol=6, lossless=False)
    cmyk = Image.new("CMYK", (W, H))
    for (x, y), ink in zip([(0, 0), (W // 2, 0), (0, H // 2), (W // 2, H // 2)],
                           [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 128)], strict=True):
        cmyk.paste(ink, (x, y, x + W // 2, y + H // 2))
    cases["jpeg_cmyk"] = Case(encode(cmyk, "JPEG", quality=95),
                              {"tl": (0, 255, 255), "tr": (255, 0, 255), "bl": (255, 255, 0), "br": (127, 127, 127)},
                              tol=12, lossless=False)
    palette = up.quantize(colors=4, method=Image.Quantize.MEDIANCUT)
    cases["png_palette"] = Case(encode(palette, "PNG"), QUADRANTS)
    red_index = palette.getpixel((2, 2))
    cases["png_palette_transparent"] = Case(encode(palette, "PNG", transparency=red_index), {**QUADRANTS, "tl": WHITE})
    cases["gif_transparent"] = Case(encode(palette, "GIF", transparency=red_index), {**QUADRANTS, "tl": WHITE})
    rgba = up.convert("RGBA")
    alpha = Image.new("L", (W, H), 255)
    alpha.paste(0, (0, 0, W // 2, H // 2))
    alpha.paste(128, (W // 2, 0, W, H // 2))
    rgba.putalpha(alpha)
    half_green = tuple(round((c * 128 + 255 * 127) / 255) for c in GREEN)
    cases["png_rgba"] = Case(encode(rgba, "PNG"), {**QUADRANTS, "tl": WHITE, "tr": half_green}, tol=1)
    la = grey_up.convert("LA")
    la.putalpha(alpha)
    cases["png_la"] = Case(encode(la, "PNG"), {**grey_quadrants, "tl": WHITE,
                                               "tr": (round((grey_quadrants["tr"][0] * 128 + 255 * 127) / 255),) * 3},
                           tol=1)
    cases["png_rgb_colour_key"] = Case(encode(up, "PNG", transparency=RED), {**QUADRANTS, "tl": WHITE})
    g16 = gradient16()
    level = {k: (round(int(g16[0, x]) / 257),) * 3 for k, x in (("tl", 16), ("tr", 48), ("bl", 16), ("br", 48))}
    cases["png_16bit_grey"] = Case(encode(Image.fromarray(g16), "PNG"), level, tol=2)
    cases["tiff_16bit_grey"] = Case(encode(Image.fromarray(g16), "TIFF"), level, tol=2)
    pgm = f"P5 {W} {H} 65535\n".encode() + g16.astype(">u2").tobytes()
    cases["pgm_16bit_grey"] = Case(pgm, level, tol=2)
    rgb16 = np.asarray(up, np.uint16) * 257 + 100  # 16-bit samples whose high byte is the colour
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16.reshape(H, W * 3))
    cases["png_16bit_rgb"] = Case(raw_png(W, H, 16, 2, rows), QUADRANTS, tol=1)
    cases["webp_lossless"] = Case(encode(up, "WEBP", lossless=True, method=0), QUADRANTS)
    cases["webp_lossy"] = Case(encode(up, "WEBP", quality=90, method=0), QUADRANTS, tol=16, lossless=False)
    red, blue = frames(RED, BLUE)
    all_red = dict.fromkeys(QUADRANTS, RED)
    cases["gif_animated"] = Case(encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0),
                                 all_red, tol=2)
    cases["png_animated"] = Case(encode(red, "PNG", save_all=True, append_images=[blue], duration=100), all_red)
    cases["webp_animated"] = Case(encode(red, "WEBP", save_all=True, append_images=[blue], lossless=True, duration=100),
                                  all_red)
    cases["png_1x1"] = Case(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
                            dict.fromkeys(QUADRANTS, (10, 200, 30)))
    cases["png_bilevel"] = Case(encode(Image.new("1", (W, H), 1), "PNG"), dict.fromkeys(QUADRANTS, WHITE))
    cases["bmp_rgb"] = Case(encode(up, "BMP"), QUADRANTS)
    cases["tiff_rgb"] = Case(encode(up, "TIFF"), QUADRANTS)
    yy, xx = np.mgrid[0:1536, 0:2048]
    smooth = np.stack([xx * 255 // 2047, yy * 255 // 1535, (xx + yy) * 255 // 3582], -1).astype(np.uint8)
    cases["jpeg_large_draft"] = Case(encode(Image.fromarray(smooth), "JPEG", quality=90), lossless=False)
    # errors
    jpeg = encode(up, "JPEG", quality=95)
    png = encode(up, "PNG")
    cases["empty"] = Case(b"", reason="empty")
    cases["text"] = Case(b"name,score\nphoto.jpg,4\n", reason="not_an_image")
    cases["pdf"] = Case(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", reason="not_an_image")
    cases["random_bytes"] = Case(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                                 reason="not_an_image")
    cases["jpeg_truncated"] = Case(jpeg[: len(jpeg) * 2 // 3], reason="truncated")
    cases["png_truncated"] = Case(png[: len(png) * 2 // 3], reason="truncated")
    cases["png_signature_only"] = Case(png[:12], reason="corrupt")
    cases["png_bad_header_crc"] = Case(png[:29] + bytes([png[29] ^ 0xFF]) + png[30:], reason="corrupt")
    cases["png_bomb_header"] = Case(raw_png(30000, 30000, 8, 2, b"\x00" * 64), reason="too_many_pixels")
    cases["png_bomb_under_pillow_limit"] = Case(raw_png(12000, 9000, 8, 2, b"\x00" * 64), reason="too_many_pixels")
    cases["png_over_max_pixels"] = Case(png, reason="too_many_pixels", max_pixels=W * H - 1)
    return cases
