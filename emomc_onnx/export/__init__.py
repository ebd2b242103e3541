"""emomc-onnx."""
