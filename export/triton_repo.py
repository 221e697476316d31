"""Writes a Triton model repository for the fused scoring graph (one folder per model).

Two flavors, one contract (input `images` uint8 [B, 256, 256, 3]; outputs aes_score [B, 1],
aes_feat [B, 176], attributes [B, 10], content [B, 10], float32):

- gpu (the layout of `model_repository/` in git): `pam_features` is the TensorRT plan and
  `pam_features_onnx` the same graph in Triton's ONNX Runtime backend, as a fallback; both on
  KIND_GPU instances with dynamic batching and warm-up.
- cpu: `pam_features` is a Python-backend model (export/triton_python_model.py) running the same
  ONNX file through ONNX Runtime on KIND_CPU instances: the only flavor that the CPU tritonserver
  of the nvidia-pytriton wheel can load (it ships no onnxruntime backend).

Clients always call `pam_features`. The model version travels in each config's `parameters`
(key `pam_model_version`) so that a client can tell which export answers without a request.
Configs in git carry UNEXPORTED_VERSION until `pam export` rewrites them; clients refuse it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT

MODEL_NAME = "pam_features"
ONNX_FALLBACK_NAME = "pam_features_onnx"
MODEL_VERSION_KEY = "pam_model_version"  # the ONNX metadata key, and the config parameter
UNEXPORTED_VERSION = "unexported"
INPUT_NAME = "images"
INPUT_DIMS = (256, 256, 3)
OUTPUT_DIMS = {"aes_score": 1, "aes_feat": AES_FEAT_DIM, "attributes": N_ATTRIBUTES, "content": N_CONTENT}
FLAVORS = ("gpu", "cpu")
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")


def write_triton_repository(
    onnx_path: str | os.PathLike | None,
    repo_dir: str | os.PathLike,
    flavor: str = "gpu",
    max_batch_size: int = 32,
    plan_path: str | os.PathLike | None = None,
    model_version: str | None = None,
    instance_count: int = 1,
    intra_op_threads: int = 0,
    max_queue_delay_us: int = 2000,
) -> dict[str, Path]:
    """Write the repository; returns {model name: its folder}.

    onnx_path None writes the configs alone (what `model_repository/` in git holds); then
    model_version must be given. Otherwise model_version defaults to the graph's own metadata,
    and a different explicit value is refused (a config must never lie about its graph).
    A gpu repository gets the TensorRT model file only when plan_path is given.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if onnx_path is None and flavor == "cpu":
        raise ValueError("the cpu flavor runs the ONNX file: give onnx_path")
    model_version = _resolve_version(onnx_path, model_version)
    repo = Path(repo_dir)
    common = dict(max_batch_size=max_batch_size, model_version=model_version,
                  instance_count=instance_count, max_queue_delay_us=max_queue_delay_us)
    written: dict[str, Path] = {}
    if flavor == "gpu":
        written[MODEL_NAME] = _write_model(
            repo / MODEL_NAME, model_config(MODEL_NAME, "tensorrt_plan", kind="KIND_GPU", **common),
            {"model.plan": plan_path} if plan_path else {})
        written[ONNX_FALLBACK_NAME] = _write_model(
            repo / ONNX_FALLBACK_NAME,
            model_config(ONNX_FALLBACK_NAME, "onnxruntime_onnx", kind="KIND_GPU", **common),
            {"model.onnx": onnx_path} if onnx_path else {})
    else:
        written[MODEL_NAME] = _write_model(
            repo / MODEL_NAME,
            model_config(MODEL_NAME, "python", kind="KIND_CPU",
                         extra_parameters={"onnx_file": "model.onnx",
                                           "intra_op_threads": str(intra_op_threads)}, **common),
            {"model.onnx": onnx_path, "model.py": PYTHON_MODEL_SOURCE})
    return written


def model_config(
    name: str,
    runtime: str,
    *,
    max_batch_size: int,
    model_version: str,
    kind: str,
    instance_count: int = 1,
    max_queue_delay_us: int = 2000,
    extra_parameters: dict[str, str] | None = None,
) -> str:
    """config.pbtxt text. runtime: "tensorrt_plan" or "onnxruntime_onnx" (a platform) or
    "python" (a backend)."""
    engine = f'backend: "{runtime}"' if runtime == "python" else f'platform: "{runtime}"'
    outputs = ",\n".join(
        f'  {{ name: "{out}" data_type: TYPE_FP32 dims: [ {dim} ] }}' for out, dim in OUTPUT_DIMS.items())
    dims = ", ".join(str(d) for d in INPUT_DIMS)
    preferred = ", ".join(str(b) for b in _preferred_batch_sizes(max_batch_size))
    parameters = {MODEL_VERSION_KEY: model_version, **(extra_parameters or {})}
    params = "\n".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{_escape(value)}" }} }}'
        for key, value in parameters.items())
    warmups = ",\n".join(_warmup(f"batch_{b}", b, dims) for b in sorted({1, max_batch_size}))
    return f"""# Written by export/triton_repo.py (pam export); edit that code, not this file.
name: "{name}"
{engine}
max_batch_size: {max_batch_size}
version_policy: {{ latest: {{ num_versions: 1 }} }}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ {dims} ] }}
]
output [
{outputs}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ count: {instance_count} kind: {kind} }} ]
{params}
model_warmup [
{warmups}
]
"""


def _warmup(name: str, batch: int, dims: str) -> str:
    return (f'  {{ name: "{name}" batch_size: {batch} inputs {{ key: "{INPUT_NAME}" value {{ '
            f'data_type: TYPE_UINT8 dims: [ {dims} ] zero_data: true }} }} }}')


def _preferred_batch_sizes(max_batch_size: int) -> list[int]:
    return sorted({max(1, max_batch_size // 4), max(1, max_batch_size // 2), max_batch_size})


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _resolve_version(onnx_path, model_version: str | None) -> str:
    if onnx_path is None:
        if not model_version:
            raise ValueError("writing configs without a model needs an explicit model_version")
        return model_version
    graph_version = read_model_version(onnx_path)
    if model_version and model_version != graph_version:
        raise ValueError(f"{onnx_path} is model version {graph_version!r}, not {model_version!r}")
    return graph_version


def read_model_version(onnx_path: str | os.PathLike) -> str:
    """The `pam_model_version` stamped in an exported graph's metadata."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if MODEL_VERSION_KEY not in metadata:
        raise ValueError(f"{onnx_path} has no {MODEL_VERSION_KEY} in its metadata: not a pam export")
    return metadata[MODEL_VERSION_KEY]


def _write_model(folder: Path, config: str, files: dict[str, str | os.PathLike]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    version_dir = folder / "1"
    if files:
        version_dir.mkdir(exist_ok=True)
        for name, source in files.items():
            _copy_atomic(Path(source), version_dir / name)
    tmp = folder / ".config.pbtxt.tmp"
    tmp.write_text(config)
    tmp.replace(folder / "config.pbtxt")  # a polling server never reads half a config
    return folder


def _copy_atomic(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def main(argv: list[str] | None = None) -> int:
    """`python -m export.triton_repo [DIR]`: rewrite the configs of git's model_repository/."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("repo_dir", nargs="?", default=str(Path(__file__).parents[1] / "model_repository"))
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    for name, folder in write_triton_repository(None, args.repo_dir, "gpu", args.max_batch_size,
                                                model_version=UNEXPORTED_VERSION).items():
        print(f"{name}: {folder / 'config.pbtxt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
