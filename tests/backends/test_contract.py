"""One contract, every feature backend: in-process ONNX Runtime and a real Triton (HTTP, gRPC).

Each backend's rows are compared with the graph run directly in ONNX Runtime, so a server that
answers with empty or shuffled outputs (numpy 2 in Triton's Python backend did) fails here.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

from serving.scoring.backends import (
    BackendUnavailable,
    FeatureBackend,
    OnnxRuntimeBackend,
    TritonBackend,
    open_backend,
)

KINDS = ["onnx", "onnx-parallel", pytest.param("triton-http", marks=pytest.mark.triton),
         pytest.param("triton-grpc", marks=pytest.mark.triton)]
ATOL = 1e-3  # float32 means over 196k pixels, summed in another order for another batch size


def spec_for(kind: str, request, model_path) -> str:
    if kind.startswith("onnx"):
        return f"onnx:{model_path}"
    server = request.getfixturevalue("triton_server")
    protocol = kind.split("-")[1]
    return f"triton+{protocol}://{server.http_url if protocol == 'http' else server.grpc_url}"


@pytest.fixture(params=KINDS)
def backend(request, tiny_onnx_model):
    options = {"parallel_sessions": 2, "spin": False} if request.param == "onnx-parallel" else {}
    b = open_backend(spec_for(request.param, request, tiny_onnx_model), max_batch_size=4, **options)
    yield b
    b.close()


@pytest.fixture(scope="module")
def reference(tiny_onnx_model):
    """The graph itself, one image per run: what every backend must reproduce."""
    session = ort.InferenceSession(str(tiny_onnx_model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        rows = [dict(zip(names, session.run(names, {"images": im[None]}), strict=True)) for im in images]
        out = {n: np.concatenate([r[n] for r in rows]) for n in names}
        out["aes_score"] = out["aes_score"].reshape(-1)
        return out

    return run


def varied_images(n: int, seed: int = 0) -> np.ndarray:
    """Images of clearly different brightness and contrast, so their rows differ."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 1.0, n)[:, None, None, None]
    return (rng.integers(0, 256, (n, 256, 256, 3)) * scale).astype(np.uint8)


def assert_matches(out: dict, ref: dict) -> None:
    for name, value in ref.items():
        assert out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], value, rtol=0, atol=ATOL, err_msg=name)


def test_contract_shapes_and_version(backend):
    assert isinstance(backend, FeatureBackend)
    assert backend.model_version == "tiny-test-0"
    assert backend.max_batch_size == 4
    out = backend.score(varied_images(10))
    assert out["aes_score"].shape == (10,) and out["aes_feat"].shape == (10, 176)
    assert out["attributes"].shape == (10, 10) and out["content"].shape == (10, 10)
    assert np.ptp(out["aes_score"]) > 0.05
    assert ((out["aes_score"] >= 1) & (out["aes_score"] <= 5)).all()
    np.testing.assert_allclose(out["content"].sum(1), 1, rtol=1e-5)


def test_rows_match_the_graph_in_order_across_chunks(backend, reference):
    images = varied_images(11, seed=1)  # 3 chunks of <= 4, the last one short
    assert_matches(backend.score(images), reference(images))
    assert_matches(backend.score(images[5:6]), reference(images[5:6]))


def test_empty_batch(backend):
    out = backend.score(np.zeros((0, 256, 256, 3), np.uint8))
    assert {k: v.shape for k, v in out.items()} == {
        "aes_score": (0,), "aes_feat": (0, 176), "attributes": (0, 10), "content": (0, 10)}


@pytest.mark.parametrize("bad", [np.zeros((1, 224, 224, 3), np.uint8), np.zeros((1, 256, 256, 3), np.float32),
                                 np.zeros((256, 256, 3), np.uint8)])
def test_rejects_wrong_input(backend, bad):
    with pytest.raises(ValueError, match=r"uint8 \[B, 256, 256, 3\]"):
        backend.score(bad)


def test_closed_backend_says_so(tiny_onnx_model, request, backend):
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.score(varied_images(1))


def test_threads_sharing_one_backend_get_their_own_rows(backend, reference):
    images = varied_images(12, seed=2)
    expected = reference(images)
    results: dict[int, dict] = {}

    def work(i: int) -> None:
        results[i] = backend.score(images[3 * i:3 * i + 3])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in range(4):
        assert_matches(results[i], {k: v[3 * i:3 * i + 3] for k, v in expected.items()})


@pytest.mark.photos
def test_real_photos_match_the_graph(backend, reference, shared_photos):
    from export.preprocess import decode_file

    paths = sorted(shared_photos.glob("*.JPEG"))[::97][:9]
    images = np.stack([decode_file(p) for p in paths])
    out = backend.score(images)
    assert_matches(out, reference(images))
    assert len(np.unique(out["aes_score"].round(5))) == len(paths)


def test_open_backend_specs(tiny_onnx_model):
    assert isinstance(open_backend(f"onnx:{tiny_onnx_model}"), OnnxRuntimeBackend)
    assert isinstance(open_backend(str(tiny_onnx_model)), OnnxRuntimeBackend)
    for spec in ["s3://bucket/model.onnx", "triton+ftp://127.0.0.1:1", "model.pt", "triton+http://host:1/a/b"]:
        with pytest.raises(ValueError, match=r"onnx:/path/model\.onnx"):
            open_backend(spec)


def test_onnx_backend_refuses_a_graph_without_version(tmp_path):
    import onnx

    from pam.bench.tiny_graph import build_tiny_feature_model

    path = build_tiny_feature_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="pam_model_version"):
        OnnxRuntimeBackend(path)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_unreachable_is_a_clear_error(protocol):
    from serving.cluster.ports import free_port

    with pytest.raises(BackendUnavailable, match="unreachable"):
        TritonBackend(f"127.0.0.1:{free_port()}", protocol=protocol, timeout_s=5)


def test_single_thread_sessions_run_one_photo_per_call_and_keep_the_order(tiny_onnx_model, reference):
    images = varied_images(11, seed=3)
    per_photo = OnnxRuntimeBackend(tiny_onnx_model, parallel_sessions=2, max_batch_size=8)
    whole = OnnxRuntimeBackend(tiny_onnx_model, intra_op_threads=2, max_batch_size=8)
    try:
        assert per_photo.micro_batch == 1 and whole.micro_batch == 8  # one thread per session vs two
        expected = reference(images)
        for backend in (per_photo, whole):
            got = backend.score(images)
            for name, value in expected.items():
                np.testing.assert_allclose(got[name], value, atol=ATOL, err_msg=name)
        assert OnnxRuntimeBackend(tiny_onnx_model, parallel_sessions=2, micro_batch=3).micro_batch == 3
    finally:
        per_photo.close()
        whole.close()
    with pytest.raises(ValueError, match="micro_batch"):
        OnnxRuntimeBackend(tiny_onnx_model, micro_batch=0)
