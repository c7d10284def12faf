"""MLServer serving ONNX files: a custom ``MLModel`` per file running its ONNX Runtime session, with
MLServer's adaptive batching on, over MLServer's gRPC Open Inference Protocol v2 (and its REST and
metrics ports, unused).

Run by ``tests.bench.peers_bench`` with ``.venv-bench-mlserver/bin/python`` from the repository
root::

    python -m tests.bench.peers.mlserver_server --grpc-port P --http-port Q --metrics-port R \\
        --model NAME=PATH [...] [--max-batch-size 64] [--max-batch-time 0.001]

Inference runs in the server process (``parallel_workers=0``: MLServer's worker pool would add a
process hop per request on a small machine) and ``debug`` logging is off, as ``mlserver start``
would be tuned for throughput; adaptive batching groups up to ``--max-batch-size`` requests, waiting
at most ``--max-batch-time`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from mlserver import MLModel, MLServer  # type: ignore[import-not-found]  # only in its bench venv
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]  # only in its bench venv
from mlserver.settings import ModelParameters, ModelSettings, Settings  # type: ignore[import-not-found]  # only in its bench venv
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]  # only in its bench venv
from mlserver.utils import install_uvloop_event_loop  # type: ignore[import-not-found]  # only in its bench venv

from tests.bench.peers.session import make_session, parse_model


class OnnxModel(MLModel):  # type: ignore[misc]
    """One ONNX file (``parameters.uri``): inputs by name in, every output out."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self.session: Any = make_session(self.settings.parameters.uri, int(extra.get("intra_op_threads", 0)))
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self.session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self.output_names, results, strict=True)],
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH of an ONNX file (repeatable)")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests per adaptive batch")
    parser.add_argument("--max-batch-time", type=float, default=0.001, help="seconds a batch waits to fill")
    args = parser.parse_args(argv)
    settings = Settings(
        debug=False,
        parallel_workers=0,
        host="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        load_models_at_startup=False,
    )
    models = [
        ModelSettings(
            name=name,
            implementation=OnnxModel,
            max_batch_size=args.max_batch_size,
            max_batch_time=args.max_batch_time,
            parameters=ModelParameters(uri=str(path), extra={"intra_op_threads": args.intra_op_threads}),
        )
        for name, path in map(parse_model, args.model)
    ]
    install_uvloop_event_loop()
    asyncio.run(serve(settings, models))


async def serve(settings: Settings, models: list[ModelSettings]) -> None:
    server = MLServer(settings)  # on the running loop: it installs signal handlers there
    await server.start(models)


if __name__ == "__main__":
    main()
