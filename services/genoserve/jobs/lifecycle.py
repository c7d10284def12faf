"""Every state transition of a job, as pure functions on the stored document.

The store applies them atomically (read, modify, write under a transaction), so that a shard that
two workers receive runs once, an attempt counter stops poison shards, the merge is started
exactly once, and a cancelled job never turns SUCCEEDED.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genoserve.jobs.records import Job, JobState, Shard, ShardState


@dataclass
class Decision:
    """What the caller should do after a transition."""

    run: bool = False
    reason: str = ""
    #: Shards to (re-)enqueue.
    requeue: list[int] = field(default_factory=list)
    #: Enqueue the merge step.
    merge: bool = False


def _fail(job: Job, error: str, now: float) -> None:
    job.state = JobState.FAILED
    job.error = error
    job.finished_at = now


def begin_shard(job: Job, index: int, worker: str, now: float, max_attempts: int, lease_s: float) -> Decision:
    """A worker received shard ``index``: claim it, unless it is done, claimed, or the job is over."""
    if job.state.terminal or job.state is JobState.MERGING:
        return Decision(reason=f"job is {job.state.value.lower()}")
    shard = job.shards[index]
    if shard.state is ShardState.DONE:
        return Decision(reason="shard already done")
    if shard.state is ShardState.RUNNING and shard.worker != worker and now - shard.heartbeat_at < lease_s:
        return Decision(reason=f"shard running on {shard.worker}")
    if shard.attempts >= max_attempts:
        last = shard.error or "worker lost"
        _fail(job, f"{job.describe_shard(shard)} failed after {shard.attempts} attempts: {last}", now)
        return Decision(reason="attempts exhausted")
    shard.attempts += 1
    shard.state = ShardState.RUNNING
    shard.worker = worker
    shard.heartbeat_at = now
    shard.items_done = 0
    shard.started_at = now
    if job.state is JobState.PENDING:
        job.state = JobState.RUNNING
        job.started_at = now
    return Decision(run=True)


def heartbeat(job: Job, index: int, worker: str, now: float, items_done: int = 0) -> Decision:
    """Keep the lease and record the shard's progress (``items_done``); ``run`` False tells the
    worker to stop (job cancelled or failed)."""
    shard = job.shards[index]
    if job.state.terminal:
        return Decision(reason=f"job is {job.state.value.lower()}")
    if shard.state is ShardState.RUNNING and shard.worker == worker:
        shard.heartbeat_at = now
        shard.items_done = max(shard.items_done, min(items_done, shard.items))
        return Decision(run=True)
    return Decision(reason="shard lease lost")


def complete_shard(job: Job, index: int, worker: str, now: float) -> Decision:
    """The shard's output is in place. ``merge`` is True exactly once: for the last shard."""
    shard = job.shards[index]
    if job.state.terminal:
        return Decision(reason=f"job is {job.state.value.lower()}")
    if shard.state is not ShardState.DONE:
        shard.state = ShardState.DONE
        shard.finished_at = now
        shard.worker = worker
        shard.error = ""
    if job.state is JobState.RUNNING and all(s.state is ShardState.DONE for s in job.shards):
        job.state = JobState.MERGING
        job.merge_heartbeat_at = now
        return Decision(run=True, merge=True)
    return Decision(run=True)


def fail_shard(job: Job, index: int, error: str, retryable: bool, now: float, max_attempts: int) -> Decision:
    """An attempt failed. Bad input fails the job at once; anything else is retried up to N tries."""
    shard = job.shards[index]
    if job.state.terminal:
        return Decision(reason=f"job is {job.state.value.lower()}")
    shard.error = error
    if not retryable:
        _fail(job, error, now)
        return Decision(reason="input error")
    if shard.attempts >= max_attempts:
        _fail(job, f"{job.describe_shard(shard)} failed after {shard.attempts} attempts: {error}", now)
        return Decision(reason="attempts exhausted")
    shard.state = ShardState.PENDING
    shard.worker = ""
    return Decision(requeue=[index])


def begin_merge(job: Job, now: float, max_attempts: int) -> Decision:
    if job.state is not JobState.MERGING:
        return Decision(reason=f"job is {job.state.value.lower()}")
    if job.merge_attempts >= max_attempts:
        _fail(job, f"merging the outputs failed after {job.merge_attempts} attempts", now)
        return Decision(reason="attempts exhausted")
    job.merge_attempts += 1
    job.merge_heartbeat_at = now
    return Decision(run=True)


def merge_heartbeat(job: Job, now: float) -> Decision:
    if job.state is not JobState.MERGING:
        return Decision(reason=f"job is {job.state.value.lower()}")
    job.merge_heartbeat_at = now
    return Decision(run=True)


def finish_merge(job: Job, outputs: list[str], now: float) -> Decision:
    if job.state is not JobState.MERGING:
        return Decision(reason=f"job is {job.state.value.lower()}")
    job.state = JobState.SUCCEEDED
    job.outputs = outputs
    job.finished_at = now
    return Decision(run=True)


def fail_merge(job: Job, error: str, retryable: bool, now: float, max_attempts: int) -> Decision:
    if job.state is not JobState.MERGING:
        return Decision(reason=f"job is {job.state.value.lower()}")
    if not retryable or job.merge_attempts >= max_attempts:
        _fail(job, f"merging the outputs failed: {error}", now)
        return Decision(reason="merge failed")
    return Decision(merge=True)


def cancel(job: Job, now: float, who: str = "user") -> Decision:
    if job.state.terminal:
        return Decision(reason=f"job is already {job.state.value.lower()}")
    job.state = JobState.CANCELLED
    job.error = f"cancelled by {who}"
    job.finished_at = now
    return Decision(run=True)


def sweep(job: Job, now: float, lease_s: float) -> Decision:
    """Recover from lost workers and lost messages.

    A running shard whose heartbeat is older than the lease goes back to PENDING and is re-queued
    (its attempt stays counted). A job with no live shard and no change for two leases has its
    pending shards re-queued (duplicates are harmless: a claimed or done shard is skipped). A
    merge whose heartbeat expired is re-queued.
    """
    if job.state.terminal:
        return Decision()
    decision = Decision()
    live = False
    for shard in job.shards:
        if shard.state is ShardState.RUNNING:
            if now - shard.heartbeat_at >= lease_s:
                shard.state = ShardState.PENDING
                shard.error = shard.error or f"worker {shard.worker} lost (no heartbeat for {lease_s:.0f} s)"
                shard.worker = ""
                decision.requeue.append(shard.index)
            else:
                live = True
    if job.state is JobState.MERGING:
        if now - job.merge_heartbeat_at >= lease_s:
            job.merge_heartbeat_at = now
            decision.merge = True
        return decision
    if not live and not decision.requeue and now - job.updated_at >= 2 * lease_s:
        decision.requeue = [s.index for s in job.shards if s.state is ShardState.PENDING]
        if decision.requeue:
            job.requeued_at = now
    return decision


def pending_since(job: Job, shard: Shard) -> float:
    """When a PENDING shard began waiting: its job's submission, or its last attempt's heartbeat
    (a shard that failed or lost its worker waits again from then)."""
    return max(job.created_at, shard.heartbeat_at)
