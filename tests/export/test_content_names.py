"""Content class names: the trunk's own ImageNet classifier names each k-means cluster."""

from __future__ import annotations

import numpy as np
import pytest

from export.content_names import imagenet_class_names, imagenet_predictions, name_clusters
from export.model_card import render_markdown


def test_clusters_are_named_by_their_most_frequent_predictions():
    names = tuple(f"class {i}" for i in range(1000))
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    predicted = np.array([7, 7, 3, 9, 5, 5, 5, 1])
    got = name_clusters(predicted, labels, k=4, class_names=names)
    assert got == [["class 7", "class 3", "class 9"], ["class 5"], ["class 1"], []]
    with pytest.raises(ValueError, match="predictions"):
        name_clusters(predicted[:3], labels, k=4, class_names=names)


def test_the_shipped_class_list_is_imagenets_index_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet tissue"


def test_model_card_lists_the_names():
    card = {"model_version": "v", "created": "now", "backbone": "b", "trunk_weights": "w",
            "graph": {"file": "f", "sha256": "0" * 64, "opset": 18, "flops_per_image": 1e9, "crop_policy": "c"},
            "training": {"ratings": "r", "images": "i", "attributes": "a", "schedule": {}},
            "validation": {"aesthetics_spearman_rho": None, "attributes_mean_spearman_rho": None,
                           "content_accuracy_on_kmeans_classes": None},
            "content_classes": [["tabby", "tiger cat"], []] + [[]] * 8, "export_checks": {},
            "intended_use": "", "limitations": "", "production_training": []}
    text = render_markdown(card)
    assert "- 0: tabby, tiger cat" in text and "- 1: (no names)" in text


def test_efficientnet_imagenet_head_predicts_the_sample_photos_classes(shared_photos):
    """The installed weights' ImageNet head on the trunk's pooled classifier features agrees with
    the sample photos' own class (one photo per class, the centre crop) for most of 40 photos."""
    torch = pytest.importorskip("torch")
    from export.networks import create_backbone
    from export.preprocess import decode_file

    backbone = create_backbone("efficientnet_lite0").eval()
    files = sorted(shared_photos.glob("*.JPEG"))[::25]
    images = np.stack([decode_file(f) for f in files])[:, 16:240, 16:240]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(backbone.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        features = backbone.classifier_features(backbone(x)).numpy()
    predicted = imagenet_predictions(features, backbone.imagenet_classifier())
    names = imagenet_class_names()
    expected = [f.stem.split("_", 1)[1].replace("_", " ") for f in files]
    assert np.mean([names[p] == e for p, e in zip(predicted, expected, strict=True)]) >= 0.75
    assert create_backbone("efficientnet_lite0", weights=None).imagenet_classifier() is None
