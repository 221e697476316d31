"""What the simulated panel knows of each photo, measured from its pixels (torch: the ImageNet trunk).

The rater-panel simulator (personalize.simulate.properties_from_features) takes a feature table
and reads four things from it; here each comes from the photo itself:

- attributes: export.pixel_attributes, the ten classical AADB-attribute measures on [-1, 1];
- content: the pretrained efficientnet_lite0 classifier's pooled ImageNet features (1280-d, centre
  224 crop of the 256x256 warp), k-means with k = 10 (export.content), as soft assignments
  softmax(-(d^2 - min d^2) / t), t the median squared distance of a photo to its own centroid;
- aes_feat: those ImageNet features projected on their first 176 principal components (the
  simulator takes its hidden style factors from aes_feat's leading components);
- aes_score: a hidden "quality" that the pixels show but the 20-d x does not: a seeded random
  direction in the space of the first 32 standardized principal components, on the 1-5 scale. The
  simulator keeps only the part of it that x does not explain.

So the panel's taste is a function of what the photos look like, and the networks trained on the
panel's ratings can learn it from pixels, as in the paper where the generic network sees what the
20 features do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from personalize.features import AES_FEAT_DIM, N_CONTENT

BACKBONE = "efficientnet_lite0"
HIDDEN_QUALITY_COMPONENTS = 32
BATCH = 16
PROPERTIES_VERSION = "demo-photo-properties"


@dataclass
class PhotoProperties:
    image_ids: list[str]
    attributes: np.ndarray  # [N, 10]
    content: np.ndarray  # [N, 10]
    aes_feat: np.ndarray  # [N, 176]
    aes_score: np.ndarray  # [N]
    imagenet_features: np.ndarray  # [N, 1280]
    failed: dict[str, str] = field(default_factory=dict)  # image id -> why it could not be decoded

    def feature_matrix(self):
        from personalize.data import FeatureMatrix

        return FeatureMatrix(np.asarray(self.image_ids), self.aes_score.astype(np.float64), self.aes_feat,
                             self.attributes.astype(np.float64), self.content.astype(np.float64))

    def write(self, path) -> str:
        """The property table as a Parquet file in DESIGN.md's feature schema
        (`pam simulate --properties FILE` reads it)."""
        from serving import feature_table as ft

        table = ft.feature_table(self.image_ids, {"aes_score": self.aes_score, "aes_feat": self.aes_feat,
                                                  "attributes": self.attributes, "content": self.content},
                                 PROPERTIES_VERSION)
        return ft.write_file(table, str(path))


def soft_content(features: np.ndarray, seed: int) -> np.ndarray:
    """k-means (k = 10) over ImageNet features -> soft cluster probabilities [N, 10]."""
    from export.content import fit_content_clusters

    clusters, _ = fit_content_clusters(features, k=N_CONTENT, seed=seed)
    f = features.astype(np.float64)
    c = clusters.centroids.astype(np.float64)
    d2 = np.maximum((f * f).sum(1, keepdims=True) - 2 * f @ c.T + (c * c).sum(1), 0.0)
    gap = d2 - d2.min(1, keepdims=True)
    t = float(np.median(d2.min(1))) or 1.0
    e = np.exp(-gap / t)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def principal_components(features: np.ndarray, k: int) -> np.ndarray:
    """Scores on the first k principal components (zero columns beyond the data's rank)."""
    centred = features.astype(np.float64) - features.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u * s
    out = np.zeros((features.shape[0], k))
    m = min(k, scores.shape[1])
    out[:, :m] = scores[:, :m]
    return out


def hidden_quality(components: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random direction over the leading standardized components, on the 1-5 scale."""
    lead = components[:, :HIDDEN_QUALITY_COMPONENTS]
    sd = lead.std(0)
    z = (lead - lead.mean(0)) / np.where(sd > 0, sd, 1.0)
    direction = np.random.default_rng([seed, 7]).normal(size=z.shape[1])
    q = z @ (direction / np.linalg.norm(direction))
    q = (q - q.mean()) / (q.std() or 1.0)
    return np.clip(3.0 + 0.65 * q, 1.0, 5.0)


def imagenet_features(images: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Pooled classifier features of the pretrained trunk for uint8 [N, 256, 256, 3] photos."""
    import torch

    from export.networks import create_backbone
    from export.networks.backbone import CROP_SIZE

    backbone = create_backbone(BACKBONE).eval()
    mean = torch.tensor(backbone.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(backbone.std).reshape(1, 3, 1, 1)
    off = (images.shape[1] - CROP_SIZE) // 2
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            crop = images[start:start + BATCH, off:off + CROP_SIZE, off:off + CROP_SIZE]
            x = (torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).float() - mean) / std
            out.append(backbone.classifier_features(backbone(x)).numpy())
            if progress is not None:
                progress(len(crop))
    return np.concatenate(out).astype(np.float32)


def measure(album, seed: int, progress: Callable[[str, int, int], None] | None = None) -> PhotoProperties:
    """Decode every album photo once and measure its properties. A photo that cannot be decoded
    is reported in `failed` and left out of the panel (it still gets its failed row later from
    the batch job)."""
    from export.pixel_attributes import pixel_attributes
    from export.preprocess import DecodeError, decode_file

    n = len(album.image_ids)
    ids, images, attributes, failed = [], [], [], {}
    for k, image_id in enumerate(album.image_ids):
        try:
            image = decode_file(album.path(image_id))
        except (DecodeError, OSError) as exc:
            failed[image_id] = str(exc)
            continue
        ids.append(image_id)
        images.append(image)
        attributes.append(pixel_attributes(image))
        if progress is not None:
            progress("decode + pixel attributes", k + 1, n)
    if len(ids) < N_CONTENT:
        raise ValueError(f"only {len(ids)} of {n} photos could be decoded; the content model needs at "
                         f"least {N_CONTENT} (failures: {dict(list(failed.items())[:3])})")
    stack = np.stack(images)
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(f"ImageNet features ({BACKBONE})", done, len(ids))

    features = imagenet_features(stack, step)
    components = principal_components(features, AES_FEAT_DIM)
    return PhotoProperties(ids, np.stack(attributes).astype(np.float32), soft_content(features, seed),
                           components.astype(np.float32), hidden_quality(components, seed).astype(np.float32),
                           features, failed)
