"""Job stores (SQLite and a real redis-server): atomic transitions under concurrency, persistence."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from genoserve.core.errors import NotFound
from genoserve.jobs import lifecycle
from genoserve.jobs.records import Job, JobState, Shard
from genoserve.jobs.store import JobStore, RedisJobStore, SqliteJobStore, open_store
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    import redis

    redis.Redis.from_url(server.url).flushdb()
    return server.url


def make_job(job_id: str, tenant: str = "", shards: int = 20, created: float = 1.0) -> Job:
    return Job(
        id=job_id, kind="platform.score_rows", queue="platform", tenant=tenant, inputs=["/in.npy"],
        output_dir="/out", created_at=created, updated_at=created,
        shards=[Shard(index=i, input_index=0, start=i, stop=i + 1, items=1) for i in range(shards)],
    )  # fmt: skip


def test_open_store_picks_the_backend(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, RedisJobStore if store_url.startswith("redis") else SqliteJobStore)
    store.close()


def test_concurrent_shard_completions_merge_exactly_once(store_url: str) -> None:
    store = open_store(store_url)
    store.create(make_job("j1"))
    for i in range(20):
        store.update("j1", lambda j, i=i: lifecycle.begin_shard(j, i, f"w{i}", 1.0, 3, 60.0))
    merges: list[bool] = []

    def complete(index: int) -> None:
        own = open_store(store_url)  # each worker has its own connection
        _, decision = own.transition("j1", lambda j: lifecycle.complete_shard(j, index, f"w{index}", 2.0))
        merges.append(decision.merge)
        own.close()

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = store.require("j1")
    assert job.shards_done == 20, "a concurrent update was lost"
    assert merges.count(True) == 1
    assert job.state is JobState.MERGING
    store.close()


def test_jobs_survive_reopening_and_list_by_tenant(store_url: str) -> None:
    store = open_store(store_url)
    store.create(make_job("a1", tenant="lab-a", created=1.0))
    store.create(make_job("a2", tenant="lab-a", created=2.0))
    store.create(make_job("b1", tenant="lab-b", created=3.0))
    store.transition("a1", lambda j: lifecycle.cancel(j, 5.0))
    store.close()
    reopened: JobStore = open_store(store_url)
    assert [j.id for j in reopened.list_jobs("lab-a")] == ["a2", "a1"]
    assert [j.id for j in reopened.list_jobs("lab-a", JobState.CANCELLED)] == ["a1"]
    assert [j.id for j in reopened.list_jobs("lab-b")] == ["b1"]
    assert sorted(reopened.active_ids()) == ["a2", "b1"]
    assert reopened.require("a1").error == "cancelled by user"
    with pytest.raises(NotFound):
        reopened.require("nope")
    with pytest.raises(NotFound):
        reopened.update("nope", lambda j: None)
    reopened.close()


def test_unchanged_documents_are_not_rewritten(store_url: str) -> None:
    store = open_store(store_url)
    store.create(make_job("j1"))
    job, _ = store.update("j1", lambda j: lifecycle.sweep(j, 1.5, 60.0))  # nothing to do
    assert job.version == 0
    job, _ = store.update("j1", lambda j: lifecycle.begin_shard(j, 0, "w", 2.0, 3, 60.0))
    assert job.version == 1
    store.close()


def test_redis_store_rides_out_a_redis_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        store = RedisJobStore(server.url, retry_s=20)
        store.create(make_job("j1"))
        server.stop()
        restarter = threading.Thread(target=server.start)
        restarter.start()
        job, _ = store.update("j1", lambda j: lifecycle.begin_shard(j, 0, "w", 1.0, 3, 60.0))  # retried
        restarter.join()
        assert job.state is JobState.RUNNING
        assert store.require("j1").shards[0].attempts == 1  # AOF kept the job across the restart
        store.close()
