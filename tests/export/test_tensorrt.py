"""TensorRT: why it cannot build here is detected and said plainly; the build runs where it can."""

from __future__ import annotations

import types

import pytest

from export.tensorrt import TensorRTUnavailable, build_plan, unavailable_reason

REASON = unavailable_reason()


class _FakeCuda:
    def __init__(self, init_status=0, count=1):
        self._init, self._count = init_status, count

    def cuInit(self, flags):
        return self._init

    def cuDeviceGetCount(self, ref):
        ref._obj.value = self._count
        return 0


def _importer(module):
    def import_module(name):
        if name == "tensorrt" and module is not None:
            return module
        raise ImportError(f"No module named {name!r}")
    return import_module


def _no_library(name):
    raise OSError(f"{name}: cannot open shared object file: No such file or directory")


def test_each_missing_piece_has_its_own_reason():
    trt = types.SimpleNamespace(Builder=object, __file__="tensorrt/__init__.py")
    assert "TensorRT is not installed" in unavailable_reason(_importer(None), _no_library)
    assert "no NVIDIA driver: libcuda.so.1" in unavailable_reason(_importer(trt), _no_library)
    assert "cuInit returned CUDA error 100" in unavailable_reason(
        _importer(trt), lambda name: _FakeCuda(init_status=100))
    assert "reports no CUDA device" in unavailable_reason(_importer(trt), lambda name: _FakeCuda(count=0))
    assert unavailable_reason(_importer(trt), lambda name: _FakeCuda()) is None


@pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present here")
def test_build_refuses_with_the_same_reason(tmp_path):
    with pytest.raises(TensorRTUnavailable) as caught:
        build_plan(tmp_path / "x.onnx", tmp_path / "x.plan", max_batch_size=8)
    assert caught.value.reason == REASON


@pytest.mark.torch
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_build_fp16_plan_with_a_batch_profile(tmp_path):
    pytest.importorskip("torch")
    from export import onnx_export as ox
    from export.networks import create_model

    net = create_model("tiny").eval()
    onnx_path = ox.export_onnx(net, tmp_path / "pam_features.onnx", ox.make_model_version("tiny", net))
    info = build_plan(onnx_path, tmp_path / "pam_features.plan", max_batch_size=8)
    assert info["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert (tmp_path / "pam_features.plan").stat().st_size > 0
