"""Feature backends: uint8[B, 256, 256, 3] -> {aes_score, aes_feat, attributes, content}.

Two implementations share one contract (tests/backends): ONNX Runtime in-process (the embedded
default) and a Triton server through tritonclient. Training and export own the graph; these only
run it. Never imports torch.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from personalize.features import AES_FEAT_DIM, FEATURE_NAMES, N_ATTRIBUTES, N_CONTENT

INPUT_NAME = "images"
MODEL_VERSION_KEY = "pam_model_version"
CROP_POLICY_KEY = "pam_crop_policy"


@runtime_checkable
class FeatureBackend(Protocol):
    model_version: str
    max_batch_size: int

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images uint8 [B, 256, 256, 3] -> aes_score f32[B], aes_feat f32[B, 176],
        attributes f32[B, 10], content f32[B, 10]."""
        ...

    def close(self) -> None: ...


def check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (256, 256, 3):
        raise ValueError(f"expected uint8 [B, 256, 256, 3], got {images.dtype} {list(images.shape)}")
    return np.ascontiguousarray(images)


def normalise_outputs(outputs: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Shapes of the contract: aes_score [B] (the graph gives [B, 1]), the rest [B, D], float32."""
    shapes = {"aes_score": (batch,), "aes_feat": (batch, AES_FEAT_DIM),
              "attributes": (batch, N_ATTRIBUTES), "content": (batch, N_CONTENT)}
    result = {}
    for name in FEATURE_NAMES:
        value = np.asarray(outputs[name], dtype=np.float32)
        result[name] = value.reshape(shapes[name])
    return result


class OnnxRuntimeBackend:
    """The fused scoring graph in ONNX Runtime, in this process."""

    def __init__(self, model_path: str | os.PathLike, intra_op_threads: int | None = None,
                 max_batch_size: int = 32):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.model_path = str(model_path)
        self._session = ort.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
        metadata = self._session.get_modelmeta().custom_metadata_map
        if MODEL_VERSION_KEY not in metadata:
            raise ValueError(f"{model_path} has no {MODEL_VERSION_KEY} in its metadata: not a pam export")
        self.model_version = metadata[MODEL_VERSION_KEY]
        self.crop_policy = metadata.get(CROP_POLICY_KEY, "")
        self.max_batch_size = max_batch_size
        self._output_names = [o.name for o in self._session.get_outputs()]
        missing = set(FEATURE_NAMES) - set(self._output_names)
        if missing:
            raise ValueError(f"{model_path} lacks outputs {sorted(missing)}")

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = check_images(images)
        parts = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start:start + self.max_batch_size]
            values = self._session.run(self._output_names, {INPUT_NAME: chunk})
            parts.append(normalise_outputs(dict(zip(self._output_names, values, strict=True)), len(chunk)))
        if not parts:
            return normalise_outputs({n: np.zeros((0, 1)) for n in FEATURE_NAMES}, 0)
        return {name: np.concatenate([p[name] for p in parts]) for name in FEATURE_NAMES}

    def close(self) -> None:
        self._session = None
