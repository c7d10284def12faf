"""Overload benchmark: many clients with deadlines against one model, admission by deadline on and off.

Run from the repository root (``make bench`` runs it with the defaults)::

    .venv/bin/python -m tests.bench.overload_bench [--clients 200] [--deadline S] [--duration 10]
        [--workloads infer,segment] [--admission on,off]

For each workload and each admission setting (``runtime.batching.deadline_admission``, set through
``GENOSERVE_RUNTIME__BATCHING__DEADLINE_ADMISSION``) a fresh ``genoserve serve`` serving only that
model starts on loopback, and ``--clients`` asyncio tasks (on 8 ``grpc.aio`` channels) send
requests back to back for ``--duration`` seconds, each with a gRPC deadline (``--deadline``, else
the workload's own, below);
a client refused with RESOURCE_EXHAUSTED backs off 0.5-1.5 s (random) before its next request, as
a well-behaved client does. Then every request in flight is let finish (at most one deadline).

* ``infer``: ``Models.Infer`` on ``platform-mlp`` (MLP 128-512-512-16), 2,048 rows per request (8
  parts of the model's max batch 256), 2 s deadlines: its queue holds at most 2,048 parts, about
  5-7 s of work on a 2-core machine (17 s on the machine of the hardening issue), so 10 s
  deadlines would not overload it here.
* ``segment``: ``Segmentation.Segment`` on ``cellpose-nuclei``, the 256 x 256 nuclei image of
  tests/data/segmentation (one tile, ~0.3 s a tile on 2 cores), 10 s deadlines.

Reported per run: requests sent, the share refused with RESOURCE_EXHAUSTED (and the server's own
split by reason from ``genoserve_batcher_rejected_total``), the median time to that refusal, p50 /
p99 latency of the accepted requests that were served, the share of accepted requests (served or
not refused) that missed their deadline (DEADLINE_EXCEEDED), served requests per second, and the
server's peak resident memory (``VmHWM`` of /proc/<pid>/status at the end).

Output: printed, and ``tests/bench/results/overload.json`` and ``overload.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tifffile

from genoserve.api.codecs.tensor import from_numpy
from genoserve.client.client import segment_request
from genoserve.v1 import models_pb2, models_pb2_grpc, segmentation_pb2_grpc
from tests.bench.report import run_info
from tests.support.server import REPO, ServerProcess, scrape

RESULTS = REPO / "tests" / "bench" / "results"
NUCLEI = REPO / "tests" / "data" / "segmentation" / "stardist_tests_img2d_256.tif"
CHANNELS = 8
INFER_ROWS = 2048
BACKOFF_S = (0.5, 1.5)


@dataclass
class Workload:
    name: str
    model: str
    deadline_s: float
    #: (channel) -> an awaitable call taking a timeout
    call: Callable[[grpc.aio.Channel], Callable[[float], Any]]


def infer_call(channel: grpc.aio.Channel) -> Callable[[float], Any]:
    x = np.random.default_rng(0).normal(size=(INFER_ROWS, 128)).astype(np.float32)
    request = models_pb2.InferRequest(model="platform-mlp", inputs={"x": from_numpy(x)})
    stub = models_pb2_grpc.ModelsStub(channel)
    return lambda timeout: stub.Infer(request, timeout=timeout)


def segment_call(channel: grpc.aio.Channel) -> Callable[[float], Any]:
    request = segment_request("cellpose-nuclei", np.asarray(tifffile.imread(NUCLEI)))
    stub = segmentation_pb2_grpc.SegmentationStub(channel)
    return lambda timeout: stub.Segment(request, timeout=timeout)


WORKLOADS = {
    "infer": Workload("infer", "platform-mlp", 2.0, infer_call),
    "segment": Workload("segment", "cellpose-nuclei", 10.0, segment_call),
}


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    #: (seconds since the load started, outcome) of every request
    log: list[tuple[float, str]] = field(default_factory=list)
    served_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    origin: float = field(default_factory=time.monotonic)

    def add(self, outcome: str, started: float) -> None:
        self.outcomes[outcome] += 1
        self.log.append((started - self.origin, outcome))


async def client(call: Callable[[float], Any], deadline: float, stop: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    await asyncio.sleep(rng.uniform(0, 0.2))  # not all in the same millisecond
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            await call(deadline)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            tally.add(code.name, started)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                tally.refused_s.append(time.monotonic() - started)
                await asyncio.sleep(rng.uniform(*BACKOFF_S))
            continue
        tally.add("OK", started)
        tally.served_s.append(time.monotonic() - started)


def peak_rss_mib(pid: int) -> float:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def rejected_by_reason(metrics_text: str, model: str) -> dict[str, float]:
    found: dict[str, float] = {}
    pattern = rf'^genoserve_batcher_rejected_total\{{model="{model}",reason="([^"]+)"\}} (\S+)$'
    for match in re.finditer(pattern, metrics_text, re.MULTILINE):
        found[match.group(1)] = float(match.group(2))
    return found


async def drive(address: str, workload: Workload, clients: int, deadline: float, duration: float) -> Tally:
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 27)])
                for _ in range(CHANNELS)]  # fmt: skip
    try:
        calls = [workload.call(c) for c in channels]
        await calls[0](60.0)  # warm: one timed session call before the load
        tally = Tally()
        stop = time.monotonic() + duration
        await asyncio.gather(*(client(calls[i % CHANNELS], deadline, stop, tally, i) for i in range(clients)))
        return tally
    finally:
        for c in channels:
            await c.close()


def windows(log: list[tuple[float, str]]) -> dict[str, dict[str, int]]:
    """Outcomes by when the request was sent (5 s windows from the start of the load): the first
    burst against an idle server apart from the rest."""
    found: dict[str, Counter[str]] = {}
    for offset, outcome in sorted(log):
        found.setdefault(f"{5 * int(offset // 5)}s", Counter())[outcome] += 1
    return {window: dict(counts) for window, counts in found.items()}


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1e3, 1) if values else None


def run_one(workload: Workload, admission: bool, args: argparse.Namespace) -> dict[str, Any]:
    env = {"GENOSERVE_RUNTIME__BATCHING__DEADLINE_ADMISSION": "true" if admission else "false"}
    with ServerProcess("--model", workload.model, env=env) as server:
        assert server.proc is not None
        started = time.monotonic()
        deadline = args.deadline or workload.deadline_s
        tally = asyncio.run(drive(server.address, workload, args.clients, deadline, args.duration))
        wall = time.monotonic() - started
        rss = peak_rss_mib(server.proc.pid)
        reasons = rejected_by_reason(scrape(server), workload.model)
    sent = sum(tally.outcomes.values())
    refused = tally.outcomes["RESOURCE_EXHAUSTED"]
    accepted = sent - refused
    missed = tally.outcomes["DEADLINE_EXCEEDED"]
    return {
        "workload": workload.name,
        "model": workload.model,
        "admission": admission,
        "clients": args.clients,
        "deadline_s": deadline,
        "wall_s": round(wall, 1),
        "sent": sent,
        "outcomes": dict(tally.outcomes),
        "resource_exhausted_share": round(refused / sent, 3) if sent else None,
        "refused_p50_ms": percentile_ms(tally.refused_s, 50),
        "server_rejections": reasons,
        "served_p50_ms": percentile_ms(tally.served_s, 50),
        "served_p99_ms": percentile_ms(tally.served_s, 99),
        "accepted_missed_deadline_share": round(missed / accepted, 3) if accepted else None,
        "served_per_s": round(len(tally.served_s) / wall, 1),
        "outcomes_by_start_window_5s": windows(tally.log),
        "server_peak_rss_mib": round(rss, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| workload | deadline | admission | sent | RESOURCE_EXHAUSTED | refused in (p50) | served p50 / p99 | "
            "accepted that missed the deadline | served/s | server peak RSS |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['workload']} ({r['model']}) | {r['deadline_s']:g} s | {'on' if r['admission'] else 'off'} | "
            f"{r['sent']} | "
            f"{_pct(r['resource_exhausted_share'])} | {_ms(r['refused_p50_ms'])} | "
            f"{_ms(r['served_p50_ms'])} / {_ms(r['served_p99_ms'])} | {_pct(r['accepted_missed_deadline_share'])} | "
            f"{r['served_per_s']} | {r['server_peak_rss_mib']} MiB |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--deadline", type=float, help="seconds, per request (default: the workload's)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--workloads", default="infer,segment")
    parser.add_argument("--admission", default="on,off", help="on, off or both (on,off)")
    args = parser.parse_args()
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    settings = [{"on": True, "off": False}[a] for a in args.admission.split(",")]
    rows = []
    for name in args.workloads.split(","):
        for admission in settings:
            row = run_one(WORKLOADS[name], admission, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "run": run_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args),
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overload.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "overload.md").write_text(table(rows) + "\n")
    print(f"\n{os.cpu_count()} CPUs; {args.clients} clients, {args.duration:g} s of load per run\n")
    print(table(rows))


if __name__ == "__main__":
    main()
