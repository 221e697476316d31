"""What only the Triton backend does: read the model's state and version from a real server."""

from __future__ import annotations

import pytest

from serving.scoring.backends import BackendError, BackendUnavailable, TritonBackend, open_backend
from tests.triton.fixtures import UNEXPORTED_MODEL

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_that_is_not_loaded(triton_server, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with pytest.raises(BackendUnavailable, match=r"not READY \(state: absent"):
        TritonBackend(url, protocol=protocol, model_name="no_such_model")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_config_without_an_export_version_is_refused(triton_server, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with pytest.raises(BackendError, match="never written by pam export"):
        open_backend(f"triton+{protocol}://{url}/{UNEXPORTED_MODEL}")


def test_max_batch_size_comes_from_the_server(triton_server):
    with TritonBackend(triton_server.http_url) as backend:
        assert backend.max_batch_size == 4  # the repository's, not larger
    with TritonBackend(triton_server.grpc_url, protocol="grpc", max_batch_size=2) as backend:
        assert backend.max_batch_size == 2
