"""What a worker process does with a shard or a merge task (called by the Celery tasks).

Every step goes through the job store's atomic transitions, so duplicates (a redelivered task, a
re-queued shard) are skipped or overwrite their own output, and nothing is reported complete
until every shard's output is in place and merged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from celery import Celery

from genoserve.core import metrics
from genoserve.core.errors import GenoserveError
from genoserve.core.settings import Settings
from genoserve.jobs import lifecycle
from genoserve.jobs.celery_app import enqueue_merge, enqueue_shard
from genoserve.jobs.heartbeat import Heartbeat
from genoserve.jobs.kinds import get_kind
from genoserve.jobs.kinds.base import InputRecordError, PlannedShard, ShardCancelled, ShardContext
from genoserve.jobs.local_models import LocalModels
from genoserve.jobs.paths import SUCCESS_MARKER, remove_staging, staging_dir, write_atomically
from genoserve.jobs.records import Job
from genoserve.jobs.store import JobStore, open_store

log = logging.getLogger(__name__)


def shard_stem(job: Job, index: int) -> Path:
    return staging_dir(Path(job.output_dir), job.id) / f"shard-{index:06d}"


class WorkerRuntime:
    """Per worker process: settings, the job store, model sessions and the Celery app to re-queue."""

    def __init__(self, settings: Settings, app: Celery, store: JobStore | None = None) -> None:
        self.settings = settings
        self.app = app
        self.store = store or open_store(settings.jobs.resolved_store_url)
        self.models = LocalModels(settings.runtime, settings.worker.batch_size)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def _lease(self) -> float:
        return self.settings.jobs.shard_lease_s

    # -- shards ---------------------------------------------------------------------------------

    def run_shard(self, job_id: str, index: int) -> None:
        jobs = self.settings.jobs
        job, decision = self.store.transition(
            job_id,
            lambda j: lifecycle.begin_shard(j, index, self.worker_id, time.time(), jobs.max_attempts, self._lease),
        )
        if not decision.run:
            log.info("job %s shard %d skipped: %s", job_id, index, decision.reason)
            return
        shard = job.shards[index]
        kind = get_kind(job.kind)
        started = time.perf_counter()

        def beat() -> bool:
            _, d = self.store.update(job_id, lambda j: lifecycle.heartbeat(j, index, self.worker_id, time.time()))
            return d.run

        outcome = "failed"
        try:
            with Heartbeat(beat, self._lease / 4, f"{job_id}/{index}") as heartbeat:
                model = self.models.get(*kind.model(job.params))
                stem = shard_stem(job, index)
                stem.parent.mkdir(parents=True, exist_ok=True)
                items = kind.run_shard(
                    ShardContext(
                        inputs=[Path(p) for p in job.inputs],
                        input_index=shard.input_index,
                        start=shard.start,
                        stop=shard.stop,
                        offset=shard.offset,
                        params=job.params,
                        spec=model.spec,
                        settings=self.settings,
                        output_stem=stem,
                        infer=model.infer_sync,
                        batch_size=self.settings.worker.batch_size,
                        check=heartbeat.check,
                        log1p_inputs=model.log1p_inputs,
                    )
                )
            outcome = "done"
        except ShardCancelled as exc:
            outcome = "cancelled"
            log.info("job %s shard %d stopped: %s", job_id, index, exc)
            return
        except InputRecordError as exc:
            reason = exc.message
            log.info("job %s shard %d: bad input: %s", job_id, index, reason)
            self.store.transition(
                job_id, lambda j: lifecycle.fail_shard(j, index, reason, False, time.time(), jobs.max_attempts)
            )
            self._cleanup_if_over(job_id)
            return
        except Exception as exc:
            message = exc.message if isinstance(exc, GenoserveError) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s shard %d attempt %d failed", job_id, index, shard.attempts)
            _, failed = self.store.transition(
                job_id, lambda j: lifecycle.fail_shard(j, index, message, True, time.time(), jobs.max_attempts)
            )
            for again in failed.requeue:
                enqueue_shard(self.app, job.queue, job_id, again)
            self._cleanup_if_over(job_id)
            return
        finally:
            metrics.SHARD_DURATION.labels(job.kind, outcome).observe(time.perf_counter() - started)
        metrics.ITEMS_PROCESSED.labels(job.kind).inc(items)
        job, done = self.store.transition(
            job_id, lambda j: lifecycle.complete_shard(j, index, self.worker_id, time.time())
        )
        if done.merge:
            enqueue_merge(self.app, job.queue, job_id)
        elif not done.run:
            self._cleanup_if_over(job_id)

    def _cleanup_if_over(self, job_id: str) -> None:
        """A failed or cancelled job leaves no partial outputs behind."""
        job = self.store.get(job_id)
        if job is not None and job.state.terminal and job.state.value != "SUCCEEDED":
            remove_staging(Path(job.output_dir), job.id)

    # -- merge ----------------------------------------------------------------------------------

    def merge_job(self, job_id: str) -> None:
        jobs = self.settings.jobs
        job, decision = self.store.transition(
            job_id, lambda j: lifecycle.begin_merge(j, time.time(), jobs.max_attempts)
        )
        if not decision.run:
            log.info("job %s merge skipped: %s", job_id, decision.reason)
            self._cleanup_if_over(job_id)
            return
        kind = get_kind(job.kind)
        output_dir = Path(job.output_dir)
        marker = output_dir / SUCCESS_MARKER
        outputs: list[Path] = []

        def beat() -> bool:
            _, d = self.store.update(job_id, lambda j: lifecycle.merge_heartbeat(j, time.time()))
            return d.run

        try:
            with Heartbeat(beat, self._lease / 4, f"{job_id}/merge"):
                parts = [
                    (
                        PlannedShard(s.input_index, s.start, s.stop, s.items, s.offset),
                        kind.shard_result(shard_stem(job, s.index)),
                    )
                    for s in job.shards
                ]
                missing = [str(path) for _, path in parts if not path.exists()]
                if missing:
                    raise FileNotFoundError(f"shard outputs missing: {missing[:3]}")
                inputs = [Path(p) for p in job.inputs]
                outputs = kind.merge(inputs, parts, output_dir, job.params)
                manifest = {
                    "job": job.id, "kind": job.kind, "inputs": job.inputs, "params": job.params,
                    "outputs": [str(p) for p in outputs], "items": job.items_total, "finished_at": time.time(),
                }  # fmt: skip
                write_atomically(marker, json.dumps(manifest, indent=2).encode())
        except Exception as exc:
            log.exception("job %s merge failed", job_id)
            error = f"{type(exc).__name__}: {exc}"
            _, failed = self.store.transition(
                job_id, lambda j: lifecycle.fail_merge(j, error, True, time.time(), jobs.max_attempts)
            )
            if failed.merge:
                enqueue_merge(self.app, job.queue, job_id)
            else:
                self._remove(outputs, marker)
                self._cleanup_if_over(job_id)
            return
        final = [str(p) for p in outputs]
        _, finished = self.store.transition(job_id, lambda j: lifecycle.finish_merge(j, final, time.time()))
        if not finished.run:  # cancelled while merging: do not leave outputs that look complete
            self._remove(outputs, marker)
        remove_staging(output_dir, job_id)

    @staticmethod
    def _remove(outputs: list[Path], marker: Path) -> None:
        for path in [marker, *outputs]:
            path.unlink(missing_ok=True)
