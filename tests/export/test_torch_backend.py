"""The torch feature backend: the ONNX backend's contract, its weights from pam export or a run,
and parity with the FP32 ONNX graph on real photos (on CPU here; the device check runs the same
comparison on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export import onnx_export as ox  # noqa: E402
from export.networks import create_model  # noqa: E402
from export.torch_backend import (  # noqa: E402
    WEIGHTS_FILE,
    TorchBackend,
    bucket,
    load_network,
    parity_figures,
    save_weights,
    spearman,
)
from serving.scoring.backends import FeatureBackend, OnnxRuntimeBackend, open_backend  # noqa: E402

pytestmark = pytest.mark.torch


def spread_scores(net, std: float):
    """Fresh heads score every photo ~3.0; a wider output layer spreads the scores like a trained
    model's, so that rank correlations measure the backend, not noise."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        net.aesthetics.fc.weight.copy_(torch.randn(net.aesthetics.fc.weight.shape, generator=gen) * std)
    return net


def export_folder(net, folder):
    version = ox.make_model_version(net.backbone.name, net)
    ox.export_onnx(net, folder / "pam_features.onnx", version)
    save_weights(net, folder / WEIGHTS_FILE, version)
    return folder


def varied_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 256, 256, 3)) * np.linspace(0.2, 1, n)[:, None, None, None]).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    net = spread_scores(create_model("tiny", seed=3).eval(), 0.5)
    return export_folder(net, tmp_path_factory.mktemp("tiny-torch"))


def test_contract_and_version_through_open_backend(tiny_folder):
    backend = open_backend(f"torch:{tiny_folder}", max_batch_size=4)
    reference = OnnxRuntimeBackend(tiny_folder / "pam_features.onnx")
    assert isinstance(backend, FeatureBackend)
    assert backend.model_version == reference.model_version
    assert backend.crop_policy == "five-crop-224-mean"
    assert (backend.device.type, backend.dtype_name, backend.mode) == ("cpu", "float32", "eager")
    images = varied_images(11)  # three chunks of at most 4
    out, ref = backend.score(images), reference.score(images)
    assert {k: v.shape for k, v in out.items()} == {"aes_score": (11,), "aes_feat": (11, 176),
                                                    "attributes": (11, 10), "content": (11, 10)}
    for name in ref:
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], ref[name], rtol=0, atol=1e-4, err_msg=name)
    assert backend.score(images[:0])["aes_feat"].shape == (0, 176)
    with pytest.raises(ValueError, match="uint8"):
        backend.score(images.astype(np.float32))
    with pytest.raises(ValueError, match="256, 256, 3"):
        backend.score(images[:, :224])
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.score(images[:1])


def test_weights_from_the_onnx_path_and_from_a_trained_run(tiny_folder, tiny_run):
    _net, version, _ = load_network(tiny_folder / "pam_features.onnx")
    assert version == OnnxRuntimeBackend(tiny_folder / "pam_features.onnx").model_version
    from_run = TorchBackend.open(tiny_run)
    assert from_run.model_version.startswith("tiny-")
    from export.train import load_trained

    trained, _ = load_trained(tiny_run)
    assert from_run.model_version.endswith(ox.weights_digest(trained)[:8])
    images = varied_images(3, seed=1)
    expected = ox.run_torch(trained, images)
    np.testing.assert_allclose(from_run.score(images)["aes_feat"], expected["aes_feat"], atol=1e-5)


def test_refuses_weights_that_do_not_match_their_version(tiny_folder, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_folder / WEIGHTS_FILE), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(tiny_folder / WEIGHTS_FILE))
    state["aesthetics.fc.bias"] = state["aesthetics.fc.bias"] + 1
    save_file(state, str(tmp_path / WEIGHTS_FILE), metadata=metadata)
    with pytest.raises(ValueError, match="does not match these weights"):
        load_network(tmp_path)
    with pytest.raises(FileNotFoundError, match="pam export"):
        load_network(tmp_path / "elsewhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither"):
        load_network(tmp_path / "empty")


def test_options_are_checked():
    net = create_model("tiny", seed=0)
    with pytest.raises(ValueError, match="cuda-graphs"):
        TorchBackend(net, "tiny-x", mode="cuda-graphs", device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        TorchBackend(net, "tiny-x", dtype="float8")
    assert [bucket(n, 512) for n in (1, 2, 3, 32, 33, 500, 512)] == [1, 2, 4, 32, 64, 512, 512]
    assert bucket(100, 96) == 96


def test_bfloat16_autocast_stays_close(tiny_folder):
    """The reduced-precision path (autocast, linear layers in FP32) runs on CPU in BF16, which
    has fewer mantissa bits than the GPU's FP16. The tiny network's scores on synthetic images
    spread by only ~0.01, the size of BF16's rounding, so ranks are not asserted here (the
    device check asserts them for FP16 on real photos); the values are."""
    images = varied_images(12, seed=2)
    reference = OnnxRuntimeBackend(tiny_folder / "pam_features.onnx").score(images)
    figures = parity_figures(reference, TorchBackend.open(tiny_folder, dtype="bfloat16").score(images))
    assert figures["aes_score_max_abs_diff"] <= 1e-2, figures
    assert figures["aes_feat_cosine_min"] >= 0.999, figures
    assert figures["attributes_max_abs_diff"] <= 1e-2 and figures["content_max_abs_diff"] <= 1e-2, figures


def test_spearman_averages_ties():
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 2, 3.0]), np.array([3, 2, 2, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, 4.0])) == pytest.approx(0.8)


def test_parity_with_the_fp32_onnx_graph_on_real_photos(shared_photos, tmp_path):
    """efficientnet_lite0 (ImageNet trunk) with heads whose scores spread like a trained model's,
    32 real photos: the torch backend on CPU against the exported graph in ONNX Runtime."""
    from export.preprocess import decode_file

    net = spread_scores(create_model("efficientnet_lite0", seed=0).eval(), 0.05)
    folder = export_folder(net, tmp_path)
    images = np.stack([decode_file(p) for p in sorted(shared_photos.glob("*.JPEG"))[:32]])
    reference = OnnxRuntimeBackend(folder / "pam_features.onnx").score(images)
    figures = parity_figures(reference, open_backend(f"torch:{folder}", max_batch_size=16).score(images))
    assert figures["aes_score_std"] > 0.05, figures  # the ranking is not decided by noise
    assert figures["ok"], figures
    assert figures["aes_score_max_abs_diff"] < 1e-3 and figures["aes_feat_cosine_min"] > 0.99999, figures
