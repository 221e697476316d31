import numpy as np
import pytest

from serving.backends import FeatureBackend, OnnxRuntimeBackend


def test_onnx_backend_contract(tiny_onnx_model, rng):
    backend = OnnxRuntimeBackend(tiny_onnx_model, max_batch_size=4)
    assert isinstance(backend, FeatureBackend)
    assert backend.model_version == "tiny-test-0"
    # images of clearly different brightness and contrast, so their rows differ
    scale = np.linspace(0.2, 1.0, 10)[:, None, None, None]
    images = (rng.integers(0, 256, (10, 256, 256, 3)) * scale).astype(np.uint8)
    out = backend.score(images)
    assert np.ptp(out["aes_score"]) > 0.05
    assert out["aes_score"].shape == (10,) and out["aes_feat"].shape == (10, 176)
    assert out["attributes"].shape == (10, 10) and out["content"].shape == (10, 10)
    # chunking by max_batch_size gives the same rows as scoring each image alone
    single = np.concatenate([backend.score(images[i:i + 1])["aes_feat"] for i in range(10)])
    np.testing.assert_allclose(out["aes_feat"], single, rtol=0, atol=1e-3)  # float32 sums over 196k pixels


def test_onnx_backend_rejects_wrong_input(tiny_onnx_model):
    backend = OnnxRuntimeBackend(tiny_onnx_model)
    with pytest.raises(ValueError, match=r"uint8 \[B, 256, 256, 3\]"):
        backend.score(np.zeros((1, 224, 224, 3), np.uint8))
