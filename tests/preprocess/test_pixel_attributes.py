"""Each pixel measure moves the way its AADB attribute does, on images built for the purpose."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from export.pixel_attributes import (
    CALIBRATION,
    fit_calibration,
    pixel_attributes,
    pixel_attributes_batch,
    raw_measures,
)
from personalize.features import ATTRIBUTE_NAMES

INDEX = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
SIZE = 256


def attr(image: np.ndarray, name: str) -> float:
    return float(pixel_attributes(image)[INDEX[name]])


def texture(seed: int, size: int = SIZE) -> np.ndarray:
    """Grey natural-looking texture in [0, 1]: random noise summed over octaves."""
    rng = np.random.default_rng(seed)
    out = np.zeros((size, size))
    for octave in range(2, 7):
        cells = 2**octave
        noise = (rng.random((cells, cells)) * 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(noise).resize((size, size), Image.Resampling.BICUBIC), float)
        out += up / 255 / 2 ** (6 - octave) ** 0.5
    out -= out.min()
    return out / out.max()


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(values, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def hsv_image(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    hsv = np.stack([hue % 1.0, np.clip(sat, 0, 1), np.clip(val, 0, 1)], axis=-1)
    return np.asarray(Image.fromarray((hsv * 255).round().astype(np.uint8), "HSV").convert("RGB"))


def disk_image(centres: list[tuple[float, float]], radius: float = 0.08, background: int = 60) -> np.ndarray:
    image = Image.new("RGB", (SIZE, SIZE), (background, background + 20, background))
    draw = ImageDraw.Draw(image)
    for cx, cy in centres:
        x, y, r = cx * SIZE, cy * SIZE, radius * SIZE
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(230, 200, 40))
    return np.asarray(image)


def test_output_contract_on_odd_inputs():
    rng = np.random.default_rng(0)
    for shape in [(SIZE, SIZE, 3), (1, 1, 3), (3, 7, 3), (500, 333, 3), (128, 128, 3)]:
        out = pixel_attributes(rng.integers(0, 256, shape, dtype=np.uint8))
        assert out.dtype == np.float32 and out.shape == (10,)
        assert np.isfinite(out).all() and (np.abs(out) < 1).all(), (shape, out)
    flat = pixel_attributes(np.full((SIZE, SIZE, 3), 128, np.uint8))
    assert np.isfinite(flat).all()
    image = grey(texture(1))
    np.testing.assert_array_equal(pixel_attributes(image), pixel_attributes(image.copy()))
    batch = pixel_attributes_batch(np.stack([image, grey(texture(2))]))
    assert batch.shape == (2, 10) and np.array_equal(batch[0], pixel_attributes(image))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)])
def test_rejects_what_is_not_uint8_rgb(bad):
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        pixel_attributes(bad)


def test_vivid_color_grey_is_lowest_and_saturation_raises_it():
    t = texture(3)
    hue = texture(4)
    values = [attr(hsv_image(hue, np.full_like(t, s), 0.3 + 0.6 * t), "VC") for s in (0.0, 0.25, 0.9)]
    assert values[0] < values[1] - 0.2 < values[2] - 0.4, values
    assert attr(grey(t), "VC") == pytest.approx(values[0], abs=1e-3)
    assert values[0] < -0.6


def test_symmetry_of_a_mirror_image_is_maximal():
    t = grey(texture(5))
    mirrored = t.copy()
    mirrored[:, SIZE // 2:] = t[:, :SIZE // 2][:, ::-1]
    assert raw_measures(mirrored)[INDEX["SY"]] == pytest.approx(1.0, abs=1e-3)
    assert attr(mirrored, "SY") > 0.8
    assert attr(t, "SY") < 0.3
    assert attr(disk_image([(0.2, 0.5)]), "SY") < attr(disk_image([(0.2, 0.5), (0.8, 0.5)]), "SY")


def test_blurred_border_raises_depth_of_field():
    sharp = Image.fromarray(grey(texture(6)))
    blurred = sharp.filter(ImageFilter.GaussianBlur(4))
    shallow = blurred.copy()
    box = (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4)
    shallow.paste(sharp.crop(box), box[:2])
    inverse = sharp.copy()
    inverse.paste(blurred.crop(box), box[:2])
    dof = [attr(np.asarray(im), "DoF") for im in (inverse, sharp, shallow)]
    assert dof[0] < dof[1] - 0.3 < dof[2] - 0.6, dof
    assert dof[2] > 0.6


def test_good_lighting_prefers_exposed_contrasty_images():
    t = texture(7)
    good = attr(grey(0.1 + 0.8 * t), "GL")
    dark = attr(grey(0.12 * t), "GL")
    blown = attr(grey(0.7 + 0.8 * t), "GL")
    flat = attr(grey(0.45 + 0.1 * t), "GL")
    assert good > max(dark, blown, flat) + 0.3, (good, dark, blown, flat)


def test_color_harmony_one_hue_and_complements_beat_random_hues():
    t, s = texture(8), texture(9)
    one_hue = attr(hsv_image(0.6 + 0.03 * t, 0.4 + 0.5 * s, 0.3 + 0.6 * t), "CH")
    two = np.where(texture(10) > 0.5, 0.05, 0.55)  # orange and its complement, blue
    complementary = attr(hsv_image(two, 0.4 + 0.5 * s, 0.3 + 0.6 * t), "CH")
    rng = np.random.default_rng(11)
    patches = np.kron(rng.random((8, 8)), np.ones((SIZE // 8, SIZE // 8)))
    random_hues = attr(hsv_image(patches, 0.4 + 0.5 * s, 0.3 + 0.6 * t), "CH")
    assert min(one_hue, complementary) > random_hues + 0.4, (one_hue, complementary, random_hues)


def test_interesting_content_grows_with_structure():
    flat = attr(np.full((SIZE, SIZE, 3), 128, np.uint8), "IC")
    ramp = attr(grey(np.tile(np.linspace(0.2, 0.8, SIZE), (SIZE, 1))), "IC")
    textured = attr(grey(texture(12)), "IC")
    assert flat < ramp < textured and textured - flat > 0.8, (flat, ramp, textured)


def test_object_emphasis_a_central_subject_stands_out():
    centred = attr(disk_image([(0.5, 0.5)], radius=0.15), "OE")
    corner = attr(disk_image([(0.12, 0.12)], radius=0.1), "OE")
    uniform = attr(disk_image([]), "OE")
    assert centred > uniform + 0.3 > corner + 0.6, (centred, uniform, corner)


def test_rule_of_thirds_a_subject_on_a_thirds_point_beats_a_centred_one():
    thirds = attr(disk_image([(1 / 3, 2 / 3)]), "RoT")
    centred = attr(disk_image([(0.5, 0.5)]), "RoT")
    assert thirds > 0.5 and centred < -0.5, (thirds, centred)
    uniform = raw_measures(disk_image([]))[INDEX["RoT"]]
    assert uniform == 0.0  # no subject: neither follows nor breaks the rule


def test_balancing_element_two_sides_beat_one():
    balanced = attr(disk_image([(0.2, 0.5), (0.8, 0.5)]), "BE")
    lopsided = attr(disk_image([(0.15, 0.5), (0.15, 0.2)]), "BE")
    assert balanced > 0.3 > lopsided + 0.6, (balanced, lopsided)


def test_repetition_a_tiled_motif_repeats():
    motif = grey(texture(13, size=32))
    tiled = np.tile(motif, (SIZE // 32, SIZE // 32, 1))
    assert attr(tiled, "RE") > 0.8
    assert attr(grey(texture(14)), "RE") < attr(tiled, "RE") - 0.6
    noise = np.random.default_rng(15).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert attr(noise, "RE") < -0.2


@pytest.mark.photos
def test_calibration_matches_the_shared_photos(shared_photos):
    """CALIBRATION is fit_calibration over the 1,000 shared photos; refit when a measure changes."""
    from concurrent.futures import ThreadPoolExecutor

    from export.preprocess import decode_file

    paths = sorted(shared_photos.glob("*.JPEG"))
    assert len(paths) >= 1000
    with ThreadPoolExecutor(4) as pool:
        raw = np.array(list(pool.map(lambda p: raw_measures(decode_file(p)), paths)))
    fitted = fit_calibration(raw)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_allclose(fitted[name], CALIBRATION[name], rtol=0.02, atol=1e-3, err_msg=name)
    attributes = pixel_attributes_batch(np.stack([decode_file(p) for p in paths[::50]]))
    assert (attributes.std(axis=0) > 0.2).all(), dict(zip(ATTRIBUTE_NAMES, attributes.std(axis=0), strict=True))
