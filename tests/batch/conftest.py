"""Fixtures of the batch-job tests: generated photo folders, a slower scoring graph, moto S3."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.cluster.local_ray import init_local_ray
from tests.conftest import free_port

BAD_PHOTOS = {  # relative path -> bytes; each must become a failed row naming its reason
    "bad/empty.jpg": b"",
    "bad/not-an-image.png": b"this is plain text, not a PNG",
}


def write_photo(path: Path, rng: np.random.Generator, size=(96, 72), fmt="JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def make_photo_folder(root: Path, n: int, seed: int = 0, bad: bool = True, size=(96, 72)) -> list[str]:
    """n generated photos (JPEG and PNG, in subfolders, one non-ASCII name) + corrupt files."""
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        rel = f"set{i % 3}/photo-{i:04d}.{'png' if fmt == 'PNG' else 'jpg'}"
        if i == 1:
            rel = "set1/café-ü.jpg"  # NFC name
        write_photo(root / rel, rng, size, fmt)
        ids.append(rel)
    if bad:
        for rel, data in BAD_PHOTOS.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        write_photo(root / "tmp.jpg", rng, size)
        good = (root / "tmp.jpg").read_bytes()
        (root / "tmp.jpg").unlink()
        (root / "bad/truncated.jpg").write_bytes(good[: len(good) // 3])
        ids += [*BAD_PHOTOS, "bad/truncated.jpg"]
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "skip.jpg").write_bytes(b"never listed")
    (root / "notes.txt").write_text("not a photo: skipped by extension\n")
    return ids


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("photos")
    return root, make_photo_folder(root, 40)


@pytest.fixture(scope="session")
def slow_onnx_model(tmp_path_factory, tiny_onnx_model) -> Path:
    """The tiny graph plus two 3x3 convolutions over the whole image whose result is multiplied by
    zero: same outputs as tiny_onnx_model, but ~20 ms per image, so a job can be interrupted."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(tiny_onnx_model))
    graph = model.graph
    rng = np.random.default_rng(1)
    graph.initializer.extend([
        numpy_helper.from_array(rng.normal(0, 0.1, (16, 3, 3, 3)).astype(np.float32), "slow_w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16, 16, 3, 3)).astype(np.float32), "slow_w2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "slow_axes"),
        numpy_helper.from_array(np.array([1], np.int64), "slow_unsqueeze_axes"),
    ])
    score_node = next(node for node in graph.node if list(node.output) == ["aes_score"])
    score_node.output[0] = "aes_score_fast"
    graph.node.extend([
        helper.make_node("Transpose", ["n"], ["slow_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["slow_nchw", "slow_w1"], ["slow_c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["slow_c1"], ["slow_r1"]),
        helper.make_node("Conv", ["slow_r1", "slow_w2"], ["slow_c2"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["slow_c2", "slow_axes"], ["slow_mean"], keepdims=0),
        helper.make_node("Mul", ["slow_mean", "slow_zero"], ["slow_zeroed"]),
        helper.make_node("Unsqueeze", ["slow_zeroed", "slow_unsqueeze_axes"], ["slow_col"]),
        helper.make_node("Add", ["aes_score_fast", "slow_col"], ["aes_score"]),
    ])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("slow-model") / "pam_features.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (ray.init costs 4-9 s), 2 CPUs as on this machine."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=2, include_dashboard=False, object_store_memory=400 * 1024 * 1024, log_to_driver=False)
    yield ray
    ray.shutdown()


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server():
    """A real moto S3 server on 127.0.0.1:<free port>; yields its endpoint host:port."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto_server is not installed (test extra: moto[server])")
    port = free_port()
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
