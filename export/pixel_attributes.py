"""Classical pixel-level measures for the ten AADB attributes, each on AADB's [-1, 1] scale.

`pixel_attributes(rgb)` labels any photo without AADB annotations: `pam train` trains
the attribute head on these targets when no AADB labels exist, and the rater-panel simulator and
the demo label whole folders with them. numpy and Pillow only (torch-free, like preprocess.py).

Every attribute is `tanh((raw - centre) / scale)` of one raw measure, computed on the image
resized to WORK_SIZE x WORK_SIZE (positions are in fractions of the frame). A raw measure moves
the way the attribute does; `centre` is its median over a calibration set of real photographs
(so a typical photo sits at 0, AADB's "neutral"), and one scale below and one above the centre
map that set's 10th and 90th percentiles to -0.5 and +0.5 (raw measures are skewed; the extremes
of a measure approach -1 and +1). `fit_calibration` recomputes CALIBRATION from raw measures.
The measures, in contract order:

  IC  interesting content   mean of normalised luminance entropy and edge density
  OE  object emphasis       log ratio of saliency inside the central box to saliency outside it
  GL  good lighting         exposure (mean luminance near mid-grey) plus contrast (luminance
                            std), less the fraction of clipped pixels
  CH  color harmony         how well chroma-weighted hues fit a one-hue or a complementary
                            template: max of the resultant lengths of e^{i hue} and e^{2i hue};
                            an achromatic image counts as monochrome, i.e. harmonious
  VC  vivid color           Hasler and Suesstrunk's colorfulness (std and mean of rg, yb)
  DoF shallow depth of field  log ratio of Laplacian energy in the central box to the border
  RoT rule of thirds        where the most salient pixels sit: +1 on a thirds intersection, -1
                            at the centre, scaled by how concentrated they are (none: 0)
  BE  balancing element     1 - |horizontal moment of visual weight about the vertical axis|
  RE  repetition            highest normalised autocorrelation of the high-passed luminance
                            away from the origin (a repeated motif gives a strong side peak)
  SY  symmetry              correlation of the band-passed luminance with its mirror image

Saliency is Achanta et al.'s frequency-tuned measure: distance of the blurred opponent-colour
image from its mean colour. The central box is the middle half of each side.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from personalize.features import ATTRIBUTE_NAMES

WORK_SIZE = 128
CENTRAL_BOX = (0.25, 0.75)  # fractions of each side
THIRDS_POINTS = np.array([(x, y) for x in (1 / 3, 2 / 3) for y in (1 / 3, 2 / 3)])
THIRDS_TO_CENTRE = float(np.hypot(1 / 6, 1 / 6))
SALIENT_FRACTION = 0.05  # RoT looks at the top 5% most salient pixels
REPETITION_MIN_LAG = 6  # px at WORK_SIZE: lags closer than this are the central lobe, not a repeat
_EPS = 1e-6
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# RGB in [0, 255] -> luminance, red-green, yellow-blue in [0, 1] (a cheap stand-in for CIELAB)
_OPPONENT = (np.array([[0.299, 1.0, 0.5], [0.587, -1.0, 0.5], [0.114, 0.0, -1.0]]) / 255).astype(np.float32)

Calibration = dict[str, tuple[float, float, float]]
# (centre, scale below, scale above) per attribute: fit_calibration on the 1,000 photographs of
# ../shared/photos/imagenet-sample (docs/preprocess.md says how to refit).
CALIBRATION: Calibration = {
    "IC": (0.6286, 0.2811, 0.2589),
    "OE": (0.0671, 0.5975, 0.6127),
    "GL": (0.7323, 0.4162, 0.2554),
    "CH": (0.9065, 0.3684, 0.1524),
    "VC": (36.176, 39.1458, 59.9109),
    "DoF": (0.3392, 1.4157, 1.68),
    "RoT": (-0.028, 0.5555, 0.282),
    "BE": (0.9393, 0.2478, 0.0889),
    "RE": (0.1477, 0.1674, 0.3767),
    "SY": (0.0392, 0.2347, 0.5419),
}


def pixel_attributes(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [10]: IC, OE, GL, CH, VC, DoF, RoT, BE, RE, SY in [-1, 1].

    Any size works; CALIBRATION was fitted on decode() outputs (256x256, aspect not kept), so
    pass those for values comparable across paths."""
    return to_attribute_scale(raw_measures(rgb))


def pixel_attributes_batch(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 10]."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}")
    out = np.empty((len(images), len(ATTRIBUTE_NAMES)), np.float32)
    for i, image in enumerate(images):
        out[i] = pixel_attributes(image)
    return out


def to_attribute_scale(raw: np.ndarray, calibration: Calibration = CALIBRATION) -> np.ndarray:
    """Raw measures [..., 10] -> attributes in (-1, 1), float32."""
    centre, below, above = (np.array([calibration[name][i] for name in ATTRIBUTE_NAMES]) for i in range(3))
    offset = np.asarray(raw, np.float64) - centre
    return np.tanh(offset / np.where(offset < 0, below, above)).astype(np.float32)


def fit_calibration(raw: np.ndarray) -> Calibration:
    """(centre, scale below, scale above) per attribute from raw measures [N, 10] of real
    photographs: the median maps to 0, the 10th and 90th percentiles to -0.5 and +0.5."""
    raw = np.asarray(raw, np.float64)
    p10, p50, p90 = np.percentile(raw, [10, 50, 90], axis=0)
    below = np.maximum(p50 - p10, _EPS) / np.arctanh(0.5)
    above = np.maximum(p90 - p50, _EPS) / np.arctanh(0.5)
    return {name: (round(float(c), 4), round(float(lo), 4), round(float(hi), 4))
            for name, c, lo, hi in zip(ATTRIBUTE_NAMES, p50, below, above, strict=True)}


def raw_measures(rgb: np.ndarray) -> np.ndarray:
    """The ten unmapped measures (float64 [10], contract order) of one uint8 [H, W, 3] image."""
    image = _working_pixels(rgb)
    # contiguous float planes: numpy is slow on a trailing axis of length 3
    r, g, b = np.asarray(image).transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    grad_y, grad_x = np.gradient(luma)
    gradient = np.hypot(grad_x, grad_y)
    saliency = _saliency(image)
    spectrum = np.fft.rfft2(luma)
    measures = {
        "IC": _interesting_content(luma, gradient),
        "OE": _object_emphasis(saliency),
        "GL": _good_lighting(luma),
        "CH": _color_harmony(r, g, b),
        "VC": _colorfulness(r, g, b),
        "DoF": _depth_of_field(luma),
        "RoT": _rule_of_thirds(saliency),
        "BE": _balance(saliency, gradient),
        "RE": _repetition(spectrum),
        "SY": _symmetry(spectrum),
    }
    return np.array([measures[name] for name in ATTRIBUTE_NAMES], np.float64)


# --- the measures (planes and maps: float32 [S, S], colours in [0, 1]) ------------------------

def _interesting_content(luma: np.ndarray, gradient: np.ndarray) -> float:
    hist = np.bincount(np.minimum((luma * 64).astype(np.int64), 63).ravel(), minlength=64)
    p = hist[hist > 0] / luma.size
    entropy = float(-(p * np.log2(p)).sum()) / 6.0  # 64 bins: at most 6 bits
    edge_density = float((gradient > 0.04).mean())
    return 0.5 * entropy + 0.5 * edge_density


def _object_emphasis(saliency: np.ndarray) -> float:
    inside = _central_mask(saliency.shape)
    return float(np.log((saliency[inside].mean() + 0.01) / (saliency[~inside].mean() + 0.01)))


def _good_lighting(luma: np.ndarray) -> float:
    exposure = 1.0 - 2.0 * abs(float(luma.mean()) - 0.5)
    contrast = min(float(luma.std()) / 0.3, 1.0)
    clipped = float(((luma < 0.02) | (luma > 0.98)).mean())
    return 0.5 * exposure + 0.5 * contrast - clipped


def _color_harmony(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> float:
    # the hue angle as a unit vector (cos, sin) in the opponent plane, without arctan2
    a, c = 2.0 * r - g - b, np.float32(np.sqrt(3.0)) * (g - b)
    norm = np.hypot(a, c) + _EPS
    cos, sin = a / norm, c / norm
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    # achromatic pixels add to the denominator and numerator alike: a grey image is monochrome
    floor = 0.02 * chroma.size
    total = float(chroma.sum(dtype=np.float64)) + floor
    one_hue = np.hypot((chroma * cos).sum(dtype=np.float64), (chroma * sin).sum(dtype=np.float64))
    complementary = np.hypot((chroma * (cos * cos - sin * sin)).sum(dtype=np.float64),
                             (chroma * 2 * cos * sin).sum(dtype=np.float64))
    return float((max(one_hue, complementary) + floor) / total)


def _colorfulness(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> float:
    rg = 255.0 * (r - g)
    yb = 255.0 * (0.5 * (r + g) - b)
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _depth_of_field(luma: np.ndarray) -> float:
    padded = np.pad(luma, 1, mode="edge")
    laplacian = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
                 - 4.0 * luma)
    energy = laplacian**2
    inside = _central_mask(luma.shape)
    return float(np.log((energy[inside].mean() + 1e-5) / (energy[~inside].mean() + 1e-5)))


def _rule_of_thirds(saliency: np.ndarray) -> float:
    if saliency.max() <= _EPS:
        return 0.0  # nothing stands out: no subject to place
    size = saliency.shape[0]
    flat = saliency.ravel()
    count = max(1, int(SALIENT_FRACTION * flat.size))
    top = np.argpartition(flat, -count)[-count:]
    weight = flat[top].astype(np.float64)
    coords = (np.stack([top % size, top // size], axis=-1) + 0.5) / size  # (x, y)
    centroid = (coords * weight[:, None]).sum(0) / weight.sum()
    spread = np.sqrt((weight * ((coords - centroid) ** 2).sum(-1)).sum() / weight.sum())
    concentration = max(0.0, 1.0 - spread / 0.4)  # about 0.41: the spread over a uniform frame
    distance = np.hypot(*(THIRDS_POINTS - centroid).T).min()
    position = 1.0 - 2.0 * min(distance / THIRDS_TO_CENTRE, 1.0)
    return float(position * concentration)


def _balance(saliency: np.ndarray, gradient: np.ndarray) -> float:
    """1 - |moment| of visual weight (saliency and edges, equally) about the vertical axis."""

    def moment(weight: np.ndarray) -> float:
        x = (np.arange(weight.shape[1]) + 0.5) / weight.shape[1] - 0.5
        column = weight.sum(axis=0, dtype=np.float64)
        return float((column * x).sum()) / (float((column * np.abs(x)).sum()) + _EPS)

    return 1.0 - abs(0.5 * moment(saliency) + 0.5 * moment(gradient))


def _repetition(spectrum: np.ndarray) -> float:
    """Largest side peak of the circular autocorrelation of the high-passed luminance."""
    size = spectrum.shape[0]
    power = np.abs(spectrum * _filters(size)["high"]) ** 2
    autocorr = np.fft.irfft2(power, s=(size, size))
    if autocorr[0, 0] <= _EPS:
        return 0.0
    return float(autocorr[_filters(size)["far"]].max() / autocorr[0, 0])


def _symmetry(spectrum: np.ndarray) -> float:
    """Correlation of the band-passed luminance with its left-right mirror (1: a mirror image).
    The band-pass is a circular filter with a symmetric kernel, so it commutes with mirroring."""
    size = spectrum.shape[0]
    band = np.fft.irfft2(spectrum * _filters(size)["band"], s=(size, size))
    energy = float((band**2).sum())
    if energy <= _EPS:
        return 1.0  # a flat image is its own mirror
    return float((band * band[:, ::-1]).sum()) / energy


# --- helpers -----------------------------------------------------------------------------------

def _working_pixels(rgb: np.ndarray) -> Image.Image:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    image = Image.fromarray(rgb)
    height, width = rgb.shape[:2]
    if (height, width) == (WORK_SIZE, WORK_SIZE):
        return image
    if height == width and height % WORK_SIZE == 0:
        return image.reduce(height // WORK_SIZE)  # a box filter, 4x faster than resize
    filt = Image.Resampling.BOX if min(height, width) >= WORK_SIZE else Image.Resampling.BILINEAR
    return image.resize((WORK_SIZE, WORK_SIZE), filt)


def _saliency(image: Image.Image) -> np.ndarray:
    """Frequency-tuned saliency at half the working size: the distance of each pixel of the
    2x2-box-blurred opponent-colour image from the image's mean opponent colour."""
    opponent = np.asarray(image.reduce(2), np.float32) @ _OPPONENT
    planes = opponent.transpose(2, 0, 1)
    d0, d1, d2 = (plane - plane.mean() for plane in planes)
    return np.sqrt(d0**2 + d1**2 + d2**2)


def _central_mask(shape: tuple[int, ...]) -> np.ndarray:
    lo, hi = (round(f * shape[0]) for f in CENTRAL_BOX)
    mask = np.zeros(shape[:2], bool)
    mask[lo:hi, lo:hi] = True
    return mask


@functools.cache
def _filters(size: int) -> dict[str, np.ndarray]:
    """Frequency responses on the rfft2 grid (Gaussian sigmas in px) and the autocorrelation
    lags far enough from the origin to count as a repeat."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius2 = fx**2 + fy**2

    def gaussian(sigma: float) -> np.ndarray:
        return np.exp(-2.0 * (np.pi * sigma) ** 2 * radius2)

    lag = np.minimum(np.arange(size), size - np.arange(size))
    return {
        "high": 1.0 - gaussian(1.5),
        "band": gaussian(1.0) - gaussian(4.0),
        "far": np.hypot(lag[:, None], lag[None, :]) >= REPETITION_MIN_LAG,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m export.pixel_attributes FOLDER`: fit CALIBRATION on a folder of photos and
    print it (paste the result over CALIBRATION above)."""
    import argparse
    from pathlib import Path

    from export.preprocess import DecodeError, decode_file

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    raw = []
    for path in sorted(p for p in args.folder.rglob("*") if p.is_file()):
        try:
            raw.append(raw_measures(decode_file(path)))
        except DecodeError:
            continue
    if not raw:
        raise SystemExit(f"no decodable photos under {args.folder}")
    print(f"# fit_calibration over {len(raw)} photos of {args.folder}")
    print("CALIBRATION: Calibration = {")
    for name, values in fit_calibration(np.array(raw)).items():
        print(f'    "{name}": {values},')
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
