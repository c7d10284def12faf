"""Cellpose-style nuclei model: simulator, compact U-Net, training and ONNX export."""
