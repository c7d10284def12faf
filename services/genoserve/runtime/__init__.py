"""Model repository, ONNX Runtime sessions and the dynamic batcher."""
