"""What a training run is given: data, backbone, the paper's schedule (section 5.1) as defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainConfig:
    ratings: str  # FLICKR-AES-format CSV: worker, imagePair, score
    images: str  # folder the imagePair ids are relative to
    out: str  # run folder: checkpoints, cache, model.safetensors, training.png
    backbone: str = "efficientnet_lite0"
    weights: str | None = "default"  # trunk weights: "default", None (random) or a file path
    test_workers: str | None = None  # FLICKR-AES test-worker list: their images are left out
    check_images: str | None = None  # FLICKR-AES ground-truth check images (WP of section 3)
    attributes: str | None = None  # AADB label folder or attribute CSV; None: pixel measures
    attribute_images: str | None = None  # folder of the attribute images (default: images)
    epochs: int = 10  # generic aesthetics
    attribute_epochs: int = 10  # Siamese attributes network (eq. 4)
    content_epochs: int = 10  # content softmax head
    batch_size: int = 32
    lr: float = 0.001
    lr_decay: float = 0.96  # lr *= lr_decay every lr_decay_every epochs
    lr_decay_every: int = 1
    weight_decay: float = 0.0002
    momentum: float = 0.9
    attribute_weight: float = 0.1  # w_i of eq. 4
    dropout: float = 0.5
    random_crops: int = 3  # random 224 crops per image cached besides the five test crops
    finetune_trunk: bool = False  # train the trunk too in the aesthetics stage (GPU setting)
    val_fraction: float = 0.1
    max_images: int | None = None
    seed: int = 0
    device: str = "cpu"
    workers: int = 2  # decode threads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def validate(self) -> None:
        for name in ("epochs", "attribute_epochs", "content_epochs", "random_crops"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (batch norm in the 5b blocks)")
        if not 0 < self.lr_decay <= 1:
            raise ValueError("lr_decay must be in (0, 1]")
        if self.lr_decay_every < 1:
            raise ValueError("lr_decay_every must be >= 1")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** (epoch // self.lr_decay_every)
