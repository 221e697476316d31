"""Feature backends: the fused five-crop graph in ONNX Runtime, or a Triton server."""
