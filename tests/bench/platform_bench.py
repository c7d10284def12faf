"""Platform benchmark: raw ONNX Runtime vs. the same work through the genoserve gRPC server.

Run from the repository root (``make bench`` does exactly this)::

    .venv/bin/python -m tests.bench.platform_bench [--duration 3] [--warmup 0.5]

One process run measures, on the platform test model ``models/platform-mlp`` (input ``x`` float32
``[batch, 128]`` -> output ``y`` float32 ``[batch, 16]``):

* **latency** (sequential requests, concurrency 1) at batch 1 and batch 256: p50 / p99 of
  ``onnxruntime.InferenceSession.run`` (CPU provider, ONNX Runtime's default threads, as the
  server's default settings) and of ``genoserve.client.Client.infer`` against a real
  ``genoserve serve`` subprocess on loopback (end to end as a user sees it: encode, gRPC, batcher,
  session, decode); "added p50" = served p50 - raw p50;
* **throughput** (items/s) of the server at concurrency 1 / 8 / 32 / 128 (asyncio tasks sharing one
  ``grpc.aio`` channel, each sending batch-1 or batch-256 requests back to back), and of raw ONNX
  Runtime at saturation (batch 256 in a loop, from 1, 2 and 4 threads, measured before the server
  starts and again after it stops, to show the machine's noise; the best of all counts);
* the ratio served / raw at saturation (best served point over best raw point), and pass/fail
  against the issue's goals: served throughput >= 90 % of raw, added p50 <= 0.5 ms at batch 256.

Each point warms up, then runs for a fixed duration. CPU time used by this (client) process and by
the server process is recorded per point, and the dynamic batcher's mean formed batch size is read
from the server's ``/metrics``. The client, the server and ONNX Runtime share this machine's cores
(``os.cpu_count()`` is in the output): on a small machine the client's own CPU use competes with
the server, and that is part of what is measured, not corrected for.

Outputs: ``tests/bench/results/platform.json`` and ``tests/bench/results/platform.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import platform
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from genoserve.client import AsyncClient, Client
from tests.bench.report import run_info
from tests.support.cpu import process_cpu_s
from tests.support.server import REPO, ServerProcess

Array = np.ndarray[Any, Any]

MODEL = "platform-mlp"
MODEL_PATH = REPO / "models" / MODEL / "1" / "model.onnx"
RESULTS = REPO / "tests" / "bench" / "results"
LATENCY_BATCHES = (1, 256)
CONCURRENCIES = (1, 8, 32, 128)
SERVED_BATCHES = (1, 256)
RAW_THREADS = (1, 2, 4)
SATURATION_BATCH = 256
GOAL_RATIO = 0.90
GOAL_ADDED_P50_MS = 0.5
#: Above this many cores used by other processes during a point, the point is flagged as noisy.
NOISY_OTHER_CORES = 0.25


# -- measurement helpers ----------------------------------------------------------------------


def summarize(latencies_s: list[float]) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds over per-request latencies in seconds."""
    a = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "requests": len(latencies_s),
    }


def machine_busy_s() -> float | None:
    """CPU seconds all processes on this machine have used (user+nice+system+irq+softirq+steal)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU cores used (CPU seconds per wall second) by this process, the server, and anything else.

    ``other_cores`` is what the rest of the machine used meanwhile: non-zero means the benchmark
    did not have the machine to itself and its numbers are lower than they would be.
    """

    server_pid: int | None = None
    result: dict[str, float | None] = field(default_factory=dict)

    @contextmanager
    def measure(self) -> Iterator[None]:
        wall, own = time.perf_counter(), time.process_time()
        server = process_cpu_s(self.server_pid) if self.server_pid else None
        busy = machine_busy_s()
        yield
        elapsed = time.perf_counter() - wall
        busy_after = machine_busy_s()
        client_cores = (time.process_time() - own) / elapsed
        self.result = {"client_cores": client_cores}
        server_cores = 0.0
        if self.server_pid:
            after = process_cpu_s(self.server_pid)
            used = after - server if after is not None and server is not None else None
            self.result["server_cores"] = used / elapsed if used is not None else None
            server_cores = used / elapsed if used is not None else 0.0
        if busy is not None and busy_after is not None:
            others = (busy_after - busy) / elapsed - client_cores - server_cores
            self.result["other_cores"] = max(0.0, others)


def batcher_stats(metrics_url: str, model: str = MODEL) -> tuple[float, float]:
    """(sum, count) of ``genoserve_batch_size`` for ``model``, from the server's /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    found: dict[str, float] = {}
    for kind in ("sum", "count"):
        match = re.search(rf'^genoserve_batch_size_{kind}\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
        found[kind] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


# -- raw ONNX Runtime ---------------------------------------------------------------------------


def raw_session() -> ort.InferenceSession:
    """The session as the server builds it by default: CPU provider, ONNX Runtime default threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(MODEL_PATH), sess_options=options, providers=["CPUExecutionProvider"])


def sequential_latency(
    call: Callable[[], object], duration: float, warmup: float, server_pid: int | None = None
) -> dict[str, Any]:
    """Latency percentiles of ``call`` made back to back (concurrency 1) for ``duration`` seconds."""
    run_for(call, warmup)
    latencies: list[float] = []
    meter = CpuMeter(server_pid)
    with meter.measure():
        end = time.perf_counter() + duration
        while True:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            if t1 >= end:
                break
    return {**summarize(latencies), **meter.result}


def run_for(fn: Callable[[], object], seconds: float) -> int:
    """Call ``fn`` repeatedly for ``seconds``; returns the number of calls."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
        n += 1
    return n


def raw_throughput(
    session: ort.InferenceSession, x: Array, threads: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Items/s of ``session.run`` on ``x`` called back to back from ``threads`` Python threads."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        run_for(lambda: session.run(["y"], {"x": x}), warmup)
        start.wait()
        counts[i] = run_for(lambda: session.run(["y"], {"x": x}), duration)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    meter = CpuMeter()
    start.wait()
    with meter.measure():
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
    items = sum(counts) * x.shape[0]
    return {"threads": threads, "batch": int(x.shape[0]), "items_per_s": items / elapsed, **meter.result}


# -- served -------------------------------------------------------------------------------------


async def _served_throughput(
    address: str, x: Array, concurrency: int, duration: float, warmup: float, meter: CpuMeter, metrics_url: str
) -> dict[str, Any]:
    async with AsyncClient(address, max_attempts=1) as client:
        phase = {"measuring": False, "stop": False}
        latencies: list[float] = []
        counts = [0] * concurrency

        async def worker(i: int) -> None:
            while not phase["stop"]:
                t0 = time.perf_counter()
                await client.infer(MODEL, {"x": x})
                if phase["measuring"] and not phase["stop"]:
                    latencies.append(time.perf_counter() - t0)
                    counts[i] += 1

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup)
        before = batcher_stats(metrics_url)
        with meter.measure():
            t0 = time.perf_counter()
            phase["measuring"] = True
            await asyncio.sleep(duration)
            phase["stop"] = True
            elapsed = time.perf_counter() - t0
        after = batcher_stats(metrics_url)
        await asyncio.gather(*tasks)
    calls = after[1] - before[1]
    return {
        "concurrency": concurrency,
        "batch": int(x.shape[0]),
        "items_per_s": sum(counts) * x.shape[0] / elapsed,
        "requests_per_s": sum(counts) / elapsed,
        **summarize(latencies),
        "mean_formed_batch": (after[0] - before[0]) / calls if calls else None,
        **meter.result,
    }


def served_throughput(
    address: str, x: Array, concurrency: int, duration: float, warmup: float, server_pid: int, metrics_url: str
) -> dict[str, Any]:
    meter = CpuMeter(server_pid)
    return asyncio.run(_served_throughput(address, x, concurrency, duration, warmup, meter, metrics_url))


# -- report -------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _noisy(row: dict[str, Any]) -> bool:
    return bool((row.get("other_cores") or 0.0) > NOISY_OTHER_CORES)


def markdown(report: dict[str, Any]) -> str:
    env, lat, thr, goals = report["environment"], report["latency"], report["throughput"], report["goals"]
    lines = [
        f"# genoserve platform benchmark ({env['date']})",
        "",
        f"Model `{MODEL}` (x float32 [batch,128] -> y float32 [batch,16]), CPU provider, ONNX Runtime "
        f"{env['onnxruntime']}, grpcio {env['grpcio']}, Python {env['python']}, {env['platform']}, "
        f"**os.cpu_count() = {env['cpu_count']}** shared by the benchmark client, the server and ONNX Runtime. "
        f"{env['duration_s']} s per point after {env['warmup_s']} s warm-up. Load average at start: "
        f"{env['loadavg_at_start']}. *cores* columns: CPU seconds per wall second used by the benchmark "
        "process, the server process, and the rest of the machine (non-zero *other*: not a quiet machine).",
        "",
        "## Latency (sequential, concurrency 1)",
        "",
        "| batch | raw p50 ms | raw p99 ms | served p50 ms | served p99 ms | added p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in lat:
        lines.append(
            f"| {row['batch']} | {_f(row['raw']['p50_ms'], 3)} | {_f(row['raw']['p99_ms'], 3)} "
            f"| {_f(row['served']['p50_ms'], 3)} | {_f(row['served']['p99_ms'], 3)} | {_f(row['added_p50_ms'], 3)} |"
        )
    lines += [
        "",
        "## Throughput, raw ONNX Runtime (batch 256, back-to-back session.run)",
        "",
        "| measured | threads | items/s | cores used | other cores |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in thr["raw"]:
        lines.append(
            f"| {row['when']} | {row['threads']} | {_f(row['items_per_s'], 0)} | {_f(row['client_cores'])} "
            f"| {_f(row.get('other_cores'))} |"
        )
    lines += [
        "",
        "## Throughput, served (asyncio clients on one grpc.aio channel)",
        "",
        "| batch/request | concurrency | items/s | requests/s | p50 ms | p99 ms | mean formed batch "
        "| served / raw | client cores | server cores | other cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in thr["served"]:
        lines.append(
            f"| {row['batch']} | {row['concurrency']} | {_f(row['items_per_s'], 0)} | {_f(row['requests_per_s'], 0)} "
            f"| {_f(row['p50_ms'], 3)} | {_f(row['p99_ms'], 3)} | {_f(row['mean_formed_batch'], 1)} "
            f"| {_f(row['ratio_to_raw'], 3)} | {_f(row['client_cores'])} | {_f(row['server_cores'])} "
            f"| {_f(row.get('other_cores'))} |"
        )
    sat = thr["saturation"]
    lines += [
        "",
        "## Goals",
        "",
        "| goal | measured | target | result |",
        "|---|---:|---:|---|",
        f"| served ÷ raw throughput at saturation | {_f(sat['ratio'], 3)} "
        f"({_f(sat['served_items_per_s'], 0)} ÷ {_f(sat['raw_items_per_s'], 0)} items/s) "
        f"| ≥ {GOAL_RATIO:.2f} | {'PASS' if goals['throughput_ratio']['pass'] else 'FAIL'} |",
        f"| added p50 latency at batch 256 | {_f(goals['added_p50_ms_batch256']['measured'], 3)} ms "
        f"| ≤ {GOAL_ADDED_P50_MS} ms | {'PASS' if goals['added_p50_ms_batch256']['pass'] else 'FAIL'} |",
        "",
        f"Saturation: best raw = {sat['raw_best']}; best served = {sat['served_best']}. Total runtime "
        f"{report['runtime_s']:.0f} s.",
    ]
    noisy = report["noisy_points"]
    if noisy:
        lines += [
            "",
            f"**Warning: the machine was not quiet** at {len(noisy)} point(s) (other processes used > "
            f"{NOISY_OTHER_CORES} cores meanwhile): {', '.join(noisy)}. Those numbers are lower than this "
            "machine can do; rerun on a quiet machine before drawing conclusions.",
        ]
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per point")
    args = parser.parse_args(argv)
    loadavg = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 128), dtype=np.float32) for b in {*LATENCY_BATCHES, *SERVED_BATCHES}}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    # Raw first, alone on the machine (the server is not running yet).
    session = raw_session()
    expected = {b: session.run(["y"], {"x": x})[0] for b, x in inputs.items()}
    raw_lat = {}
    for b in LATENCY_BATCHES:
        call = functools.partial(session.run, ["y"], {"x": inputs[b]})
        raw_lat[b] = sequential_latency(call, args.duration, args.warmup)
        say(f"raw latency batch {b}: {raw_lat[b]}")
    raw_thr: list[dict[str, Any]] = []

    def measure_raw(session: ort.InferenceSession, when: str) -> None:
        for threads in RAW_THREADS:
            row = raw_throughput(session, inputs[SATURATION_BATCH], threads, args.duration, args.warmup)
            raw_thr.append({"when": when, **row})
            say(f"raw throughput: {raw_thr[-1]}")

    measure_raw(session, "before server")
    del session  # its ONNX Runtime thread pool must not compete with the server

    served_lat: dict[int, dict[str, Any]] = {}
    served_thr: list[dict[str, Any]] = []
    with ServerProcess(log_path=RESULTS / "server.log") as srv:
        assert srv.proc is not None
        metrics_url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        with Client(srv.address, max_attempts=1) as client:
            for b, x in inputs.items():  # same work: the server's answers match raw ONNX Runtime's
                got = client.infer(MODEL, {"x": x})["y"]
                np.testing.assert_allclose(got, expected[b], rtol=1e-5, atol=1e-5)
            for b in LATENCY_BATCHES:
                call = functools.partial(client.infer, MODEL, {"x": inputs[b]})
                served_lat[b] = sequential_latency(call, args.duration, args.warmup, srv.proc.pid)
                say(f"served latency batch {b}: {served_lat[b]}")
        for b in SERVED_BATCHES:
            for c in CONCURRENCIES:
                row = served_throughput(
                    srv.address, inputs[b], c, args.duration, args.warmup, srv.proc.pid, metrics_url
                )
                served_thr.append(row)
                say(f"served throughput: {row}")

    # Raw again, once the server is gone: the spread between the two runs shows this machine's noise.
    measure_raw(raw_session(), "after server")

    raw_best = max(raw_thr, key=lambda r: r["items_per_s"])
    served_best = max(served_thr, key=lambda r: r["items_per_s"])
    for row in served_thr:
        row["ratio_to_raw"] = row["items_per_s"] / raw_best["items_per_s"]
    ratio = served_best["items_per_s"] / raw_best["items_per_s"]
    latency = [
        {
            "batch": b,
            "raw": raw_lat[b],
            "served": served_lat[b],
            "added_p50_ms": served_lat[b]["p50_ms"] - raw_lat[b]["p50_ms"],
        }
        for b in LATENCY_BATCHES
    ]
    added_256 = served_lat[256]["p50_ms"] - raw_lat[256]["p50_ms"]
    report: dict[str, Any] = {
        "run": run_info(),
        "environment": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": loadavg,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "grpcio": grpc.__version__,
            "numpy": np.__version__,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "note": "client, server and ONNX Runtime share the same cores",
        },
        "latency": latency,
        "throughput": {
            "raw": raw_thr,
            "served": served_thr,
            "saturation": {
                "raw_items_per_s": raw_best["items_per_s"],
                "served_items_per_s": served_best["items_per_s"],
                "ratio": ratio,
                "raw_best": f"{raw_best['threads']} thread(s), batch {raw_best['batch']}, {raw_best['when']}",
                "served_best": f"batch {served_best['batch']}, concurrency {served_best['concurrency']}",
            },
        },
        "goals": {
            "throughput_ratio": {"measured": ratio, "target": GOAL_RATIO, "pass": ratio >= GOAL_RATIO},
            "added_p50_ms_batch256": {
                "measured": added_256,
                "target": GOAL_ADDED_P50_MS,
                "pass": added_256 <= GOAL_ADDED_P50_MS,
            },
        },
        "noisy_points": [
            *(f"{kind} latency batch {r['batch']}" for r in latency for kind in ("raw", "served") if _noisy(r[kind])),
            *(f"raw {r['threads']} thread(s) {r['when']}" for r in raw_thr if _noisy(r)),
            *(f"served batch {r['batch']} concurrency {r['concurrency']}" for r in served_thr if _noisy(r)),
        ],
        "runtime_s": time.perf_counter() - started,
    }
    (RESULTS / "platform.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (RESULTS / "platform.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
