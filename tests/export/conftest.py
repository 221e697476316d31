"""Fixtures of the networks/training/export tests: generated photos with ratings and attribute
labels (a learnable taste: brighter, more colourful photos rate higher), and one trained tiny run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from personalize.features import ATTRIBUTE_NAMES

N_PHOTOS = 28


def _photo(rng: np.random.Generator, brightness: float, colour: float) -> np.ndarray:
    h, w = rng.integers(200, 420, 2)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = brightness * 255 * (0.6 + 0.4 * np.sin(6 * x + rng.uniform(0, 6)))
    tint = colour * 120 * np.stack([np.sin(4 * y), np.cos(5 * x), np.sin(3 * (x + y))], -1)
    noise = rng.normal(0, 12, (h, w, 3))
    return np.clip(base[..., None] + tint + noise, 0, 255).astype(np.uint8)


def write_photo_set(root: Path, n: int = N_PHOTOS, seed: int = 0) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = root / "photos"
    photos.mkdir(parents=True)
    ratings, attributes = [], []
    for i in range(n):
        brightness, colour = rng.uniform(0.15, 0.95), rng.uniform(0.0, 1.0)
        name = f"img{i:03d}." + ("png" if i % 4 == 0 else "jpg")
        Image.fromarray(_photo(rng, brightness, colour)).save(photos / name)
        taste = 1 + 4 * (0.7 * brightness + 0.3 * colour)
        for worker in ("w1", "w2", "w3"):
            ratings.append((worker, name, int(np.clip(np.rint(taste + rng.normal(0, 0.4)), 1, 5))))
        attrs = np.clip(np.linspace(-0.8, 0.8, 10) * (brightness - 0.5) * 2 + colour - 0.5, -1, 1)
        attributes.append((name, *np.round(attrs, 4)))
    with (root / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["worker", "imagePair", "score"])
        w.writerows(ratings)
    with (root / "attributes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", *ATTRIBUTE_NAMES])
        w.writerows(attributes)
    return {"root": root, "photos": photos, "ratings": root / "ratings.csv",
            "attributes": root / "attributes.csv"}


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory) -> dict:
    return write_photo_set(tmp_path_factory.mktemp("photo-set"))


TINY_SCHEDULE = dict(backbone="tiny", epochs=3, attribute_epochs=2, content_epochs=2, lr=0.02,
                     random_crops=1, batch_size=8, val_fraction=0.3)


@pytest.fixture(scope="session")
def tiny_run(photo_set, tmp_path_factory) -> Path:
    """A finished `tiny` run on the generated photos (attribute labels from the CSV)."""
    pytest.importorskip("torch")
    from export.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(TrainConfig(ratings=str(photo_set["ratings"]), images=str(photo_set["photos"]),
                      attributes=str(photo_set["attributes"]), out=str(out), **TINY_SCHEDULE),
          progress=False)
    return out
