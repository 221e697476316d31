"""An INT8 CPU variant of the fused graph: ONNX Runtime static quantization (QDQ format), weights
int8 per output channel, activations uint8 calibrated on real photos.

Only the compute-bound convolutions are quantized: dense (group 1) convs whose output is at most
14x14 (max_spatial), which hold most of the FLOPs. The first conv (it sees the image), depthwise
convs and the high-resolution layers stay float32: they are memory-bound, so INT8 gains little
there once the quantize/dequantize traffic is paid, and they caused most of the error (measured
on efficientnet_lite0: every conv INT8 gave score rho 0.90 against float32 and 1.35x the speed;
this selection rho 0.998 and 1.19x; docs/networks.md).

The quantized graph keeps the I/O contract; its outputs differ from float32, so it carries its
own model version (`<version>-int8`): the service never mixes rows of two versions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .onnx_export import CROP_POLICY_KEY, INPUT_NAME, MODEL_VERSION_KEY, read_metadata

INT8_SUFFIX = "-int8"
MAX_SPATIAL = 14


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over batches of uint8 images."""

    def __init__(self, images: np.ndarray, batch: int):
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]

    def get_next(self):
        return {INPUT_NAME: np.ascontiguousarray(self._batches.pop(0))} if self._batches else None

    def rewind(self):  # pragma: no cover - not needed for one MinMax pass
        pass


def convs_to_quantize(model, max_spatial: int = MAX_SPATIAL) -> list[str]:
    """Names of the dense convs, other than the first, whose output is at most max_spatial wide
    (the model must carry shape information, as quant_pre_process leaves it)."""
    import onnx

    widths = {vi.name: vi.type.tensor_type.shape.dim[-1].dim_value
              for vi in [*model.graph.value_info, *model.graph.output]
              if vi.type.tensor_type.HasField("shape") and len(vi.type.tensor_type.shape.dim) == 4}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    chosen = []
    for node in convs[1:]:
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        width = widths.get(node.output[0], 0)
        if group == 1 and 0 < width <= max_spatial:
            chosen.append(node.name)
    return chosen


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  batch: int = 8, method: str = "minmax", max_spatial: int = MAX_SPATIAL) -> Path:
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
        nodes = convs_to_quantize(onnx.load(str(prepared)), max_spatial)
        if not nodes:
            raise ValueError(f"no dense conv with outputs of at most {max_spatial}x{max_spatial} to quantize")
        quantize_static(
            str(prepared), str(int8_path), _Reader(calibration, batch),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], nodes_to_quantize=nodes,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax,
                              "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method])
    model = onnx.load(str(int8_path))
    metadata[MODEL_VERSION_KEY] = metadata.get(MODEL_VERSION_KEY, "unknown") + INT8_SUFFIX
    metadata.setdefault(CROP_POLICY_KEY, "five-crop-224-mean")
    metadata["pam_quantization"] = (f"int8 static QDQ: {len(nodes)} dense convs of at most "
                                    f"{max_spatial}x{max_spatial}, per-channel weights, {method} "
                                    f"calibration on {len(calibration)} photos")
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(int8_path), save_as_external_data=False)
    return int8_path
