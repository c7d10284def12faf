"""Bulk jobs end to end: a real server, real Celery workers, the embedded broker and Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from genoserve.client import AsyncClient, Client
from genoserve.core.errors import AlreadyExists, InvalidArgument, NotFound
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, job_server, wait_for_job, write_config
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess
from tests.support.terminal import run_on_a_terminal

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess

    def client(self, **kwargs: Any) -> Client:
        return Client(self.server.address, timeout=30, **kwargs)


def start_rig(root: Path, broker_url: str = "", store_url: str = "") -> tuple[ServerProcess, WorkerProcess]:
    config = write_config(root, broker_url=broker_url, store_url=store_url)
    worker = WorkerProcess(config, root / "worker.log").start()
    server = job_server(config, root / "server.log").start()
    return server, worker


@pytest.fixture(scope="module", params=["embedded", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp(f"jobs-{request.param}")
    redis_server = RedisServer(root / "redis").start() if request.param == "redis" else None
    url = redis_server.url if redis_server else ""
    server, worker = start_rig(root, broker_url=url)
    yield Rig(root, server, worker)
    server.terminate()
    worker.stop()
    if redis_server:
        redis_server.kill()


def rows(path: Path, n: int, seed: int = 0) -> npt.NDArray[Any]:
    x = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    np.save(path, x)
    return x


def test_job_scores_every_row_in_order(rig: Rig, platform_reference: Any) -> None:
    x = rows(rig.root / "rows.npy", 5000)
    with rig.client() as client:
        job = client.submit_job("platform.score_rows", [str(rig.root / "rows.npy")], str(rig.root / "out"),
                                {"shard_size": "700"})  # fmt: skip
        assert job.shards_total == 8
        assert job.items_total == 5000
        assert job.params["version"] == "1"  # pinned at submit: every shard runs that version
        events = list(client.watch_job(job.id))
    final = events[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
    assert list(final.outputs) == [str(rig.root / "out" / "rows.scores.npy")]
    done = [e.job.items_done for e in events]
    assert done == sorted(done)
    assert done[-1] == 5000
    y = np.load(final.outputs[0])
    np.testing.assert_allclose(y, platform_reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    manifest = json.loads((rig.root / "out" / "_SUCCESS.json").read_text())
    assert manifest["job"] == job.id
    assert manifest["items"] == 5000
    assert not (rig.root / "out" / ".genoserve-staging").exists()


def test_cli_submit_watch_status_list(rig: Rig) -> None:
    rows(rig.root / "cli.npy", 1200)
    cli = [sys.executable, "-m", "genoserve.cli.main", "jobs"]
    address = ["--address", rig.server.address]
    submitted = subprocess.run(
        [*cli, "submit", "platform.score_rows", "--input", str(rig.root / "cli.npy"), "--output",
         str(rig.root / "cli-out"), "--param", "shard_size=500", "--watch", *address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id, output = submitted.stdout.split()
    assert output == str(rig.root / "cli-out" / "cli.scores.npy")
    # stderr is no terminal here: no progress bar, one line with the outcome
    assert submitted.stderr.startswith(f"job {job_id} SUCCEEDED: 3/3 shards, 1200/1200 items in "), submitted.stderr
    assert len(submitted.stderr.splitlines()) == 1, submitted.stderr
    status = subprocess.run([*cli, "status", job_id, *address], capture_output=True, text=True, timeout=60)
    assert "SUCCEEDED" in status.stdout
    assert "items 1200/1200" in status.stdout
    listed = subprocess.run([*cli, "list", *address], capture_output=True, text=True, timeout=60)
    assert job_id in listed.stdout
    watched = subprocess.run([*cli, "watch", "j0000000000000000", *address], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert watched.returncode == 2, watched.stderr
    assert watched.stderr == "error (NOT_FOUND): job 'j0000000000000000' not found\n"


def test_cli_draws_job_progress_on_a_terminal_only(rig: Rig) -> None:
    rows(rig.root / "bar.npy", 1200)
    submit = [sys.executable, "-m", "genoserve.cli.main", "jobs", "submit", "platform.score_rows",
              "--input", str(rig.root / "bar.npy"), "--param", "shard_size=400", "--watch",
              "--address", rig.server.address]  # fmt: skip
    code, stdout, terminal = run_on_a_terminal([*submit, "--output", str(rig.root / "bar-out")])
    assert code == 0, terminal
    job_id = stdout.split()[0]
    assert f"job {job_id}: 100%" in terminal  # the tqdm bar: items done of the job's items
    assert "1.20k/1.20k [" in terminal
    assert "3/3 shards, SUCCEEDED]" in terminal
    assert f"job {job_id} SUCCEEDED: 3/3 shards, 1200/1200 items in " in terminal
    code, stdout, terminal = run_on_a_terminal([*submit, "--output", str(rig.root / "quiet-out"), "--quiet"])
    assert code == 0, terminal
    assert "%" not in terminal
    assert terminal.strip().startswith(f"job {stdout.split()[0]} SUCCEEDED: 3/3 shards")


def test_bad_record_fails_the_job_naming_file_and_row_and_cli_exits_nonzero(rig: Rig) -> None:
    x = rows(rig.root / "bad.npy", 900)
    x[612, 3] = np.inf
    np.save(rig.root / "bad.npy", x)
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "jobs", "submit", "platform.score_rows",
         "--input", str(rig.root / "bad.npy"), "--output", str(rig.root / "bad-out"), "--param", "shard_size=300",
         "--watch", "--address", rig.server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{rig.root / 'bad.npy'}: record 612: non-finite value in column 3" in result.stderr
    assert not (rig.root / "bad-out" / "bad.scores.npy").exists()
    assert not (rig.root / "bad-out" / "_SUCCESS.json").exists()


def test_cancel_publishes_no_output(rig: Rig) -> None:
    rows(rig.root / "long.npy", 60_000)
    with rig.client() as client:
        job = client.submit_job("platform.score_rows", [str(rig.root / "long.npy")], str(rig.root / "long-out"),
                                {"shard_size": "500"})  # fmt: skip
        wait_for_job(client, job.id, until=lambda j: j.shards_done >= 2)
        cancelled = client.cancel_job(job.id)
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
        assert cancelled.error == "cancelled by user"
        final = wait_for_job(client, job.id)
        assert final.state == jobs_pb2.JOB_STATE_CANCELLED
        assert final.shards_done < final.shards_total
        assert list(final.outputs) == []
        assert client.cancel_job(job.id).state == jobs_pb2.JOB_STATE_CANCELLED  # idempotent
    assert not (rig.root / "long-out" / "long.scores.npy").exists()
    assert not (rig.root / "long-out" / "_SUCCESS.json").exists()


def test_bad_submissions_are_refused_with_the_field(rig: Rig, tmp_path: Path) -> None:
    rows(rig.root / "ok.npy", 10)
    outside = tmp_path / "outside.npy"
    rows(outside, 10)
    (rig.root / "escape.npy").symlink_to(outside)
    good = str(rig.root / "ok.npy")
    cases = [
        (("platform.score_rows", [str(outside)], str(rig.root / "o")), "inputs[0]", "outside the allowed roots"),
        (("platform.score_rows", [str(rig.root / "escape.npy")], str(rig.root / "o")), "inputs[0]", "outside"),
        (("platform.score_rows", [good], str(rig.root / ".." / "o")), "output_dir", "'..'"),
        (("platform.score_rows", [good], str(tmp_path / "o")), "output_dir", "outside the allowed roots"),
        (("platform.score_rows", [], str(rig.root / "o")), "inputs", "at least one input"),
        (("binding.nope", [good], str(rig.root / "o")), "kind", "unknown job kind"),
    ]
    with rig.client() as client:
        for args, field, rule in cases:
            with pytest.raises(InvalidArgument) as info:
                client.submit_job(*args)
            assert info.value.violations[0].field == field
            assert rule in info.value.violations[0].description
        with pytest.raises(InvalidArgument, match="unknown parameter"):
            client.submit_job("platform.score_rows", [good], str(rig.root / "o"), {"shard": "1"})
        # A version the model does not have: refused at once, not retried in every shard.
        with pytest.raises(InvalidArgument, match=r"params\[version\]: model platform-mlp has no version '7'"):
            client.submit_job("platform.score_rows", [good], str(rig.root / "o"), {"version": "7"})
        with pytest.raises(NotFound):
            client.get_job("j0000000000000000")


def test_existing_outputs_need_overwrite(rig: Rig) -> None:
    rows(rig.root / "twice.npy", 100)
    args = ("platform.score_rows", [str(rig.root / "twice.npy")], str(rig.root / "twice-out"))
    with rig.client() as client:
        first = wait_for_job(client, client.submit_job(*args).id)
        assert first.state == jobs_pb2.JOB_STATE_SUCCEEDED
        with pytest.raises(AlreadyExists, match="overwrite=true"):
            client.submit_job(*args)
        refused = subprocess.run(
            [sys.executable, "-m", "genoserve.cli.main", "jobs", "submit", args[0], "--input", args[1][0],
             "--output", args[2], "--param", "overwrite=yes", "--address", rig.server.address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2
        assert refused.stderr == (
            "error (INVALID_ARGUMENT): --param overwrite: must be true or false, got 'yes' (1 and 0 work too)\n"
        )
        again_cli = subprocess.run(
            [sys.executable, "-m", "genoserve.cli.main", "jobs", "submit", args[0], "--input", args[1][0],
             "--output", args[2], "--address", rig.server.address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again_cli.returncode == 2
        assert "already exists; pass --param overwrite=true to replace it" in again_cli.stderr
        assert again_cli.stderr.count("\n") == 1
        again = wait_for_job(client, client.submit_job(*args, {"overwrite": "true"}).id)
        assert again.state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_another_tenants_job_is_not_found(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a lab-a\ntoken-b lab-b\n")
    config = write_config(tmp_path)
    rows(tmp_path / "t.npy", 10)
    with (
        job_server(config, tmp_path / "server.log", "--tokens-file", str(tokens)) as server,
        Client(server.address, token="token-a") as a,
        Client(server.address, token="token-b") as b,
    ):
        job = a.submit_job("platform.score_rows", [str(tmp_path / "t.npy")], str(tmp_path / "out"))
        assert a.get_job(job.id).id == job.id
        with pytest.raises(NotFound):
            b.get_job(job.id)
        with pytest.raises(NotFound):
            b.cancel_job(job.id)
        assert [j.id for j in a.list_jobs()] == [job.id]
        assert b.list_jobs() == []
        listed = subprocess.run(
            [sys.executable, "-m", "genoserve.cli.main", "jobs", "list", "--address", server.address,
             "--token", "token-b"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.stdout == "no jobs\n", listed.stderr
        assert a.cancel_job(job.id).state == jobs_pb2.JOB_STATE_CANCELLED


def _wait_for_log(worker: WorkerProcess, text: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while text not in worker.log():
        assert worker.proc is not None
        assert worker.proc.poll() is None, worker.log()
        assert time.monotonic() < end, worker.log()
        time.sleep(0.2)


def test_a_second_worker_runs_without_metrics_when_the_port_is_taken(tmp_path: Path) -> None:
    """``genoserve worker`` next to ``make serve`` (whose worker holds port 9096) runs jobs: it
    warns that the port is taken and serves no /metrics of its own."""
    config = write_config(tmp_path)
    first = WorkerProcess(config, tmp_path / "first.log").start()
    port = first.metrics_port
    second = WorkerProcess(config, tmp_path / "second.log", "--metrics-port", str(port))
    try:
        _wait_for_log(first, f"worker /metrics on port {port}")
        second.start()
        _wait_for_log(second, f"worker /metrics port {port} is in use")
        assert "runs without a /metrics endpoint of its own" in second.log()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
        first.stop()  # the job below can only run on the second worker
        rows(tmp_path / "second.npy", 300)
        with job_server(config, tmp_path / "server.log") as server, Client(server.address) as client:
            job = client.submit_job("platform.score_rows", [str(tmp_path / "second.npy")], str(tmp_path / "out"))
            final = wait_for_job(client, job.id)
        assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, final.error
        assert second.proc is not None
        assert second.proc.poll() is None, second.log()
    finally:
        first.stop()
        second.stop()


async def test_async_client_submits_watches_lists_and_cancels(rig: Rig) -> None:
    rows(rig.root / "async.npy", 900)
    async with AsyncClient(rig.server.address, timeout=30) as client:
        job = await client.submit_job("platform.score_rows", [str(rig.root / "async.npy")],
                                      str(rig.root / "async-out"), {"shard_size": "300"})  # fmt: skip
        events = [event async for event in client.watch_job(job.id)]
        assert events[-1].job.state == jobs_pb2.JOB_STATE_SUCCEEDED, events[-1].job.error
        assert [e.job.items_done for e in events][-1] == 900
        assert (await client.list_jobs(limit=1))[0].id == job.id  # newest first
        assert (await client.get_job(job.id)).outputs == [str(rig.root / "async-out" / "async.scores.npy")]
        assert (await client.cancel_job(job.id)).state == jobs_pb2.JOB_STATE_SUCCEEDED  # too late to cancel
        with pytest.raises(NotFound):
            await client.get_job("j0000000000000000")
        with pytest.raises(NotFound):
            async for _ in client.watch_job("j0000000000000000"):
                pass
