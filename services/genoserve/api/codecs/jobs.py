"""Jobs <-> genoserve.v1 job messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from genoserve.core.errors import InvalidArgument
from genoserve.jobs.records import Job, JobState
from genoserve.jobs.service import progress
from genoserve.v1 import jobs_pb2

_STATES = {state: jobs_pb2.JobState.Value(f"JOB_STATE_{state.value}") for state in JobState}
_FROM_PROTO = {v: k for k, v in _STATES.items()}


def state_from_proto(value: int) -> JobState | None:
    """UNSPECIFIED -> None (no filter); unknown values are INVALID_ARGUMENT."""
    if value == jobs_pb2.JOB_STATE_UNSPECIFIED:
        return None
    state = _FROM_PROTO.get(jobs_pb2.JobState.ValueType(value))
    if state is None:
        raise InvalidArgument.field("state", f"unknown job state {value}")
    return state


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_message(job: Job) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        id=job.id,
        kind=job.kind,
        state=_STATES[job.state],
        inputs=job.inputs,
        output_dir=job.output_dir,
        params=job.params,
        queue=job.queue,
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
        shards_total=len(job.shards),
        shards_done=job.shards_done,
        items_total=job.items_total,
        items_done=job.items_done,
        error=job.error,
        outputs=job.outputs if job.state is JobState.SUCCEEDED else [],
    )


def job_event(job: Job) -> jobs_pb2.JobEvent:
    rates = progress(job)
    return jobs_pb2.JobEvent(job=job_message(job), items_per_second=rates.items_per_second,
                             eta_seconds=rates.eta_seconds)  # fmt: skip
