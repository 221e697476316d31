"""The trunk interface every registered backbone implements.

A backbone turns a normalised float crop [N, 3, 224, 224] into a trunk feature map [N, C, 7, 7]
(the input of the 5b-style blocks), and that map into the pooled ImageNet-classifier features
that the content model clusters. It also carries the input normalisation its weights expect.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .shared_crops import Reach

CROP_SIZE = 224


class Backbone(nn.Module):
    name: str = ""
    feature_channels: int = 0  # channels of forward()'s map: the input of the 5b-style blocks
    classifier_channels: int = 0  # width of classifier_features(): the content model's input
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB, on the 0-255 scale
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weights_source: str = "scratch"  # where the trunk's weights came from (for the model card)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def classifier_features(self, fmap: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def imagenet_classifier(self):
        """(weight [1000, classifier_channels], bias [1000]) of the ImageNet classifier that sits on
        classifier_features(), as numpy arrays; None when the trunk has none (content classes
        then stay unnamed: export.content_names)."""
        return None

    # The early layers that the five crops can share (export.networks.shared_crops): a backbone
    # that splits forward() = forward_rest(forward_prefix(x)) says so with prefix_reach().
    def prefix_reach(self) -> Reach | None:
        return None

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_rest(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def config(self) -> dict:
        return {"name": self.name, "feature_channels": self.feature_channels,
                "classifier_channels": self.classifier_channels, "mean": list(self.mean),
                "std": list(self.std), "weights_source": self.weights_source}


class WeightsError(ValueError):
    """A weights file that does not fit the backbone (names the missing or mismatched tensors)."""


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch .pth/.pt file read with weights_only=True
    (plain tensors, never arbitrary pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                  ignore_missing: tuple[str, ...] = ()) -> list[str]:
    """Copy `state` into `module`, failing loudly on any missing tensor or shape mismatch.
    Returns the keys of `state` the module does not use."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore_missing)]
    if missing:
        raise WeightsError(f"{source} lacks {len(missing)} tensors, e.g. {missing[:5]}")
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{source} has mismatched shapes: {wrong[:5]}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return sorted(set(state) - set(own))


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_REGISTRY: dict[str, tuple[type[Backbone], object]] = {}


def register_backbone(name: str, default_weights: object = None):
    """Class decorator: make a Backbone creatable by name (timm's registry, in small)."""

    def wrap(cls: type[Backbone]) -> type[Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = (cls, default_weights)
        return cls

    return wrap
