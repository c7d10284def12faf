"""A real S3 API server (moto's standalone server) on a free loopback port, and uploads to it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from tests.support.server import free_port

ACCESS_KEY = "genoserve-test"
SECRET_KEY = "genoserve-test-secret"
REGION = "us-east-1"


class S3Server:
    """``moto_server`` in its own process: the S3 REST API, in memory."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        end = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        """The settings a genoserve process needs to read this server's buckets."""
        return {
            "GENOSERVE_RUNTIME__STORE__ENDPOINT": self.endpoint,
            "GENOSERVE_RUNTIME__STORE__ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def upload_folder(client: Any, bucket: str, prefix: str, folder: Path) -> None:
    """Every file under ``folder`` to ``s3://bucket/prefix/<relative path>`` (model.yaml last, as
    a publisher must: a store reader never sees a version listed before its files)."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == "model.yaml")
    for path in files:
        key = f"{prefix}/{path.relative_to(folder)}".lstrip("/")
        client.upload_file(str(path), bucket, key)
