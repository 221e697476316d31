"""The paper's full fine-tuning of the generic model (trunk and head together, random 224 crops
of the 256 warp, decoded live each epoch). Slow on CPU; the setting for a GPU and for a trunk
without ImageNet weights (inception_bn from scratch). The later stages keep the trunk frozen."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.networks import FiveCropScorer, PamNet
from export.networks.backbone import CROP_SIZE
from export.networks.model import RATING_SCALE
from export.preprocess import DecodeError, decode_file

from .cache import MAX_OFFSET
from .stages import _batches, _step, euclidean_loss, spearman


def _decode(path: Path) -> np.ndarray | str:
    try:
        return decode_file(path)
    except DecodeError as exc:
        return exc.reason
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def finetune_epoch(net: PamNet, optimizer, paths: list[Path], targets: np.ndarray,
                   batch_size: int, rng: np.random.Generator, device: str, workers: int,
                   failures: dict[str, str], progress: bool = False) -> float:
    net.train()
    order = rng.permutation(len(paths))
    offsets = rng.integers(0, MAX_OFFSET + 1, (len(paths), 2))
    losses = []
    batches = tqdm(list(_batches(order, batch_size)), desc="fine-tune", unit="batch",
                   leave=False, disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for b in batches:
            decoded = list(pool.map(_decode, [paths[i] for i in b]))
            keep = [i for i, img in zip(b, decoded, strict=True) if isinstance(img, np.ndarray)]
            failures.update({str(paths[i]): img for i, img in zip(b, decoded, strict=True)
                             if not isinstance(img, np.ndarray)})
            if len(keep) < 2:
                continue  # batch norm needs two samples
            crops = np.stack([img[t:t + CROP_SIZE, s:s + CROP_SIZE]
                              for i, img in zip(b, decoded, strict=True) if isinstance(img, np.ndarray)
                              for t, s in [offsets[i]]])
            x = net.normalise(torch.from_numpy(crops).to(device))
            pred = net.aesthetics(net.backbone(x))[:, 0]
            target = torch.from_numpy(targets[keep] / RATING_SCALE).float().to(device)
            losses.append(_step(optimizer, euclidean_loss(pred, target)))
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def finetune_validation(net: PamNet, paths: list[Path], targets: np.ndarray, device: str,
                        workers: int, batch: int = 16) -> dict:
    """Five-crop scores of the validation photos through the exported graph's own module."""
    if not paths:
        return {"val_rho": float("nan")}
    scorer = FiveCropScorer(net).eval()
    preds, kept = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for b in _batches(np.arange(len(paths)), batch):
            decoded = list(pool.map(_decode, [paths[i] for i in b]))
            good = [(i, img) for i, img in zip(b, decoded, strict=True) if isinstance(img, np.ndarray)]
            if good:
                images = torch.from_numpy(np.stack([img for _, img in good])).to(device)
                preds.append(scorer(images)[0][:, 0].cpu().numpy())
                kept.extend(i for i, _ in good)
    pred = np.concatenate(preds) if preds else np.zeros(0)
    return {"val_rho": spearman(pred, targets[kept])}
