"""Export the fused five-crop graph to one ONNX file, stamp its version, check it against torch,
and count its FLOPs.

The graph (export.networks.FiveCropScorer) takes `images` uint8 [B, 256, 256, 3] with a dynamic
batch and returns aes_score [B, 1] (1-5), aes_feat [B, 176], attributes [B, 10] ([-1, 1]) and
content [B, 10] (softmax), each the mean over the four corner and the center 224x224 crops.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from .networks import CROP_POLICY, FiveCropScorer, PamNet
from .networks.model import OUTPUT_NAMES

INPUT_NAME = "images"
OPSET = 18  # runs on ONNX Runtime >= 1.14, TensorRT >= 8.6 and Triton's onnxruntime backend
IR_VERSION = 9
MODEL_VERSION_KEY = "pam_model_version"
CROP_POLICY_KEY = "pam_crop_policy"
MAX_EXPORT_BATCH = 4096


def weights_digest(net: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, shapes, dtypes, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_model_version(backbone: str, net: torch.nn.Module, when: dt.date | None = None) -> str:
    """`<backbone>-<yyyymmdd>-<8 hex of the weights hash>`."""
    when = when or dt.datetime.now(dt.UTC).date()
    return f"{backbone}-{when:%Y%m%d}-{weights_digest(net)[:8]}"


def to_onnx_model(module: torch.nn.Module, example: torch.Tensor, input_name: str,
                  output_names: list[str]):
    """`module` as an ONNX ModelProto with a dynamic first (batch) dimension, quietly."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with (torch.no_grad(), contextlib.redirect_stdout(io.StringIO()),  # keep `--json` stdout clean
          warnings.catch_warnings()):
        warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecation notices
        program = torch.onnx.export(
            module.eval(), (example,), None, input_names=[input_name], output_names=output_names,
            dynamic_shapes=({0: batch},), dynamo=True, external_data=False, optimize=True,
            opset_version=OPSET, verbose=False)
    model = program.model_proto
    model.ir_version = min(model.ir_version, IR_VERSION)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def export_onnx(net: PamNet, path: str | Path, model_version: str,
                extra_metadata: dict[str, str] | None = None,
                scorer: FiveCropScorer | None = None) -> Path:
    """Write the fused graph as ONE .onnx file (no external data) and return its path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer = scorer or FiveCropScorer(net)
    model = to_onnx_model(scorer, torch.zeros(2, 256, 256, 3, dtype=torch.uint8), INPUT_NAME,
                          list(OUTPUT_NAMES))
    metadata = {MODEL_VERSION_KEY: model_version, CROP_POLICY_KEY: CROP_POLICY,
                "pam_backbone": net.backbone.name, "pam_aes_score_scale": "1-5",
                **(extra_metadata or {})}
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    model.doc_string = ("pam fused five-crop scoring graph: uint8 [B,256,256,3] -> aes_score, "
                        "aes_feat, attributes, content (means over five 224x224 crops)")
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def ort_session(path: str | Path, threads: int | None = None, level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """The graph's outputs for `images`, `batch` at a time (a batch of B photos holds 5B crops'
    activations: hundreds of photos at once would take gigabytes)."""
    parts = []
    for start in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[start:start + batch])
        parts.append(session.run(list(OUTPUT_NAMES), {INPUT_NAME: chunk}))
    if not parts:
        raise ValueError("no images to score")
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(OUTPUT_NAMES)}


@torch.inference_mode()
def run_torch(net: PamNet, images: np.ndarray) -> dict[str, np.ndarray]:
    scorer = FiveCropScorer(net).eval()
    values = scorer(torch.from_numpy(np.ascontiguousarray(images)))
    return {name: v.numpy() for name, v in zip(OUTPUT_NAMES, values, strict=True)}


def parity(net: PamNet, onnx_path: str | Path, images: np.ndarray, batch: int = 8) -> dict:
    """Max abs difference of each output between torch and ONNX Runtime on `images`."""
    session = ort_session(onnx_path)
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        ref, got = run_torch(net, chunk), run_onnx(session, chunk)
        for name in OUTPUT_NAMES:
            diffs[name] = max(diffs[name], float(np.abs(ref[name] - got[name]).max()))
    return {"images": len(images), "max_abs_diff": max(diffs.values()), "per_output": diffs}


def count_flops(model_or_path, batch: int = 1) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of Conv, Gemm and MatMul nodes for one batch, from the graph and
    ONNX shape inference. Element-wise work (BN folded, activations, pooling) is left out: it does
    not run on the FMA units whose peak the benchmark compares against."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, str | Path) else model_or_path
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    totals = {"conv": 0.0, "depthwise_conv": 0.0, "gemm": 0.0}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            w_index = 3 if node.op_type == "QLinearConv" else 1
            weight, out = shapes[node.input[w_index]], shapes[node.output[0]]
            flops = 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))
            totals["depthwise_conv" if attrs.get("group", 1) > 1 else "conv"] += flops
        elif node.op_type == "Gemm":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = b[0] if attrs.get("transB") else b[1]
            totals["gemm"] += 2.0 * m * n * k
        elif node.op_type == "MatMul":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            totals["gemm"] += 2.0 * float(np.prod(a)) * b[-1]
    totals["total"] = sum(totals.values())
    return totals
