"""The frozen trunk's outputs, computed once per (trunk weights, image list, crop set).

Training the 5b-style blocks and heads on a frozen trunk needs only the trunk's feature maps, so
each photo is decoded once (export.preprocess.decode, a thread pool), cut into crops, and run
through the trunk once (ONNX Runtime on CPU, see trunk_runner); the maps are stored as float16
.npy memmaps in the run folder:

    fmap.npy        [N, K, C, 7, 7]  trunk map of crop k of image n
    classifier.npy  [N, K, D]        pooled ImageNet-classifier features (content model input)
    attributes.npy  [N, 10]          pixel-measure attribute targets (only when asked for)
    manifest.json   written last; a cache without it is incomplete and is rebuilt

Crops 0-4 are the five test crops (CROP_OFFSETS, the exported graph's); crops 5.. are random
224x224 positions, so picking a random cached crop per epoch is the paper's random cropping.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.networks import CROP_OFFSETS, PamNet
from export.networks.backbone import CROP_SIZE
from export.onnx_export import weights_digest
from export.preprocess import DecodeError, decode_file

N_TEST_CROPS = len(CROP_OFFSETS)
MAX_OFFSET = 256 - CROP_SIZE


@dataclass
class CropCache:
    folder: Path
    fmap: np.ndarray  # float16 memmap [N, K, C, 7, 7]
    classifier: np.ndarray  # float16 memmap [N, K, D]
    positions: np.ndarray  # int [N, K, 2] (top, left)
    ok: np.ndarray  # bool [N]: decoded and scored
    failures: dict[int, str]  # row -> why the photo could not be used
    attributes: np.ndarray | None = None  # float32 [N, 10] pixel-measure targets

    @property
    def n_crops(self) -> int:
        return self.fmap.shape[1]


def crop_positions(n_images: int, random_crops: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7919])
    fixed = np.broadcast_to(np.array(CROP_OFFSETS), (n_images, N_TEST_CROPS, 2))
    extra = rng.integers(0, MAX_OFFSET + 1, (n_images, random_crops, 2))
    return np.concatenate([fixed, extra], axis=1).astype(np.int64)


def cache_key(net: PamNet, paths: list[Path], random_crops: int, seed: int,
              pixel_attributes: bool) -> str:
    h = hashlib.sha256()
    h.update(weights_digest(net.backbone).encode())
    h.update(f"{random_crops}:{seed}:{pixel_attributes}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class _TrunkModule(torch.nn.Module):
    """uint8 crops [N, 224, 224, 3] -> (trunk map [N, C, 7, 7], pooled classifier features [N, D])."""

    def __init__(self, net: PamNet):
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor):
        fmap = self.net.backbone(self.net.normalise(crops))
        return fmap, self.net.backbone.classifier_features(fmap)


ORT_MIN_CROPS = 512  # exporting the trunk takes 5-30 s: worth it beyond a few hundred crops


def trunk_runner(net: PamNet, device: str, n_crops: int, engine: str = "auto"):
    """A function uint8 crops -> (maps, pooled) as float32 numpy. On CPU the trunk runs in ONNX
    Runtime (lite0's trunk: about 10x torch eager's crops/s at batch 64 here, whose depthwise
    convolutions are slow); on a GPU, and for a few crops, in torch."""
    if engine == "auto":
        engine = "onnxruntime" if device == "cpu" and n_crops >= ORT_MIN_CROPS else "torch"
    module = _TrunkModule(net).eval().to(device)
    if engine == "onnxruntime":
        import onnxruntime as ort

        from export.onnx_export import to_onnx_model

        model = to_onnx_model(module, torch.zeros(2, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8),
                              "crops", ["fmap", "classifier"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return lambda crops: tuple(session.run(None, {"crops": np.ascontiguousarray(crops)}))

    @torch.inference_mode()
    def run_torch(crops):
        maps, pooled = module(torch.from_numpy(crops).to(device))
        return maps.cpu().numpy(), pooled.cpu().numpy()

    return run_torch


def build_or_load(net: PamNet, paths: list[Path], root: Path, random_crops: int, seed: int,
                  pixel_attributes: Callable[[np.ndarray], np.ndarray] | None = None,
                  batch_images: int = 8, workers: int = 2, device: str = "cpu",
                  progress: bool = True, engine: str = "auto") -> CropCache:
    """The cache for these photos under `root`, computing it unless a complete one exists."""
    key = cache_key(net, paths, random_crops, seed, pixel_attributes is not None)
    folder = root / key
    if (folder / "manifest.json").is_file():
        return _open(folder)
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted build
    folder.mkdir(parents=True)
    positions = crop_positions(len(paths), random_crops, seed)
    k = positions.shape[1]
    backbone = net.backbone.eval().to(device)
    trunk = trunk_runner(net, device, len(paths) * k, engine)
    fmap = np.lib.format.open_memmap(folder / "fmap.npy", mode="w+", dtype=np.float16,
                                     shape=(len(paths), k, backbone.feature_channels, 7, 7))
    classifier = np.lib.format.open_memmap(folder / "classifier.npy", mode="w+", dtype=np.float16,
                                           shape=(len(paths), k, backbone.classifier_channels))
    attributes = np.zeros((len(paths), 10), np.float32) if pixel_attributes else None
    ok = np.zeros(len(paths), bool)
    failures: dict[int, str] = {}

    def load(i: int):
        try:
            image = decode_file(paths[i])
        except DecodeError as exc:
            return i, None, f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
        except OSError as exc:
            return i, None, f"unreadable: {exc.strerror or exc}"
        attrs = pixel_attributes(image[None])[0] if pixel_attributes else None
        return i, (image, attrs), None

    chunks = [list(range(s, min(s + batch_images, len(paths))))
              for s in range(0, len(paths), batch_images)]
    bar = tqdm(total=len(paths), desc="trunk cache", unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = [pool.submit(lambda c: [load(i) for i in c], chunks[0])] if chunks else []
        for n, _ in enumerate(chunks):
            results = pending.pop().result()
            if n + 1 < len(chunks):  # decode the next chunk while the trunk runs on this one
                pending.append(pool.submit(lambda c: [load(i) for i in c], chunks[n + 1]))
            good = [(i, item) for i, item, err in results if item is not None]
            failures.update({i: err for i, item, err in results if item is None})
            if good:
                _score_chunk(trunk, good, positions, fmap, classifier, attributes)
                ok[[i for i, _ in good]] = True
            bar.update(len(results))
    bar.close()
    fmap.flush()
    classifier.flush()
    np.save(folder / "positions.npy", positions)
    np.save(folder / "ok.npy", ok)
    if attributes is not None:
        np.save(folder / "attributes.npy", attributes)
    manifest = {"images": [str(p) for p in paths], "crops": k, "random_crops": random_crops,
                "seed": seed, "backbone": backbone.name,
                "failures": {str(i): e for i, e in failures.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return _open(folder)


def _score_chunk(trunk, good, positions, fmap, classifier, attributes) -> None:
    rows = [i for i, _ in good]
    crops = np.stack([image[t:t + CROP_SIZE, s:s + CROP_SIZE]
                      for i, (image, _) in good for t, s in positions[i]])
    maps, pooled = trunk(crops)
    k = positions.shape[1]
    fmap[rows] = maps.reshape(len(rows), k, *maps.shape[1:]).astype(np.float16)
    classifier[rows] = pooled.reshape(len(rows), k, -1).astype(np.float16)
    if attributes is not None:
        attributes[rows] = np.stack([attrs for _, (_, attrs) in good])


def _open(folder: Path) -> CropCache:
    manifest = json.loads((folder / "manifest.json").read_text())
    attrs = folder / "attributes.npy"
    return CropCache(folder=folder,
                     fmap=np.load(folder / "fmap.npy", mmap_mode="r"),
                     classifier=np.load(folder / "classifier.npy", mmap_mode="r"),
                     positions=np.load(folder / "positions.npy"),
                     ok=np.load(folder / "ok.npy"),
                     failures={int(i): e for i, e in manifest["failures"].items()},
                     attributes=np.load(attrs) if attrs.is_file() else None)
