"""Sequence-binding benchmark: gRPC ``Predict`` and ``binding.score_fasta`` vs raw ONNX Runtime.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python -m tests.bench.binding_bench [--duration 3] [--fasta-records 1000000]

One process run measures, on the committed ``deepbind-ctcf`` model (input ``x`` float32
``[batch, 101, 4]`` -> ``logit`` ``[batch, 1]``), side by side:

* **latency, 256 x 101 bp** (sequential, concurrency 1), p50 / p99 of:
  *raw model* = ``InferenceSession.run`` on the one-hot batch, forward strand only (what the Kipoi
  figure, 2.4 ms for 256 x 101 bp, measures: the model alone); *raw, as served* = the same work the
  server does without gRPC: one-hot encoding of the 256 strings, both strands in one batch of 512,
  ``run``, strand max; *served* = ``genoserve.client.Client.predict_sequences`` against a real
  ``genoserve serve`` subprocess on loopback, the model's default strand (max), and with
  ``strand=forward`` (the model-only work through gRPC). Goal: served p50 <= 2.4 ms.
* **64 concurrent clients, one sequence each**: 64 asyncio tasks, each sending one-sequence
  ``Predict`` requests back to back on a shared ``grpc.aio`` channel, against the committed model
  (dynamic batching: max batch 512, no queue delay) and against a copy of it whose model.yaml sets
  ``max_batch_size: 1`` (batching off); sequences/s, latency, and the mean batch the batcher formed
  (from the server's /metrics). Goal: batching on / off >= 10.
* **``binding.score_fasta`` on ``--fasta-records`` x 101 bp** (seeded random sequence, one FASTA
  file): a real server and one ``genoserve worker`` (embedded broker, default job settings:
  shard_size 100,000, worker batch 1024); sequences/s end to end (submit -> job finished) vs raw
  ONNX Runtime doing the model work on the same sequences held in memory (one-hot encode, both
  strands, batch 1024, strand max), measured right before the job; the job's output is checked
  against raw ONNX Runtime's (untimed). Goal: >= 0.80 of raw.

The client, the server, the worker and ONNX Runtime share this machine's cores (``os.cpu_count()``
is in the output): on a small machine that is part of what is measured, not corrected for. The
1-minute load average before each point is recorded so a busy machine is visible.

Outputs: ``tests/bench/results/binding.json`` and ``tests/bench/results/binding.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import yaml

from genoserve.binding import encoding, strands
from genoserve.client import Client
from genoserve.v1 import binding_pb2, binding_pb2_grpc, jobs_pb2
from tests.bench.platform_bench import batcher_stats, run_for, summarize
from tests.bench.report import run_info
from tests.support.jobs import WorkerProcess, wait_for_job, write_config
from tests.support.server import REPO, ServerProcess

Array = np.ndarray[Any, Any]

MODEL = "deepbind-ctcf"
MODEL_DIR = REPO / "models" / MODEL
RESULTS = REPO / "tests" / "bench" / "results"
LENGTH = 101
LATENCY_BATCH = 256
CLIENTS = 64
WORKER_BATCH = 1024
GOAL_P50_MS = 2.4
GOAL_BATCHING_RATIO = 10.0
GOAL_JOB_RATIO = 0.80
JOB_TIMEOUT_S = 1800.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def random_sequences(n: int, seed: int) -> list[str]:
    codes = np.random.default_rng(seed).integers(0, 4, size=(n, LENGTH), dtype=np.uint8)
    table = np.frombuffer(b"ACGT", dtype=np.uint8)
    return [row.tobytes().decode() for row in table[codes]]


def model_session() -> ort.InferenceSession:
    """The session as the server builds it by default: CPU provider, ONNX Runtime default threads."""
    version = max(v["version"] for v in yaml.safe_load((MODEL_DIR / "model.yaml").read_text())["versions"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(MODEL_DIR / str(version) / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )


def as_served(session: ort.InferenceSession, sequences: list[str]) -> Array:
    """The server's work without gRPC: encode, both strands in one batch, run, strand max -> [n, 1]."""
    batch = encoding.one_hot(sequences)
    out = session.run(["logit"], {"x": strands.with_reverse(batch, "max")})[0]
    return strands.combine(out, "max")


def latency(call: Any, duration: float, warmup: float) -> dict[str, float]:
    run_for(call, warmup)
    times: list[float] = []
    end = time.perf_counter() + duration
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= end:
            return {**summarize(times), "loadavg_1m": os.getloadavg()[0]}


async def _concurrent(
    address: str, sequences: list[str], duration: float, warmup: float, metrics_url: str
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = binding_pb2_grpc.SequenceBindingStub(channel)
        phase = {"measuring": False, "stop": False}
        counts = [0] * CLIENTS
        times: list[float] = []

        async def client(i: int) -> None:
            request = binding_pb2.PredictRequest(
                model=MODEL, sequences=[binding_pb2.Sequence(id=f"s{i}", bases=sequences[i])]
            )
            while not phase["stop"]:
                t0 = time.perf_counter()
                await stub.Predict(request, timeout=30)
                if phase["measuring"] and not phase["stop"]:
                    times.append(time.perf_counter() - t0)
                    counts[i] += 1

        tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
        await asyncio.sleep(warmup)
        before = batcher_stats(metrics_url, MODEL)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        phase["measuring"] = True
        await asyncio.sleep(duration)
        phase["stop"] = True
        elapsed = time.perf_counter() - t0
        after = batcher_stats(metrics_url, MODEL)
        await asyncio.gather(*tasks)
    calls = after[1] - before[1]
    return {
        "sequences_per_s": sum(counts) / elapsed,
        **summarize(times),
        "mean_formed_batch": (after[0] - before[0]) / calls if calls else None,
        "loadavg_1m": load,
    }


def concurrent(model_dir: Path, sequences: list[str], duration: float, warmup: float, log: Path) -> dict[str, Any]:
    with ServerProcess(model_dir=model_dir, log_path=log) as server:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        return asyncio.run(_concurrent(server.address, sequences, duration, warmup, url))


def unbatched_copy(root: Path) -> Path:
    """The committed model with ``max_batch_size: 1``: every request is its own session call."""
    models = root / "unbatched"
    shutil.copytree(MODEL_DIR, models / MODEL)
    spec_path = models / MODEL / "model.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["batching"] = {**spec.get("batching", {}), "max_batch_size": 1}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return models


def write_fasta(path: Path, sequences: list[str]) -> None:
    with path.open("w") as fh:
        for i, bases in enumerate(sequences):
            fh.write(f">r{i}\n{bases}\n")


def raw_job_rate(session: ort.InferenceSession, sequences: list[str]) -> tuple[float, Array]:
    """Sequences/s of raw ONNX Runtime doing the job's model work, and its logits [n, 1]."""
    t0 = time.perf_counter()
    parts = [as_served(session, sequences[i : i + WORKER_BATCH]) for i in range(0, len(sequences), WORKER_BATCH)]
    elapsed = time.perf_counter() - t0
    return len(sequences) / elapsed, np.concatenate(parts)


def score_fasta_job(root: Path, sequences: list[str]) -> dict[str, Any]:
    fasta = root / "bench.fa"
    write_fasta(fasta, sequences)
    config = write_config(root, shard_lease_s=120.0, sweep_interval_s=5.0)
    session = model_session()
    raw_job_rate(session, sequences[:10_000])  # warm-up
    raw_rate, expected = raw_job_rate(session, sequences)
    del session  # its threads must not compete with the worker
    worker = WorkerProcess(config, RESULTS / "binding-worker.log", "--queues", "binding").start()
    try:
        server_log = RESULTS / "binding-job-server.log"
        with ServerProcess("--config", str(config), log_path=server_log) as server, Client(server.address) as client:
            warm = root / "warm.fa"
            write_fasta(warm, sequences[:1000])
            job = client.submit_job("binding.score_fasta", [str(warm)], str(root / "warm"), {"model": MODEL})
            assert wait_for_job(client, job.id, timeout=120).state == jobs_pb2.JOB_STATE_SUCCEEDED
            load = os.getloadavg()[0]
            submitted = time.time()
            job = client.submit_job("binding.score_fasta", [str(fasta)], str(root / "out"), {"model": MODEL})
            final = wait_for_job(client, job.id, timeout=JOB_TIMEOUT_S)
            seen = time.time()
    finally:
        worker.stop()
    if final.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"score_fasta job ended {final.state}: {final.error}")
    finished = final.finished_at.ToDatetime(tzinfo=dt.UTC).timestamp()
    table = pq.read_table(final.outputs[0])
    assert table.column("id").to_pylist()[:3] == ["r0", "r1", "r2"]
    np.testing.assert_allclose(table.column("CTCF_logit").to_numpy(), expected[:, 0], rtol=1e-4, atol=1e-4)
    e2e = finished - submitted
    return {
        "records": len(sequences),
        "shards": final.shards_total,
        "raw_sequences_per_s": raw_rate,
        "job_e2e_s": e2e,
        "job_sequences_per_s": len(sequences) / e2e,
        "ratio": len(sequences) / e2e / raw_rate,
        "client_seen_s": seen - submitted,
        "fasta_mb": fasta.stat().st_size / 1e6,
        "loadavg_1m": load,
    }


def markdown(report: dict[str, Any]) -> str:
    env, lat, conc, job, goals = (report[k] for k in ("environment", "latency", "concurrent", "score_fasta", "goals"))
    lines = [
        f"# Sequence-binding benchmark ({env['date']}, {env['cpu_count']} cores, {env['processor']})",
        "",
        f"Model `{MODEL}`; onnxruntime {env['onnxruntime']}, grpcio {env['grpcio']}. "
        "Client, server, worker and ONNX Runtime share the cores.",
        "",
        "## Latency, 256 x 101 bp, concurrency 1",
        "",
        "| path | p50 ms | p99 ms | mean ms | load 1m |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in lat.items():
        lines.append(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} | {row['loadavg_1m']:.2f} |"
        )
    lines += [
        "",
        f"## {CLIENTS} concurrent clients, one sequence per request",
        "",
        "| batching | sequences/s | p50 ms | p99 ms | mean formed batch | load 1m |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in conc.items():
        batch = row["mean_formed_batch"]
        lines.append(
            f"| {name} | {row['sequences_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{batch:.1f} | {row['loadavg_1m']:.2f} |"
            if batch is not None
            else f"| {name} | - | - | - | - | - |"
        )
    lines += [
        "",
        f"## binding.score_fasta, {job['records']:,} x 101 bp "
        f"({job['fasta_mb']:.0f} MB FASTA, {job['shards']} shards, 1 worker)",
        "",
        "| raw ONNX Runtime seq/s | job seq/s (end to end) | job / raw | job seconds | load 1m |",
        "|---:|---:|---:|---:|---:|",
        f"| {job['raw_sequences_per_s']:,.0f} | {job['job_sequences_per_s']:,.0f} | {job['ratio']:.3f} | "
        f"{job['job_e2e_s']:.1f} | {job['loadavg_1m']:.2f} |",
        "",
        "## Goals",
        "",
        "| goal | measured | target | result |",
        "|---|---:|---:|---|",
    ]
    for name, goal in goals.items():
        lines.append(f"| {name} | {goal['measured']:.3f} | {goal['target']} | {'PASS' if goal['pass'] else 'FAIL'} |")
    lines += ["", f"Total runtime {report['runtime_s']:.0f} s.", ""]
    return "\n".join(lines)


def raw_latency(batch: list[str], duration: float, warmup: float) -> tuple[Array, dict[str, dict[str, float]]]:
    """(strand-max logits of ``batch``, latency of the raw paths); the session is freed on return."""
    session = model_session()
    one_hot = encoding.one_hot(batch)
    return as_served(session, batch), {
        "raw model (forward strand only)": latency(lambda: session.run(["logit"], {"x": one_hot}), duration, warmup),
        "raw, as served (encode + both strands + max)": latency(lambda: as_served(session, batch), duration, warmup),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per point")
    parser.add_argument("--fasta-records", type=int, default=1_000_000, help="sequences in the score_fasta job")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    batch = random_sequences(LATENCY_BATCH, seed=0)
    reference, lat = raw_latency(batch, args.duration, args.warmup)
    say(f"raw latency: {lat}")
    pairs = [(f"s{i}", b) for i, b in enumerate(batch)]
    with (
        ServerProcess(log_path=RESULTS / "binding-server.log") as server,
        Client(server.address, max_attempts=1) as client,
    ):
        got = client.predict_sequences(MODEL, pairs)
        logits = np.array([list(r.logits) for r in got.results], dtype=np.float32)
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)  # same work, same answers
        lat["served (gRPC Predict, strand max)"] = latency(
            lambda: client.predict_sequences(MODEL, pairs), args.duration, args.warmup
        )
        lat["served (gRPC Predict, strand forward)"] = latency(
            lambda: client.predict_sequences(MODEL, pairs, strand="forward"), args.duration, args.warmup
        )
    say(f"served latency: {lat}")

    singles = random_sequences(CLIENTS, seed=1)
    with tempfile.TemporaryDirectory(prefix="binding-bench-") as tmp:
        conc = {
            "on (committed model.yaml)": concurrent(
                REPO / "models", singles, args.duration, args.warmup, RESULTS / "binding-server-batched.log"
            ),
            "off (max_batch_size 1)": concurrent(
                unbatched_copy(Path(tmp)), singles, args.duration, args.warmup, RESULTS / "binding-server-unbatched.log"
            ),
        }
    say(f"concurrent: {conc}")

    with tempfile.TemporaryDirectory(prefix="binding-bench-job-", dir=RESULTS) as tmp:
        job = score_fasta_job(Path(tmp), random_sequences(args.fasta_records, seed=2))
    say(f"score_fasta: {job}")

    served_p50 = lat["served (gRPC Predict, strand max)"]["p50_ms"]
    batching_ratio = (
        conc["on (committed model.yaml)"]["sequences_per_s"] / conc["off (max_batch_size 1)"]["sequences_per_s"]
    )
    report: dict[str, Any] = {
        "run": run_info(),
        "environment": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "grpcio": grpc.__version__,
            "duration_s": args.duration,
        },
        "latency": lat,
        "concurrent": conc,
        "score_fasta": job,
        "goals": {
            "served p50 ms, 256 x 101 bp (strand max)": {
                "measured": served_p50,
                "target": GOAL_P50_MS,
                "pass": served_p50 <= GOAL_P50_MS,
            },
            "64 clients: batching on / off": {
                "measured": batching_ratio,
                "target": GOAL_BATCHING_RATIO,
                "pass": batching_ratio >= GOAL_BATCHING_RATIO,
            },
            "score_fasta / raw": {
                "measured": job["ratio"],
                "target": GOAL_JOB_RATIO,
                "pass": job["ratio"] >= GOAL_JOB_RATIO,
            },
        },
        "runtime_s": time.perf_counter() - started,
    }
    (RESULTS / "binding.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (RESULTS / "binding.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
