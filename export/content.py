"""The content model's clusters (section 4.1): k-means (k = 10) over the pooled ImageNet-classifier
features of the training images; each cluster is a class that the 10-way softmax head learns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personalize.features import N_CONTENT


@dataclass(frozen=True)
class ContentClusters:
    centroids: np.ndarray  # float32 [k, D]
    inertia: float

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Index of the nearest centroid (squared Euclidean) for each row of `features`."""
        f = np.asarray(features, dtype=np.float64)
        c = self.centroids.astype(np.float64)
        d = (f * f).sum(1, keepdims=True) - 2 * f @ c.T + (c * c).sum(1)
        return d.argmin(1)


def fit_content_clusters(features: np.ndarray, k: int = N_CONTENT, seed: int = 0
                         ) -> tuple[ContentClusters, np.ndarray]:
    """k-means on `features` [N, D]; returns the clusters and each row's label."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} feature rows, got {features.shape}")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    clusters = ContentClusters(km.cluster_centers_.astype(np.float32), float(km.inertia_))
    return clusters, km.labels_.astype(np.int64)
