"""Models outside the image: a real server reading a real S3 API server (moto), with live control."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from genoserve.api.codecs.tensor import from_numpy
from genoserve.client import Client
from genoserve.core.errors import NotFound, PermissionDenied
from genoserve.v1 import jobs_pb2, models_pb2, models_pb2_grpc
from tests.support.jobs import WorkerProcess, wait_for_job, write_config
from tests.support.models import linear_onnx, linear_reference, linear_spec, write_model
from tests.support.s3 import S3Server, upload_folder
from tests.support.server import REPO, ServerProcess, metric, scrape

pytestmark = pytest.mark.integration

MODEL = "platform-mlp"
SOURCE = REPO / "models" / MODEL
POLL_S = 1.5
X = np.ones((4, 128), np.float32)
REQUEST = models_pb2.InferRequest(model=MODEL, inputs={"x": from_numpy(X)})
FAILURES = "genoserve_model_store_sync_failures_total"
LAST_SUCCESS = "genoserve_model_store_last_success_timestamp_seconds"


def served_version(channel: grpc.Channel, token: str = "") -> str:
    """Infer without a version: the version that answered."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    response = models_pb2_grpc.ModelsStub(channel).Infer(REQUEST, timeout=10, metadata=metadata)
    return str(response.version)


def yaml_with_versions(versions: list[int], sha_of: dict[int, str] | None = None, **changes: object) -> bytes:
    """platform-mlp's model.yaml listing ``versions`` (each the committed ONNX file's entry)."""
    spec = yaml.safe_load((SOURCE / "model.yaml").read_text())
    [entry] = spec["versions"]
    spec["versions"] = [{**entry, "version": v, "sha256": (sha_of or {}).get(v, entry["sha256"])} for v in versions]
    spec.update(changes)
    return yaml.safe_dump(spec, sort_keys=False).encode()


class Caller:
    """Calls Infer without a version, back to back, until stopped; keeps every outcome."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.outcomes: list[tuple[float, str]] = []  # (time, version served or "ERROR <code>")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            while not self._stop.is_set():
                try:
                    version = served_version(channel)
                except grpc.RpcError as exc:
                    version = f"ERROR {exc.code().name}: {exc.details()}"
                self.outcomes.append((time.monotonic(), version))

    def first(self, version: str, after: float) -> float | None:
        return next((t for t, v in self.outcomes if v == version and t >= after), None)

    def errors(self) -> list[str]:
        return [v for _, v in self.outcomes if v.startswith("ERROR")]

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ready_series(text: str) -> str:
    """The genoserve_model_ready samples of a /metrics text."""
    return text.split("# TYPE genoserve_model_ready gauge", 1)[1].split("# HELP", 1)[0]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with S3Server(tmp_path / "moto.log") as server:
        server.client().create_bucket(Bucket="models")
        yield server


def test_poll_rolls_a_new_version_in_refuses_a_corrupt_one_and_rolls_back(s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    upload_folder(client, "models", f"repo/{MODEL}", SOURCE)
    env = {**s3.env(), "GENOSERVE_RUNTIME__STORE__CACHE_DIR": str(tmp_path / "cache")}
    server = ServerProcess("--model-control", "poll", "--poll-interval", str(POLL_S), "--model", MODEL,
                           model_dir="s3://models/repo", env=env, log_path=tmp_path / "server.log")  # fmt: skip
    with server.start(), Caller(server.address) as caller:
        wait_for(lambda: caller.outcomes, 30, "the first answer")
        assert caller.outcomes[0][1] == "1"

        # Roll out: the version's file first, then the model.yaml that lists it.
        client.upload_file(str(SOURCE / "1" / "model.onnx"), "models", f"repo/{MODEL}/2/model.onnx")
        client.put_object(Bucket="models", Key=f"repo/{MODEL}/model.yaml", Body=yaml_with_versions([1, 2]))
        published = time.monotonic()
        wait_for(lambda: caller.first("2", published), 4 * POLL_S + 10, "version 2 to serve")
        took = caller.first("2", published) - published  # type: ignore[operator]
        assert took < 2 * POLL_S, f"version 2 served {took:.2f} s after it was published"
        text = scrape(server)
        assert metric(text, "genoserve_model_ready", model=MODEL, version="2") == 1

        # A corrupt upload: the bytes do not match the sha256 model.yaml declares.
        client.put_object(Bucket="models", Key=f"repo/{MODEL}/3/model.onnx", Body=b"not an onnx graph")
        client.put_object(Bucket="models", Key=f"repo/{MODEL}/model.yaml", Body=yaml_with_versions([1, 2, 3]))
        with Client(server.address, timeout=10) as admin:

            def version_3() -> models_pb2.ModelInfo | None:
                return next((m for m in admin.list_models() if m.name == MODEL and m.version == "3"), None)

            wait_for(lambda: (info := version_3()) is not None and info.state == models_pb2.MODEL_STATE_FAILED,
                     4 * POLL_S + 10, "version 3 to be refused")  # fmt: skip
            refused = version_3()
            assert refused is not None
            assert "sha256" in refused.reason
            assert metric(scrape(server), "genoserve_model_ready", model=MODEL, version="3") == 0
            corrupt_seen = time.monotonic()
            time.sleep(POLL_S)
            assert {v for t, v in caller.outcomes if t > corrupt_seen} == {"2"}  # version 2 keeps serving

            # Roll back: version 2 leaves the store; version 1 serves again, no request fails.
            client.put_object(Bucket="models", Key=f"repo/{MODEL}/model.yaml", Body=yaml_with_versions([1]))
            client.delete_object(Bucket="models", Key=f"repo/{MODEL}/2/model.onnx")
            client.delete_object(Bucket="models", Key=f"repo/{MODEL}/3/model.onnx")
            removed = time.monotonic()
            wait_for(lambda: caller.first("1", removed), 4 * POLL_S + 10, "version 1 to serve again")
            wait_for(lambda: [m.version for m in admin.list_models()] == ["1"], 4 * POLL_S + 10, "the unloads")
        text = scrape(server)
        assert metric(text, "genoserve_model_ready", model=MODEL, version="1") == 1
        assert 'version="2"' not in ready_series(text)
    assert len(caller.outcomes) > 20
    assert caller.errors() == []


def test_explicit_unload_lets_running_requests_finish_and_needs_an_admin(s3: S3Server, tmp_path: Path) -> None:
    # Requests wait up to 1.5 s in the batcher for others to join: in flight when the unload comes.
    source = tmp_path / "src"
    shutil.copytree(SOURCE, source)
    (source / "model.yaml").write_bytes(
        yaml_with_versions([1], batching={"max_batch_size": 256, "max_queue_delay_us": 1_500_000})
    )
    upload_folder(s3.client(), "models", f"repo/{MODEL}", source)
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token admin\nlab-token lab\n")
    env = {**s3.env(), "GENOSERVE_RUNTIME__STORE__CACHE_DIR": str(tmp_path / "cache")}
    server = ServerProcess("--model-control", "explicit", "--tokens-file", str(tokens), model_dir="s3://models/repo",
                           env=env, log_path=tmp_path / "server.log")  # fmt: skip
    with (
        server.start(),
        Client(server.address, token="admin-token", timeout=30) as admin,
        Client(server.address, token="lab-token", timeout=30) as lab,
    ):
        for denied in (lambda: lab.unload_model(MODEL), lambda: lab.load_model(MODEL), lab.repository_index):
            with pytest.raises(
                PermissionDenied, match=r"needs an admin tenant \(server\.auth\.admin_tenants: \['admin'\]\)"
            ):
                denied()
        assert metric(scrape(server), "genoserve_model_ready", model=MODEL, version="1") == 1

        def request() -> str:
            with grpc.insecure_channel(server.address) as channel:
                return served_version(channel, "lab-token")

        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(request) for _ in range(4)]
            queued = lambda: metric(scrape(server), "genoserve_queue_depth", model=MODEL) == 4  # noqa: E731
            wait_for(queued, 10, "the 4 requests to wait in the batcher")
            assert admin.unload_model(MODEL) == ["1"]
            assert [f.result() for f in running] == ["1"] * 4  # every request in flight finished
        with pytest.raises(NotFound):
            lab.infer(MODEL, {"x": X})
        # Unloaded: its series is gone, as when a poll unloads a version the store no longer has.
        assert f'model="{MODEL}"' not in ready_series(scrape(server))
        [entry] = admin.repository_index()
        assert (entry.name, entry.version, entry.state) == (MODEL, "1", models_pb2.MODEL_STATE_UNAVAILABLE)

        [info] = admin.load_model(MODEL)
        assert info.ready
        assert info.version == "1"
        assert lab.infer(MODEL, {"x": X})["y"].shape == (4, 16)
        assert metric(scrape(server), "genoserve_model_ready", model=MODEL, version="1") == 1

        cli = [sys.executable, "-m", "genoserve.cli.main", "models"]
        where = ["--address", server.address, "--token", "admin-token"]
        unloaded = subprocess.run([*cli, "unload", MODEL, "--version", "1", *where], capture_output=True, text=True)
        assert unloaded.returncode == 0, unloaded.stderr
        assert unloaded.stdout.strip() == f"{MODEL}: unloaded version(s) 1"
        index = subprocess.run([*cli, "index", *where], capture_output=True, text=True)
        assert index.stdout.split("\n")[1].split() == [MODEL, "1", "unavailable"]
        as_lab = ["--address", server.address, "--token", "lab-token"]
        refused = subprocess.run([*cli, "index", *as_lab], capture_output=True, text=True)
        assert refused.returncode == 2
        assert "Models/RepositoryIndex lists the whole model store" in refused.stderr, refused.stderr
        loaded = subprocess.run([*cli, "load", MODEL, *where], capture_output=True, text=True)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == f"{MODEL} version 1: ready"
        missing = subprocess.run([*cli, "load", "no-such-model", *where], capture_output=True, text=True)
        assert missing.returncode != 0
        assert "'no-such-model' is not in the repository" in missing.stderr


def test_bulk_jobs_read_the_store_and_run_the_version_pinned_at_submit(s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    source = tmp_path / "src"
    write_model(source, linear_spec("lin", 128, 16), {1: linear_onnx(128, 16, seed=1)})
    upload_folder(client, "models", "repo/lin", source / "lin")
    config = write_config(tmp_path)
    store_env = {**s3.env(), "GENOSERVE_MODEL_REPOSITORY": "s3://models/repo"}
    cache = "GENOSERVE_RUNTIME__STORE__CACHE_DIR"
    worker = WorkerProcess(config, tmp_path / "worker.log", env={**store_env, cache: str(tmp_path / "worker-cache")})
    server = ServerProcess("--config", str(config), "--model-control", "poll", "--poll-interval", str(POLL_S),
                           model_dir="s3://models/repo", log_path=tmp_path / "server.log",
                           env={**store_env, cache: str(tmp_path / "server-cache")})  # fmt: skip
    x = np.random.default_rng(0).normal(size=(300, 128)).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)

    def run(admin: Client, out: str, params: dict[str, str]) -> tuple[str, np.ndarray]:  # type: ignore[type-arg]
        job = admin.submit_job("platform.score_rows", [str(tmp_path / "rows.npy")], str(tmp_path / out),
                               {"model": "lin", "shard_size": "100", **params})  # fmt: skip
        done = wait_for_job(admin, job.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error + worker.log()
        return job.params["version"], np.load(done.outputs[0])

    try:
        worker.start()
        with server.start(), Client(server.address, timeout=30) as admin:
            first = admin.submit_job("platform.score_rows", [str(tmp_path / "rows.npy")], str(tmp_path / "first"),
                                     {"model": "lin", "shard_size": "100"})  # fmt: skip
            assert first.params["version"] == "1"  # pinned now, whatever arrives during the job
            write_model(source, linear_spec("lin", 128, 16), {1: linear_onnx(128, 16, seed=1),
                                                              2: linear_onnx(128, 16, seed=2)})  # fmt: skip
            upload_folder(client, "models", "repo/lin", source / "lin")
            done = wait_for_job(admin, first.id)
            assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error + worker.log()
            np.testing.assert_allclose(
                np.load(done.outputs[0]), linear_reference(x, 128, 16, seed=1), rtol=1e-4, atol=1e-4
            )

            wait_for(lambda: admin.get_model("lin").version == "2", 4 * POLL_S + 10, "version 2 to serve")
            version, scores = run(admin, "second", {})
            assert version == "2"
            np.testing.assert_allclose(scores, linear_reference(x, 128, 16, seed=2), rtol=1e-4, atol=1e-4)
            version, scores = run(admin, "third", {"version": "1"})
            assert version == "1"
            np.testing.assert_allclose(scores, linear_reference(x, 128, 16, seed=1), rtol=1e-4, atol=1e-4)
    finally:
        worker.stop()


def test_serve_with_worker_runs_jobs_from_the_servers_model_repository(s3: S3Server, tmp_path: Path) -> None:
    """``serve --with-worker --model-dir s3://...``: the worker reads the same store (and cache
    folder) as the server, not the default models/, so a job runs a model only that store has."""
    source = tmp_path / "src"
    write_model(source, linear_spec("lin", 128, 16), {1: linear_onnx(128, 16, seed=4)})
    upload_folder(s3.client(), "models", "other-repo/lin", source / "lin")
    config = write_config(tmp_path)
    env = {**s3.env(), "GENOSERVE_RUNTIME__STORE__CACHE_DIR": str(tmp_path / "cache"),
           "GENOSERVE_WORKER__METRICS_PORT": "0"}  # fmt: skip
    server = ServerProcess("--config", str(config), "--with-worker", model_dir="s3://models/other-repo", env=env,
                           log_path=tmp_path / "server.log")  # fmt: skip
    x = np.random.default_rng(1).normal(size=(50, 128)).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    with server.start(), Client(server.address, timeout=30) as admin:
        job = admin.submit_job("platform.score_rows", [str(tmp_path / "rows.npy")], str(tmp_path / "out"),
                               {"model": "lin"})  # fmt: skip
        done = wait_for_job(admin, job.id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, done.error + server.log()
        np.testing.assert_allclose(np.load(done.outputs[0]), linear_reference(x, 128, 16, seed=4), rtol=1e-4, atol=1e-4)


def test_a_store_that_stops_answering_is_counted_and_the_loaded_version_serves_on(s3: S3Server, tmp_path: Path) -> None:
    upload_folder(s3.client(), "models", f"repo/{MODEL}", SOURCE)
    env = {**s3.env(), "GENOSERVE_RUNTIME__STORE__CACHE_DIR": str(tmp_path / "cache")}
    server = ServerProcess("--model-control", "poll", "--poll-interval", str(POLL_S), "--model", MODEL,
                           model_dir="s3://models/repo", env=env, log_path=tmp_path / "server.log")  # fmt: skip
    with server.start(), grpc.insecure_channel(server.address) as channel:
        text = scrape(server)
        assert metric(text, FAILURES, model_control="poll") == 0
        assert time.time() - 60 < metric(text, LAST_SUCCESS, model_control="poll") <= time.time()

        s3.stop()  # the store stops answering
        wait_for(lambda: metric(scrape(server), FAILURES, model_control="poll") >= 2, 120, "two failed polls")
        stale = metric(scrape(server), LAST_SUCCESS, model_control="poll")
        assert served_version(channel) == "1"  # the loaded version serves on
        wait_for(lambda: metric(scrape(server), FAILURES, model_control="poll") >= 3, 60, "one more failed poll")
        text = scrape(server)
        assert metric(text, LAST_SUCCESS, model_control="poll") == stale  # no success since
        assert metric(text, "genoserve_model_ready", model=MODEL, version="1") == 1
        assert served_version(channel) == "1"
    assert "polling s3://models/repo failed (the loaded versions keep serving)" in (tmp_path / "server.log").read_text()
