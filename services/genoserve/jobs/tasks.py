"""Celery tasks (ids only) and the ``genoserve worker`` process."""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import Reject

from genoserve.core import metrics
from genoserve.core.errors import Unavailable
from genoserve.core.settings import Settings
from genoserve.jobs.celery_app import MERGE_TASK, SHARD_TASK, make_celery
from genoserve.jobs.worker import WorkerRuntime

log = logging.getLogger(__name__)

_runtimes: dict[int, WorkerRuntime] = {}


def register_tasks(app: Celery, settings: Settings) -> None:
    """Bind the shard and merge tasks to ``app``; each worker process builds its runtime lazily
    (after the prefork fork, so that store connections and ONNX sessions are its own)."""

    def runtime() -> WorkerRuntime:
        pid = os.getpid()
        if pid not in _runtimes:
            _runtimes[pid] = WorkerRuntime(settings, app)
        return _runtimes[pid]

    def store_down(exc: Unavailable) -> Reject:
        # The job store is unreachable (Redis restarting): give the task back to the broker.
        log.warning("job store unavailable, re-queueing the task: %s", exc.message)
        time.sleep(1.0)
        return Reject(str(exc), requeue=True)

    @app.task(name=SHARD_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def run_shard(job_id: str, index: int) -> None:
        try:
            runtime().run_shard(job_id, int(index))
        except Unavailable as exc:
            raise store_down(exc) from exc

    @app.task(name=MERGE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def merge_job(job_id: str) -> None:
        try:
            runtime().merge_job(job_id)
        except Unavailable as exc:
            raise store_down(exc) from exc


def start_worker_metrics(settings: Settings) -> bool:
    """Serve the worker's /metrics on ``worker.metrics_port`` (0: none). When another process
    holds the port (the worker of ``genoserve serve --with-worker`` on this host, or another
    ``genoserve worker``), log a warning naming the port and run without an endpoint of its own
    rather than fail: the worker still runs jobs. Whether an endpoint is served."""
    port = settings.worker.metrics_port
    if not port:
        return False
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    from genoserve.runtime.gpu_metrics import register_gpu_metrics

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    register_gpu_metrics(settings.runtime, registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise Unavailable(
                f"cannot serve the worker's /metrics on port {port}: {exc.strerror} "
                "(give the worker another --metrics-port, or 0 for none)"
            ) from exc
        log.warning(
            "worker /metrics port %d is in use (another worker on this host, e.g. make serve's?): "
            "this worker runs without a /metrics endpoint of its own; give it --metrics-port PORT for one",
            port,
        )
        return False
    log.info("worker /metrics on port %d", port)
    return True


def advertise_consumers(settings: Settings, consuming: bool = True) -> None:
    """``genoserve_worker_consumers{queue}``: this worker's process count on each of its queues
    (0 when it stops), so that "no worker on a queue" can be alerted on."""
    for queue in settings.worker.queues:
        metrics.WORKER_CONSUMERS.labels(queue).set(settings.worker.concurrency if consuming else 0)


def run_worker(settings: Settings, hostname: str | None = None) -> None:
    """Start a Celery worker for ``settings.worker.queues`` (blocks until it is stopped)."""
    from celery.signals import worker_process_shutdown, worker_shutting_down
    from prometheus_client import multiprocess

    app = make_celery(settings.jobs)
    register_tasks(app, settings)

    @worker_process_shutdown.connect  # type: ignore[untyped-decorator]
    def _dead(pid: int | None = None, **_: Any) -> None:
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]

    @worker_shutting_down.connect  # type: ignore[untyped-decorator]
    def _leaving(**_: Any) -> None:
        advertise_consumers(settings, consuming=False)

    advertise_consumers(settings)
    start_worker_metrics(settings)
    argv = [
        "worker",
        f"--queues={','.join(settings.worker.queues)}",
        f"--concurrency={settings.worker.concurrency}",
        "--pool=prefork",
        f"--loglevel={settings.logging.level}",
        f"--hostname={hostname or 'genoserve@%h-' + str(os.getpid())}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv=argv)
