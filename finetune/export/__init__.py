"""Exports of registry versions for other runtimes, each checked against eager PyTorch and
registered with its parent: ONNX through ONNX Runtime GenAI's model builder."""
