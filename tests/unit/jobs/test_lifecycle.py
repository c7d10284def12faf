"""Job transitions: claims, attempts, poison shards, merge exactly once, cancel, sweeper recovery."""

from __future__ import annotations

from genoserve.jobs import lifecycle
from genoserve.jobs.records import Job, JobState, Shard, ShardState

LEASE = 10.0


def make_job(shards: int = 3) -> Job:
    return Job(
        id="j1", kind="platform.score_rows", queue="platform", inputs=["/data/a.npy"], output_dir="/out",
        created_at=0.0, updated_at=0.0,
        shards=[Shard(index=i, input_index=0, start=10 * i, stop=10 * i + 10, items=10) for i in range(shards)],
    )  # fmt: skip


def test_first_claim_starts_the_job_and_duplicates_are_skipped() -> None:
    job = make_job()
    assert lifecycle.begin_shard(job, 0, "w1", 1.0, 3, LEASE).run
    assert job.state is JobState.RUNNING
    assert job.started_at == 1.0
    duplicate = lifecycle.begin_shard(job, 0, "w2", 2.0, 3, LEASE)
    assert not duplicate.run
    assert "running on w1" in duplicate.reason
    lifecycle.complete_shard(job, 0, "w1", 3.0)
    assert not lifecycle.begin_shard(job, 0, "w2", 4.0, 3, LEASE).run  # done shards never re-run


def test_merge_is_requested_exactly_once_by_the_last_shard() -> None:
    job = make_job()
    merges = []
    for index in (2, 0, 1):
        lifecycle.begin_shard(job, index, "w", 1.0, 3, LEASE)
        merges.append(lifecycle.complete_shard(job, index, "w", 2.0).merge)
    assert merges == [False, False, True]
    assert job.state is JobState.MERGING
    assert not lifecycle.complete_shard(job, 1, "w", 3.0).merge  # a redelivered last shard
    assert lifecycle.begin_merge(job, 4.0, 3).run
    assert lifecycle.finish_merge(job, ["/out/a.scores.npy"], 5.0).run
    assert job.state is JobState.SUCCEEDED
    assert job.items_done == job.items_total == 30


def test_bad_input_fails_the_job_at_once() -> None:
    job = make_job()
    lifecycle.begin_shard(job, 1, "w", 1.0, 3, LEASE)
    lifecycle.fail_shard(job, 1, "/data/a.npy: record 12: non-finite value in column 3", False, 2.0, 3)
    assert job.state is JobState.FAILED
    assert job.error == "/data/a.npy: record 12: non-finite value in column 3"
    assert not lifecycle.begin_shard(job, 2, "w", 3.0, 3, LEASE).run


def test_poison_shard_stops_after_max_attempts_naming_the_shard() -> None:
    job = make_job()
    for attempt in range(3):
        assert lifecycle.begin_shard(job, 1, "w", float(attempt), 3, LEASE).run
        decision = lifecycle.fail_shard(job, 1, "MemoryError: boom", True, float(attempt), 3)
        assert decision.requeue == ([1] if attempt < 2 else [])
    assert job.state is JobState.FAILED
    assert job.error == "shard 1 (/data/a.npy items 10-20) failed after 3 attempts: MemoryError: boom"


def test_attempts_count_lost_workers_too() -> None:
    job = make_job(1)
    for attempt in range(3):
        assert lifecycle.begin_shard(job, 0, f"w{attempt}", attempt * 100.0, 3, LEASE).run
        assert lifecycle.sweep(job, attempt * 100.0 + LEASE, LEASE).requeue == [0]  # the worker vanished
    assert not lifecycle.begin_shard(job, 0, "w9", 1000.0, 3, LEASE).run
    assert job.state is JobState.FAILED
    assert "failed after 3 attempts" in job.error
    assert "lost (no heartbeat" in job.error


def test_heartbeat_keeps_the_lease_and_sweep_requeues_only_expired_ones() -> None:
    job = make_job()
    lifecycle.begin_shard(job, 0, "w1", 0.0, 3, LEASE)
    lifecycle.begin_shard(job, 1, "w2", 0.0, 3, LEASE)
    assert lifecycle.heartbeat(job, 0, "w1", 8.0).run
    decision = lifecycle.sweep(job, 12.0, LEASE)
    assert decision.requeue == [1]
    assert job.shards[0].state is ShardState.RUNNING
    assert job.shards[1].state is ShardState.PENDING
    assert not lifecycle.heartbeat(job, 1, "w2", 12.5).run  # the slow worker learns it lost the lease


def test_stalled_job_requeues_pending_shards_and_expired_merge() -> None:
    job = make_job(2)
    job.updated_at = 0.0
    assert lifecycle.sweep(job, LEASE, LEASE).requeue == []  # not stalled yet
    assert lifecycle.sweep(job, 2 * LEASE, LEASE).requeue == [0, 1]
    for index in (0, 1):
        lifecycle.begin_shard(job, index, "w", 30.0, 3, LEASE)
        lifecycle.complete_shard(job, index, "w", 30.0)
    assert job.state is JobState.MERGING
    assert not lifecycle.sweep(job, 35.0, LEASE).merge
    assert lifecycle.sweep(job, 30.0 + LEASE, LEASE).merge


def test_cancel_stops_everything_and_is_final() -> None:
    job = make_job()
    lifecycle.begin_shard(job, 0, "w", 1.0, 3, LEASE)
    assert lifecycle.cancel(job, 2.0).run
    assert job.state is JobState.CANCELLED
    assert not lifecycle.heartbeat(job, 0, "w", 3.0).run  # the running shard stops
    assert not lifecycle.begin_shard(job, 1, "w", 3.0, 3, LEASE).run
    assert not lifecycle.complete_shard(job, 0, "w", 3.0).run
    assert not lifecycle.cancel(job, 4.0).run
    assert job.outputs == []


def test_cancel_during_merge_prevents_success() -> None:
    job = make_job(1)
    lifecycle.begin_shard(job, 0, "w", 1.0, 3, LEASE)
    lifecycle.complete_shard(job, 0, "w", 2.0)
    lifecycle.begin_merge(job, 3.0, 3)
    lifecycle.cancel(job, 4.0)
    assert not lifecycle.finish_merge(job, ["/out/x"], 5.0).run
    assert job.state is JobState.CANCELLED


def test_a_pending_shard_waits_from_submission_or_from_its_last_attempt() -> None:
    job = make_job()
    job.created_at = 100.0
    assert lifecycle.pending_since(job, job.shards[0]) == 100.0
    lifecycle.begin_shard(job, 1, "w1", 110.0, 3, LEASE)
    lifecycle.heartbeat(job, 1, "w1", 115.0)
    lifecycle.fail_shard(job, 1, "boom", True, 116.0, 3)
    assert job.shards[1].state is ShardState.PENDING
    assert lifecycle.pending_since(job, job.shards[1]) == 115.0  # waits again since its last heartbeat


def test_heartbeats_carry_progress_within_a_shard() -> None:
    job = make_job()
    lifecycle.begin_shard(job, 0, "w1", 0.0, 3, LEASE)
    lifecycle.begin_shard(job, 1, "w2", 0.0, 3, LEASE)
    assert job.items_done == 0
    lifecycle.heartbeat(job, 0, "w1", 1.0, 4)
    lifecycle.heartbeat(job, 1, "w2", 1.0, 99)  # never more than the shard holds
    assert job.items_done == 14
    lifecycle.complete_shard(job, 0, "w1", 2.0)
    assert job.items_done == 20
    lifecycle.sweep(job, 12.0, LEASE)  # w2 lost: its shard starts over elsewhere
    assert job.items_done == 10
    lifecycle.begin_shard(job, 1, "w3", 13.0, 3, LEASE)
    assert job.shards[1].items_done == 0
