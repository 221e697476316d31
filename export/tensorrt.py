"""A TensorRT plan of the fused graph: FP16, one optimization profile for batch 1..max.

It builds only where the `tensorrt` package imports and a CUDA GPU answers; everywhere else
`unavailable_reason()` says exactly why (the CLI prints it, the tests skip with it). The probes
are parameters so that the reasoning itself is tested on machines without either.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable
from pathlib import Path

from .onnx_export import INPUT_NAME

IMAGE_SHAPE = (256, 256, 3)


class TensorRTUnavailable(RuntimeError):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def unavailable_reason(import_module: Callable = importlib.import_module,
                       load_library: Callable = ctypes.CDLL) -> str | None:
    """None when a plan can be built here, else the reason it cannot."""
    try:
        trt = import_module("tensorrt")
    except ImportError as exc:
        return (f"TensorRT is not installed (import tensorrt: {exc}); its wheels come from "
                "NVIDIA's package index and need a CUDA GPU")
    try:
        cuda = load_library("libcuda.so.1")
    except OSError as exc:
        return f"no NVIDIA driver: libcuda.so.1 cannot be loaded ({exc})"
    status = cuda.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver found no usable GPU (cuInit returned CUDA error {status})"
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return "the NVIDIA driver reports no CUDA device"
    if not hasattr(trt, "Builder"):
        return f"the tensorrt module at {getattr(trt, '__file__', '?')} has no Builder (a stub?)"
    return None


def build_plan(onnx_path: str | Path, plan_path: str | Path, max_batch_size: int,
               opt_batch_size: int | None = None, fp16: bool = True,
               workspace_bytes: int = 4 << 30) -> dict:
    """Build and write the serialized engine; returns what was built (for the model card)."""
    reason = unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    opt = opt_batch_size or max(1, max_batch_size // 2)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    use_fp16 = fp16 and builder.platform_has_fast_fp16
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *IMAGE_SHAPE), (opt, *IMAGE_SHAPE), (max_batch_size, *IMAGE_SHAPE))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (its log above says why)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return {"plan": str(plan_path), "tensorrt_version": trt.__version__, "fp16": use_fp16,
            "profile": {"min": 1, "opt": opt, "max": max_batch_size}}
