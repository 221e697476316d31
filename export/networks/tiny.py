"""A tiny trunk with the same interface (7x7 map), for fast tests: a few strided convs."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone, register_backbone
from .blocks import ConvBNReLU
from .shared_crops import Reach


@register_backbone("tiny", default_weights=None)
class TinyBackbone(Backbone):
    name = "tiny"
    mean = (127.5, 127.5, 127.5)
    std = (64.0, 64.0, 64.0)

    def __init__(self, weights=None):
        super().__init__()
        if weights is not None:
            raise ValueError("the tiny backbone has no pretrained weights")
        self.prefix = nn.Sequential(  # shared across crops: bands at both ends of each axis
            ConvBNReLU(3, 16, 3, stride=4, padding=1),  # 56
            ConvBNReLU(16, 16, 5, padding=2),  # 56
        )
        self.trunk = nn.Sequential(
            ConvBNReLU(16, 32, 3, stride=2, padding=1),  # 28
            ConvBNReLU(32, 48, 3, stride=2, padding=1),  # 14
            ConvBNReLU(48, 64, 3, stride=2, padding=1),  # 7
        )
        self.classifier = ConvBNReLU(64, 96, 1)
        self.feature_channels = 64
        self.classifier_channels = 96
        self.weights_source = "scratch (test model)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.prefix(x))

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefix(x)

    def forward_rest(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def prefix_reach(self) -> Reach:
        return Reach.of([(3, 4, 1), (5, 1, 2)])

    def classifier_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier(fmap).mean((2, 3))
