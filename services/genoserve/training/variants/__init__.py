"""Variant-calling model: read simulator, labelled pileups, a compact CNN, ONNX export."""
