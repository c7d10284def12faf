"""Queue metrics the alerts use: backlog depth and age per queue (sweeper), consumers per queue (worker)."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import REGISTRY

from genoserve.core.settings import JobsSettings, Settings, WorkerSettings
from genoserve.jobs import lifecycle
from genoserve.jobs.celery_app import make_celery
from genoserve.jobs.records import Job, Shard
from genoserve.jobs.service import JobService
from genoserve.jobs.store import SqliteJobStore
from genoserve.jobs.tasks import advertise_consumers


def sample(name: str, queue: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"queue": queue})


def make_job(job_id: str, queue: str, created: float, shards: int = 2) -> Job:
    return Job(
        id=job_id, kind="platform.score_rows", queue=queue, inputs=["/in.npy"], output_dir="/out",
        created_at=created, updated_at=time.time(),
        shards=[Shard(index=i, input_index=0, start=i, stop=i + 1, items=1) for i in range(shards)],
    )  # fmt: skip


def test_sweep_samples_backlog_depth_and_oldest_age_per_queue(tmp_path: Path) -> None:
    settings = Settings(
        jobs=JobsSettings(data_dir=tmp_path, shard_lease_s=600.0),
        worker=WorkerSettings(queues=("platform", "variants", "embedding")),
    )
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    app = make_celery(settings.jobs)
    service = JobService(settings, store, app)
    now = time.time()
    store.create(make_job("jold", "platform", now - 300))
    store.create(make_job("jnew", "platform", now - 10))
    store.create(make_job("jvar", "variants", now - 60, shards=3))
    # One variants shard is running: it is not part of the backlog.
    store.update("jvar", lambda j: lifecycle.begin_shard(j, 0, "w1", time.time(), 3, 600.0))
    try:
        service.sweep_once()
    finally:
        app.close()
        store.close()
    assert sample("genoserve_job_queue_depth", "platform") == 4
    assert sample("genoserve_job_queue_depth", "variants") == 2
    assert sample("genoserve_job_queue_depth", "embedding") == 0
    platform_age = sample("genoserve_job_queue_oldest_age_seconds", "platform")
    assert platform_age is not None
    assert 300 <= platform_age < 330
    variants_age = sample("genoserve_job_queue_oldest_age_seconds", "variants")
    assert variants_age is not None
    assert 60 <= variants_age < 90
    assert sample("genoserve_job_queue_oldest_age_seconds", "embedding") == 0


def test_a_worker_advertises_its_processes_per_queue_and_zero_when_leaving() -> None:
    settings = Settings(worker=WorkerSettings(queues=("segmentation", "embedding"), concurrency=3))
    advertise_consumers(settings)
    assert sample("genoserve_worker_consumers", "segmentation") == 3
    assert sample("genoserve_worker_consumers", "embedding") == 3
    advertise_consumers(settings, consuming=False)
    assert sample("genoserve_worker_consumers", "segmentation") == 0
