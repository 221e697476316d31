"""One epoch of each training stage, and its validation, on the trunk cache.

Losses are the paper's: eq. 2 (Euclidean, 1/2N sum of squares) for the generic score on ratings
scaled to [0.2, 1]; eq. 4 (loss_aes + sum_i w_i loss_att_i) for the Siamese attributes network;
cross-entropy on the k-means clusters for the content head. Validation always averages the five
test crops, as the exported graph does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.nn import functional as F

from export.networks import PamNet
from export.networks.model import N_CROPS, RATING_SCALE
from personalize.features import ATTRIBUTE_NAMES, N_ATTRIBUTES

from .cache import CropCache


@dataclass
class Split:
    """Images of one stage and split, as rows of the cache, with their targets."""

    cache: CropCache
    rows: np.ndarray  # int [n]
    targets: np.ndarray  # [n] (aesthetics: ratings 1-5; content: cluster ids) or [n, 10]

    def __len__(self) -> int:
        return len(self.rows)


def epoch_rng(seed: int, stage: int, epoch: int) -> np.random.Generator:
    """Every random choice of an epoch derives from (seed, stage, epoch), so a resumed run
    repeats exactly what an uninterrupted one would have done."""
    rng = np.random.default_rng([seed, stage, epoch])
    torch.manual_seed(int(rng.integers(2**62)))
    return rng


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _maps(split: Split, index: np.ndarray, crops: np.ndarray, device: str) -> torch.Tensor:
    x = split.cache.fmap[split.rows[index], crops]
    return torch.from_numpy(x.astype(np.float32)).to(device)


def _classifier(split: Split, index: np.ndarray, crops: np.ndarray, device: str) -> torch.Tensor:
    x = split.cache.classifier[split.rows[index], crops]
    return torch.from_numpy(x.astype(np.float32)).to(device)


def _batches(order: np.ndarray, size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def euclidean_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: 1/(2N) sum ||y' - y||^2."""
    return 0.5 * ((pred - target) ** 2).sum() / pred.shape[0]


def init_heads(net: PamNet, mean_rating: float, mean_attributes: np.ndarray) -> None:
    """Start the linear outputs at the mean target, so early epochs refine rather than shift."""
    with torch.no_grad():
        net.aesthetics.fc.bias.fill_(mean_rating / RATING_SCALE)
        net.attributes.fc.bias.copy_(torch.tensor([*np.asarray(mean_attributes, np.float32),
                                                   mean_rating / RATING_SCALE]))


# --- generic aesthetics ----------------------------------------------------------------------
def aesthetics_epoch(net: PamNet, optimizer, train: Split, batch_size: int,
                     rng: np.random.Generator, device: str) -> float:
    net.aesthetics.train()
    order = rng.permutation(len(train))
    crops = rng.integers(0, train.cache.n_crops, len(train))
    losses = []
    for b in _batches(order, batch_size):
        pred = net.aesthetics(_maps(train, b, crops[b], device))[:, 0]
        target = torch.from_numpy(train.targets[b] / RATING_SCALE).float().to(device)
        losses.append(_step(optimizer, euclidean_loss(pred, target)))
    return float(np.mean(losses))


@torch.no_grad()
def five_crop_outputs(head: torch.nn.Module, split: Split, device: str, batch: int = 32) -> np.ndarray:
    head.eval()
    out = []
    for b in _batches(np.arange(len(split)), batch):
        crops = np.broadcast_to(np.arange(N_CROPS), (len(b), N_CROPS))
        maps = _maps(split, np.repeat(b, N_CROPS), crops.reshape(-1), device)
        out.append(head(maps).reshape(len(b), N_CROPS, -1).mean(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1))


def aesthetics_validation(net: PamNet, val: Split, device: str) -> dict:
    if len(val) == 0:
        return {"val_rho": float("nan")}
    pred = five_crop_outputs(net.aesthetics, val, device)[:, 0] * RATING_SCALE
    return {"val_rho": spearman(pred, val.targets),
            "val_rmse": float(np.sqrt(np.mean((np.clip(pred, 1, 5) - val.targets) ** 2)))}


# --- Siamese attributes (Fig. 2b, eq. 4) -----------------------------------------------------
def start_attributes(net: PamNet) -> None:
    """Fine-tuned from the generic model: its own 5b starts as a copy of the aesthetics 5b."""
    net.attributes.block.load_state_dict(net.aesthetics.block.state_dict())


def attributes_epoch(net: PamNet, optimizer, attr: Split, aes: Split, batch_size: int,
                     attribute_weight: float, rng: np.random.Generator, device: str) -> float:
    """Each step: half a batch of attribute images (loss on the 10 attribute outputs, weight w_i)
    and half a batch of aesthetics images (loss on the aesthetics output), one forward pass."""
    net.attributes.train()
    half = max(1, batch_size // 2)
    order = rng.permutation(len(attr))
    attr_crops = rng.integers(0, attr.cache.n_crops, len(attr))
    losses = []
    for b in _batches(order, half):
        a = rng.integers(0, len(aes), len(b))
        maps = torch.cat([_maps(attr, b, attr_crops[b], device),
                          _maps(aes, a, rng.integers(0, aes.cache.n_crops, len(b)), device)])
        out = net.attributes(maps)
        att_out, aes_out = out[:len(b), :N_ATTRIBUTES], out[len(b):, N_ATTRIBUTES]
        att_target = torch.from_numpy(attr.targets[b]).float().to(device)
        aes_target = torch.from_numpy(aes.targets[a] / RATING_SCALE).float().to(device)
        loss = euclidean_loss(aes_out, aes_target) + attribute_weight * sum(
            euclidean_loss(att_out[:, i], att_target[:, i]) for i in range(N_ATTRIBUTES))
        losses.append(_step(optimizer, loss))
    return float(np.mean(losses))


def attributes_validation(net: PamNet, val: Split, device: str) -> dict:
    if len(val) == 0:
        return {"val_mean_rho": float("nan")}
    pred = np.clip(five_crop_outputs(net.attributes, val, device)[:, :N_ATTRIBUTES], -1, 1)
    rhos = {name: spearman(pred[:, i], val.targets[:, i]) for i, name in enumerate(ATTRIBUTE_NAMES)}
    values = np.array(list(rhos.values()))
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return {"val_mean_rho": mean, "val_rho": rhos}


# --- content ---------------------------------------------------------------------------------
def mean_classifier_features(split: Split) -> np.ndarray:
    """Per image, the pooled classifier features averaged over the five test crops."""
    return split.cache.classifier[split.rows, :N_CROPS].astype(np.float32).mean(1)


def content_epoch(net: PamNet, optimizer, train: Split, batch_size: int,
                  rng: np.random.Generator, device: str) -> float:
    net.content.train()
    order = rng.permutation(len(train))
    crops = rng.integers(0, train.cache.n_crops, len(train))
    losses = []
    for b in _batches(order, batch_size):
        logits = net.content(_classifier(train, b, crops[b], device))
        target = torch.from_numpy(train.targets[b]).long().to(device)
        losses.append(_step(optimizer, F.cross_entropy(logits, target)))
    return float(np.mean(losses))


@torch.no_grad()
def content_validation(net: PamNet, val: Split, device: str) -> dict:
    if len(val) == 0:
        return {"val_accuracy": float("nan")}
    net.content.eval()
    n = len(val)
    crops = np.broadcast_to(np.arange(N_CROPS), (n, N_CROPS)).reshape(-1)
    feats = _classifier(val, np.repeat(np.arange(n), N_CROPS), crops, device)
    probs = torch.softmax(net.content(feats), 1).reshape(n, N_CROPS, -1).mean(1).cpu().numpy()
    return {"val_accuracy": float((probs.argmax(1) == val.targets).mean())}
