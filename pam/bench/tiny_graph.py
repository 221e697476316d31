"""A tiny scoring graph that honours the fused model's contract, built with onnx.helper (no torch).

Serving tests and benchmarks use it so that they run where torch is not installed, as the serving
image does (it needs the onnx package: train and test extras).
It is deliberately simple (channel means -> 176-d tanh features -> heads) but real: outputs depend
on the pixels, so wrong batching, wrong decoding or mixed-up rows show up as wrong numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT


def build_tiny_feature_model(path: str | Path, model_version: str = "tiny-test-0", seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = {
        "scale": np.array(1 / 128, np.float32),
        "shift": np.array(127.5, np.float32),
        "w_feat": rng.normal(0, 1.5, (6, AES_FEAT_DIM)).astype(np.float32),
        "w_score": rng.normal(0, 0.2, (AES_FEAT_DIM, 1)).astype(np.float32),
        "w_attr": rng.normal(0, 0.2, (AES_FEAT_DIM, N_ATTRIBUTES)).astype(np.float32),
        "w_cont": rng.normal(0, 0.5, (AES_FEAT_DIM, N_CONTENT)).astype(np.float32),
        "four": np.array(4.0, np.float32),
        "one": np.array(1.0, np.float32),
        "axes_hw": np.array([1, 2], np.int64),
    }
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["f", "shift"], ["c"]),
        helper.make_node("Mul", ["c", "scale"], ["n"]),
        helper.make_node("ReduceMean", ["n", "axes_hw"], ["mean"], keepdims=0),  # [B, 3]
        helper.make_node("Mul", ["n", "n"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes_hw"], ["energy"], keepdims=0),  # [B, 3]
        helper.make_node("Concat", ["mean", "energy"], ["stats"], axis=1),  # [B, 6]
        helper.make_node("MatMul", ["stats", "w_feat"], ["h"]),
        helper.make_node("Tanh", ["h"], ["aes_feat"]),
        helper.make_node("MatMul", ["aes_feat", "w_score"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["sig"]),
        helper.make_node("Mul", ["sig", "four"], ["s4"]),
        helper.make_node("Add", ["s4", "one"], ["aes_score"]),
        helper.make_node("MatMul", ["aes_feat", "w_attr"], ["a"]),
        helper.make_node("Tanh", ["a"], ["attributes"]),
        helper.make_node("MatMul", ["aes_feat", "w_cont"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["content"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "pam_features_tiny",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 256, 256, 3])],
        [
            helper.make_tensor_value_info("aes_score", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("aes_feat", TensorProto.FLOAT, ["batch", AES_FEAT_DIM]),
            helper.make_tensor_value_info("attributes", TensorProto.FLOAT, ["batch", N_ATTRIBUTES]),
            helper.make_tensor_value_info("content", TensorProto.FLOAT, ["batch", N_CONTENT]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {"pam_model_version": model_version,
                                   "pam_crop_policy": "tiny-test-whole-image"})
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
