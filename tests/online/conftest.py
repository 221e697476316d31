"""Fixtures of the online service's tests: user stores on both engines."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port
from tests.online.postgres_server import PostgresServer, find_pg_bin


@pytest.fixture(scope="session")
def postgres_server():
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries are absent (scripts/install.sh installs Debian's postgresql)")
    server = PostgresServer(free_port(), pg_bin)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    """A fresh, empty user store URL on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'users.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        server.drop_all()
        yield server.url


# ---------------------------------------------------------------- a feature store made by the tiny model
N_STORE_PHOTOS = 48  # scored in the batch store
N_EXTRA_PHOTOS = 4  # files under the photos root that the store has not seen


def _synthetic_photo(rng, k: int):
    """A 320x240 RGB picture whose brightness, contrast and colour vary with k (distinct features)."""
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    freq = 1 + k % 7
    img = np.stack([(base[c] * (0.3 + 0.7 * ((k * (c + 1)) % 11) / 10)
                     + 60 * np.sin(freq * (xx + c * 37) / w * 6.28) * np.cos((yy + k) / h * 3.14 * (c + 1)))
                    for c in range(3)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_feature_root(tmp: Path, model_path: Path, seed: int = 7) -> dict:
    """Photos on disk, and a complete feature-store version of most of them scored by the tiny model."""
    from PIL import Image

    from export.preprocess import decode_file
    from serving import feature_table as ft
    from serving.scoring.backends import OnnxRuntimeBackend

    rng = np.random.default_rng(seed)
    photos = tmp / "photos"
    (photos / "album").mkdir(parents=True)
    (photos / "extra").mkdir()
    ids = [f"album/p{k:03d}.jpg" for k in range(N_STORE_PHOTOS)]
    extra = [f"extra/e{k}.jpg" for k in range(N_EXTRA_PHOTOS)]
    for k, image_id in enumerate(ids + extra):
        Image.fromarray(_synthetic_photo(rng, k)).save(photos / image_id, quality=90)
    (photos / "extra" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    backend = OnnxRuntimeBackend(model_path)
    features = backend.score(np.stack([decode_file(photos / i) for i in ids]))
    root = tmp / "features"
    table = ft.feature_table(ids, features, backend.model_version)
    ft.FeatureTable(root).write_version(table, crop_policy="tiny-test-whole-image")
    return {"feature_root": str(root), "photos_root": str(photos), "model": str(model_path),
            "ids": ids, "extra": extra, "model_version": backend.model_version,
            "aes_score": dict(zip(ids, features["aes_score"].tolist(), strict=True))}


@pytest.fixture(scope="module")
def feature_env(tmp_path_factory, tiny_onnx_model):
    return build_feature_root(tmp_path_factory.mktemp("online"), tiny_onnx_model)


@pytest.fixture(scope="module")
def second_version(feature_env, tmp_path_factory):
    """Version tiny-test-1 (another model) of the same photos, added to the same root."""
    from export.preprocess import decode_file
    from pam.bench.tiny_graph import build_tiny_feature_model
    from serving import feature_table as ft
    from serving.scoring.backends import OnnxRuntimeBackend

    path = build_tiny_feature_model(tmp_path_factory.mktemp("v1") / "pam_features.onnx", "tiny-test-1", seed=1)
    backend = OnnxRuntimeBackend(path)
    photos = feature_env["photos_root"]
    features = backend.score(np.stack([decode_file(f"{photos}/{i}") for i in feature_env["ids"]]))
    table = ft.feature_table(feature_env["ids"], features, "tiny-test-1")
    ft.FeatureTable(feature_env["feature_root"]).write_version(table, promote=False)
    return str(path)


class ThreadedServer:
    """An ASGI app under uvicorn in a thread, on 127.0.0.1 and a free port (no Ray)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
