"""GPU JPEG decoding against the CPU decode module (the reference).

nvJPEG itself needs torchvision beside a CUDA torch; where that is missing its test skips, and
everything around it (routing, fallback, EXIF orientation, the resize to 256x256, the error
reasons) runs here with Pillow's full-size decode standing in for nvJPEG.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.gpu_decode import (  # noqa: E402
    BatchDecoder,
    pillow_full_decoder,
    route,
    torchvision_unavailable_reason,
    warp,
)
from export.preprocess import MAX_PIXELS, DecodeError, decode  # noqa: E402
from tests.preprocess.cases import build_cases  # noqa: E402

pytestmark = pytest.mark.torch

CASES = build_cases()
# decoded at full size then resized, against Pillow's draft-mode path: what may differ
PIXEL_TOLERANCE = {"small_max": 1, "draft_mean": 0.5, "photos_mean": 0.5, "photo_worst_mean": 3.0}


def reference(case):
    try:
        return decode(case.data, max_pixels=case.max_pixels or MAX_PIXELS), ""
    except DecodeError as exc:
        return None, exc.reason


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_cases_match_the_cpu_decode(name):
    case = CASES[name]
    decoder = BatchDecoder("cpu", jpeg_decoder=pillow_full_decoder, max_pixels=case.max_pixels or MAX_PIXELS)
    pixels, errors = decoder([case.data])
    expected, reason = reference(case)
    if expected is None:
        assert errors[0].split(":")[0] == reason
        assert not pixels.any()
        return
    assert errors == [""]
    diff = np.abs(pixels[0].numpy().astype(int) - expected.astype(int))
    if name == "jpeg_large_draft":  # 2048x1536: Pillow decodes it at 1/4 scale (draft mode)
        assert diff.mean() <= PIXEL_TOLERANCE["draft_mean"], diff.mean()
    else:
        assert diff.max() <= PIXEL_TOLERANCE["small_max"], (name, diff.max())


def test_routing_sends_only_what_nvjpeg_decodes_as_the_cpu_does():
    on_gpu = {name for name, case in CASES.items() if route(case.data).gpu}
    assert {"jpeg_rgb", "jpeg_grayscale", "jpeg_malformed_exif", "jpeg_large_draft"} <= on_gpu
    assert {f"jpeg_exif_orientation_{o}" for o in range(1, 9)} <= on_gpu
    assert all(name.startswith("jpeg") for name in on_gpu)
    assert not on_gpu & {"jpeg_cmyk", "jpeg_truncated"}  # CMYK and truncated files: the CPU path
    assert [route(CASES[f"jpeg_exif_orientation_{o}"].data).orientation for o in range(1, 9)] == list(range(1, 9))
    assert not route(CASES["jpeg_rgb"].data, max_pixels=100).gpu


def test_a_failing_batch_falls_back_photo_by_photo():
    calls = []

    def flaky(datas):
        calls.append(len(datas))
        if len(datas) > 1 or datas[0] == CASES["jpeg_grayscale"].data:
            raise RuntimeError("nvJPEG refused the batch")
        return pillow_full_decoder(datas)

    decoder = BatchDecoder("cpu", jpeg_decoder=flaky)
    datas = [CASES["jpeg_rgb"].data, CASES["jpeg_grayscale"].data, CASES["png_rgb"].data, b"not an image"]
    pixels, errors = decoder(datas)
    assert calls == [2, 1, 1]
    assert errors[:3] == ["", "", ""] and errors[3].startswith("not_an_image")
    assert decoder.counts == {"gpu": 1, "cpu": 2, "gpu_fallback": 1, "failed": 1}
    for i in range(3):
        np.testing.assert_allclose(pixels[i].numpy(), decode(datas[i]), atol=1)


def test_warp_orientation_matches_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    transposes = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    for orientation, transpose in transposes.items():
        upright = image.transpose(transpose)
        expected = np.asarray(upright.resize((40, 40), Image.Resampling.BILINEAR))
        got = warp(torch.from_numpy(stored).permute(2, 0, 1), orientation, size=40)
        assert got.dtype == torch.uint8 and got.shape == (40, 40, 3)
        assert np.abs(got.numpy().astype(int) - expected.astype(int)).max() <= 1, orientation


def test_real_photos_differ_only_by_draft_mode(shared_photos):
    """The documented difference: Pillow's draft mode (large photos decoded at 1/2-1/8 scale
    first) against a full-size decode and one antialiased resize."""
    datas = [p.read_bytes() for p in sorted(shared_photos.glob("*.JPEG"))[:60]]
    pixels, errors = BatchDecoder("cpu", jpeg_decoder=pillow_full_decoder)(datas)
    assert errors == [""] * len(datas)
    expected = np.stack([decode(d) for d in datas])
    diff = np.abs(pixels.numpy().astype(int) - expected.astype(int))
    per_photo = diff.reshape(len(datas), -1).mean(1)
    assert diff.mean() <= PIXEL_TOLERANCE["photos_mean"], diff.mean()
    assert per_photo.max() <= PIXEL_TOLERANCE["photo_worst_mean"], per_photo.max()


def test_nvjpeg_on_the_gpu_matches_the_cpu_decode(shared_photos):
    reason = torchvision_unavailable_reason()
    if reason:
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: nvJPEG decodes on the GPU only (scripts/device-check.sh measures it there)")
    datas = [p.read_bytes() for p in sorted(shared_photos.glob("*.JPEG"))[:60]]
    pixels, errors = BatchDecoder("cuda")(datas)
    assert errors == [""] * len(datas)
    expected = np.stack([decode(d) for d in datas])
    diff = np.abs(pixels.cpu().numpy().astype(int) - expected.astype(int))
    assert diff.mean() <= 1.5, diff.mean()  # nvJPEG's IDCT and chroma upsampling differ from libjpeg's
