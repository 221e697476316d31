"""The INT8 graph keeps the contract, carries its own version, and stays close to float32."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from scipy.stats import spearmanr  # noqa: E402

from export import onnx_export as ox  # noqa: E402
from export.preprocess import decode_file  # noqa: E402
from export.quantize import quantize_int8  # noqa: E402
from export.train import load_trained  # noqa: E402
from serving.scoring.backends import OnnxRuntimeBackend  # noqa: E402

pytestmark = pytest.mark.torch


def test_int8_graph_contract_version_and_accuracy(tiny_run, photo_set, tmp_path):
    """On a trained network (untrained heads give near-constant scores that rank on noise)."""
    net, _ = load_trained(tiny_run)
    fp32 = ox.export_onnx(net, tmp_path / "fp32.onnx", ox.make_model_version("tiny", net))
    images = np.stack([decode_file(p) for p in sorted(photo_set["photos"].iterdir())])
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", images[:10])
    version = ox.read_metadata(fp32)["pam_model_version"]
    backend = OnnxRuntimeBackend(int8)
    assert backend.model_version == version + "-int8"
    assert "int8 static QDQ" in ox.read_metadata(int8)["pam_quantization"]
    a = ox.run_onnx(ox.ort_session(fp32), images[10:])
    b = backend.score(images[10:])
    assert spearmanr(a["aes_score"][:, 0], b["aes_score"]).statistic > 0.95
    np.testing.assert_allclose(b["content"].sum(1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        quantize_int8(fp32, tmp_path / "x.onnx", images[:2].astype(np.float32))
