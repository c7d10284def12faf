"""A/B benchmark of the online serving path: two server source trees, started alternately.

Run from the repository root::

    git worktree add /tmp/genoserve-base <commit>   # or copy services/ of the baseline (with stubs)
    .venv/bin/python -m tests.bench.serving_ab --baseline /tmp/genoserve-base/services [--rounds 3]

Each round starts ``genoserve serve`` from the baseline tree (``PYTHONPATH=<baseline>``), measures,
stops it, then does the same from this checkout, so both variants see the same machine load. Per
variant and point the median over rounds is reported, with the ratio candidate / baseline. Points
(the client is this process, on the same cores as the server):

* platform-mlp ``Infer`` p50 at batch 1 and 256 (sequential, one channel);
* platform-mlp batch-1 ``Infer`` throughput from 64 asyncio clients on one channel;
* deepbind-ctcf ``Predict`` p50 for 256 x 101 bp, strand max (512 rows through the model);
* deepbind-ctcf 64 concurrent one-sequence ``Predict`` clients: sequences/s and mean formed batch.

Each point also records the server process's CPU time per request (user + system, all threads, from
/proc): on a loaded machine it is much steadier than throughput. The 1-minute load average is
recorded per round: this is a shared machine, compare ratios only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from genoserve.client import AsyncClient, Client
from genoserve.v1 import binding_pb2, binding_pb2_grpc
from tests.support.cpu import process_cpu_s
from tests.support.server import ServerProcess

Array = np.ndarray[Any, Any]
CLIENTS = 64


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads); this benchmark needs /proc (Linux)."""
    cpu = process_cpu_s(pid)
    if cpu is None:
        raise SystemExit("serving_ab needs /proc to account server CPU per request")
    return cpu


def p50_ms(call: Any, duration: float, pid: int) -> tuple[float, float]:
    """(p50 ms of ``call`` made back to back, server CPU µs per call)."""
    for _ in range(20):
        call()
    times: list[float] = []
    cpu0 = proc_cpu_s(pid)
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    cpu = proc_cpu_s(pid) - cpu0
    return float(np.percentile(times, 50) * 1e3), cpu / len(times) * 1e6


def batch_stats(url: str, model: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = []
    for kind in ("sum", "count"):
        m = re.search(rf'^genoserve_batch_size_{kind}\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
        out.append(float(m.group(1)) if m else 0.0)
    return out[0], out[1]


async def _concurrent(address: str, url: str, kind: str, duration: float, pid: int) -> tuple[float, float, float]:
    """(requests/s, mean formed batch, server CPU µs per request), CLIENTS clients sending one item each."""
    phase = {"measuring": False, "stop": False}
    counts = [0] * CLIENTS
    rng = np.random.default_rng(1)
    async with grpc.aio.insecure_channel(address) as channel, AsyncClient(address, max_attempts=1) as client:
        stub = binding_pb2_grpc.SequenceBindingStub(channel)

        async def one(i: int) -> None:
            x = rng.standard_normal((1, 128), dtype=np.float32)
            seq = "".join(rng.choice(list("ACGT"), 101))
            request = binding_pb2.PredictRequest(
                model="deepbind-ctcf", sequences=[binding_pb2.Sequence(id="s", bases=seq)]
            )
            while not phase["stop"]:
                if kind == "platform":
                    await client.infer("platform-mlp", {"x": x})
                else:
                    await stub.Predict(request, timeout=30)
                if phase["measuring"] and not phase["stop"]:
                    counts[i] += 1

        tasks = [asyncio.create_task(one(i)) for i in range(CLIENTS)]
        await asyncio.sleep(0.5)
        model = "platform-mlp" if kind == "platform" else "deepbind-ctcf"
        before = batch_stats(url, model)
        t0 = time.perf_counter()
        cpu0 = proc_cpu_s(pid)
        phase["measuring"] = True
        await asyncio.sleep(duration)
        phase["stop"] = True
        elapsed = time.perf_counter() - t0
        cpu = proc_cpu_s(pid) - cpu0
        after = batch_stats(url, model)
        await asyncio.gather(*tasks)
    calls = after[1] - before[1]
    done = sum(counts)
    return done / elapsed, (after[0] - before[0]) / calls if calls else float("nan"), cpu / done * 1e6


def measure(src: Path | None, duration: float) -> dict[str, float]:
    env = {"PYTHONPATH": str(src)} if src else {}
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((1, 128), dtype=np.float32)
    x256 = rng.standard_normal((256, 128), dtype=np.float32)
    seqs = [(f"s{i}", "".join(rng.choice(list("ACGT"), 101))) for i in range(256)]
    out: dict[str, float] = {"load_1m": os.getloadavg()[0]}
    with ServerProcess(env=env) as srv:
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        assert srv.proc is not None
        pid = srv.proc.pid
        calls = {
            "platform b1": lambda: client.infer("platform-mlp", {"x": x1}),
            "platform b256": lambda: client.infer("platform-mlp", {"x": x256}),
            "binding 256x101 max": lambda: client.predict_sequences("deepbind-ctcf", seqs),
        }
        with Client(srv.address, max_attempts=1) as client:
            for name, call in calls.items():
                out[f"{name} p50 ms"], out[f"{name} server CPU us/req"] = p50_ms(call, duration, pid)
        for kind in ("platform", "binding"):
            rps, formed, cpu = asyncio.run(_concurrent(srv.address, url, kind, duration, pid))
            out[f"{kind} 64 clients req/s"] = rps
            out[f"{kind} 64 clients formed batch"] = formed
            out[f"{kind} 64 clients server CPU us/req"] = cpu
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline tree's services/ folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
    for r in range(args.rounds):
        for name, src in (("baseline", args.baseline), ("candidate", None)):
            runs[name].append(measure(src, args.duration))
            print(f"round {r} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    keys = list(runs["baseline"][0])
    print(f"| point (median of {args.rounds} rounds) | baseline | candidate | candidate / baseline |")
    print("|---|---:|---:|---:|")
    for k in keys:
        a = statistics.median(r[k] for r in runs["baseline"])
        b = statistics.median(r[k] for r in runs["candidate"])
        print(f"| {k} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
