"""decode(): golden vectors for every kind of input the paths meet, and the error vocabulary."""

from __future__ import annotations

import hashlib
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

from export.preprocess import DECODE_ERROR_REASONS, WARP_SIZE, DecodeError, decode, decode_file
from tests.preprocess.cases import build_cases
from tests.preprocess.make_golden import GOLDEN, block_means, blocks_from_text

CASES = build_cases()
GOLDEN_VECTORS = json.loads(GOLDEN.read_text())
CENTRES = {"tl": (64, 64), "tr": (64, 192), "bl": (192, 64), "br": (192, 192)}
LOSSY_BLOCK_TOL = 2  # another libjpeg/libwebp build may round a little differently
# Pillow warns (and we then refuse) on bomb-sized headers, and warns on the malformed EXIF case
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning",
                                        "ignore:Corrupt EXIF data:UserWarning")


def run(name: str) -> np.ndarray:
    case = CASES[name]
    options = {"max_pixels": case.max_pixels} if case.max_pixels else {}
    return decode(case.data, **options)


def test_golden_file_covers_every_case():
    assert set(GOLDEN_VECTORS) - {"_about"} == set(CASES), "run python -m tests.preprocess.make_golden"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.reason is None])
def test_decodes_to_the_right_picture(name):
    case, golden = CASES[name], GOLDEN_VECTORS[name]
    out = run(name)
    assert out.dtype == np.uint8 and out.shape == (WARP_SIZE, WARP_SIZE, 3) and out.flags.c_contiguous
    for quadrant, colour in case.quadrants.items():
        got = out[CENTRES[quadrant]].astype(int)
        assert np.abs(got - colour).max() <= case.tol, f"{quadrant}: {got.tolist()} != {colour}"
    if case.lossless:
        assert hashlib.sha256(out.tobytes()).hexdigest() == golden["sha256"]
    else:
        diff = np.abs(block_means(out) - blocks_from_text(golden["blocks"])).max()
        assert diff <= LOSSY_BLOCK_TOL, f"block means moved by {diff}"


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.reason is not None])
def test_bad_input_gives_its_reason(name):
    with pytest.raises(DecodeError) as info:
        run(name)
    assert info.value.reason == CASES[name].reason == GOLDEN_VECTORS[name]["reason"]
    assert str(info.value).startswith(info.value.reason)


def test_reasons_are_a_closed_vocabulary():
    assert {c.reason for c in CASES.values() if c.reason} <= set(DECODE_ERROR_REASONS)
    with pytest.raises(ValueError, match="unknown decode error reason"):
        DecodeError("kaput")


def test_draft_mode_matches_a_full_decode():
    """JPEG draft mode (DCT scaling) stays within a couple of levels of decode-all-then-resize."""
    data = CASES["jpeg_large_draft"].data
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((WARP_SIZE, WARP_SIZE), Image.Resampling.BILINEAR)
    diff = np.abs(decode(data).astype(int) - np.asarray(full, int))
    assert diff.mean() < 1.0 and diff.max() <= 6, (diff.mean(), diff.max())


def test_other_sizes_and_files(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(CASES["png_rgb"].data)
    assert decode_file(path, size=32).shape == (32, 32, 3)
    np.testing.assert_array_equal(decode_file(path), run("png_rgb"))
    with pytest.raises(DecodeError) as info:
        decode_file(tmp_path / "missing.jpg")
    assert info.value.reason == "not_found"
    with pytest.raises(DecodeError) as info:
        decode_file(tmp_path)  # a directory
    assert info.value.reason == "unreadable"


def test_decode_is_thread_safe():
    names = ["jpeg_exif_orientation_6", "png_rgba", "webp_lossy", "png_16bit_grey", "jpeg_truncated"]
    expected = {}
    for n in names:
        try:
            expected[n] = run(n)
        except DecodeError as exc:
            expected[n] = exc.reason
    failures = []

    def work(seed: int) -> None:
        for n in np.random.default_rng(seed).permutation(names * 4):
            try:
                got = run(n)
            except DecodeError as exc:
                got = exc.reason
            same = got == expected[n] if isinstance(got, str) else np.array_equal(got, expected[n])
            if not same:
                failures.append(n)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


@pytest.mark.photos
def test_every_shared_photo_decodes(shared_photos):
    paths = sorted(shared_photos.glob("*.JPEG"))[::10]
    for path in paths:
        out = decode_file(path)
        assert out.shape == (WARP_SIZE, WARP_SIZE, 3) and out.std() > 1, path
