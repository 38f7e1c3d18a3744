"""The `onnx` backend: ONNX exports of registry versions on ONNX Runtime GenAI."""
