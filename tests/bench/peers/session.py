"""The ONNX Runtime session a peer server runs, with genoserve's session options
(``genoserve.runtime.session.OrtSession``): all graph optimisations, idle threads not spinning, and
the intra-op thread count genoserve's placement chose (0: ONNX Runtime's default).

Imports only onnxruntime: it runs in the peers' virtualenvs.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def make_session(path: str | Path, intra_op_threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def parse_model(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` (a ``--model`` argument of the peer launchers)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--model takes NAME=PATH, got {spec!r}")
    return name, Path(path)
