"""Single-cell embedding benchmark: CellEmbedding.Embed vs raw ONNX Runtime, and the bulk job
``embedding.embed_h5ad`` over a large simulated sparse .h5ad vs raw ONNX Runtime, as ratios.

Run from the repository root::

    .venv/bin/python -m tests.bench.embedding_bench [--cells 20000] [--job-cells 200000] [--repeats 7]

Models: ``scvi-pbmc`` (765 genes -> 10-d latent) on PBMC counts (tests/data/embedding) resampled
with replacement, so sparsity and library sizes are real; ``scvi-sim-batch`` (2,000 genes and a
batch covariate, the issue's 2,000-gene reference setting) on cells from the training simulator
(``genoserve.training.embedding.simulate``, a seed the model was not trained on) with their batch
labels.

* raw ONNX Runtime: one in-process session (CPU provider, default options) of the committed
  model.onnx over the dense counts in the model's gene order (and the one-hot batches), batches
  of 4096 cells: cells/s. This is the goal's baseline. The server's session runs the graph with
  its leading log1p folded out and its first Gemm split by input (``runtime.graph_rewrites``: the
  server takes log1p in numpy while it lays the counts out dense), so a second baseline, "raw
  folded", runs that same rewritten graph in a raw session over counts whose log1p was taken
  beforehand, outside the timing: Embed against it is the serving overhead alone.
* Embed: a real ``genoserve serve`` on loopback; the Python client sends CSR requests of 4096
  cells with 1, 2 and 4 requests in flight (``--in-flight``; threads on one channel), gene names (and batch
  labels) with every request, aligned by name on the server: cells/s,
  and the ratio to the mean of raw ONNX Runtime measured right before and right after it
  (interleaved, median over the repeats); each with the matrices on the gRPC channel and in
  POSIX shared memory (the server runs with ``--shared-memory``, the client with
  ``shared_memory=True``: only the names and offsets cross the channel). The benchmark process calls
  ``genoserve.client.tune_allocator()`` as the README advises pipelines to (``--no-tune``: glibc's
  defaults; the server tunes its own).
* Bulk job, at ``--job-cells`` / 4 and ``--job-cells`` cells (two file sizes): the cells written
  (in chunks) to a CSR .h5ad of 2,000 genes (the model's 765 among them, shuffled, so genes are
  aligned by name and 1,235 dropped), embedded by a real server + a fresh ``genoserve worker``
  (embedded broker); cells/s end to end (submit to SUCCEEDED, including reading and writing the
  .h5ad) and the ratio to raw ONNX Runtime on up to 50,000 cells in memory; the worker's peak
  resident memory (VmHWM of its processes) next to the file size, which shows whether memory
  follows the chunk size or the file. The load average is recorded with every figure.

Outputs ``tests/bench/results/embedding.json`` and ``.md`` (also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import scipy.sparse as sp
import yaml

from genoserve.client import Client, tune_allocator
from genoserve.client.client import FINAL_JOB_STATES
from genoserve.runtime.prologue import rewrite
from tests.bench.report import run_info
from tests.support.cpu import process_cpu_s
from tests.support.embedding import PBMC, pbmc_csr
from tests.support.jobs import WorkerProcess
from tests.support.server import REPO, ServerProcess

MODEL = "scvi-pbmc"
RESULTS = REPO / "tests" / "bench" / "results"
BATCH = 4096


def resample(matrix: sp.csr_matrix, n: int, seed: int) -> sp.csr_matrix:
    return matrix[np.random.default_rng(seed).integers(0, matrix.shape[0], n)]


@dataclass
class Cells:
    """A model's benchmark cells: CSR counts with gene names and batch labels (empty: none)."""

    model: str
    matrix: sp.csr_matrix
    genes: list[str]
    batches: list[str]

    def feeds(self) -> dict[str, np.ndarray]:
        """Raw ONNX Runtime's inputs: dense counts in the model's gene order (+ one-hot batches)."""
        spec = yaml.safe_load((REPO / "models" / self.model / "model.yaml").read_text())["inputs"]
        assert spec[0]["labels"] == self.genes
        feeds = {"counts": self.matrix.toarray().astype(np.float32)}
        if self.batches:
            labels = np.array(self.batches)[:, None] == np.array(spec[1]["labels"])[None, :]
            feeds["batch"] = labels.astype(np.float32)
        return feeds


def pbmc_cells(n: int) -> Cells:
    source, genes = pbmc_csr()
    return Cells(MODEL, resample(source, n, 1), genes, [])


def simulated_cells(n: int) -> Cells:
    from genoserve.training.embedding.simulate import SimConfig, simulate

    data = simulate(SimConfig(n_cells=n), seed=5)  # the committed model was trained from seed 0
    return Cells("scvi-sim-batch", sp.csr_matrix(data.counts.astype(np.float32)), data.genes, list(data.batches))


def raw_session(model: str, folded: bool = False) -> ort.InferenceSession:
    """The committed encoder in a raw session (default options); ``folded``: rewritten as the server
    does (``genoserve.runtime.prologue``; its ``counts`` input then takes log1p(counts))."""
    path = REPO / "models" / model / "1" / "model.onnx"
    if not folded:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(path))
    assert rewrite(graph)[0] == {"counts"}
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def logged(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The folded graph's inputs: log1p of the counts."""
    return {**feeds, "counts": np.log1p(feeds["counts"])}


def raw_rate(model: str, feeds: dict[str, np.ndarray], folded: bool = False) -> float:
    session = raw_session(model, folded)
    n = len(feeds["counts"])
    session.run(None, {k: v[:BATCH] for k, v in feeds.items()})
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        session.run(["latent_mean"], {k: v[i : i + BATCH] for k, v in feeds.items()})
    rate = n / (time.perf_counter() - started)
    del session
    return rate


def embed_rate(address: str, cells: Cells, in_flight: int, shared: bool = False) -> float:
    """Cells/s of Embed with ``in_flight`` requests outstanding (threads sharing one channel); with
    ``shared``, the matrices go through shared memory (``Client(shared_memory=True)``)."""
    starts = range(0, cells.matrix.shape[0], BATCH)
    chunks = [(cells.matrix[i : i + BATCH], cells.batches[i : i + BATCH]) for i in starts]
    with Client(address, timeout=120, shared_memory=shared) as client, ThreadPoolExecutor(in_flight) as pool:

        def embed(chunk: tuple[sp.csr_matrix, list[str]]) -> None:
            client.embed(cells.model, cells.genes, chunk[0], batch_labels=chunk[1])

        embed(chunks[0])
        started = time.perf_counter()
        list(pool.map(embed, chunks))
        return cells.matrix.shape[0] / (time.perf_counter() - started)


FILE_GENES = 2_000


def with_extra_genes(block: sp.csr_matrix, n_extra: int, seed: int) -> sp.csr_matrix:
    """``block`` plus ``n_extra`` genes the model does not know (5% non-zero, counts 1-4)."""
    rng = np.random.default_rng(seed)
    extra = sp.random(block.shape[0], n_extra, density=0.05, format="csr", dtype=np.float32, random_state=rng,
                      data_rvs=lambda k: rng.integers(1, 5, size=k).astype(np.float32))  # fmt: skip
    return sp.hstack([block, extra], format="csr")


def file_genes(genes: list[str]) -> tuple[list[str], np.ndarray]:
    """The file's 2,000 gene names (the model's 765 and made-up ones) in a shuffled order, and
    the column order that puts ``hstack([model genes, extra genes])`` into it."""
    names = [*genes, *[f"EXTRA{i:04d}" for i in range(FILE_GENES - len(genes))]]
    order = np.random.default_rng(11).permutation(len(names))
    return [names[i] for i in order], order


def write_h5ad(path: Path, source: sp.csr_matrix, genes: list[str], n: int, chunk: int = 50_000) -> None:
    """A CSR .h5ad of ``n`` resampled cells x 2,000 genes (the model's 765 plus 1,235 it lacks, in
    a shuffled order, so the job aligns by name and drops genes), written chunk by chunk."""
    genes, order = file_genes(genes)
    string = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = np.array([n, len(genes)])
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype="f4", chunks=(1 << 18,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="i4", chunks=(1 << 18,))
        indptr = [np.zeros(1, np.int64)]
        for start in range(0, n, chunk):
            block = with_extra_genes(resample(source, min(chunk, n - start), start), FILE_GENES - source.shape[1],
                                     start)[:, order]  # fmt: skip
            block.sort_indices()
            old = data.shape[0]
            data.resize((old + block.nnz,))
            indices.resize((old + block.nnz,))
            data[old:] = block.data
            indices[old:] = block.indices
            indptr.append(block.indptr[1:].astype(np.int64) + old)
        x.create_dataset("indptr", data=np.concatenate(indptr))
        for name, index in (("obs", [f"c{i}" for i in range(n)]), ("var", genes)):
            frame = f.create_group(name)
            frame.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
            frame.attrs["column-order"] = np.array([], dtype=float)
            ds = frame.create_dataset("_index", data=np.array(index, dtype=object), dtype=string)
            ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        for name in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            group = f.create_group(name)
            group.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})


def peak_rss_mb(pgid: int) -> float:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    peak = 0
    for pid in out:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


def run_job(address: str, config: Path, args: argparse.Namespace, source: sp.csr_matrix, genes: list[str], n: int,
            raw: float) -> dict[str, Any]:  # fmt: skip
    """embed_h5ad over an ``n``-cell CSR .h5ad with a fresh worker, warmed by a 700-cell job (so
    worker start-up and model loading are not timed): cells/s from submit to SUCCEEDED and the
    worker's peak resident memory (two sizes show whether memory follows the file)."""
    path = args.scratch / f"cells{n}.h5ad"
    write_h5ad(path, source, genes, n)
    with h5py.File(path) as f:
        nnz = f["X/data"].shape[0]
    worker = WorkerProcess(config, args.scratch / f"worker{n}.log", "--queues", "embedding").start()
    try:
        with Client(address, timeout=60) as client:
            # A running worker with the model loaded, as in service: one small job first.
            warm = client.submit_job("embedding.embed_h5ad", [str(PBMC)], str(args.scratch / "warm"),
                                     {"model": MODEL, "overwrite": "true"})  # fmt: skip
            while (warm := client.get_job(warm.id)).state not in FINAL_JOB_STATES:
                time.sleep(0.05)
            started = time.time()
            job = client.submit_job("embedding.embed_h5ad", [str(path)], str(args.scratch / "out"),
                                    {"model": MODEL, "overwrite": "true"})  # fmt: skip
            while (job := client.get_job(job.id)).state not in FINAL_JOB_STATES:
                time.sleep(0.05)
            seconds = time.time() - started
        assert worker.proc is not None
        rss = peak_rss_mb(worker.proc.pid)
    finally:
        worker.stop()
    if job.error:
        raise SystemExit(f"job failed: {job.error}")
    rate = n / seconds
    print(f"embed_h5ad {n:,} cells: {rate:,.0f} cells/s, worker peak RSS {rss:.0f} MB", flush=True)
    return {
        "cells": n, "nnz": int(nnz), "file_mb": path.stat().st_size / 1e6, "seconds": seconds, "cells_s": rate,
        "raw_cells_s": raw, "ratio": rate / raw, "worker_peak_rss_mb": rss, "load_average": os.getloadavg(),
    }  # fmt: skip


#: How Embed's matrices reach the server: on the gRPC channel, or in shared memory (same machine).
CHANNEL, SHARED = "channel", "shared memory"
TRANSPORTS = (CHANNEL, SHARED)
#: Requests outstanding at once (threads on one channel), as perf_analyzer's concurrency sweep.
IN_FLIGHT = (1, 2, 4)


def online(address: str, cells: Cells, repeats: int, in_flights: tuple[int, ...] = IN_FLIGHT) -> list[dict[str, Any]]:
    """Embed vs raw ONNX Runtime, interleaved: raw ORT right before and right after each Embed run,
    the ratio against their mean, so that a load change on a shared machine hits both sides alike.
    Each repeat runs Embed with the matrices on the channel and in shared memory."""
    feeds = cells.feeds()
    folded_feeds = logged(feeds)
    rows: list[dict[str, Any]] = []
    raw, raw_folded = raw_rate(cells.model, feeds), raw_rate(cells.model, folded_feeds, folded=True)
    for _ in range(repeats):
        for in_flight in in_flights:
            for transport in TRANSPORTS:
                served = embed_rate(address, cells, in_flight, shared=transport == SHARED)
                after, after_folded = raw_rate(cells.model, feeds), raw_rate(cells.model, folded_feeds, folded=True)
                reference, folded_reference = (raw + after) / 2, (raw_folded + after_folded) / 2
                rows.append({"model": cells.model, "in_flight": in_flight, "transport": transport,
                             "raw_cells_s": reference, "raw_folded_cells_s": folded_reference,
                             "embed_cells_s": served, "ratio": served / reference,
                             "ratio_folded": served / folded_reference, "load_average": os.getloadavg()})  # fmt: skip
                print(f"{cells.model}: raw ORT {reference:,.0f} cells/s (folded {folded_reference:,.0f})   Embed "
                      f"({in_flight} in flight, {transport}) {served:,.0f} cells/s   ratio {served / reference:.2f} "
                      f"(to folded {served / folded_reference:.2f})", flush=True)  # fmt: skip
                raw, raw_folded = after, after_folded
    return rows


def cpu_split(address: str, server_pid: int, cells: Cells, requests: int = 10, shared: bool = False) -> dict[str, Any]:
    """CPU milliseconds per 4,096-cell request: raw ONNX Runtime (this process, the session alone)
    against Embed at one request in flight (matrices in shared memory with ``shared``), the server
    process (all threads) and this client apart. CPU time is what a shared machine distorts least."""
    feeds = {k: v[:BATCH] for k, v in cells.feeds().items()}
    raw_ms, raw_folded_ms = (raw_cpu_ms(raw_session(cells.model, folded), f, requests)
                             for folded, f in ((False, feeds), (True, logged(feeds))))  # fmt: skip
    chunk, labels = cells.matrix[:BATCH], cells.batches[:BATCH]
    with Client(address, timeout=120, shared_memory=shared) as client:
        client.embed(cells.model, cells.genes, chunk, batch_labels=labels)
        server_before, client_before = process_cpu_s(server_pid), time.process_time()
        for _ in range(requests):
            client.embed(cells.model, cells.genes, chunk, batch_labels=labels)
        server_after, client_after = process_cpu_s(server_pid), time.process_time()
    client_ms = (client_after - client_before) / requests * 1e3
    server_ms = None
    if server_before is not None and server_after is not None:
        server_ms = (server_after - server_before) / requests * 1e3
    transport = SHARED if shared else CHANNEL
    out = {"model": cells.model, "transport": transport, "raw_ms": raw_ms, "raw_folded_ms": raw_folded_ms,
           "server_ms": server_ms, "client_ms": client_ms, "load_average": os.getloadavg()}  # fmt: skip
    print(f"{cells.model} ({transport}): CPU ms per request raw {raw_ms:.1f} (folded {raw_folded_ms:.1f}), "
          f"server {server_ms}, client {client_ms:.1f}", flush=True)  # fmt: skip
    return out


def raw_cpu_ms(session: ort.InferenceSession, feeds: dict[str, np.ndarray], requests: int) -> float:
    session.run(["latent_mean"], feeds)
    started = time.process_time()
    for _ in range(requests):
        session.run(["latent_mean"], feeds)
    return (time.process_time() - started) / requests * 1e3


def _row(medians: dict[tuple[str, int, str], float], model: str, in_flights: tuple[int, ...], transport: str) -> str:
    return " / ".join(f"{medians[model, f, transport]:.2f}" for f in in_flights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--job-cells", type=int, default=200_000, help="0 skips the bulk job")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--in-flight",
        default=",".join(map(str, IN_FLIGHT)),
        help="Requests outstanding at once for Embed, comma-separated (each measured).",
    )
    parser.add_argument("--models", default=f"{MODEL},scvi-sim-batch", help="Online part: these models only.")
    parser.add_argument("--no-tune", action="store_true", help="Leave this process's malloc at glibc's defaults.")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/genoserve-embedding-bench"))
    args = parser.parse_args()
    in_flights = tuple(int(f) for f in args.in_flight.split(","))
    models = args.models.split(",")
    if unknown := set(models) - {MODEL, "scvi-sim-batch"}:
        parser.error(f"--models: no benchmark cells for {sorted(unknown)}; choose from {MODEL}, scvi-sim-batch")
    args.scratch.mkdir(parents=True, exist_ok=True)
    tuned = False if args.no_tune else tune_allocator()
    source, genes = pbmc_csr()
    report: dict[str, Any] = {"models": models, "in_flight": in_flights, "cells": args.cells, "online": [],
                              "nproc": os.cpu_count(), "client_allocator_tuned": tuned,
                              "load_average_start": os.getloadavg()}  # fmt: skip
    config = args.scratch / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(REPO / "models")},
        "jobs": {"data_dir": str(args.scratch / "data"), "input_roots": [str(args.scratch), str(PBMC.parent)],
                 "output_roots": [str(args.scratch)]},
        "worker": {"metrics_dir": str(args.scratch / "data" / "metrics"), "batch_size": BATCH},
    }))  # fmt: skip
    server_args = ("--config", str(config), "--shared-memory")
    with ServerProcess(*server_args, log_path=args.scratch / "server.log") as server:
        report["cpu"] = []
        makers = {MODEL: pbmc_cells, "scvi-sim-batch": simulated_cells}
        for cells in (makers[m](args.cells) for m in models):
            report["online"] += online(server.address, cells, args.repeats, in_flights)
            assert server.proc is not None
            for shared in (False, True):
                report["cpu"].append(cpu_split(server.address, server.proc.pid, cells, shared=shared))
        report["jobs"] = []
        if args.job_cells:
            big = Cells(MODEL, resample(source, min(args.job_cells, 50_000), 2), genes, [])
            big_raw = raw_rate(MODEL, big.feeds())
            report["jobs"] = [run_job(server.address, config, args, source, genes, n, big_raw)
                              for n in (args.job_cells // 4, args.job_cells)]  # fmt: skip
    report["load_average_end"] = os.getloadavg()
    report["run"] = run_info()
    rows = report["online"]
    medians = {
        (m, f, t): sorted(r["ratio"] for r in rows if (r["model"], r["in_flight"], r["transport"]) == (m, f, t))[
            args.repeats // 2
        ]
        for m in models for f in in_flights for t in TRANSPORTS
    }  # fmt: skip
    folded_medians = {
        (m, f, t): sorted(r["ratio_folded"] for r in rows
                          if (r["model"], r["in_flight"], r["transport"]) == (m, f, t))[args.repeats // 2]
        for m in models for f in in_flights for t in TRANSPORTS
    }  # fmt: skip
    lines = [
        f"# Embedding benchmark ({os.cpu_count()} cores, client allocator {'tuned' if tuned else 'glibc defaults'})",
        "",
        "| path | cells/s | raw ONNX Runtime cells/s | ratio | raw folded cells/s | ratio to folded |",
        "|---|---|---|---|---|---|",
        *[f"| Embed {r['model']} (gRPC, CSR {r['transport']}, {BATCH}/request, {r['in_flight']} in flight) | "
          f"{r['embed_cells_s']:,.0f} | {r['raw_cells_s']:,.0f} | {r['ratio']:.2f} | "
          f"{r['raw_folded_cells_s']:,.0f} | {r['ratio_folded']:.2f} |" for r in rows],
        *[f"| embedding.embed_h5ad, {j['cells']:,} cells, {j['file_mb']:.0f} MB .h5ad, e2e | {j['cells_s']:,.0f} | "
          f"{j['raw_cells_s']:,.0f} | {j['ratio']:.2f} | | |" for j in report["jobs"]],
        "",
        "| CPU ms per 4,096-cell request | raw ONNX Runtime | raw folded | Embed: server | Embed: client |",
        "|---|---|---|---|---|",
        *[f"| {c['model']}, matrix via {c['transport']} | {c['raw_ms']:.1f} | {c['raw_folded_ms']:.1f} | "
          f"{'?' if c['server_ms'] is None else format(c['server_ms'], '.1f')} | {c['client_ms']:.1f} |"
          for c in report["cpu"]],
        "",
        f"Embed ratio, median of {args.repeats} ({' / '.join(map(str, in_flights))} in flight), matrix on the "
        "channel | in shared memory: "
        + "; ".join(f"{m} {_row(medians, m, in_flights, CHANNEL)} | {_row(medians, m, in_flights, SHARED)}"
                    for m in models)
        + ". To the raw folded graph, the same way: "
        + "; ".join(f"{m} {_row(folded_medians, m, in_flights, CHANNEL)} | "
                    f"{_row(folded_medians, m, in_flights, SHARED)}" for m in models)
        + ". Job worker peak RSS: "
        + "; ".join(f"{j['worker_peak_rss_mb']:.0f} MB for {j['cells']:,} cells ({j['file_mb']:.0f} MB file)"
                    for j in report["jobs"]) + ".",
        f"Load average (1, 5, 15 min) at the start {report['load_average_start']}, at the end "
        f"{report['load_average_end']}.",
    ]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embedding.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "embedding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
