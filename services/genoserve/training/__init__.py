"""Model definitions, simulators, training and ONNX export (the ``train`` extra; never imported by
the server)."""
