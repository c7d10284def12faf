"""Bulk jobs under faults, with real processes: a worker killed with SIGKILL in the middle of a
shard, Redis stopped and restarted (AOF on), the gRPC server restarted under a Watch stream, a
corrupt input record, and a shard that fails on every attempt.

Each test asserts what a user sees: the job's final state and reason, the output file (every row,
once, in input order, equal to a local ONNX Runtime session), and that workers stay up.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genoserve.client import Client
from genoserve.client.client import FINAL_JOB_STATES
from genoserve.jobs.paths import OWNER_MARKER
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, job_server, wait_for_job, write_config
from tests.support.redis import RedisServer
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

Array = np.ndarray[Any, Any]

KIND = "platform.score_rows"
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
FAILED = jobs_pb2.JOB_STATE_FAILED
#: Rows per shard in the big input: about 0.4-0.6 s of work per shard for one worker process on
#: this 2-core machine, plus the session load on a worker's first shard, so that a SIGKILL sent
#: 0.2 s after a shard starts lands in the middle of it.
SHARD_ROWS = 150_000
BIG_ROWS = 3 * SHARD_ROWS
#: Lease 3 s (tests.support.jobs.write_config) + sweep 0.5 s + re-running a shard + slack for a
#: machine shared with other test runs.
JOB_TIMEOUT_S = 60.0


def state_name(job: jobs_pb2.Job) -> str:
    return jobs_pb2.JobState.Name(job.state)


# -- inputs and the reference ----------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    path: Path
    expected: Array


def reference_scores(x: Array) -> Array:
    """The platform model on ``x`` [n, 128] float32 -> [n, 16] float32, with a local session."""
    session = ort.InferenceSession(str(REPO / "models" / "platform-mlp" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    return np.concatenate([session.run(None, {"x": x[i : i + 65536]})[0] for i in range(0, len(x), 65536)])


def random_rows(n: int, seed: int) -> Array:
    return np.random.default_rng(seed).standard_normal((n, 128), dtype=np.float32)


def write_parquet(path: Path, x: Array, row_group_size: int) -> None:
    table = pa.Table.from_arrays([pa.array(x[:, j]) for j in range(x.shape[1])], names=[f"c{j}" for j in range(128)])
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("job-fault-inputs")


@pytest.fixture(scope="module")
def big(data_root: Path) -> Input:
    """BIG_ROWS rows (230 MB) in one .npy, and the model's scores for them."""
    x = random_rows(BIG_ROWS, seed=1)
    path = data_root / "big.npy"
    np.save(path, x)
    return Input(path, reference_scores(x))


def assert_scored(job: jobs_pb2.Job, source: Input, output_dir: Path) -> None:
    """SUCCEEDED, one output with every input row once and in order, and the success manifest."""
    assert job.state == SUCCEEDED, f"{state_name(job)}: {job.error}"
    output = output_dir / f"{source.path.stem}.scores{source.path.suffix}"
    assert list(job.outputs) == [str(output)]
    assert job.items_done == job.items_total == len(source.expected)
    if output.suffix == ".npy":
        y = np.load(output)
    else:
        table = pq.read_table(output)
        assert table.column("row").to_numpy().tolist() == list(range(len(source.expected)))
        y = np.column_stack([table.column(f"y{j}").to_numpy() for j in range(16)])
    assert y.shape == source.expected.shape  # no row lost, none duplicated
    np.testing.assert_allclose(y, source.expected, rtol=1e-4, atol=1e-4)  # each row in its place
    manifest = json.loads((output_dir / "_SUCCESS.json").read_text())
    assert (manifest["job"], manifest["items"]) == (job.id, len(source.expected))


def assert_nothing_presented(job: jobs_pb2.Job, output_dir: Path) -> None:
    """A failed job has no outputs and no success marker; the worker also removes its shards'
    staged results (right after the job turns FAILED, hence the short wait). Only the folder's
    owner marker (which tenant may write there) stays."""
    assert list(job.outputs) == []
    assert not (output_dir / "_SUCCESS.json").exists()
    end = time.monotonic() + 5.0
    while left := sorted(
        str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file() and p.name != OWNER_MARKER
    ):
        assert time.monotonic() < end, f"left behind by failed job {job.id}: {left}"
        time.sleep(0.05)


# -- rigs: a server (and Redis) per broker, workers per test ------------------------------------------


@dataclass
class Rig:
    root: Path
    config: Path
    server: ServerProcess
    redis: RedisServer | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    _outputs: int = 0

    def client(self) -> Client:
        return Client(self.server.address, timeout=30)

    def worker(self, name: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(self.config, self.root / f"worker-{name}.log", env=env).start()
        self.workers.append(worker)
        return worker

    def output_dir(self, name: str) -> Path:
        self._outputs += 1
        return self.root / f"out-{self._outputs}-{name}"

    def stop_workers(self) -> None:
        """Warm-stop every worker at once (a Celery worker with the embedded broker takes ~6 s)."""
        stoppers = [threading.Thread(target=w.stop) for w in self.workers]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        self.workers.clear()

    def logs(self) -> str:
        """Server and worker logs, for assertion messages."""
        parts = [f"--- server\n{self.server.log()}"]
        parts += [f"--- {w.log_path.name}\n{w.log()}" for w in self.workers]
        return "\n".join(parts)


def start_rig(root: Path, data_root: Path, redis: RedisServer | None = None) -> Rig:
    roots = [str(root), str(data_root)]
    config = write_config(root, broker_url=redis.url if redis else "", input_roots=roots)
    server = job_server(config, root / "server.log").start()
    return Rig(root, config, server, redis)


def stop_rig(rig: Rig) -> None:
    rig.stop_workers()
    code = rig.server.terminate()
    if rig.redis is not None:
        rig.redis.kill()
    assert code == 0, rig.server.log()


@pytest.fixture(scope="module")
def embedded_rig(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Rig]:
    """Embedded broker (kombu filesystem transport) and the SQLite job store."""
    rig = start_rig(tmp_path_factory.mktemp("jobs-embedded"), data_root)
    yield rig
    stop_rig(rig)


@pytest.fixture(scope="module")
def redis_rig(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Rig]:
    """A real redis-server (AOF on) as broker and job store."""
    root = tmp_path_factory.mktemp("jobs-redis")
    rig = start_rig(root, data_root, RedisServer(root / "redis").start())
    yield rig
    stop_rig(rig)


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """The module's rig for broker ``request.param``; the test's workers are stopped after it."""
    shared: Rig = request.getfixturevalue(f"{request.param}_rig")
    yield shared
    shared.stop_workers()


def alive(worker: WorkerProcess) -> bool:
    return worker.proc is not None and worker.proc.poll() is None


def wait_mid_shard(client: Client, job_id: str, after_s: float = 0.2) -> jobs_pb2.Job:
    """Wait until a worker has claimed a shard, give it ``after_s`` to get going, and check that
    the job has shards left (so that the fault lands while a shard is being computed)."""
    wait_for_job(client, job_id, JOB_TIMEOUT_S, until=lambda j: j.state == RUNNING or j.state in FINAL_JOB_STATES)
    time.sleep(after_s)
    job = client.get_job(job_id)
    assert job.state == RUNNING, f"{state_name(job)}: {job.error}"
    assert job.shards_done < job.shards_total, "the job's shards all finished before the fault"
    return job


# -- 1. kill -9 a worker mid-shard ----------------------------------------------------------------


@pytest.mark.parametrize("rig", ["embedded", "redis"], indirect=True)
def test_worker_killed_mid_shard_another_worker_completes_the_job(rig: Rig, big: Input) -> None:
    # Small session batches make the doomed worker's shards take seconds, not a quarter of one on a
    # fast machine, so the kill lands inside a claimed shard rather than between two.
    doomed = rig.worker("doomed", env={"GENOSERVE_WORKER__BATCH_SIZE": "64"})
    out = rig.output_dir("kill9")
    with rig.client() as client:
        job = client.submit_job(KIND, [str(big.path)], str(out), {"shard_size": str(SHARD_ROWS)})
        assert job.shards_total == 3
        wait_mid_shard(client, job.id)
        doomed.kill9()
        time.sleep(0.2)
        interrupted = client.get_job(job.id)
        assert interrupted.state == RUNNING
        assert interrupted.shards_done < interrupted.shards_total
        assert not (out / "_SUCCESS.json").exists()

        replacement = rig.worker("replacement")
        done = wait_for_job(client, job.id, JOB_TIMEOUT_S)
        assert_scored(done, big, out)
        assert alive(replacement)
    # The kill really interrupted a claimed shard: the server found its lease expired and re-queued it.
    assert f"job {job.id}: re-queueing shard" in rig.server.log(), rig.logs()


# -- 2. Redis stopped and restarted during a job -----------------------------------------------------


def test_redis_restart_during_a_job_the_job_completes(redis_rig: Rig, big: Input) -> None:
    rig = redis_rig
    assert rig.redis is not None
    worker = rig.worker("through-redis-restart")
    out = rig.output_dir("redis-restart")
    try:
        with rig.client() as client:
            job = client.submit_job(KIND, [str(big.path)], str(out), {"shard_size": str(SHARD_ROWS)})
            wait_mid_shard(client, job.id)
            rig.redis.stop()  # graceful: the AOF is flushed, as in a rolling restart
            time.sleep(2.0)  # heartbeats and the broker connection fail meanwhile
            rig.redis.start()
            done = wait_for_job(client, job.id, JOB_TIMEOUT_S)
            assert_scored(done, big, out)
            assert alive(worker), rig.logs()
            # The worker took its broker connection back: the next job runs on it too.
            small = Input(big.path.with_name("after-redis.npy"), big.expected[:1000])
            np.save(small.path, np.load(big.path, mmap_mode="r")[:1000])
            after = rig.output_dir("after-redis-restart")
            again = wait_for_job(client, client.submit_job(KIND, [str(small.path)], str(after)).id, JOB_TIMEOUT_S)
            assert_scored(again, small, after)
    finally:
        rig.stop_workers()


# -- 3. gRPC server restarted under a Watch stream ---------------------------------------------------


def test_server_restart_watch_reattaches_and_sees_the_job_finish(tmp_path: Path, data_root: Path, big: Input) -> None:
    rig = start_rig(tmp_path, data_root)
    try:
        rig.worker("w")
        out = rig.output_dir("watch")
        events: list[tuple[float, jobs_pb2.JobEvent]] = []
        failures: list[BaseException] = []
        attached = threading.Event()  # the stream has shown the job making progress
        with rig.client() as client:
            # 30 shards of 15k rows: a few seconds of work, so that the restart lands mid-job.
            job = client.submit_job(KIND, [str(big.path)], str(out), {"shard_size": "15000"})

            def watch() -> None:
                try:
                    with Client(rig.server.address) as watcher:
                        for event in watcher.watch_job(job.id, reconnect_for=60):
                            events.append((time.monotonic(), event))
                            if event.job.state == RUNNING and event.job.shards_done >= 1:
                                attached.set()
                except BaseException as exc:
                    failures.append(exc)

            thread = threading.Thread(target=watch, name="watch", daemon=True)
            thread.start()
            assert attached.wait(JOB_TIMEOUT_S), (failures, [state_name(e.job) for _, e in events])
            before = client.get_job(job.id)
            assert before.state == RUNNING, f"{state_name(before)}: the job ended before the restart"

            stopped_at = time.monotonic()
            assert rig.server.terminate() == 0, rig.server.log()
            assert thread.is_alive(), failures  # the watcher waits for the server to come back
            rig.server.log_path = tmp_path / "server-restarted.log"
            rig.server.start()  # same arguments, so the same port

            thread.join(JOB_TIMEOUT_S)
            assert not thread.is_alive(), "Watch did not see the job finish"
            assert failures == []
            final = client.get_job(job.id)
        assert_scored(final, big, out)
        streamed = [event.job for _, event in events]
        assert streamed[-1].state == SUCCEEDED
        timeline = [(round(t - stopped_at, 2), state_name(e.job), e.job.shards_done) for t, e in events]
        assert any(t > stopped_at for t, _ in events), f"no event after the restart: {timeline}"
        done = [j.items_done for j in streamed]
        assert done == sorted(done)  # progress never goes back across the restart
        assert done[-1] == BIG_ROWS
    finally:
        stop_rig(rig)


# -- 4. a corrupt input record -----------------------------------------------------------------------


def test_corrupt_record_fails_the_job_naming_file_and_record_and_the_worker_goes_on(
    embedded_rig: Rig, data_root: Path
) -> None:
    rig = embedded_rig
    worker = rig.worker("corrupt-input")

    npy_rows = random_rows(30_000, seed=2)
    npy_rows[23_456, 7] = np.nan
    bad_npy = data_root / "nan-row.npy"
    np.save(bad_npy, npy_rows)

    parquet_rows = random_rows(12_000, seed=3)
    parquet_rows[9_876, 100] = np.inf
    bad_parquet = data_root / "inf-row.parquet"
    write_parquet(bad_parquet, parquet_rows, row_group_size=2_500)

    good_rows = random_rows(12_000, seed=4)
    good = Input(data_root / "good.parquet", reference_scores(good_rows))
    write_parquet(good.path, good_rows, row_group_size=2_500)

    try:
        with rig.client() as client:
            for path, message in [
                (bad_npy, f"{bad_npy}: record 23456: non-finite value in column 7"),
                (bad_parquet, f"{bad_parquet}: record 9876: non-finite value in column 100"),
            ]:
                out = rig.output_dir(path.stem)
                job = client.submit_job(KIND, [str(path)], str(out), {"shard_size": "4000"})
                failed = wait_for_job(client, job.id, JOB_TIMEOUT_S)
                assert failed.state == FAILED, f"{state_name(failed)}: {failed.error}"
                assert failed.error == message
                assert_nothing_presented(failed, out)
                assert alive(worker), worker.log()

            out = rig.output_dir("good-after-bad")
            job = client.submit_job(KIND, [str(good.path)], str(out), {"shard_size": "4000"})
            assert_scored(wait_for_job(client, job.id, JOB_TIMEOUT_S), good, out)
            assert alive(worker), worker.log()
    finally:
        rig.stop_workers()


# -- 5. a poison shard -------------------------------------------------------------------------------


def corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite the page header of the first column of row group ``group`` with garbage: the
    footer still reads (so the job is accepted and planned), but that row group cannot be decoded."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    offset = column.dictionary_page_offset or column.data_page_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 16)


def test_poison_shard_fails_the_job_after_max_attempts_instead_of_looping(embedded_rig: Rig, data_root: Path) -> None:
    rig = embedded_rig
    worker = rig.worker("poison")
    path = data_root / "poison.parquet"
    write_parquet(path, random_rows(9_000, seed=5), row_group_size=3_000)
    corrupt_row_group(path, 1)
    out = rig.output_dir("poison")
    try:
        with rig.client() as client:
            job = client.submit_job(KIND, [str(path)], str(out), {"shard_size": "3000"})
            assert job.shards_total == 3
            failed = wait_for_job(client, job.id, JOB_TIMEOUT_S)
        assert failed.state == FAILED, f"{state_name(failed)}: {failed.error}"
        assert failed.error.startswith(f"shard 1 ({path} items 3000-6000) failed after 3 attempts: OSError: ")
        assert_nothing_presented(failed, out)
        assert alive(worker), worker.log()
        # Exactly jobs.max_attempts (3 by default) attempts, then no more.
        time.sleep(1.0)
        attempts = re.findall(rf"job {job.id} shard 1 attempt (\d+) failed", worker.log_path.read_text())
        assert attempts == ["1", "2", "3"], worker.log()
    finally:
        rig.stop_workers()
