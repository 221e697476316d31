"""The real service for the client's tests: the API app over a local runtime, served by uvicorn on
127.0.0.1 (no Ray), with a feature store scored by the tiny model and real JPEG files."""

from __future__ import annotations

import pytest

from serving.online.app import LocalRuntime, create_app
from tests.online.conftest import ThreadedServer, build_feature_root

API_KEY = "k-client-test"


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_onnx_model):
    tmp = tmp_path_factory.mktemp("client")
    env = build_feature_root(tmp, tiny_onnx_model)
    config = {"feature_root": env["feature_root"], "model": env["model"], "user_store": f"sqlite:///{tmp / 'u.db'}",
              "photos_root": env["photos_root"], "thumbnail_dir": str(tmp / "thumbs"), "model_cache_size": 8}
    runtime = LocalRuntime(config)
    with ThreadedServer(create_app(runtime)) as server:
        yield {"url": server.url, **env}
    runtime.close()


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory, tiny_onnx_model):
    """The same service with API keys (two tenants)."""
    tmp = tmp_path_factory.mktemp("client-keys")
    env = build_feature_root(tmp, tiny_onnx_model)
    config = {"feature_root": env["feature_root"], "user_store": f"sqlite:///{tmp / 'u.db'}",
              "api_keys": {API_KEY: "tenant-a", "k-other": "tenant-b"}}
    runtime = LocalRuntime(config)
    with ThreadedServer(create_app(runtime)) as server:
        yield {"url": server.url, **env}
    runtime.close()
