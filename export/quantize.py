"""An INT8 CPU variant of the fused graph: ONNX Runtime static quantization (QDQ format), weights
int8 per output channel (depthwise convs need it), activations uint8 calibrated on real photos.

The quantized graph keeps the I/O contract; its outputs differ from float32, so it carries its
own model version (`<version>-int8`): the service never mixes rows of two versions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .onnx_export import CROP_POLICY_KEY, INPUT_NAME, MODEL_VERSION_KEY, read_metadata

INT8_SUFFIX = "-int8"
# The trunk and the 5b blocks; the tiny linear heads and the softmax stay float (cheap, and the
# scores and probabilities keep their float precision).
OPS_TO_QUANTIZE = ("Conv",)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over batches of uint8 images."""

    def __init__(self, images: np.ndarray, batch: int):
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]

    def get_next(self):
        return {INPUT_NAME: np.ascontiguousarray(self._batches.pop(0))} if self._batches else None

    def rewind(self):  # pragma: no cover - not needed for one MinMax pass
        pass


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  batch: int = 8, method: str = "minmax") -> Path:
    """Write the INT8 graph of `fp32_path`, calibrated on `calibration` (uint8 [N, 256, 256, 3])."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if calibration.ndim != 4 or calibration.shape[1:] != (256, 256, 3) or calibration.dtype != np.uint8:
        raise ValueError("calibration images must be uint8 [N, 256, 256, 3]")
    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one photo")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    metadata = read_metadata(fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(int8_path), _Reader(calibration, batch),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(OPS_TO_QUANTIZE),
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method])
    model = onnx.load(str(int8_path))
    metadata[MODEL_VERSION_KEY] = metadata.get(MODEL_VERSION_KEY, "unknown") + INT8_SUFFIX
    metadata.setdefault(CROP_POLICY_KEY, "five-crop-224-mean")
    metadata["pam_quantization"] = f"int8 static QDQ, per-channel weights, {method} calibration on {len(calibration)} photos"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(int8_path), save_as_external_data=False)
    return int8_path
