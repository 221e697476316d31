"""Repositories written by export/triton_repo.py parse with Triton's own model-config protobuf
and describe the graph they hold; git's model_repository/ is exactly what the writer produces."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import export.triton_python_model as python_model
import serving.scoring.backends as backends
from export.triton_repo import (
    MODEL_NAME,
    MODEL_VERSION_KEY,
    ONNX_FALLBACK_NAME,
    UNEXPORTED_VERSION,
    read_model_version,
    write_triton_repository,
)

ROOT = Path(__file__).resolve().parents[2]
Config = model_config_pb2.ModelConfig


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), Config())


def graph_io(onnx_path: Path) -> tuple[dict, dict]:
    """name -> dims without the batch axis, for inputs and outputs of the ONNX graph."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph

    def dims(values):
        return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in values}

    return dims(graph.input), dims(graph.output)


def check_contract(config, onnx_path: Path, max_batch_size: int, version: str) -> None:
    inputs, outputs = graph_io(onnx_path)
    assert config.max_batch_size == max_batch_size
    assert {i.name: list(i.dims) for i in config.input} == inputs
    assert all(i.data_type == model_config_pb2.TYPE_UINT8 for i in config.input)
    assert {o.name: list(o.dims) for o in config.output} == outputs
    assert all(o.data_type == model_config_pb2.TYPE_FP32 for o in config.output)
    assert config.parameters[MODEL_VERSION_KEY].string_value == version
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds > 0
    assert list(batching.preferred_batch_size) and max(batching.preferred_batch_size) <= max_batch_size
    assert [w.batch_size for w in config.model_warmup] == sorted({1, max_batch_size})
    for warmup in config.model_warmup:
        assert list(warmup.inputs["images"].dims) == inputs["images"] and warmup.inputs["images"].zero_data


@pytest.mark.parametrize("max_batch_size", [1, 8, 32])
def test_gpu_flavor(tiny_onnx_model, tmp_path, max_batch_size):
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"not really a plan, but copied as one")
    written = write_triton_repository(tiny_onnx_model, tmp_path / "repo", "gpu", max_batch_size, plan_path=plan)
    assert set(written) == {MODEL_NAME, ONNX_FALLBACK_NAME}
    trt, onnx_fallback = (parse(written[n] / "config.pbtxt") for n in (MODEL_NAME, ONNX_FALLBACK_NAME))
    assert (trt.name, trt.platform) == (MODEL_NAME, "tensorrt_plan")
    assert (onnx_fallback.name, onnx_fallback.platform) == (ONNX_FALLBACK_NAME, "onnxruntime_onnx")
    for config in (trt, onnx_fallback):
        check_contract(config, tiny_onnx_model, max_batch_size, "tiny-test-0")
        assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert (written[MODEL_NAME] / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert (written[ONNX_FALLBACK_NAME] / "1" / "model.onnx").read_bytes() == tiny_onnx_model.read_bytes()


def test_cpu_flavor(tiny_onnx_model, tmp_path):
    written = write_triton_repository(tiny_onnx_model, tmp_path, "cpu", 16, intra_op_threads=2)
    assert set(written) == {MODEL_NAME}
    config = parse(written[MODEL_NAME] / "config.pbtxt")
    assert (config.name, config.backend, config.platform) == (MODEL_NAME, "python", "")
    check_contract(config, tiny_onnx_model, 16, "tiny-test-0")
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.parameters["intra_op_threads"].string_value == "2"
    version_dir = written[MODEL_NAME] / "1"
    assert (version_dir / "model.py").read_text() == Path(python_model.__file__).read_text()
    assert read_model_version(version_dir / "model.onnx") == "tiny-test-0"


def test_git_model_repository_is_what_the_writer_writes(tmp_path):
    write_triton_repository(None, tmp_path, "gpu", 32, model_version=UNEXPORTED_VERSION)
    for name in (MODEL_NAME, ONNX_FALLBACK_NAME):
        committed = ROOT / "model_repository" / name / "config.pbtxt"
        assert committed.read_text() == (tmp_path / name / "config.pbtxt").read_text(), (
            f"{committed} is stale: run `python -m export.triton_repo`")
        assert parse(committed).parameters[MODEL_VERSION_KEY].string_value == UNEXPORTED_VERSION


def test_refusals(tiny_onnx_model, tmp_path):
    with pytest.raises(ValueError, match="flavor"):
        write_triton_repository(tiny_onnx_model, tmp_path, "tpu")
    with pytest.raises(ValueError, match="cpu flavor runs the ONNX file"):
        write_triton_repository(None, tmp_path, "cpu", model_version="v1")
    with pytest.raises(ValueError, match="explicit model_version"):
        write_triton_repository(None, tmp_path, "gpu")
    with pytest.raises(ValueError, match="'tiny-test-0', not 'other'"):
        write_triton_repository(tiny_onnx_model, tmp_path, "gpu", model_version="other")
    with pytest.raises(ValueError, match="max_batch_size"):
        write_triton_repository(tiny_onnx_model, tmp_path, "gpu", max_batch_size=0)
    with pytest.raises(FileNotFoundError):
        write_triton_repository(tiny_onnx_model, tmp_path, "gpu", plan_path=tmp_path / "missing.plan")


def test_version_with_quotes_survives_the_config(tiny_onnx_model, tmp_path):
    from pam.bench.tiny_graph import build_tiny_feature_model

    odd = build_tiny_feature_model(tmp_path / "odd.onnx", model_version='v2 "quoted" \\ path')
    written = write_triton_repository(odd, tmp_path / "repo", "cpu")
    config = parse(written[MODEL_NAME] / "config.pbtxt")
    assert config.parameters[MODEL_VERSION_KEY].string_value == 'v2 "quoted" \\ path'


def test_one_version_key_everywhere():
    assert MODEL_VERSION_KEY == backends.MODEL_VERSION_KEY == python_model.MODEL_VERSION_KEY
    assert UNEXPORTED_VERSION == backends.UNEXPORTED_VERSION
    assert MODEL_NAME == backends.TRITON_MODEL_NAME
