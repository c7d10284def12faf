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
from collections.abc import Callable
from pathlib import Path

from celery import Celery

from genoserve.core import metrics
from genoserve.core.errors import GenoserveError, PermissionDenied, Unavailable
from genoserve.core.settings import Settings
from genoserve.jobs import lifecycle
from genoserve.jobs.celery_app import enqueue_merge, enqueue_shard
from genoserve.jobs.heartbeat import Heartbeat
from genoserve.jobs.kinds import get_kind
from genoserve.jobs.kinds.base import InputRecordError, PlannedShard, ShardCancelled, ShardContext
from genoserve.jobs.local_models import LocalModels
from genoserve.jobs.paths import (
    STAGING,
    SUCCESS_MARKER,
    Folder,
    PathError,
    claim,
    input_file,
    input_folder,
    open_output_folder,
    remove_staging,
)
from genoserve.jobs.records import Job
from genoserve.jobs.store import JobStore, open_store

log = logging.getLogger(__name__)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def check_inputs(job: Job, indexes: list[int], roots: tuple[Path, ...]) -> None:
    """The job's inputs ``indexes`` are still under the roots and regular files (or folders, for
    kinds that take folders); PathError naming the input otherwise. Kinds check each further file
    they open themselves."""
    for index in indexes:
        raw = job.inputs[index]
        if os.path.isdir(raw):
            input_folder(raw, roots, f"inputs[{index}]")
        else:
            input_file(raw, roots, f"inputs[{index}]")


class WorkerRuntime:
    """Per worker process: settings, the job store, model sessions and the Celery app to re-queue."""

    def __init__(self, settings: Settings, app: Celery, store: JobStore | None = None) -> None:
        self.settings = settings
        self.app = app
        self.store = store or open_store(settings.jobs.resolved_store_url)
        self.models = LocalModels(settings.runtime, settings.worker.batch_size, settings.worker.max_loaded_models)
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

        reported = [0]  # items of the shard done so far, as the kind reports them

        def beat() -> bool:
            _, d = self.store.update(
                job_id, lambda j: lifecycle.heartbeat(j, index, self.worker_id, time.time(), reported[0])
            )
            return d.run

        def progress(items: int) -> None:
            reported[0] = items

        outcome = "failed"
        folders: list[Folder] = []
        try:
            with Heartbeat(beat, self._lease / 4, f"{job_id}/{index}") as heartbeat:
                check = self._checker(job_id, heartbeat.check)
                check_inputs(job, [shard.input_index], jobs.input_roots)
                model = self.models.get(*kind.model(job.params))
                out = open_output_folder(Path(job.output_dir), jobs.output_roots)
                folders.append(out)
                claim(out, job.tenant)  # the folder may have changed hands since submit
                mine = out.sub(STAGING, create=True).sub(job.id, create=True)
                items = kind.run_shard(
                    ShardContext(
                        inputs=[Path(p) for p in job.inputs],
                        input_index=shard.input_index,
                        start=shard.start,
                        stop=shard.stop,
                        offset=shard.offset,
                        params=job.params,
                        spec=model.spec,
                        contract=model.contract,
                        settings=self.settings,
                        output_stem=mine.path / shard_name(index),
                        infer=model.infer_sync,
                        batch_size=self.settings.worker.batch_size,
                        check=check,
                        log1p_inputs=model.log1p_inputs,
                        progress=progress,
                    )
                )
            outcome = "done"
        except ShardCancelled as exc:
            outcome = "cancelled"
            log.info("job %s shard %d stopped: %s", job_id, index, exc)
            self._cleanup_if_over(job_id)
            return
        except (InputRecordError, PathError, PermissionDenied) as exc:
            reason = _unmask(folders, exc.message)
            log.info("job %s shard %d refused: %s", job_id, index, reason)
            self.store.transition(
                job_id, lambda j: lifecycle.fail_shard(j, index, reason, False, time.time(), jobs.max_attempts)
            )
            self._cleanup_if_over(job_id)
            return
        except Exception as exc:
            if self._over(job_id):  # cancelled meanwhile (its staging removed under the shard): not an error
                outcome = "cancelled"
                log.info("job %s shard %d stopped: the job is no longer running (%s)", job_id, index,
                         _unmask(folders, f"{type(exc).__name__}: {exc}"))  # fmt: skip
                self._cleanup_if_over(job_id)
                return
            message = exc.message if isinstance(exc, GenoserveError) else f"{type(exc).__name__}: {exc}"
            message = _unmask(folders, message)
            log.exception("job %s shard %d attempt %d failed", job_id, index, shard.attempts)
            _, failed = self.store.transition(
                job_id, lambda j: lifecycle.fail_shard(j, index, message, True, time.time(), jobs.max_attempts)
            )
            for again in failed.requeue:
                enqueue_shard(self.app, job.queue, job_id, again)
            self._cleanup_if_over(job_id)
            return
        finally:
            for folder in folders:
                folder.close()
            metrics.SHARD_DURATION.labels(job.kind, outcome).observe(time.perf_counter() - started)
        metrics.ITEMS_PROCESSED.labels(job.kind).inc(items)
        job, done = self.store.transition(
            job_id, lambda j: lifecycle.complete_shard(j, index, self.worker_id, time.time())
        )
        if done.merge:
            enqueue_merge(self.app, job.queue, job_id)
        elif not done.run:
            self._cleanup_if_over(job_id)

    def _checker(self, job_id: str, lease_check: Callable[[], None]) -> Callable[[], None]:
        """``ShardContext.check``: stop when the lease is lost or, looking at the store at most every
        ``jobs.cancel_check_s``, when the job was cancelled or failed elsewhere."""
        every = self.settings.jobs.cancel_check_s
        last = time.monotonic()

        def check() -> None:
            nonlocal last
            lease_check()
            now = time.monotonic()
            if now - last < every:
                return
            last = now
            try:
                current = self.store.get(job_id)
            except GenoserveError as exc:  # store unreachable: keep working, the heartbeat decides
                log.warning("job %s: cannot read its state: %s", job_id, exc.message)
                return
            if current is None or current.state.terminal:
                state = current.state.value.lower() if current is not None else "gone"
                raise ShardCancelled(f"the job is {state}")

        return check

    def _over(self, job_id: str) -> bool:
        try:
            job = self.store.get(job_id)
        except GenoserveError:
            return False
        return job is None or job.state.terminal

    def _cleanup_if_over(self, job_id: str) -> None:
        """A failed or cancelled job leaves no partial outputs behind."""
        job = self.store.get(job_id)
        if job is not None and job.state.terminal and job.state.value != "SUCCEEDED":
            remove_staging(Path(job.output_dir), job.id, self.settings.jobs.output_roots)

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
        outputs: list[Path] = []
        folders: list[Folder] = []
        touched = False  # whether this merge began to write outputs (a refusal before that leaves all as it was)

        def beat() -> bool:
            _, d = self.store.update(job_id, lambda j: lifecycle.merge_heartbeat(j, time.time()))
            return d.run

        try:
            with Heartbeat(beat, self._lease / 4, f"{job_id}/merge"):
                check_inputs(job, list(range(len(job.inputs))), jobs.input_roots)
                out = open_output_folder(Path(job.output_dir), jobs.output_roots)
                folders.append(out)
                claim(out, job.tenant)  # again at write time: the folder may have changed hands
                mine = out.sub(STAGING).sub(job.id)
                parts = [
                    (
                        PlannedShard(s.input_index, s.start, s.stop, s.items, s.offset),
                        kind.shard_result(mine.path / shard_name(s.index)),
                    )
                    for s in job.shards
                ]
                missing = [str(path) for _, path in parts if not path.exists()]
                if missing:
                    raise FileNotFoundError(f"shard outputs missing: {missing[:3]}")
                inputs = [Path(p) for p in job.inputs]
                touched = True
                outputs = kind.merge(inputs, parts, out.path, job.params, jobs.input_roots)
                manifest = {
                    "job": job.id, "kind": job.kind, "tenant": job.tenant, "inputs": job.inputs,
                    "params": job.params, "outputs": [str(out.recorded(p)) for p in outputs],
                    "items": job.items_total, "finished_at": time.time(),
                }  # fmt: skip
                out.write_atomically(SUCCESS_MARKER, json.dumps(manifest, indent=2).encode())
                final = [str(out.recorded(p)) for p in outputs]
                _, finished = self.store.transition(job_id, lambda j: lifecycle.finish_merge(j, final, time.time()))
                if not finished.run:  # cancelled while merging: do not leave outputs that look complete
                    self._remove(out, outputs)
        except Unavailable:
            raise  # the job store is down: the task goes back to the broker
        except Exception as exc:
            retryable = not isinstance(exc, (InputRecordError, PathError, PermissionDenied))
            error = _unmask(folders, exc.message if isinstance(exc, GenoserveError) else f"{type(exc).__name__}: {exc}")
            if retryable:
                log.exception("job %s merge failed", job_id)
            else:
                log.info("job %s merge refused: %s", job_id, error)
            _, failed = self.store.transition(
                job_id, lambda j: lifecycle.fail_merge(j, error, retryable, time.time(), jobs.max_attempts)
            )
            if failed.merge:
                enqueue_merge(self.app, job.queue, job_id)
            else:
                if folders and touched:
                    self._remove(folders[0], outputs)
                self._cleanup_if_over(job_id)
            return
        finally:
            for folder in folders:
                folder.close()
        remove_staging(Path(job.output_dir), job_id, jobs.output_roots)

    @staticmethod
    def _remove(out: Folder, outputs: list[Path]) -> None:
        """Take back a merge's outputs (written under ``out.path``) and its success marker."""
        out.unlink(SUCCESS_MARKER)
        for path in outputs:
            path.unlink(missing_ok=True)


def _unmask(folders: list[Folder], text: str) -> str:
    """``text`` naming the folders' real paths instead of their descriptor paths."""
    for folder in folders:
        text = folder.unmask(text)
    return text
