"""Prometheus metric definitions (one place, conventional names and units, bounded labels).

Labels are service, method, status code, model, version, job kind, queue, family, stage and
model_control: never a request or job id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from genoserve.core.errors import Unavailable

#: Latency buckets from 100 µs to 60 s: online inference on small models is sub-millisecond.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

REQUESTS = Counter(
    "genoserve_requests",
    "gRPC requests handled, by service, method and final status code.",
    ["service", "method", "code"],
)
REQUEST_DURATION = Histogram(
    "genoserve_request_duration_seconds",
    "Wall time of a gRPC request inside the server, by service and method.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "genoserve_batch_size",
    "Items per session call formed by the dynamic batcher.",
    ["model"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "genoserve_queue_duration_seconds",
    "Time a request waited in the batcher's queue before its batch started.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "genoserve_inference_duration_seconds",
    "Wall time of one ONNX Runtime session call (one batch).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "genoserve_queue_depth",
    "Requests waiting in the batcher's queue (a request larger than the max batch counts once per part).",
    ["model"],
)
MODEL_READY = Gauge(
    "genoserve_model_ready",
    "1 when the model version is loaded and serving, else 0.",
    ["model", "version"],
)
MODEL_STORE_LAST_SUCCESS = Gauge(
    "genoserve_model_store_last_success_timestamp_seconds",
    "Unix time of the server's last successful read of its model store (runtime.model_repository), by "
    "runtime.model_control; the server's start until the first.",
    ["model_control"],
)
MODEL_STORE_SYNC_FAILURES = Counter(
    "genoserve_model_store_sync_failures",
    "Reads of the model store that failed (unreachable, denied, a key outside its model), by "
    "runtime.model_control; the versions already loaded keep serving.",
    ["model_control"],
)
BATCH_REJECTED = Counter(
    "genoserve_batcher_rejected",
    "Requests refused or dropped by the batcher, by reason (queue_full, deadline, deadline_estimate).",
    ["model", "reason"],
)

#: Stage buckets from 500 µs to 60 s: a small request's stages take milliseconds, a large image's
#: or BAM region's seconds.
STAGE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
STAGE_DURATION = Histogram(
    "genoserve_stage_duration_seconds",
    "Wall time of one stage of a family RPC that completed, by family and stage: preprocess (request to model "
    "inputs), infer (the model calls, batcher queue included), postprocess (model outputs to the response).",
    ["family", "stage"],
    buckets=STAGE_BUCKETS,
)
Stage = Literal["preprocess", "infer", "postprocess"]


@contextmanager
def stage(family: str, name: Stage) -> Iterator[None]:
    """Observe the wall time of the block as ``name`` of ``family`` in ``STAGE_DURATION``, when
    the block completes (a stage that raises is not observed: the request's status counts it)."""
    started = time.perf_counter()
    yield
    STAGE_DURATION.labels(family, name).observe(time.perf_counter() - started)


SHARED_MEMORY_BYTES = Counter(
    "genoserve_shared_memory_read_bytes",
    "Request tensor bytes read from co-located clients' shared memory instead of the channel.",
)


def start_metrics_endpoint(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` over HTTP on ``port`` in a daemon thread (port 0: do nothing)."""
    if port:
        # No *_created series: they double the scrape for no use here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            raise Unavailable(f"cannot serve /metrics on {host}:{port}: {exc.strerror}") from exc


# -- bulk jobs (workers use prometheus-client multiprocess mode; see genoserve.jobs.worker) -----------

JOBS_SUBMITTED = Counter("genoserve_jobs_submitted", "Jobs accepted by Jobs.Submit, by kind.", ["kind"])
JOBS_FINISHED = Counter(
    "genoserve_jobs_finished",
    "Jobs that reached a final state, by kind and status (succeeded, failed, cancelled).",
    ["kind", "status"],
)
SHARD_DURATION = Histogram(
    "genoserve_shard_duration_seconds",
    "Wall time of one shard attempt in a worker, by kind and outcome (done, failed, cancelled).",
    ["kind", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
ITEMS_PROCESSED = Counter("genoserve_items_processed", "Items (rows, reads, images, cells) done by workers.", ["kind"])
JOB_QUEUE_DEPTH = Gauge(
    "genoserve_job_queue_depth",
    "Shards waiting to run per queue (pending in the job store), sampled by the server's sweeper.",
    ["queue"],
    multiprocess_mode="max",
)
JOB_QUEUE_OLDEST_AGE = Gauge(
    "genoserve_job_queue_oldest_age_seconds",
    "Age of the oldest pending shard per queue (seconds since its job was submitted or its last attempt's "
    "heartbeat; 0 when none is pending), sampled by the server's sweeper.",
    ["queue"],
    multiprocess_mode="max",
)
WORKER_CONSUMERS = Gauge(
    "genoserve_worker_consumers",
    "Processes of this worker consuming each queue (its prefork concurrency); 0 once it is shutting down.",
    ["queue"],
    multiprocess_mode="max",
)
