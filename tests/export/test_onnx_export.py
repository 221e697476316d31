"""The fused graph: one file, the I/O contract, metadata, dynamic batch, parity with torch, FLOPs."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export import onnx_export as ox  # noqa: E402
from export.networks import create_model  # noqa: E402
from serving.scoring.backends import OnnxRuntimeBackend  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    net = create_model("tiny", seed=3).eval()
    path = ox.export_onnx(net, tmp_path_factory.mktemp("tiny-export") / "pam_features.onnx",
                          ox.make_model_version("tiny", net))
    return net, path


def test_one_file_with_the_contract(tiny_export):
    net, path = tiny_export
    assert sorted(p.name for p in path.parent.iterdir()) == ["pam_features.onnx"]  # no external data
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [256, 256, 3]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output}
    assert outs == {"aes_score": ["batch", 1], "aes_feat": ["batch", 176],
                    "attributes": ["batch", 10], "content": ["batch", 10]}
    meta = ox.read_metadata(path)
    assert re.fullmatch(r"tiny-\d{8}-[0-9a-f]{8}", meta["pam_model_version"])
    assert meta["pam_model_version"].endswith(ox.weights_digest(net)[:8])
    assert meta["pam_crop_policy"] == "five-crop-224-mean"


def test_dynamic_batch_and_serving_backend_loads_it_unchanged(tiny_export, rng):
    _net, path = tiny_export
    images = rng.integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    session = ox.ort_session(path)
    whole = ox.run_onnx(session, images)
    for batch in (1, 2):
        part = ox.run_onnx(session, images[:batch])
        np.testing.assert_allclose(part["aes_feat"], whole["aes_feat"][:batch], atol=1e-5)
    backend = OnnxRuntimeBackend(path, max_batch_size=2)
    out = backend.score(images)
    assert backend.model_version == ox.read_metadata(path)["pam_model_version"]
    np.testing.assert_allclose(out["aes_score"], whole["aes_score"][:, 0], atol=1e-5)


def test_parity_with_torch_on_generated_images(tiny_export, rng):
    net, path = tiny_export
    images = rng.integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    result = ox.parity(net, path, images, batch=4)
    assert result["max_abs_diff"] <= 1e-5, result


def test_version_follows_the_weights(tiny_export):
    net, _ = tiny_export
    other = create_model("tiny", seed=4)
    assert ox.make_model_version("tiny", net) != ox.make_model_version("tiny", other)
    assert ox.make_model_version("tiny", net) == ox.make_model_version("tiny", net)


def test_flop_count_matches_the_architecture(tiny_export):
    """Hand count for the tiny network. Its two early convs run once on the whole 256x256 image
    plus 12 border strips (20 input rows or columns each: the crop sides inside the image); the
    rest of the trunk, two trimmed 5b blocks and the classifier conv run on five 224x224 crops;
    the three linear heads once on the crop means (the content softmax per crop)."""
    _, path = tiny_export

    def conv(cin, cout, k, h, w=None):
        return 2 * cin * cout * k * k * h * (w or h)

    def prefix(h, w):
        return conv(3, 16, 3, h, w) + conv(16, 16, 5, h, w)

    shared = prefix(64, 64) + 12 * prefix(5, 56)
    rest = conv(16, 32, 3, 28) + conv(32, 48, 3, 14) + conv(48, 64, 3, 7)
    block = (conv(64, 88, 1, 7) + conv(64, 192, 1, 7) + conv(192, 224, 3, 7)
             + conv(224, 56, 3, 7) + conv(64, 32, 1, 7))
    per_crop = rest + 2 * block + conv(64, 96, 1, 7)
    heads = 2 * (176 * 1 + 176 * 11) + 5 * 2 * 96 * 10
    counted = ox.count_flops(path, batch=1)
    assert counted["conv"] == shared + 5 * per_crop
    assert counted["gemm"] == heads
    assert ox.count_flops(path, batch=4)["total"] == 4 * counted["total"]
    assert shared < 5 * prefix(56, 56) / 2  # the sharing does less than half the early work


@pytest.mark.photos
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "inception_bn"])
def test_parity_with_torch_on_real_photos(backbone, shared_photos, tmp_path, record_property):
    from export.preprocess import decode_file

    net = create_model(backbone).eval()
    path = ox.export_onnx(net, tmp_path / "pam_features.onnx", ox.make_model_version(backbone, net))
    photos = sorted(shared_photos.glob("*.JPEG"))[::125][:8]
    images = np.stack([decode_file(p) for p in photos])
    result = ox.parity(net, path, images, batch=4)
    record_property("max_abs_diff", result["max_abs_diff"])
    print(f"{backbone}: max abs diff torch vs ONNX Runtime on {len(images)} photos: "
          f"{result['max_abs_diff']:.3e} {result['per_output']}")
    assert result["max_abs_diff"] <= 1e-4, result
