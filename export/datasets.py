"""Training data for the networks: FLICKR-AES-format aesthetics ratings, AADB-format attribute
labels, and plain photo folders (attribute targets from pixel measures).

Ratings are read with personalize.data (one reader for FLICKR-AES everywhere); the generic model
trains on IM_j, the WP-weighted mean rating of the training workers (section 3). An image whose
file is missing is reported, never silently dropped; one that fails to decode fails alone.
"""

from __future__ import annotations

import csv
import hashlib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from personalize.features import ATTRIBUTE_NAMES, N_ATTRIBUTES

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# AADB's file names for the ten attributes of the contract (its MotionBlur is not one of them)
AADB_NAMES: dict[str, str] = {"IC": "Content", "OE": "Object", "GL": "Light", "CH": "ColorHarmony",
                              "VC": "VividColor", "DoF": "DoF", "RoT": "RuleOfThirds",
                              "BE": "BalacingElements", "RE": "Repetition", "SY": "Symmetry"}
AADB_SPLITS = {"train": "Train", "validation": "Validation", "test": "TestNew"}


class DatasetError(ValueError):
    """Training data that cannot be used; the message says which file and why."""


@dataclass
class ImageSet:
    """Images with one target row each: a 1-5 mean rating [N], or 10 attributes [N, 10]."""

    ids: list[str]
    paths: list[Path]
    targets: np.ndarray
    source: str
    missing: list[str] = field(default_factory=list)  # ids listed in the labels, absent on disk

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> ImageSet:
        index = np.asarray(index, dtype=np.int64)
        return ImageSet([self.ids[i] for i in index], [self.paths[i] for i in index],
                        self.targets[index], self.source, self.missing)


def image_id(path: Path, root: Path) -> str:
    """The contract's image_id: the POSIX path relative to the root, Unicode NFC."""
    return unicodedata.normalize("NFC", path.relative_to(root).as_posix())


def list_images(root: str | Path) -> list[tuple[str, Path]]:
    """(image_id, path) of every image file under `root`, sorted by id."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    found = [(image_id(p, root), p) for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found)


def _resolve(ids, targets, root: Path, source: str) -> ImageSet:
    keep, paths, missing = [], [], []
    for i, name in enumerate(ids):
        path = root / name
        if path.is_file():
            keep.append(i)
            paths.append(path)
        else:
            missing.append(name)
    if not keep:
        raise DatasetError(f"none of the {len(ids)} images of {source} exists under {root}")
    return ImageSet([ids[i] for i in keep], paths, np.asarray(targets)[keep], source, missing)


def load_aesthetics(ratings_csv: str | Path, image_root: str | Path, test_workers=None,
                    check_images=None) -> ImageSet:
    """FLICKR-AES format: targets are the training workers' WP-weighted mean ratings (1-5).
    Images rated only by test workers are left out (the generic model never sees them)."""
    from personalize.data import DataError, load_flickr_aes

    try:
        data = load_flickr_aes(ratings_csv, test_workers=test_workers, check_images=check_images)
    except DataError as exc:
        raise DatasetError(str(exc)) from exc
    ids, means, _, _ = data.weighted_means(data.train_workers)
    return _resolve([str(i) for i in ids], means.astype(np.float32), Path(image_root),
                    f"FLICKR-AES-format ratings {ratings_csv}")


def load_attributes(path: str | Path, image_root: str | Path, split: str = "train") -> ImageSet:
    """AADB-format attribute labels on [-1, 1], in contract order (IC, OE, ..., SY).

    `path` is either AADB's label folder (imgList<Split>Regression_<Attribute>.txt files, each
    line `<image file> <value>`) or a CSV with an image id column and the ten contract names."""
    path = Path(path)
    if path.is_dir():
        ids, values = _read_aadb_folder(path, split)
    else:
        ids, values = _read_attribute_csv(path)
    if np.any(np.abs(values) > 1.0 + 1e-6) or not np.isfinite(values).all():
        raise DatasetError(f"{path}: attribute values must be finite and on [-1, 1]")
    return _resolve(ids, values.astype(np.float32), Path(image_root), f"attribute labels {path}")


def has_aadb_split(folder: str | Path, split: str) -> bool:
    """Whether an AADB label folder holds all ten attribute files of `split`."""
    return all((Path(folder) / f"imgList{AADB_SPLITS[split]}Regression_{aadb}.txt").is_file()
               for aadb in AADB_NAMES.values())


def _read_aadb_folder(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    if split not in AADB_SPLITS:
        raise DatasetError(f"AADB split must be one of {sorted(AADB_SPLITS)}, not {split!r}")
    columns: dict[str, dict[str, float]] = {}
    for short, aadb in AADB_NAMES.items():
        f = folder / f"imgList{AADB_SPLITS[split]}Regression_{aadb}.txt"
        if not f.is_file():
            raise DatasetError(f"{folder} is not an AADB label folder: {f.name} is missing")
        column = {}
        for line_no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"{f}:{line_no}: expected '<image> <value>', got {line!r}")
            try:
                column[parts[0]] = float(parts[1])
            except ValueError:
                raise DatasetError(f"{f}:{line_no}: {parts[1]!r} is not a number") from None
        columns[short] = column
    ids = sorted(set.intersection(*(set(c) for c in columns.values())))
    if not ids:
        raise DatasetError(f"{folder}: no image has all ten attribute labels")
    return ids, np.array([[columns[a][i] for a in ATTRIBUTE_NAMES] for i in ids])


def _read_attribute_csv(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if len(rows) < 2:
        raise DatasetError(f"{path}: expected a header and at least one row")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    id_col = next((lower.index(n) for n in ("image_id", "imagepair", "image", "imagename")
                   if n in lower), None)
    if id_col is None:
        raise DatasetError(f"{path}:1: no image id column (image_id, imagePair, image)")
    missing = [a for a in ATTRIBUTE_NAMES if a not in header]
    if missing:
        raise DatasetError(f"{path}:1: missing attribute columns {missing}")
    cols = [header.index(a) for a in ATTRIBUTE_NAMES]
    ids, values = [], []
    for line_no, row in enumerate(rows[1:], 2):
        if not any(c.strip() for c in row):
            continue
        try:
            values.append([float(row[c]) for c in cols])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}:{line_no}: expected {N_ATTRIBUTES} numbers") from None
        ids.append(row[id_col].strip())
    return ids, np.asarray(values, dtype=np.float64)


def write_attribute_csv(path: str | Path, ids: list[str], values: np.ndarray) -> Path:
    """The attribute CSV that load_attributes reads (image_id + the ten contract columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", *ATTRIBUTE_NAMES])
        for name, row in zip(ids, np.asarray(values), strict=True):
            writer.writerow([name, *(f"{v:.6f}" for v in row)])
    return path


def pixel_attribute_targets(images: np.ndarray) -> np.ndarray:
    """Attribute targets for photos without AADB labels, from export.pixel_attributes."""
    try:
        from export.pixel_attributes import pixel_attributes_batch
    except ImportError as exc:
        raise DatasetError("pixel attribute targets need export.pixel_attributes "
                           f"(not importable: {exc}); pass --attributes with AADB labels") from exc
    return np.asarray(pixel_attributes_batch(images), dtype=np.float32).reshape(len(images), N_ATTRIBUTES)


def validation_mask(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """A stable split: an image is in validation when a hash of (seed, id) falls below
    `fraction`, so adding images never moves others between the splits."""
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {fraction}")
    cut = int(fraction * 2**32)
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:4], "big") < cut
                     for i in ids], dtype=bool)

