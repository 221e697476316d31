"""The real fused five-crop graph (export.onnx_export, tiny backbone) served by a real Triton:
the same rows as in-process ONNX Runtime on real photos, over HTTP and gRPC."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.triton, pytest.mark.torch, pytest.mark.photos]


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    pytest.importorskip("torch")
    from export.networks import create_model
    from export.onnx_export import export_onnx

    net = create_model("tiny", weights=None, seed=3).eval()
    return export_onnx(net, tmp_path_factory.mktemp("real-export") / "pam_features.onnx", "tiny-real-test")


def test_real_export_through_triton_matches_onnxruntime(real_export, shared_photos, tmp_path):
    from export.preprocess import decode_file
    from export.triton_repo import write_triton_repository
    from pam.bench.triton_server import TritonServer
    from serving.scoring.backends import OnnxRuntimeBackend, TritonBackend
    from tests.triton.fixtures import require_triton_env

    require_triton_env()
    images = np.stack([decode_file(p) for p in sorted(shared_photos.glob("*.JPEG"))[5::111][:7]])
    expected = OnnxRuntimeBackend(real_export).score(images)
    write_triton_repository(real_export, tmp_path, "cpu", max_batch_size=4)
    with TritonServer(tmp_path) as server:
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with TritonBackend(url, protocol=protocol) as backend:
                assert backend.model_version == "tiny-real-test"
                out = backend.score(images)  # 2 requests: 4 + 3 images
            for name, value in expected.items():
                np.testing.assert_allclose(out[name], value, rtol=1e-4, atol=1e-4, err_msg=f"{protocol} {name}")
    assert np.ptp(expected["aes_score"]) > 0  # the rows depend on the photo
