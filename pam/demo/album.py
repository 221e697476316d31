"""The demo's album: which photos, where their ids come from, and under what licences.

In order of preference:
1. `--photos DIR`: the user's folder (recursive). Above `--album-size` photos, a stable seeded
   subset is taken (a hash of seed and image id, so adding photos never reshuffles the rest).
2. ../shared/photos/imagenet-sample when present (a developer machine or CI): ImageNet terms of
   use, non-commercial research only; never shipped, never in the docs' figures.
3. The colour photographs shipped INSIDE the installed scikit-image and scikit-learn wheels (read
   from the package folders; never skimage.data's pooch-fetched files), extended to an album of
   `--album-size` by seeded random crops at several scales. The report says so plainly: an album
   of crops of nine photographs is a demonstration, not a photo collection.

Crops: for the k-th crop of a photo, k = 0 is the whole frame; afterwards the side scale is drawn
from CROP_SCALES (fractions of the photo's sides), the aspect from [3/4, 4/3] times the photo's
(log-uniform), the position uniformly; the crop is saved with its longer side at most
CROP_MAX_SIDE as JPEG quality CROP_JPEG_QUALITY. The generator of photo i is
numpy.random.default_rng([seed, i]), so a photo's first crops do not depend on the album size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CROP_SCALES = (0.8, 0.65, 0.5, 0.4, 0.3)
CROP_MAX_SIDE = 512
CROP_JPEG_QUALITY = 92
MIN_CROP_SIDE = 64
ALBUM_MANIFEST = "album.json"  # inside the album folder of sample crops
SOURCES_LIST = "album.txt"  # in the demo's output: `path<TAB>image_id` lines for `pam features`
SHARED_PHOTOS_LICENCE = ("ImageNet terms of use: non-commercial research and education only "
                         "(one sample image per ImageNet class)")


@dataclass(frozen=True)
class SamplePhoto:
    name: str
    package: str  # the PyPI distribution that ships the file
    module: str  # the import package the file sits in
    file: str  # path inside that import package
    licence: str
    credit: str
    url: str


# Every colour photograph inside the two wheels. Licences and credits as each package documents
# them: skimage.data's docstrings (skimage/data/_fetchers.py) and sklearn/datasets/images/README.txt.
# Left out: the Middlebury stereo pair (no licence stated), drawings, textures and grey images.
SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut", "scikit-image", "skimage", "data/astronaut.png",
                "public domain (NASA: no known copyright restrictions)",
                "NASA, astronaut Eileen Collins (NASA Great Images)", "https://flic.kr/p/r9qvLn"),
    SamplePhoto("chelsea", "scikit-image", "skimage", "data/chelsea.png",
                "CC0 (no copyright restrictions)", "Stefan van der Walt (Chelsea the cat)",
                "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.chelsea"),
    SamplePhoto("coffee", "scikit-image", "skimage", "data/coffee.png",
                "CC0 (no copyright restrictions)", "Rachel Michetti, courtesy of Pikolo Espresso Bar",
                "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.coffee"),
    SamplePhoto("rocket", "scikit-image", "skimage", "data/rocket.jpg",
                "public domain (released by SpaceX)", "SpaceX, launch of DSCOVR on Falcon 9",
                "https://www.flickr.com/photos/spacexphotos/16511594820/"),
    SamplePhoto("hubble_deep_field", "scikit-image", "skimage", "data/hubble_deep_field.jpg",
                "public domain (NASA media guidelines)", "NASA, Hubble eXtreme Deep Field (HubbleSite)",
                "http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/"),
    SamplePhoto("retina", "scikit-image", "skimage", "data/retina.jpg",
                "CC0 1.0 Universal", "Mikael Häggström (Wikimedia Commons)",
                "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    SamplePhoto("immunohistochemistry", "scikit-image", "skimage", "data/ihc.png",
                "no known copyright restrictions",
                "Center for Microscopy And Molecular Imaging (CMMI)",
                "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.immunohistochemistry"),
    SamplePhoto("china", "scikit-learn", "sklearn", "datasets/images/china.jpg",
                "CC BY 2.0", "danielbuechele (Flickr), via scikit-learn's sample images",
                "https://www.flickr.com/photos/danielbuechele/6061409035/"),
    SamplePhoto("flower", "scikit-learn", "sklearn", "datasets/images/flower.jpg",
                "CC BY 2.0", "vultilion (Flickr), via scikit-learn's sample images",
                "https://www.flickr.com/photos/vultilion/6056698931/"),
)


class AlbumError(RuntimeError):
    """The album cannot be built; the message says why and what to do."""


@dataclass
class Album:
    root: Path  # image ids are POSIX paths relative to it
    image_ids: list[str]
    kind: str  # "folder" | "shared-photos" | "sample-crops"
    description: str  # one plain sentence for the report
    sources: list[dict] = field(default_factory=list)  # photos and their licences
    listed: int = 0  # photos found before the --album-size cap

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def write_sources_list(self, path: Path) -> Path:
        """The text manifest `pam features` reads: `<absolute path>\\t<image_id>` per line."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{self.path(i).resolve()}\t{i}" for i in self.image_ids]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def summary(self) -> dict:
        return {"kind": self.kind, "root": str(self.root), "photos": len(self), "listed": self.listed,
                "description": self.description, "sources": self.sources}


def shared_photos_dir() -> Path | None:
    """../shared/photos/imagenet-sample next to the checkout (or the working directory)."""
    checkout = Path(__file__).resolve().parents[2]
    for base in (checkout, Path.cwd()):
        folder = (base.parent / "shared" / "photos" / "imagenet-sample").resolve()
        if folder.is_dir():
            return folder
    return None


def sample_photo_path(photo: SamplePhoto) -> Path:
    """Where the installed wheel keeps the file (found without importing the package)."""
    spec = importlib.util.find_spec(photo.module)
    if spec is None or spec.origin is None:
        raise AlbumError(f"{photo.package} is not installed, so its sample photo {photo.name} is "
                         "missing: run `bash scripts/install.sh` (the train extra brings scikit-image), "
                         "or pass --photos DIR")
    path = Path(spec.origin).parent / photo.file
    if not path.is_file():
        raise AlbumError(f"{path} is not in the installed {photo.package} wheel; pass --photos DIR")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stable_subset(image_ids: list[str], size: int, seed: int) -> list[str]:
    """`size` ids chosen by a hash of (seed, id): stable when photos are added; sorted. The hash is
    salted with the demo's own name: pam train's validation split hashes (seed, id) too, and an
    album of the ids with the smallest unsalted hashes would all fall in its validation set."""
    if len(image_ids) <= size:
        return sorted(image_ids)
    ranked = sorted(image_ids, key=lambda i: hashlib.sha256(f"pam-demo-album:{seed}:{i}".encode()).digest())
    return sorted(ranked[:size])


def folder_album(root: Path, size: int, seed: int, kind: str = "folder") -> Album:
    from export.datasets import DatasetError, list_images

    try:
        listed = [image_id for image_id, _ in list_images(root)]
    except DatasetError as exc:
        raise AlbumError(f"{exc}; pass --photos with a folder of photos") from None
    if not listed:
        raise AlbumError(f"{root} holds no photos (.jpg, .png, .webp, ...); pass another --photos folder")
    chosen = stable_subset(listed, size, seed)
    capped = f", a stable seeded subset of the {len(listed)} found (--album-size {size})" if len(listed) > size else ""
    if kind == "shared-photos":
        description = (f"{len(chosen)} real photographs from {root}{capped}. {SHARED_PHOTOS_LICENCE}.")
        sources = [{"name": "imagenet-sample", "folder": str(root), "licence": SHARED_PHOTOS_LICENCE}]
    else:
        description = f"{len(chosen)} photos from {root}{capped}."
        sources = [{"name": root.name, "folder": str(root), "licence": "the user's own photos"}]
    return Album(root, chosen, kind, description, sources, len(listed))


def _crop_box(rng: np.random.Generator, width: int, height: int, scale: float) -> tuple[int, int, int, int]:
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, max(MIN_CROP_SIDE, round(width * scale * math.sqrt(aspect))))
    h = min(height, max(MIN_CROP_SIDE, round(height * scale / math.sqrt(aspect))))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def crop_plan(photo_sizes: list[tuple[int, int]], album_size: int, seed: int) -> list[list[dict]]:
    """For each photo, its crops: {box, scale}. Photo i gets album_size // n (+1 for the first
    album_size % n photos) crops; crop 0 is the whole frame."""
    n = len(photo_sizes)
    plan = []
    for i, (width, height) in enumerate(photo_sizes):
        count = album_size // n + (1 if i < album_size % n else 0)
        rng = np.random.default_rng([seed, i])
        crops = []
        for k in range(count):
            if k == 0:
                crops.append({"box": [0, 0, width, height], "scale": 1.0})
                continue
            scale = float(CROP_SCALES[int(rng.integers(len(CROP_SCALES)))])
            crops.append({"box": list(_crop_box(rng, width, height, scale)), "scale": scale})
        plan.append(crops)
    return plan


def _jpeg(image, box) -> bytes:
    from PIL import Image

    crop = image.crop(tuple(box))
    if max(crop.size) > CROP_MAX_SIDE:
        factor = CROP_MAX_SIDE / max(crop.size)
        crop = crop.resize((max(1, round(crop.size[0] * factor)), max(1, round(crop.size[1] * factor))),
                           Image.Resampling.LANCZOS)
    out = io.BytesIO()
    crop.save(out, "JPEG", quality=CROP_JPEG_QUALITY)
    return out.getvalue()


def sample_album(folder: Path, size: int, seed: int) -> Album:
    """The sample photos of the wheels, cropped into an album of `size` photos under `folder`.
    Rebuilt only when the manifest there was made from other inputs."""
    from PIL import Image

    if size < len(SAMPLE_PHOTOS):
        raise AlbumError(f"--album-size {size} is below the {len(SAMPLE_PHOTOS)} sample photos; use at least that")
    sources, images = [], []
    for photo in SAMPLE_PHOTOS:
        path = sample_photo_path(photo)
        with Image.open(path) as im:
            image = im.convert("RGB")
        images.append(image)
        sources.append({**asdict(photo), "path": str(path), "sha256": _sha256(path),
                        "width": image.size[0], "height": image.size[1]})
    spec = {"seed": seed, "size": size, "scales": list(CROP_SCALES), "max_side": CROP_MAX_SIDE,
            "quality": CROP_JPEG_QUALITY, "sources": [s["sha256"] for s in sources]}
    manifest_path = folder / ALBUM_MANIFEST
    manifest = _read_manifest(manifest_path)
    if manifest is None or manifest.get("spec") != spec or not all(
            (folder / c["image_id"]).is_file() for c in manifest["crops"]):
        plan = crop_plan([im.size for im in images], size, seed)
        crops = []
        for photo, image, photo_crops in zip(SAMPLE_PHOTOS, images, plan, strict=True):
            (folder / photo.name).mkdir(parents=True, exist_ok=True)
            for k, crop in enumerate(photo_crops):
                image_id = f"{photo.name}/{photo.name}-{k:03d}.jpg"
                (folder / image_id).write_bytes(_jpeg(image, crop["box"]))
                crops.append({"image_id": image_id, "source": photo.name, **crop})
        manifest = {"spec": spec, "sources": sources, "crops": crops}
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    description = (f"{size} photos made from the {len(SAMPLE_PHOTOS)} colour photographs shipped inside "
                   f"the installed scikit-image and scikit-learn wheels: each photograph whole, plus "
                   f"seeded random crops (side scales {', '.join(str(s) for s in CROP_SCALES)} of the "
                   f"photo's, aspect jittered by up to 4:3, seed {seed}). Crops of one photograph look "
                   "alike: this album demonstrates the pipeline, it is not a photo collection.")
    return Album(folder, [c["image_id"] for c in manifest["crops"]], "sample-crops", description,
                 sources, len(SAMPLE_PHOTOS))


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolve_album(photos: Path | None, out: Path, size: int, seed: int) -> Album:
    """The album the demo runs on (see the module docstring for the order)."""
    if size < 2:
        raise AlbumError(f"--album-size must be at least 2, not {size}")
    if photos is not None:
        if not photos.is_dir():
            raise AlbumError(f"--photos {photos} is not a folder")
        return folder_album(photos.resolve(), size, seed)
    shared = shared_photos_dir()
    if shared is not None:
        return folder_album(shared, size, seed, kind="shared-photos")
    return sample_album(out / "album", size, seed)
