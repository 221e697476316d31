"""Triton Python-backend model: the fused scoring graph through ONNX Runtime, on CPU.

export/triton_repo.py copies this file as `<repo>/pam_features/1/model.py` of the CPU flavor
repository, next to `model.onnx`. It runs inside tritonserver's Python stub, in the server's own
environment (scripts/triton-server.sh: numpy<2, onnxruntime), never in the project's.

Triton's dynamic batcher hands `execute` several requests at once; they are concatenated into
one ONNX Runtime call and the outputs split back per request.
"""

from __future__ import annotations

import json
import os

import numpy as np

MODEL_VERSION_KEY = "pam_model_version"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        if int(np.__version__.split(".")[0]) >= 2:
            # seen with tritonserver 2.51's stub: READY, answers, but every output is empty
            raise pb_utils.TritonModelException(
                f"numpy {np.__version__} in Triton's Python backend returns empty outputs; "
                "run the server from scripts/triton-server.sh's environment (numpy<2)")
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"],
                            params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(params.get("intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        graph_version = self.session.get_modelmeta().custom_metadata_map.get(MODEL_VERSION_KEY)
        if graph_version != params.get(MODEL_VERSION_KEY):
            raise pb_utils.TritonModelException(
                f"{path} is model version {graph_version!r} but config.pbtxt says "
                f"{params.get(MODEL_VERSION_KEY)!r}: rewrite the repository with pam export")
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests: list) -> list:
        pb = self._pb
        arrays = [pb.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            values = self.session.run(self.output_names, {self.input_name: batch})
        except Exception as exc:  # one failed run fails its requests, not the server
            error = pb.TritonError(f"onnxruntime failed: {exc}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            stop = start + len(array)
            tensors = [pb.Tensor(name, np.ascontiguousarray(value[start:stop]))
                       for name, value in zip(self.output_names, values, strict=True)]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses

    def finalize(self) -> None:
        self.session = None
