"""Session fixtures for a real tritonserver (one per test run), registered in tests/conftest.py.

The repository is the CPU flavor written by export/triton_repo.py from the tiny contract graph,
plus `pam_unexported`: the same model under a config that still says model version
"unexported" (what model_repository/ in git carries), which clients must refuse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRITON_ENV = ROOT / ".triton-env"
UNEXPORTED_MODEL = "pam_unexported"


def require_triton_env() -> None:
    if not (TRITON_ENV / "triton" / "backends" / "python" / "triton_python_backend_stub").is_file():
        pytest.skip(f"{TRITON_ENV} is not built: run `bash scripts/triton-server.sh setup` "
                    "(scripts/install.sh does)")


@pytest.fixture(scope="session")
def triton_cpu_repository(tiny_onnx_model, tmp_path_factory) -> Path:
    from export.triton_repo import MODEL_NAME, write_triton_repository
    from pam.bench.tiny_graph import build_tiny_feature_model

    repo = tmp_path_factory.mktemp("triton-cpu-repo")
    write_triton_repository(tiny_onnx_model, repo, flavor="cpu", max_batch_size=4)
    unexported_onnx = build_tiny_feature_model(tmp_path_factory.mktemp("unexported") / "m.onnx",
                                               model_version="unexported")
    scratch = tmp_path_factory.mktemp("unexported-repo")
    write_triton_repository(unexported_onnx, scratch, flavor="cpu", max_batch_size=4)
    (scratch / MODEL_NAME).rename(repo / UNEXPORTED_MODEL)
    config = repo / UNEXPORTED_MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace(f'name: "{MODEL_NAME}"', f'name: "{UNEXPORTED_MODEL}"'))
    return repo


@pytest.fixture(scope="session")
def triton_server(triton_cpu_repository, tmp_path_factory):
    """A real tritonserver on free 127.0.0.1 ports serving triton_cpu_repository."""
    from pam.bench.triton_server import TritonServer

    require_triton_env()
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = TritonServer(triton_cpu_repository, metrics_port=0, log_path=log)
    server.start()
    yield server
    server.stop()
