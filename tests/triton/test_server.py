"""A real tritonserver (scripts/triton-server.sh via pam/bench/triton_server.py), queried with
tritonclient over HTTP and gRPC; its rows are checked against the graph in ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.request

import numpy as np
import pytest

from export.triton_repo import MODEL_NAME, write_triton_repository
from pam.bench.triton_server import TritonServer, TritonServerError
from serving.scoring.backends import BackendUnavailable, OnnxRuntimeBackend, TritonBackend
from tests.triton.fixtures import require_triton_env

pytestmark = pytest.mark.triton


def test_health_and_metadata_over_both_protocols(triton_server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(triton_server.http_url)
    grpc = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        assert http.is_server_ready() and grpc.is_server_ready()
        assert http.is_model_ready(MODEL_NAME) and grpc.is_model_ready(MODEL_NAME)
        meta = http.get_model_metadata(MODEL_NAME)
        assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 256, 256, 3]}]
        assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
            "aes_score": [-1, 1], "aes_feat": [-1, 176], "attributes": [-1, 10], "content": [-1, 10]}
        assert grpc.get_model_metadata(MODEL_NAME).platform == "python"
    finally:
        http.close()
        grpc.close()


def test_concurrent_clients_are_batched_together_and_get_their_own_rows(triton_server, tiny_onnx_model):
    """Many one-image requests at once: the dynamic batcher merges them into one execute() and
    the Python model must split the outputs back to the right requests."""
    rng = np.random.default_rng(7)
    images = (rng.integers(0, 256, (16, 256, 256, 3)) * np.linspace(0.1, 1, 16)[:, None, None, None]).astype(np.uint8)
    expected = OnnxRuntimeBackend(tiny_onnx_model, max_batch_size=1).score(images)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def client(worker: int) -> None:
        protocol = "http" if worker % 2 else "grpc"
        url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
        try:
            with TritonBackend(url, protocol=protocol) as backend:
                start.wait(timeout=30)
                for i in range(worker, 16, 8):
                    results[i] = backend.score(images[i:i + 1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(16):
        for name, value in expected.items():
            np.testing.assert_allclose(results[i][name], value[i:i + 1], rtol=0, atol=1e-3, err_msg=f"{i} {name}")


def test_metrics_endpoint_counts_requests(triton_server):
    with TritonBackend(triton_server.http_url) as backend:
        backend.score(np.zeros((2, 256, 256, 3), np.uint8))
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines()
             if line.startswith("nv_inference_request_success") and f'model="{MODEL_NAME}"' in line]
    assert lines and float(lines[0].split()[-1]) >= 1


def test_a_model_that_cannot_load_fails_the_start_with_its_log(tiny_onnx_model, tmp_path):
    require_triton_env()
    write_triton_repository(tiny_onnx_model, tmp_path, "cpu", 4)
    (tmp_path / MODEL_NAME / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    server = TritonServer(tmp_path, startup_timeout=120)
    with pytest.raises(TritonServerError, match="exited") as info:
        server.start()
    assert MODEL_NAME in str(info.value)
    assert server._process is None  # stopped and reaped


def test_stop_ends_the_server_and_its_python_stubs(tiny_onnx_model, tmp_path):
    require_triton_env()
    write_triton_repository(tiny_onnx_model, tmp_path, "cpu", 2)
    image = np.zeros((1, 256, 256, 3), np.uint8)
    with TritonServer(tmp_path) as server:
        pgid = server._process.pid
        members = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
        assert len(members) >= 2  # tritonserver and the model's Python stub
        backends = [TritonBackend(server.http_url), TritonBackend(server.grpc_url, protocol="grpc")]
        for backend in backends:
            assert backend.score(image)["aes_feat"].shape == (1, 176)
    assert not server.is_ready()
    for pid in members:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in _state(pid), pid
    for backend in backends:  # a server gone mid-life: a clear, retryable error
        with pytest.raises(BackendUnavailable, match="inference failed"):
            backend.score(image)
        backend.close()


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return f.read().lower()
    except FileNotFoundError:
        return "zombie"
