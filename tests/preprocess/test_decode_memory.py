"""decode() of a 24-megapixel PNG holds the decoded picture once: Pillow keeps 6000 x 4000 RGB in
96 MB, and an upright photo's pixels are not copied again to apply its (absent) orientation.
Measured in a fresh process (peak resident memory around the call, sampled every millisecond)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DECODED_MB = 6000 * 4000 * 4 / 1e6  # Pillow's RGB is 4 bytes a pixel

PROBE = r"""
import io, sys, threading, time
import numpy as np
from PIL import Image
from export.preprocess import decode
from pam.bench.measure import rss_bytes

rng = np.random.default_rng(0)
small = rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)
out = io.BytesIO()
Image.fromarray(small).resize((6000, 4000), Image.Resampling.BILINEAR).save(out, "PNG", compress_level=1)
data = out.getvalue()
if sys.argv[1] == "rotated":
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "PNG", exif=exif, compress_level=1)
    data = out.getvalue()
    del image
del out, small
peak, stop = [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes())
        time.sleep(0.001)
before = rss_bytes()
sampler = threading.Thread(target=sample)
sampler.start()
array = decode(data, max_pixels=25_000_000)
stop.set()
sampler.join()
print(array.shape, (peak[0] - before) / 1e6)
"""


def peak_growth_mb(kind: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, kind], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, growth = out.stdout.strip().rsplit(" ", 1)
    return shape, float(growth)


def test_a_24_megapixel_png_decodes_holding_its_pixels_once():
    shape, growth = peak_growth_mb("upright")
    assert shape == "(256, 256, 3)"
    # one decoded picture and change; the copy that applied an absent orientation made it ~2x
    assert growth < 1.5 * DECODED_MB, f"decode grew the process by {growth:.0f} MB"


def test_an_oriented_24_megapixel_png_turns_without_a_second_copy():
    shape, growth = peak_growth_mb("rotated")
    assert shape == "(256, 256, 3)"
    assert growth < 2.2 * DECODED_MB, f"decode grew the process by {growth:.0f} MB"
