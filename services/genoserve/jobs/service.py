"""The server side of bulk jobs: submit (validate, plan, record, enqueue), read, cancel, watch,
and the sweeper that recovers lost shards. Blocking (store and file IO): call from a thread."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from genoserve.core import metrics
from genoserve.core.errors import AlreadyExists, GenoserveError, InvalidArgument, NotFound, PermissionDenied
from genoserve.core.settings import Settings
from genoserve.jobs import lifecycle
from genoserve.jobs.celery_app import enqueue_merge, enqueue_shard
from genoserve.jobs.kinds import get_kind
from genoserve.jobs.kinds.base import check_model_name
from genoserve.jobs.paths import NAME_MAX, claim, confine, open_output_folder, owner, remove_staging
from genoserve.jobs.records import Job, JobState, Shard, ShardState, new_job_id
from genoserve.jobs.store import JobStore
from genoserve.runtime.registry import read_model
from genoserve.runtime.store import ModelStore, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    items_per_second: float
    eta_seconds: float


def progress(job: Job, now: float | None = None) -> Progress:
    """Throughput since the job started and the time left at that rate (0 when unknown)."""
    if not job.started_at or not job.items_done:
        return Progress(0.0, 0.0)
    end = job.finished_at or now or time.time()
    rate = job.items_done / max(end - job.started_at, 1e-6)
    left = job.items_total - job.items_done
    return Progress(rate, left / rate if left and not job.state.terminal else 0.0)


class JobService:
    """``models``: the model store jobs read their model from (the server's); ``served_version``:
    the version the server serves of a model as latest ("" when none), which a job without a
    version is pinned to when the store still has it (else the store's newest)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        app: Celery,
        models: ModelStore | None = None,
        served_version: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.app = app
        self.models = models or open_store(settings.runtime)
        self.served_version = served_version

    # -- submit ---------------------------------------------------------------------------------

    def submit(
        self, tenant: str, kind_name: str, inputs: Sequence[str], output_dir: str, params: Mapping[str, str]
    ) -> Job:
        jobs = self.settings.jobs
        kind = get_kind(kind_name)
        parsed = kind.parse_params(params)
        model_name, version = kind.model(parsed)
        check_model_name(model_name)  # before the name comes near the filesystem
        try:  # the model.yaml and its family's contract, parsed by the registry
            with self.models.specs((model_name,)) as specs:
                records = read_model(specs / model_name)
        except ValueError as exc:
            raise InvalidArgument.field("params[model]", f"model {model_name!r} is not usable: {exc}") from exc
        spec = records[0].spec
        assert spec is not None
        known = [str(v.version) for v in spec.versions]
        if version and version not in known:
            raise InvalidArgument.field(
                "params[version]", f"model {model_name} has no version {version!r}; it has {known}"
            )
        if not version:  # pinned now: every shard runs the version the job was submitted against
            served = self.served_version(model_name) if self.served_version else ""
            version = served if served in known else str(max(v.version for v in spec.versions))
            parsed = {**parsed, "version": version}
        if not inputs:
            raise InvalidArgument.field("inputs", "at least one input is required")
        if len(inputs) > jobs.max_shards_per_job:
            raise InvalidArgument.field(
                "inputs",
                f"{len(inputs)} inputs; a job may have at most {jobs.max_shards_per_job} shards "
                "(setting jobs.max_shards_per_job)",
            )
        paths = [confine(raw, jobs.input_roots, f"inputs[{i}]", must_exist=True) for i, raw in enumerate(inputs)]
        folders = [i for i, path in enumerate(paths) if path.is_dir()]
        if folders and not kind.takes_folders:
            first = folders[0]
            raise InvalidArgument.field(f"inputs[{first}]", f"{paths[first]} is a folder; {kind.name} reads files")
        out = confine(output_dir, jobs.output_roots, "output_dir", must_exist=False)
        if os.path.lexists(out) and not out.is_dir():
            raise InvalidArgument.field("output_dir", f"{out} exists and is not a folder")
        self._check_owner(out, tenant)
        [record] = [r for r in records if r.version_label == version]
        planned = kind.plan(paths, parsed, record, self.settings)
        if not planned:
            raise InvalidArgument.field("inputs", "the inputs hold no items")
        if len(planned) > jobs.max_shards_per_job:
            raise InvalidArgument.field(
                "params[shard_size]" if "shard_size" in parsed else "inputs",
                f"{len(planned)} shards; a job may have at most {jobs.max_shards_per_job} "
                "(setting jobs.max_shards_per_job)" + (": use a larger shard_size" if "shard_size" in parsed else ""),
            )
        finals = kind.outputs(paths, out, parsed, jobs.input_roots)
        clashes = [p for p, n in Counter(finals).items() if n > 1]
        if clashes:
            raise InvalidArgument.field("inputs", f"several inputs would write the same output {clashes[0]}")
        too_long = [p for p in finals if len(os.fsencode(p.name)) > NAME_MAX]
        if too_long:
            raise InvalidArgument.field(
                "inputs",
                f"the output name {too_long[0].name[:60]!r}... would be longer than {NAME_MAX} bytes (NAME_MAX)",
            )
        existing = [p for p in finals if os.path.lexists(p)]
        if existing and parsed.get("overwrite") != "true":
            raise AlreadyExists(f"output_dir: {existing[0]} already exists; pass param overwrite=true to replace it")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgument.field("output_dir", f"{out} cannot be made: {exc.strerror}") from exc
        with open_output_folder(out, jobs.output_roots) as folder:
            claim(folder, tenant)
        now = time.time()
        job = Job(
            id=new_job_id(), kind=kind.name, queue=kind.queue, tenant=tenant,
            inputs=[str(p) for p in paths], output_dir=str(out), params=parsed,
            created_at=now, updated_at=now,
            shards=[Shard(index=i, input_index=s.input_index, start=s.start, stop=s.stop, items=s.items,
                          offset=s.offset)
                    for i, s in enumerate(planned)],
        )  # fmt: skip
        self.store.create(job)
        metrics.JOBS_SUBMITTED.labels(kind.name).inc()
        try:
            for shard in job.shards:
                enqueue_shard(self.app, job.queue, job.id, shard.index)
        except Exception:  # the sweeper re-queues a stalled job's pending shards once the broker is back
            log.exception("job %s: enqueueing its shards failed; the sweeper will retry", job.id)
        log.info("job %s (%s) submitted: %d shards, %d items", job.id, job.kind, len(job.shards), job.items_total)
        return job

    def _check_owner(self, out: Path, tenant: str) -> None:
        """PERMISSION_DENIED when the output folder holds another tenant's outputs (checked before
        any input is inspected; ``claim`` settles it again when the folder is taken)."""
        if not out.is_dir():
            return
        with open_output_folder(out, self.settings.jobs.output_roots) as folder:
            current = owner(folder)
        if current is not None and current != tenant:
            raise PermissionDenied(
                f"output_dir: {out} holds the outputs of another tenant's jobs; choose another folder"
            )

    # -- read / cancel ----------------------------------------------------------------------------

    def get(self, tenant: str, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument.field("id", "is required")
        job = self.store.get(job_id)
        if job is None or job.tenant != tenant:  # another tenant's job does not exist for this caller
            raise NotFound(f"job {job_id!r} not found")
        return job

    def list(self, tenant: str, state: JobState | None, limit: int) -> list[Job]:
        return self.store.list_jobs(tenant, state, limit if limit > 0 else 50)

    def cancel(self, tenant: str, job_id: str) -> Job:
        self.get(tenant, job_id)
        job, decision = self.store.transition(job_id, lambda j: lifecycle.cancel(j, time.time()))
        if decision.run:
            remove_staging(Path(job.output_dir), job.id, self.settings.jobs.output_roots)
            log.info("job %s cancelled", job_id)
        return job

    # -- recovery -------------------------------------------------------------------------------

    def sweep_once(self) -> None:
        """Re-queue shards whose lease expired and stalled jobs; sample queue depths and backlog ages."""
        lease = self.settings.jobs.shard_lease_s
        pending: Counter[str] = Counter()
        oldest: dict[str, float] = {}
        now = time.time()
        for job_id in self.store.active_ids():
            try:
                job, decision = self.store.transition(job_id, lambda j: lifecycle.sweep(j, time.time(), lease))
                for index in decision.requeue:
                    log.warning("job %s: re-queueing shard %d (%s)", job_id, index, job.shards[index].error)
                    enqueue_shard(self.app, job.queue, job_id, index)
                if decision.merge:
                    log.warning("job %s: re-queueing its merge", job_id)
                    enqueue_merge(self.app, job.queue, job_id)
                for shard in job.shards:
                    if shard.state is ShardState.PENDING:
                        pending[job.queue] += 1
                        since = lifecycle.pending_since(job, shard)
                        oldest[job.queue] = min(oldest.get(job.queue, since), since)
            except GenoserveError as exc:
                log.warning("sweep of job %s failed: %s", job_id, exc.message)
        for queue in self.settings.worker.queues:
            metrics.JOB_QUEUE_DEPTH.labels(queue).set(pending.get(queue, 0))
            metrics.JOB_QUEUE_OLDEST_AGE.labels(queue).set(max(0.0, now - oldest[queue]) if queue in oldest else 0.0)
