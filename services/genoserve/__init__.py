"""genoserve: serve genomics deep-learning models over gRPC."""

__version__ = "0.1.0"
