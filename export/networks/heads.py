"""Heads on the trunk feature map: the generic aesthetics head and the Siamese attributes head
(each its own trimmed 5b block, pooled, dropout 0.5, linear), and the content softmax head."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AES_FEAT_CHANNELS, trimmed_5b


class BlockHead(nn.Module):
    """trimmed 5b -> global average pool (the 176-d feature) -> dropout -> linear."""

    def __init__(self, cin: int, n_outputs: int, dropout: float = 0.5):
        super().__init__()
        self.block = trimmed_5b(cin)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(AES_FEAT_CHANNELS, n_outputs)

    def features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.block(fmap).mean((2, 3))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(fmap)))
