"""Building blocks shared by the backbones and the heads: conv + BN + ReLU, the Inception-BN block,
and the trimmed 5b block of the paper's Table 2 (88 + 56 + 32 = 176 channels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNReLU(nn.Module):
    """conv -> BatchNorm -> ReLU; `conv` and `bn` names match the Caffe-converted BN-Inception."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@dataclass(frozen=True)
class InceptionSpec:
    """Channel counts of one Inception-BN block (Ioffe & Szegedy 2015, Table 1). 0 = no branch."""

    n1x1: int
    n3x3_reduce: int
    n3x3: int
    double_reduce: int
    double_1: int
    double_2: int
    pool: str  # "avg" or "max"
    pool_proj: int  # 0: the pooled input passes through (the stride-2 blocks)
    stride: int = 1

    def out_channels(self, cin: int) -> int:
        return self.n1x1 + self.n3x3 + self.double_2 + (self.pool_proj or cin)


# Table 2 of the paper: the trimmed last inception (5b) of the generic aesthetics network.
TRIMMED_5B = InceptionSpec(n1x1=88, n3x3_reduce=0, n3x3=0, double_reduce=192, double_1=224,
                           double_2=56, pool="max", pool_proj=32)
AES_FEAT_CHANNELS = 176


class InceptionBlock(nn.Module):
    """One Inception-BN block. Submodule names follow the Caffe model (`1x1`, `3x3_reduce`, `3x3`,
    `double_3x3_reduce`, `double_3x3_1`, `double_3x3_2`, `pool_proj`), so converted ImageNet weights
    map onto it by name."""

    def __init__(self, cin: int, spec: InceptionSpec):
        super().__init__()
        self.spec = spec
        s = spec.stride
        convs: dict[str, nn.Module] = {}
        if spec.n1x1:
            convs["1x1"] = ConvBNReLU(cin, spec.n1x1, 1)
        if spec.n3x3:
            convs["3x3_reduce"] = ConvBNReLU(cin, spec.n3x3_reduce, 1)
            convs["3x3"] = ConvBNReLU(spec.n3x3_reduce, spec.n3x3, 3, stride=s, padding=1)
        if spec.double_2:
            convs["double_3x3_reduce"] = ConvBNReLU(cin, spec.double_reduce, 1)
            convs["double_3x3_1"] = ConvBNReLU(spec.double_reduce, spec.double_1, 3, padding=1)
            convs["double_3x3_2"] = ConvBNReLU(spec.double_1, spec.double_2, 3, stride=s, padding=1)
        if spec.pool_proj:
            convs["pool_proj"] = ConvBNReLU(cin, spec.pool_proj, 1)
        self.convs = nn.ModuleDict(convs)
        if spec.pool == "avg":
            self.pool = nn.AvgPool2d(3, stride=s, padding=1, ceil_mode=True, count_include_pad=True)
        elif s == 1:
            self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        else:
            self.pool = nn.MaxPool2d(3, stride=s, ceil_mode=True)
        self.out_channels = spec.out_channels(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        branches = []
        if "1x1" in c:
            branches.append(c["1x1"](x))
        if "3x3" in c:
            branches.append(c["3x3"](c["3x3_reduce"](x)))
        if "double_3x3_2" in c:
            branches.append(c["double_3x3_2"](c["double_3x3_1"](c["double_3x3_reduce"](x))))
        pooled = self.pool(x)
        branches.append(c["pool_proj"](pooled) if "pool_proj" in c else pooled)
        return torch.cat(branches, 1)


def trimmed_5b(cin: int) -> InceptionBlock:
    """The paper's 5b block (Table 2) on top of any trunk with `cin` output channels."""
    return InceptionBlock(cin, TRIMMED_5B)
