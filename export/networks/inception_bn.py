"""BN-Inception (Ioffe & Szegedy 2015), the paper's trunk, up to and including block 5a.

The original 5b block (1024 channels) is kept as the classifier branch whose pooled output feeds
the content model, as the paper clusters "avg pool" features of the ImageNet classifier. The
generic aesthetics and attribute heads put the paper's trimmed 5b (Table 2) on the 5a output.

ImageNet weights are not bundled (none can be obtained offline); `weights=PATH` loads the widely
used Caffe conversion (`bn_inception-*.pth` of pretrained-models.pytorch: flat names such as
`inception_3a_1x1_bn.weight`, BGR input minus (104, 117, 128)) or a state dict in this module's
own names. The BGR order is folded into conv1 on load, so the graph always takes RGB.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .backbone import (
    Backbone,
    WeightsError,
    file_digest,
    load_matching,
    load_tensor_file,
    register_backbone,
)
from .blocks import ConvBNReLU, InceptionBlock, InceptionSpec
from .shared_crops import Reach

# Channel counts of Table 1 of the BN-Inception paper (same as the Caffe model).
BLOCKS: dict[str, InceptionSpec] = {
    "3a": InceptionSpec(64, 64, 64, 64, 96, 96, "avg", 32),
    "3b": InceptionSpec(64, 64, 96, 64, 96, 96, "avg", 64),
    "3c": InceptionSpec(0, 128, 160, 64, 96, 96, "max", 0, stride=2),
    "4a": InceptionSpec(224, 64, 96, 96, 128, 128, "avg", 128),
    "4b": InceptionSpec(192, 96, 128, 96, 128, 128, "avg", 128),
    "4c": InceptionSpec(160, 128, 160, 128, 160, 160, "avg", 128),
    "4d": InceptionSpec(96, 128, 192, 160, 192, 192, "avg", 128),
    "4e": InceptionSpec(0, 128, 192, 192, 256, 256, "max", 0, stride=2),
    "5a": InceptionSpec(352, 192, 320, 160, 224, 224, "avg", 128),
}
ORIGINAL_5B = InceptionSpec(352, 192, 320, 192, 224, 224, "max", 128)
CAFFE_MEAN_RGB = (128.0, 117.0, 104.0)  # the Caffe model's BGR mean (104, 117, 128), in RGB order


@register_backbone("inception_bn", default_weights=None)
class InceptionBN(Backbone):
    name = "inception_bn"
    mean = CAFFE_MEAN_RGB
    std = (1.0, 1.0, 1.0)

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        self.stem = nn.ModuleDict({
            "conv1_7x7_s2": ConvBNReLU(3, 64, 7, stride=2, padding=3),
            "conv2_3x3_reduce": ConvBNReLU(64, 64, 1),
            "conv2_3x3": ConvBNReLU(64, 192, 3, padding=1),
        })
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        blocks, cin = {}, 192
        for name, spec in BLOCKS.items():
            blocks[name] = InceptionBlock(cin, spec)
            cin = blocks[name].out_channels
        self.blocks = nn.ModuleDict(blocks)
        self.feature_channels = cin  # 1024
        self.classifier_block = InceptionBlock(cin, ORIGINAL_5B)
        self.classifier_channels = self.classifier_block.out_channels  # 1024
        self.weights_source = "scratch (no ImageNet weights given)"
        if weights is not None:
            self.load_imagenet(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_rest(self.forward_prefix(x))

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The stem, down to the 28x28 maps (shared across the five crops)."""
        s = self.stem
        x = self.pool(s["conv1_7x7_s2"](x))
        return self.pool(s["conv2_3x3"](s["conv2_3x3_reduce"](x)))

    def forward_rest(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    def prefix_reach(self) -> Reach:
        # conv 7x7/2 pad 3, max pool 3x3/2, conv 1x1, conv 3x3 pad 1, max pool 3x3/2 (ceil mode:
        # a window past the end reads fewer pixels, a boundary effect like padding)
        return Reach.of([(7, 2, 3), (3, 2, 0), (3, 1, 1), (3, 2, 0)])

    def classifier_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classifier_block(fmap).mean((2, 3))

    def load_imagenet(self, path: str | Path) -> None:
        state = load_tensor_file(path)
        if any(k.startswith("inception_3a_") for k in state):
            state = caffe_to_module_names(state)
        unused = load_matching(self, state, str(path))
        unused = [k for k in unused if not k.startswith(("last_linear", "fc."))]
        if unused:
            raise WeightsError(f"{path} has tensors this trunk does not use: {unused[:5]}")
        self.weights_source = f"ImageNet weights from {Path(path).name} (sha256 {file_digest(path)[:12]})"


_CAFFE_KEY = re.compile(r"^(?:inception_(\w\w)_)?(.+?)(_bn)?\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def caffe_to_module_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the Caffe conversion's flat keys to this module's, and fold BGR into conv1."""
    out = {}
    for key, value in state.items():
        if key.startswith("last_linear"):
            out[key] = value
            continue
        m = _CAFFE_KEY.match(key)
        if not m:
            raise WeightsError(f"unexpected tensor {key!r} in a BN-Inception weights file")
        block, conv, is_bn, leaf = m.groups()
        part = "bn" if is_bn else "conv"
        if block is None:
            out[f"stem.{conv}.{part}.{leaf}"] = value
        elif block == "5b":
            out[f"classifier_block.convs.{conv}.{part}.{leaf}"] = value
        else:
            out[f"blocks.{block}.convs.{conv}.{part}.{leaf}"] = value
    w = "stem.conv1_7x7_s2.conv.weight"
    if w in out:
        out[w] = out[w].flip(1).contiguous()  # the Caffe model reads BGR; this graph feeds RGB
    return out
