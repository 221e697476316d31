"""Names for the content classes: each k-means cluster is named by the ImageNet classes that the
pretrained trunk's own ImageNet classifier predicts most often for the cluster's training photos
(top three, most frequent first). A trunk without an ImageNet classifier leaves the clusters
unnamed (the service numbers them).

The 1,000 ImageNet-1k class names ship in imagenet_classes.json, in the classifier's index order
(WordNet ids sorted), each synset's first lemma. Names are stored with the trained model (the run
state), in the exported graph's metadata (CONTENT_NAMES_KEY) and the model card, and `pam
features` copies them into the feature-store manifest the service reads.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

CONTENT_NAMES_KEY = "pam_content_names"  # ONNX metadata: JSON list of k lists of names
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")
TOP = 3


@cache
def imagenet_class_names() -> tuple[str, ...]:
    names = json.loads(CLASSES_FILE.read_text())["names"]
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE} holds {len(names)} names, not 1000")
    return tuple(names)


def name_clusters(predicted: np.ndarray, labels: np.ndarray, k: int, top: int = TOP,
                  class_names: tuple[str, ...] | None = None) -> list[list[str]]:
    """For each cluster 0..k-1, the names of the `top` most frequent ImageNet predictions among
    its photos (ties: the lower class index first); an empty list for an empty cluster."""
    names = class_names or imagenet_class_names()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape[0]} predictions for {labels.shape[0]} cluster labels")
    out = []
    for c in range(k):
        counts = np.bincount(predicted[labels == c], minlength=len(names))
        order = np.argsort(-counts, kind="stable")[:top]
        out.append([names[i] for i in order if counts[i] > 0])
    return out


def imagenet_predictions(features: np.ndarray, classifier: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """argmax of the ImageNet classifier over pooled classifier features [N, D] (the mean of the
    crops' pooled features: the classifier is linear, so this is the mean of the crops' logits)."""
    weight, bias = (np.asarray(a, dtype=np.float64) for a in classifier)
    return (np.asarray(features, dtype=np.float64) @ weight.T + bias).argmax(1)


def content_names_for(backbone, features: np.ndarray, labels: np.ndarray, k: int) -> list[list[str]] | None:
    """The clusters' names from the backbone's ImageNet classifier, or None when it has none."""
    classifier = backbone.imagenet_classifier() if hasattr(backbone, "imagenet_classifier") else None
    if classifier is None:
        return None
    return name_clusters(imagenet_predictions(features, classifier), labels, k)
