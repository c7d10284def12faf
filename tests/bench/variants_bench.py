"""Variant-calling benchmark: served CallVariants vs raw ONNX Runtime, pileup construction, BAM -> VCF.

Run from the repository root::

    .venv/bin/python -m tests.bench.variants_bench [--duration 5] [--model deepvariant-cnn-7ch]

Measures, with the committed model (uint8 [batch, 100, 221, 7] -> float32 [batch, 3]):

* **examples/s through CallVariants** (a real ``genoserve serve --family variants`` subprocess on
  loopback, with the model's own set-up, one single-threaded session call per core and a lone
  request split across the idle ones; the same without the split; and with one
  call at a time on 1 and on 2 ONNX Runtime intra-op threads; asyncio clients at
  concurrency 1 / 2 / 4 / 16, each sending the 84 golden DeepVariant examples per request,
  encoded from numpy on every request into one batched uint8 ``pileups`` tensor: encode, gRPC,
  decode, dynamic batcher, session, postprocess, response), against **raw ONNX Runtime**
  ``session.run`` on the same 84 tensors in a loop (1, 2 and 4 threads, before and after the
  served runs); the ratio best served / best raw is compared with the goal >= 0.9, and the ratio
  at equal thread counts is reported too; also, for reference, the per-example message path
  (one ``PileupExample.pileup`` tensor per example, messages built once) at concurrency 4; and
  each served run again with the pileups in POSIX shared memory (server ``--shared-memory``,
  ``AsyncClient(shared_memory=True)``: only names and offsets cross the channel).
  On a loaded machine the served figure profits from having more runnable threads than the raw
  loop, so also:
* **CPU per example**, which load distorts less than examples/s: raw ONNX Runtime (1 thread) vs
  the served path (server process CPU, all threads, the model's own set-up: 1 intra-op thread
  per call, plus the client process CPU), from /proc;
* **pileup construction** (candidates/s and examples/s) over the whole NA12878 region
  chr20:10,000,000-10,100,000 on one core (``taskset`` where available, else noted), with the
  local realigner (DeepVariant's default, and ours) and without it;
* **BAM -> VCF wall time** for that 100 kb region, in process: make_examples, ONNX Runtime,
  postprocess, bgzipped + tabix-indexed VCF.

Outputs: ``tests/bench/results/variants.json`` and ``variants.md`` (also printed). The machine's
cores are shared by the client, the server and ONNX Runtime; ``os.cpu_count()`` and the load
average (before and after each part) are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from genoserve.api.codecs.variants import pileup_example
from genoserve.client import AsyncClient
from genoserve.variants.examples import read_examples
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.pipeline import call_examples
from genoserve.variants.vcf import reference_contigs, write_vcf
from tests.bench.report import run_info
from tests.support.cpu import process_cpu_s
from tests.support.server import REPO, ServerProcess

RESULTS = REPO / "tests" / "bench" / "results"
DATA = REPO / "tests" / "data" / "deepvariant"
BAM = DATA / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DATA / "ucsc.hg19.chr20.unittest.fasta.gz"
GOLDEN = DATA / "golden.calling_examples.tfrecord.gz"
WHOLE = "chr20:10000000-10100000"


#: Server set-ups: the model's own (model.yaml ``cpu_serving``: one single-threaded session call
#: per core, a lone request split across the idle ones), the same without the split (a copy of the
#: model whose ``split_rows`` is 0), and one call at a time on 1 and on 2 intra-op threads
#: (compared with raw ONNX Runtime on as many threads).
UNSPLIT = "model_unsplit"
SETUPS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "model_default": ((), {}),
    UNSPLIT: ((), {}),
    "threads_1": (("--intra-op-threads", "1"), {"GENOSERVE_RUNTIME__INSTANCES": "1"}),
    "threads_2": (("--intra-op-threads", "2"), {"GENOSERVE_RUNTIME__INSTANCES": "1"}),
}
LABELS = {
    "model_default": "model's set-up (1 call per core, 1 thread each, a lone request split)",
    UNSPLIT: "model's set-up without the split (split_rows 0)",
    "threads_1": "1 call at a time on 1 thread",
    "threads_2": "1 call at a time on 2 threads",
}


def unsplit_copy(model: str, scratch: Path) -> Path:
    """A model directory holding a copy of ``model`` whose model.yaml says ``split_rows: 0``."""
    source = REPO / "models" / model
    target = scratch / model
    shutil.copytree(source, target)
    text = (target / "model.yaml").read_text()
    changed = re.sub(r"(?m)^(\s+split_rows:) \d+$", r"\1 0", text)
    assert changed != text, f"{model}: no split_rows in its model.yaml"
    (target / "model.yaml").write_text(changed)
    return scratch


def raw_throughput(onnx: Path, batch: np.ndarray, duration: float) -> dict[str, float]:  # type: ignore[type-arg]
    best: dict[str, float] = {}
    for threads in (1, 2, 4):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        session.run(None, {"pileup": batch})
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            session.run(None, {"pileup": batch})
            done += len(batch)
        best[f"threads_{threads}"] = done / (time.perf_counter() - start)
    return best


async def served_throughput(
    address: str, payload: list[Any], model: str, concurrency: int, duration: float, shared: bool = False
) -> float:
    """Examples/s: ``concurrency`` workers each sending ``payload`` (family examples or messages),
    the pileups in shared memory with ``shared``."""
    async with AsyncClient(address, timeout=120, shared_memory=shared) as client:
        await client.call_variants(payload, model=model)
        done = 0
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                response = await client.call_variants(payload, model=model)
                assert len(response.results) == len(payload)
                done += len(payload)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def cpu_per_example(  # type: ignore[type-arg]
    onnx: Path, batch: np.ndarray, golden: list[Any], model: str, requests: int, shared: bool = False
) -> dict[str, Any]:
    """CPU milliseconds per example (load-independent, unlike examples/s on a shared machine):
    raw ONNX Runtime (1 thread) vs served (server process with 1 intra-op thread + this client
    process, ``requests`` requests of the 84 examples at concurrency 2; pileups in shared memory
    with ``shared``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    session.run(None, {"pileup": batch})
    start = time.process_time()
    for _ in range(requests):
        session.run(None, {"pileup": batch})
    raw = (time.process_time() - start) / (requests * len(batch)) * 1e3

    async def send(address: str) -> None:
        async with AsyncClient(address, timeout=120, shared_memory=shared) as client:

            async def worker() -> None:
                for _ in range(requests // 2):
                    await client.call_variants(golden, model=model)

            await asyncio.gather(worker(), worker())

    server_args = ("--family", "variants", "--shared-memory")  # the model's own: 1 thread per call
    with ServerProcess(*server_args, model_dir=REPO / "models") as server:
        assert server.proc is not None
        asyncio.run(send(server.address))  # warm
        server_before, client_before = process_cpu_s(server.proc.pid), time.process_time()
        asyncio.run(send(server.address))
        server_after, client_after = process_cpu_s(server.proc.pid), time.process_time()
    n = (requests // 2) * 2 * len(golden)
    client_ms = (client_after - client_before) / n * 1e3
    if server_before is None or server_after is None:
        return {"raw_ms": raw, "client_ms": client_ms, "server_ms": None, "raw_over_served": None}
    server_ms = (server_after - server_before) / n * 1e3
    return {
        "raw_ms": raw,
        "server_ms": server_ms,
        "client_ms": client_ms,
        "raw_over_served": raw / (server_ms + client_ms),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pileup_speed(realign: bool) -> dict[str, float]:
    pinned = False
    if hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})
        pinned = True
    try:
        start = time.perf_counter()
        candidates, examples = make_examples(BAM, REF, Region.parse(WHOLE), realign=realign)
        seconds = time.perf_counter() - start
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    return {
        "candidates": len(candidates),
        "examples": len(examples),
        "seconds": seconds,
        "candidates_per_s": len(candidates) / seconds,
        "examples_per_s": len(examples) / seconds,
        "one_core": pinned,
    }


def bam_to_vcf(onnx: Path) -> dict[str, float]:
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    _, examples = make_examples(BAM, REF, Region.parse(WHOLE))
    made = time.perf_counter()
    calls = call_examples(examples, lambda batch: session.run(None, {"pileup": batch})[0])
    called = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_vcf(Path(tmp) / "calls.vcf.gz", calls, reference_contigs(REF), "NA12878")
    end = time.perf_counter()
    return {
        "region": WHOLE,
        "examples": len(examples),
        "calls": len(calls),
        "pass_calls": sum(c.filters == ["PASS"] for c in calls),
        "make_examples_s": made - start,
        "model_and_postprocess_s": called - made,
        "vcf_s": end - called,
        "total_s": end - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--model", default="deepvariant-cnn-7ch")
    parser.add_argument("--served-only", action="store_true", help="skip the pileup and BAM -> VCF parts")
    args = parser.parse_args(argv)
    onnx = REPO / "models" / args.model / "1" / "model.onnx"
    golden = list(read_examples(GOLDEN))
    batch = np.stack([e.image for e in golden])
    messages = [pileup_example(e, str(i)) for i, e in enumerate(golden)]

    loads = {"start": load()}
    raw_before = raw_throughput(onnx, batch, args.duration)
    served: dict[str, dict[str, float]] = {}
    served_shm: dict[str, dict[str, float]] = {}
    messages_path: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix="genoserve-variants-bench-"))
    unsplit_dir = unsplit_copy(args.model, scratch)
    for setup, (flags, env) in SETUPS.items():
        served[setup], served_shm[setup] = {}, {}
        model_dir = unsplit_dir if setup == UNSPLIT else REPO / "models"
        with ServerProcess("--family", "variants", *flags, "--shared-memory", model_dir=model_dir, env=env) as server:
            for concurrency in (1, 2, 4, 16):
                for shared, into in ((False, served), (True, served_shm)):
                    into[setup][f"concurrency_{concurrency}"] = asyncio.run(
                        served_throughput(server.address, golden, args.model, concurrency, args.duration, shared)
                    )
            messages_path[setup] = asyncio.run(
                served_throughput(server.address, messages, args.model, 4, args.duration)
            )
    shutil.rmtree(scratch)
    loads["after_served"] = load()
    raw_after = raw_throughput(onnx, batch, args.duration)
    loads["after_raw"] = load()
    cpu = cpu_per_example(onnx, batch, golden, args.model, 20)
    cpu_shm = cpu_per_example(onnx, batch, golden, args.model, 20, shared=True)
    best_raw = max(*raw_before.values(), *raw_after.values())
    best_served = max(v for by_conc in served.values() for v in by_conc.values())
    best_shm = max(v for by_conc in served_shm.values() for v in by_conc.values())
    matched = {k: max(served[k].values()) / max(raw_before[k], raw_after[k]) for k in served if k in raw_before}
    matched_shm = {
        k: max(served_shm[k].values()) / max(raw_before[k], raw_after[k]) for k in served_shm if k in raw_before
    }
    skipped = {"candidates_per_s": float("nan"), "examples_per_s": float("nan"), "one_core": False}
    pileups = skipped if args.served_only else pileup_speed(realign=True)
    pileups_plain = skipped if args.served_only else pileup_speed(realign=False)
    loads["after_pileups"] = load()
    whole = (
        {"region": WHOLE, "total_s": float("nan"), "make_examples_s": float("nan"),
         "model_and_postprocess_s": float("nan"), "calls": 0, "pass_calls": 0}
        if args.served_only else bam_to_vcf(onnx)
    )  # fmt: skip
    loads["end"] = load()
    result = {
        "run": run_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "load_average_1_5_15": loads,
        "model": args.model,
        "examples_per_request": len(messages),
        "raw_examples_per_s": {"before_server": raw_before, "after_server": raw_after, "best": best_raw},
        "served_examples_per_s": served,
        "served_shared_memory_examples_per_s": served_shm,
        "served_message_per_example_concurrency_4": messages_path,
        "served_over_raw": best_served / best_raw,
        "served_over_raw_same_threads": matched,
        "served_shared_memory_over_raw": best_shm / best_raw,
        "served_shared_memory_over_raw_same_threads": matched_shm,
        "goal_served_over_raw": 0.9,
        "cpu_ms_per_example": cpu,
        "cpu_ms_per_example_shared_memory": cpu_shm,
        "pileups": pileups,
        "pileups_no_realign": pileups_plain,
        "bam_to_vcf": whole,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "variants.json").write_text(json.dumps(result, indent=2))
    p, q, b = result["pileups"], result["pileups_no_realign"], result["bam_to_vcf"]
    lines = [
        f"# Variant calling benchmark ({result['date']}, {os.cpu_count()} CPUs)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| raw ONNX Runtime, best (examples/s) | {best_raw:.0f} |",
        *[
            f"| raw ONNX Runtime, {k.replace('_', ' ')} (examples/s) | {raw_before[k]:.0f} / {raw_after[k]:.0f} "
            "(before / after) |"
            for k in raw_before
        ],
        *[
            f"| CallVariants, server {LABELS[t]}, {k.replace('_', ' ')} (examples/s) | {v:.0f} |"
            for t, by_conc in served.items()
            for k, v in by_conc.items()
        ],
        *[
            f"| CallVariants, pileups in shared memory, server {LABELS[t]}, {k.replace('_', ' ')} "
            f"(examples/s) | {v:.0f} |"
            for t, by_conc in served_shm.items()
            for k, v in by_conc.items()
        ],
        *[
            f"| CallVariants, per-example messages, server {LABELS[t]}, concurrency 4 (examples/s) | {v:.0f} |"
            for t, v in messages_path.items()
        ],
        f"| served / raw, best of each | {result['served_over_raw']:.2f} (goal >= 0.90) |",
        *[f"| served / raw, {k.replace('_', ' ')} each | {v:.2f} |" for k, v in matched.items()],
        f"| served with shared memory / raw, best of each | {result['served_shared_memory_over_raw']:.2f} |",
        *[f"| served with shared memory / raw, {k.replace('_', ' ')} each | {v:.2f} |" for k, v in matched_shm.items()],
        *[
            f"| CPU per example, pileups {how}: raw 1 thread / served (server + client) (ms) | {c['raw_ms']:.2f} / "
            + (
                f"{c['server_ms'] + c['client_ms']:.2f} ({c['server_ms']:.2f} + {c['client_ms']:.2f}); "
                f"raw/served {c['raw_over_served']:.2f} |"
                if c["server_ms"] is not None
                else f"? (client {c['client_ms']:.2f}; no /proc) |"
            )
            for how, c in (("on the channel", cpu), ("in shared memory", cpu_shm))
        ],
        f"| load average 1/5/15 min (start, after served, after raw, end) | {loads['start']}, "
        f"{loads['after_served']}, {loads['after_raw']}, {loads['end']} |",
        f"| pileups, realigner on (default): candidates/s ({'one core' if p['one_core'] else 'unpinned'}) "
        f"| {p['candidates_per_s']:.1f} |",
        f"| pileups, realigner on: examples/s | {p['examples_per_s']:.1f} |",
        f"| pileups, realigner off: candidates/s | {q['candidates_per_s']:.1f} |",
        f"| BAM -> VCF, {b['region']} (s) | {b['total_s']:.1f} "
        f"(make_examples {b['make_examples_s']:.1f}, model+postprocess {b['model_and_postprocess_s']:.1f}) |",
        f"| calls (PASS) | {b['calls']} ({b['pass_calls']}) |",
    ]
    (RESULTS / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
