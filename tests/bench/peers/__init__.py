"""Peer servers for ``tests.bench.peers_bench``: KServe's and MLServer's Python model servers serving
genoserve's ONNX files, each run by the Python of its own bench-only virtualenv.

The modules here import neither genoserve nor the other peer's package (each venv has only its
server, onnxruntime and numpy): ``session`` makes the ONNX Runtime session every peer uses, with
the options genoserve's sessions have.
"""
