"""KServe's Python model server (``kserve.ModelServer``) serving ONNX files: one ``kserve.Model`` per
file, running its ONNX Runtime session inline in ``predict`` (no batching), over KServe's gRPC Open
Inference Protocol v2 (and its REST port, unused).

Run by ``tests.bench.peers_bench`` with ``.venv-bench-kserve/bin/python`` from the repository root::

    python -m tests.bench.peers.kserve_server --grpc-port P --http-port Q --model NAME=PATH [...]

Per-request latency log lines are off (``enable_latency_logging=False``): genoserve logs no line per
request either, and a log line per call would be a cost of the benchmark's choosing, not KServe's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import kserve  # type: ignore[import-not-found]  # only in its bench venv
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.utils.utils import from_np_dtype  # type: ignore[import-not-found]  # only in its bench venv

from tests.bench.peers.session import make_session, parse_model


class OnnxModel(kserve.Model):  # type: ignore[misc]
    """One ONNX file: inputs by name in, every output out (raw when the request was raw)."""

    def __init__(self, name: str, path: Path, intra_op_threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.intra_op_threads = intra_op_threads
        self.session: Any = None
        self.load()

    def load(self) -> bool:
        self.session = make_session(self.path, self.intra_op_threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = []
        for name, array in zip(self.outputs, results, strict=True):
            output = InferOutput(name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype))
            output.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX file (repeatable)")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # kserve's own argument parser reads sys.argv too
    models = [OnnxModel(name, path, args.intra_op_threads) for name, path in map(parse_model, args.model)]
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=False
    )
    server.start(models)


if __name__ == "__main__":
    main()
