"""Fixtures shared by every part's tests. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.triton.fixtures import triton_cpu_repository, triton_server  # noqa: F401 (session fixtures)

ROOT = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = (ROOT.parent / "shared" / "photos" / "imagenet-sample").resolve()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (servers here may hold ports after exit)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_photos() -> Path:
    """../shared/photos/imagenet-sample (1,000 real JPEGs); skips when a clone has no ../shared."""
    if not SHARED_PHOTOS.is_dir():
        pytest.skip(f"{SHARED_PHOTOS} is absent (only developer machines and CI have ../shared)")
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory) -> Path:
    """A contract-conforming tiny scoring graph (onnx.helper, no torch), model_version tiny-test-0."""
    from pam.bench.tiny_graph import build_tiny_feature_model

    return build_tiny_feature_model(tmp_path_factory.mktemp("tiny-model") / "pam_features.onnx")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
