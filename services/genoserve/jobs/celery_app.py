"""The Celery app: one queue per family, at-least-once delivery, tasks carry ids only.

acks_late + reject_on_worker_lost + prefetch 1: a task is acknowledged only after its shard's
output is in place, so a worker that dies mid-shard loses nothing. With Redis, an unacknowledged
task is redelivered after ``visibility_timeout_s`` (longer than the longest shard). The embedded
broker (kombu's filesystem transport with atomic message files, ``fs_transport``) needs no server
process; it cannot redeliver a task whose worker was killed, so the server's sweeper re-queues
shards whose lease expired (it does so for Redis too, sooner than the visibility timeout).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from genoserve.core.settings import JobsSettings
from genoserve.jobs.fs_transport import TRANSPORT

SHARD_TASK = "genoserve.run_shard"
MERGE_TASK = "genoserve.merge_job"
FAMILY_QUEUES = ("platform", "binding", "variants", "segmentation", "embedding")


def broker_options(settings: JobsSettings) -> tuple[str, str | None, dict[str, Any]]:
    """(broker URL, kombu transport class or None for the URL's own, transport options)."""
    url = settings.resolved_broker_url
    if url.startswith("filesystem://"):
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return (
            "filesystem://",
            TRANSPORT,
            {
                "data_folder_in": str(folder / "queue"),
                "data_folder_out": str(folder / "queue"),
                "processed_folder": str(folder / "processed"),
                "control_folder": str(folder / "control"),
                "store_processed": False,
                "polling_interval": 0.01,  # a listdir per 10 ms: idle cost is negligible, shard gaps shrink
            },
        )
    return url, None, {"visibility_timeout": settings.visibility_timeout_s}


def make_celery(settings: JobsSettings) -> Celery:
    url, transport, transport_options = broker_options(settings)
    app = Celery("genoserve", set_as_current=False)
    app.conf.update(
        broker_url=url,
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep retrying while Redis restarts
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="platform",
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 20, "interval_start": 0.1, "interval_step": 0.5, "interval_max": 2},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def enqueue_shard(app: Celery, queue: str, job_id: str, index: int) -> None:
    app.send_task(SHARD_TASK, args=[job_id, index], queue=queue)


def enqueue_merge(app: Celery, queue: str, job_id: str) -> None:
    app.send_task(MERGE_TASK, args=[job_id], queue=queue)
