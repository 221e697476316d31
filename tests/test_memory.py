"""serving.cluster.memory: with glibc's thresholds fixed, the buffers of big photos that a thread
pool decodes go back to the system once freed (what a replica does with uploads). In a fresh
process: six 24-megapixel PNG bodies at once, decoded two threads at a time, twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import io, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from PIL import Image
from pam.bench.measure import rss_bytes
from serving.cluster.memory import return_freed_memory

fixed = return_freed_memory() if sys.argv[1] == "fixed" else None
from export.preprocess import decode

small = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
out = io.BytesIO()
Image.fromarray(small).resize((6000, 4000), Image.Resampling.BILINEAR).save(out, "PNG", compress_level=1)
data = out.getvalue()
del out
one_at_a_time = threading.Lock()
before = rss_bytes()

def upload(k):
    body = bytes(bytearray(data))  # each request holds its own body
    with one_at_a_time:
        return decode(body, max_pixels=25_000_000).shape

for _ in range(2):
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(upload, range(6)))
time.sleep(0.2)
print(fixed, (rss_bytes() - before) / 1e6)
"""


def kept_mb(kind: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, kind], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    fixed, kept = out.stdout.split()
    return fixed, float(kept)


def test_freed_photo_buffers_go_back_to_the_system():
    fixed, kept = kept_mb("fixed")
    if fixed == "False":
        pytest.skip("not glibc: no malloc thresholds to set")
    assert kept < 30, f"the process kept {kept:.0f} MB after the uploads"
