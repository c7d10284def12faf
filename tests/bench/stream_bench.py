"""Many small requests: 1-row requests from 64 clients, unary calls against streams.

Unary ``Models/Infer`` against ``Models/InferStream`` and the Open Inference Protocol's
``ModelStreamInfer``, on platform-mlp; unary ``SequenceBinding/Predict`` of one sequence against
``PredictStream`` (answers in request order), on deepbind-ctcf.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python -m tests.bench.stream_bench [--clients 64] [--window 8] [--duration 5] [--rounds 3]

One load generator (this process, ``grpc.aio`` on one channel) drives a real ``genoserve serve`` on
loopback. **Unary**: ``--clients`` tasks, each sending a 1-row Infer and waiting for its answer
before the next. **Streams**: ``--clients`` bidirectional streams, each keeping up to ``--window``
1-row requests in flight (a request is sent when an answer comes back). The modes alternate within
each round (rounds interleaved, medians reported); each phase warms up for 1 s first. Rows/s count
answered rows; the dynamic batcher's mean formed batch size comes from the server's /metrics
(``genoserve_batch_size`` sum/count over the phase). Client and server share this machine's cores.

Outputs: ``tests/bench/results/stream.json`` and ``tests/bench/results/stream.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np

from genoserve.api.codecs.tensor import from_numpy
from genoserve.inference import open_inference_pb2 as oip
from genoserve.inference import open_inference_pb2_grpc
from genoserve.v1 import binding_pb2, binding_pb2_grpc, models_pb2, models_pb2_grpc
from tests.bench.report import run_info
from tests.support.server import REPO, ServerProcess

RESULTS = REPO / "tests" / "bench" / "results"
MODEL = "platform-mlp"
BINDING = "deepbind-ctcf"
ROW = np.random.default_rng(0).normal(size=(1, 128)).astype(np.float32)
NATIVE = models_pb2.InferRequest(model=MODEL, inputs={"x": from_numpy(ROW)})
OPEN = oip.ModelInferRequest(
    model_name=MODEL,
    inputs=[oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 128])],
    raw_input_contents=[ROW.tobytes()],
)
SEQUENCE = binding_pb2.PredictRequest(
    model=BINDING,
    sequences=[binding_pb2.Sequence(id="s", bases="".join(np.random.default_rng(0).choice(list("ACGT"), 101)))],
)


def batch_counts(server: ServerProcess, model: str) -> tuple[float, float]:
    """(sum, count) of genoserve_batch_size for ``model``."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("genoserve_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("genoserve_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def unary(open_call: Callable[[grpc.aio.Channel], Any], request: Any) -> Callable[..., Any]:
    async def run(channel: grpc.aio.Channel, clients: int, window: int, until: float) -> int:
        call = open_call(channel)
        done = 0

        async def client() -> None:
            nonlocal done
            while time.monotonic() < until:
                await call(request, timeout=30)
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
        return done

    return run


def streaming(open_call: Callable[[grpc.aio.Channel], Any], request: Any) -> Callable[..., Any]:
    async def run(channel: grpc.aio.Channel, clients: int, window: int, until: float) -> int:
        done = 0

        async def client() -> None:
            nonlocal done
            credit = asyncio.Semaphore(window)

            async def requests() -> AsyncIterator[Any]:
                while time.monotonic() < until:
                    await credit.acquire()
                    yield request

            async for _ in open_call(channel)(requests(), timeout=60):
                done += 1
                credit.release()

        await asyncio.gather(*(client() for _ in range(clients)))
        return done

    return run


#: mode -> (model, runner); each stream mode is compared with the unary mode of its model.
MODES: dict[str, tuple[str, Callable[..., Any]]] = {
    "unary Infer": (MODEL, unary(lambda c: models_pb2_grpc.ModelsStub(c).Infer, NATIVE)),
    "Models/InferStream": (MODEL, streaming(lambda c: models_pb2_grpc.ModelsStub(c).InferStream, NATIVE)),
    "OIP ModelStreamInfer": (
        MODEL,
        streaming(lambda c: open_inference_pb2_grpc.GRPCInferenceServiceStub(c).ModelStreamInfer, OPEN),
    ),
    "unary Predict": (BINDING, unary(lambda c: binding_pb2_grpc.SequenceBindingStub(c).Predict, SEQUENCE)),
    "SequenceBinding/PredictStream": (
        BINDING,
        streaming(lambda c: binding_pb2_grpc.SequenceBindingStub(c).PredictStream, SEQUENCE),
    ),
}
UNARY = {MODEL: "unary Infer", BINDING: "unary Predict"}


async def phase(server: ServerProcess, mode: str, clients: int, window: int, seconds: float) -> dict[str, float]:
    model, run = MODES[mode]
    async with grpc.aio.insecure_channel(server.address) as channel:
        await run(channel, clients, window, time.monotonic() + 1.0)  # warm-up
        before = batch_counts(server, model)
        start = time.monotonic()
        rows = await run(channel, clients, window, start + seconds)
        elapsed = time.monotonic() - start
    after = batch_counts(server, model)
    batches = after[1] - before[1]
    return {"rows_per_s": rows / elapsed, "mean_batch": (after[0] - before[0]) / batches if batches else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with ServerProcess("--model", MODEL, "--model", BINDING, log_path=RESULTS / "stream-server.log") as server:
        for _ in range(args.rounds):
            for mode in MODES:
                rounds[mode].append(asyncio.run(phase(server, mode, args.clients, args.window, args.duration)))
    medians = {
        mode: {key: statistics.median(r[key] for r in runs) for key in ("rows_per_s", "mean_batch")}
        for mode, runs in rounds.items()
    }
    lines = [
        f"{args.clients} clients, 1-row requests ({MODEL}: one 128-float row; {BINDING}: one 101-bp sequence, "
        f"both strands); streams keep {args.window} requests in flight each; median of {args.rounds} interleaved "
        f"rounds of {args.duration:g} s. Rows are requests answered.",
        "",
        "| model | mode | rows/s | x unary | mean batch formed (model rows) |",
        "|---|---|---|---|---|",
    ]
    for mode, m in medians.items():
        model = MODES[mode][0]
        base = medians[UNARY[model]]["rows_per_s"]
        lines.append(
            f"| {model} | {mode} | {m['rows_per_s']:,.0f} | {m['rows_per_s'] / base:.2f} | {m['mean_batch']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream.md").write_text(table + "\n")
    payload = {"run": run_info(), "args": vars(args), "rounds": rounds, "medians": medians}
    (RESULTS / "stream.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
