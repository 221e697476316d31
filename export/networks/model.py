"""The feature network (trunk + three heads) and its fused five-crop form for export.

Per crop: the generic aesthetics head gives the 176-d feature and a score on the training scale
(ratings / 5, in [0.2, 1]); the attributes head (Fig. 2b's Siamese network: its own 5b block on
the shared frozen trunk) gives the 10 AADB attributes plus its own aesthetics output used only by
the joint loss (eq. 4); the content head is a 10-way softmax on the pooled classifier features.

FiveCropScorer is the exported graph: uint8 [B, 256, 256, 3] in, the four per-image means out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT, SCORE_MAX, SCORE_MIN

from .backbone import CROP_SIZE, Backbone
from .heads import BlockHead
from .shared_crops import five_crop_maps

WARP_SIZE = 256
# (top, left) of the four corner crops and the center crop, in this order
CROP_OFFSETS: tuple[tuple[int, int], ...] = ((0, 0), (0, 32), (32, 0), (32, 32), (16, 16))
N_CROPS = len(CROP_OFFSETS)
CROP_POLICY = "five-crop-224-mean"
RATING_SCALE = SCORE_MAX  # ratings 1-5 train as rating / 5, in [0.2, 1]
ATTRIBUTE_OUTPUTS = N_ATTRIBUTES + 1  # 10 attributes, then the Siamese stream's aesthetics output


class PamNet(nn.Module):
    def __init__(self, backbone: Backbone, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.aesthetics = BlockHead(backbone.feature_channels, 1, dropout)
        self.attributes = BlockHead(backbone.feature_channels, ATTRIBUTE_OUTPUTS, dropout)
        self.content = nn.Linear(backbone.classifier_channels, N_CONTENT)
        with torch.no_grad():  # outputs start small and mid-scale (a rating of 3)
            for fc in (self.aesthetics.fc, self.attributes.fc):
                nn.init.normal_(fc.weight, 0.0, 0.01)
                nn.init.zeros_(fc.bias)
            self.aesthetics.fc.bias.fill_(3.0 / RATING_SCALE)
            self.attributes.fc.bias[-1] = 3.0 / RATING_SCALE
        self.register_buffer("mean", torch.tensor(backbone.mean).reshape(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(backbone.std).reshape(1, 3, 1, 1))

    def normalise(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0-255) [N, H, W, 3] -> normalised float [N, 3, H, W]. The cast comes
        first: TensorRT takes uint8 only as a network input feeding a Cast."""
        x = images_nhwc.to(torch.float32).permute(0, 3, 1, 2)
        return (x - self.mean) * self.inv_std

    def heads(self, fmap: torch.Tensor, classifier: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-crop outputs from the trunk map and the pooled classifier features."""
        aes_feat = self.aesthetics.features(fmap)
        attr = self.attributes(fmap)
        return {"aes_feat": aes_feat,
                "aes_score": self.aesthetics.fc(self.aesthetics.dropout(aes_feat))[:, 0],
                "attributes": attr[:, :N_ATTRIBUTES],
                "content": torch.softmax(self.content(classifier), dim=1)}

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised crops [N, 3, 224, 224] -> per-crop outputs (aes_score on the [0.2, 1] scale)."""
        fmap = self.backbone(crops)
        return self.heads(fmap, self.backbone.classifier_features(fmap))


def to_contract_scale(aes_score: torch.Tensor, attributes: torch.Tensor):
    """The training scale -> the feature contract: score on 1-5, attributes on [-1, 1]."""
    return ((aes_score * RATING_SCALE).clamp(SCORE_MIN, SCORE_MAX),
            attributes.clamp(-1.0, 1.0))


class FiveCropScorer(nn.Module):
    """The fused graph: uint8 [B, 256, 256, 3] -> aes_score [B, 1], aes_feat [B, 176],
    attributes [B, 10], content [B, 10], each the mean over the five 224x224 crops.

    Normalisation runs once per image before slicing; the linear layers run once on the mean
    pooled features (the mean commutes with them), the softmax per crop before averaging."""

    def __init__(self, net: PamNet, share_early_layers: bool = True):
        super().__init__()
        self.net = net
        self.share_early_layers = share_early_layers

    def forward(self, images: torch.Tensor):
        net = self.net
        x = net.normalise(images)
        reach = net.backbone.prefix_reach() if self.share_early_layers else None
        if reach is not None:  # the early layers once per image, exactly (shared_crops)
            fmap = five_crop_maps(net.backbone.forward_prefix, net.backbone.forward_rest, reach, x,
                                  CROP_OFFSETS, CROP_SIZE)
        else:
            crops = torch.cat([x[:, :, t:t + CROP_SIZE, s:s + CROP_SIZE] for t, s in CROP_OFFSETS], 0)
            fmap = net.backbone(crops)  # crop-major: row c * B + b is crop c of image b
        aes_feat = net.aesthetics.features(fmap).reshape(N_CROPS, -1, AES_FEAT_DIM).mean(0)
        attr_feat = net.attributes.features(fmap).reshape(N_CROPS, -1, AES_FEAT_DIM).mean(0)
        content = torch.softmax(net.content(net.backbone.classifier_features(fmap)), dim=1)
        content = content.reshape(N_CROPS, -1, N_CONTENT).mean(0)
        aes_score, attributes = to_contract_scale(net.aesthetics.fc(aes_feat),
                                                  net.attributes.fc(attr_feat)[:, :N_ATTRIBUTES])
        return aes_score, aes_feat, attributes, content


OUTPUT_NAMES = ("aes_score", "aes_feat", "attributes", "content")


def five_crops(image: np.ndarray) -> np.ndarray:
    """uint8 [256, 256, 3] -> uint8 [5, 224, 224, 3], in CROP_OFFSETS order (numpy, by hand)."""
    if image.shape != (WARP_SIZE, WARP_SIZE, 3):
        raise ValueError(f"expected a warped [256, 256, 3] image, got {image.shape}")
    return np.stack([image[t:t + CROP_SIZE, s:s + CROP_SIZE] for t, s in CROP_OFFSETS])


@torch.inference_mode()
def score_one_crop_at_a_time(net: PamNet, images: np.ndarray) -> dict[str, np.ndarray]:
    """The obvious eager alternative to the fused graph: each image, each of its five crops, one
    forward pass at a time; per-image means. Also the reference the fused graph is checked on."""
    net.eval()
    rows = []
    for image in images:
        per_crop = [net(net.normalise(torch.from_numpy(crop[None]))) for crop in five_crops(image)]
        mean = {k: torch.stack([p[k] for p in per_crop]).mean(0) for k in per_crop[0]}
        score, attributes = to_contract_scale(mean["aes_score"], mean["attributes"])
        rows.append({"aes_score": score.reshape(1), "aes_feat": mean["aes_feat"][0],
                     "attributes": attributes[0], "content": mean["content"][0]})
    return {k: torch.stack([r[k] for r in rows]).numpy() for k in OUTPUT_NAMES}
