"""Bulk-job test rigs: a config file, a server, worker processes, and helpers to wait on jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import REPO, ServerProcess, free_port


def write_config(root: Path, broker_url: str = "", store_url: str = "", **jobs: Any) -> Path:
    """A settings file confining jobs to ``root`` with a short lease, for server and workers."""
    config = {
        "jobs": {
            "broker_url": broker_url,
            "store_url": store_url,
            "data_dir": str(root / "data"),
            "input_roots": [str(root)],
            "output_roots": [str(root)],
            "shard_lease_s": 3.0,
            "sweep_interval_s": 0.5,
            **jobs,
        },
        "worker": {"metrics_dir": str(root / "data" / "metrics")},
    }
    path = root / "genoserve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class WorkerProcess:
    """``genoserve worker`` in its own process group (so that kill -9 takes its children too)."""

    def __init__(self, config: Path, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        self.args = [sys.executable, "-m", "genoserve.cli.main", "worker", "--config", str(config),
                     "--metrics-port", str(self.metrics_port), *args]  # fmt: skip
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the worker and its prefork children, as a node failure would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: SIGTERM to the main process only, as ``docker stop`` and Kubernetes send it.

        Not to the whole group: a pool child killed by SIGTERM can die holding billiard's result
        queue lock, and the main process then hangs in shutdown until SIGKILL. Whatever is left
        of the group after the main process exits (or after ``timeout``) gets SIGKILL.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def job_server(config: Path, log_path: Path, *args: str) -> ServerProcess:
    return ServerProcess("--config", str(config), *args, log_path=log_path)


def wait_for_job(client: Any, job_id: str, timeout: float = 120.0, until: Any = None) -> Any:
    """Poll ``client.get_job`` until the job ends (or ``until(job)`` is true); returns the job."""
    from genoserve.client.client import FINAL_JOB_STATES

    end = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        if (until is not None and until(job)) or (until is None and job.state in FINAL_JOB_STATES):
            return job
        if time.monotonic() > end:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s: {job}")
        time.sleep(0.1)
