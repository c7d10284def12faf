"""A job and its shards as stored in the job store (one JSON document per job)."""

from __future__ import annotations

import enum
import secrets

from pydantic import BaseModel, ConfigDict


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    MERGING = "MERGING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class ShardState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"


class Shard(BaseModel):
    """Items ``[start, stop)`` of input ``input_index`` (units are the kind's: rows, row groups...)."""

    model_config = ConfigDict(extra="ignore")  # records written by newer versions still load

    index: int
    input_index: int
    start: int
    stop: int
    items: int
    #: Byte offset of the first item in the input (kinds that seek); 0 otherwise.
    offset: int = 0
    state: ShardState = ShardState.PENDING
    attempts: int = 0
    worker: str = ""
    heartbeat_at: float = 0.0
    #: Items of a RUNNING shard done so far, as its worker's last heartbeat reported them.
    items_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    #: The last error of a failed attempt (kept for the job's error after the last attempt).
    error: str = ""


class Job(BaseModel):
    model_config = ConfigDict(extra="ignore")  # records written by newer versions still load

    id: str
    kind: str
    queue: str
    tenant: str = ""
    inputs: list[str]
    output_dir: str
    params: dict[str, str] = {}
    state: JobState = JobState.PENDING
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    outputs: list[str] = []
    shards: list[Shard] = []
    merge_attempts: int = 0
    merge_heartbeat_at: float = 0.0
    #: When the sweeper last re-queued a stalled job's pending shards.
    requeued_at: float = 0.0
    #: Incremented by every store update; Watch emits an event when it changes.
    version: int = 0

    @property
    def items_total(self) -> int:
        return sum(s.items for s in self.shards)

    @property
    def items_done(self) -> int:
        """Items of the DONE shards, and those the RUNNING ones reported with their heartbeats."""
        return sum(
            s.items if s.state is ShardState.DONE else min(s.items_done, s.items)
            for s in self.shards
            if s.state in (ShardState.DONE, ShardState.RUNNING)
        )

    @property
    def shards_done(self) -> int:
        return sum(1 for s in self.shards if s.state is ShardState.DONE)

    def describe_shard(self, shard: Shard) -> str:
        return f"shard {shard.index} ({self.inputs[shard.input_index]} items {shard.start}-{shard.stop})"


def new_job_id() -> str:
    return "j" + secrets.token_hex(8)


def dump(job: Job) -> str:
    return job.model_dump_json()


def load(text: str | bytes) -> Job:
    return Job.model_validate_json(text)
