"""The model store against a real S3 API server (moto's standalone server), never a client mock."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import multiprocessing
import os
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genoserve.core.errors import InvalidArgument, Unavailable
from genoserve.core.settings import JobsSettings, ModelStoreSettings, RuntimeSettings, Settings
from genoserve.jobs.celery_app import make_celery
from genoserve.jobs.service import JobService
from genoserve.jobs.store import SqliteJobStore
from genoserve.runtime.authoring import NewModel, add_version
from genoserve.runtime.live import LiveModels
from genoserve.runtime.registry import ModelState, check_file, scan
from genoserve.runtime.store import LocalStore, S3Store, open_store
from tests.support.models import WEIGHTS, external_graph, linear_onnx, linear_reference, linear_spec, write_model
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, upload_folder
from tests.support.server import free_port


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("_", "-")[:50].strip("-").lower()
    s3.client().create_bucket(Bucket=name)
    return name


def store_settings(s3: S3Server, cache: Path) -> ModelStoreSettings:
    return ModelStoreSettings(
        endpoint=s3.endpoint, region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
        allow_http=True, cache_dir=cache,
    )  # fmt: skip


def publish(s3: S3Server, bucket: str, source: Path, name: str) -> None:
    upload_folder(s3.client(), bucket, f"repo/{name}", source / name)


def test_sync_mirrors_the_models_and_checks_them_like_a_folder(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
    publish(s3, bucket, tmp_path / "src", "m")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    local = store.sync()
    records = scan(local)
    assert [(r.name, r.version_label) for r in records] == [("m", "1"), ("m", "2")]
    assert all(check_file(r) is None for r in records)  # sha256 as model.yaml declares
    assert (local / "m" / "2" / "model.onnx").read_bytes() == linear_onnx(seed=2)


def test_unchanged_objects_are_not_downloaded_again(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx()})
    publish(s3, bucket, tmp_path / "src", "m")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    onnx = store.sync() / "m" / "1" / "model.onnx"
    os.utime(onnx, ns=(1, 1))  # a download would give it a fresh mtime
    store.sync()
    assert onnx.stat().st_mtime_ns == 1


def test_removed_models_and_versions_leave_the_cache(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("a"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
    write_model(tmp_path / "src", linear_spec("b"), {1: linear_onnx()})
    publish(s3, bucket, tmp_path / "src", "a")
    publish(s3, bucket, tmp_path / "src", "b")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    local = store.sync()
    client = s3.client()
    client.delete_object(Bucket=bucket, Key="repo/b/model.yaml")
    client.delete_object(Bucket=bucket, Key="repo/b/1/model.onnx")
    write_model(tmp_path / "src2", linear_spec("a"), {2: linear_onnx(seed=2)})
    client.upload_file(str(tmp_path / "src2" / "a" / "model.yaml"), bucket, "repo/a/model.yaml")
    store.sync()
    assert not (local / "b").exists()
    assert not (local / "a" / "1").exists()
    assert [r.version_label for r in scan(local)] == ["2"]


def test_a_corrupt_upload_is_refused_by_its_sha256_and_not_fetched_again(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    good = linear_onnx(seed=1)
    write_model(tmp_path / "src", linear_spec("m"), {1: good}, sha_override={1: hashlib.sha256(b"other").hexdigest()})
    publish(s3, bucket, tmp_path / "src", "m")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    local = store.sync()
    [record] = scan(local)
    problem = check_file(record)
    assert problem is not None
    assert hashlib.sha256(b"other").hexdigest() in problem
    onnx = local / "m" / "1" / "model.onnx"
    os.utime(onnx, ns=(1, 1))
    store.sync()
    assert onnx.stat().st_mtime_ns == 1  # the same bad object is not downloaded on every poll


def test_a_graph_s_external_data_is_mirrored_and_checked_by_its_declared_sha256(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A version whose graph keeps its tensors in another file: the file is mirrored with the
    graph; a corrupt upload of it is refused by the sha256 model.yaml declares (a cache holding
    the declared file keeps it), and a good one mirrored again."""
    add_version(
        tmp_path / "src", "lin", external_graph(tmp_path / "export"), RuntimeSettings(), NewModel("platform", {}, {})
    )
    publish(s3, bucket, tmp_path / "src", "lin")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    [record] = scan(store.sync())
    assert check_file(record) is None
    good = (tmp_path / "src" / "lin" / "1" / WEIGHTS).read_bytes()
    key = f"repo/lin/1/{WEIGHTS}"
    s3.client().put_object(Bucket=bucket, Key=key, Body=good[:-4] + b"\0\0\0\0")
    [record] = scan(store.sync())
    assert check_file(record) is None  # the cached file is the one declared: kept
    fresh = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "fresh-cache"))
    [record] = scan(fresh.sync())
    problem = str(check_file(record))
    assert f"{WEIGHTS} sha256 is" in problem
    assert "model.yaml declares" in problem
    s3.client().put_object(Bucket=bucket, Key=key, Body=good)
    [record] = scan(fresh.sync())
    assert check_file(record) is None


def test_an_unreachable_store_is_unavailable_naming_it(tmp_path: Path) -> None:
    settings = ModelStoreSettings(
        endpoint=f"http://127.0.0.1:{free_port()}", region=REGION, access_key_id="x", secret_access_key="y",
        allow_http=True, cache_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(Unavailable, match=r"s3://models/repo: cannot list objects"):
        S3Store("s3://models/repo", settings).sync()


def test_open_store_picks_the_store_from_the_settings(tmp_path: Path) -> None:
    assert isinstance(open_store(RuntimeSettings(model_dir=tmp_path)), LocalStore)
    assert open_store(RuntimeSettings(model_repository=str(tmp_path))).location == str(tmp_path)
    s3_store = open_store(RuntimeSettings(model_repository="s3://bucket/some/prefix/"))
    assert isinstance(s3_store, S3Store)
    assert s3_store.location == "s3://bucket/some/prefix"
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_store(RuntimeSettings(model_repository="gs://bucket/models"))


async def test_the_repository_serves_from_object_storage(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=3)})
    publish(s3, bucket, tmp_path / "src", "m")
    settings = RuntimeSettings(model_repository=f"s3://{bucket}/repo", store=store_settings(s3, tmp_path / "cache"))
    repository = LiveModels(settings)
    await repository.load()
    try:
        [status] = repository.statuses()
        assert status.state is ModelState.READY, status.reason
        x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        out: dict[str, Any] = await repository.get("m").infer({"x": x})
        np.testing.assert_allclose(out["y"], linear_reference(x, seed=3), rtol=1e-5, atol=1e-6)
    finally:
        await repository.close(1)


def test_a_server_for_some_families_fetches_only_their_version_files(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("mine"), {1: linear_onnx()})
    write_model(tmp_path / "src", {**linear_spec("theirs"), "family": "embedding"}, {1: linear_onnx()})
    publish(s3, bucket, tmp_path / "src", "mine")
    publish(s3, bucket, tmp_path / "src", "theirs")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"), families=("platform",))
    local = store.sync()
    assert (local / "mine" / "1" / "model.onnx").is_file()
    assert (local / "theirs" / "model.yaml").is_file()
    assert not (local / "theirs" / "1").exists()
    assert [r.name for r in scan(local, families=("platform",))] == ["mine"]


def test_objects_that_are_not_a_models_files_are_never_written(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """A bucket is not trusted with the server's disk: a "model" whose name is not a model name is
    skipped, and a key with '..' (which could land outside its model's cache folder) makes the
    listing fail naming the key, with nothing written."""
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx()})
    publish(s3, bucket, tmp_path / "src", "m")
    client = s3.client()
    client.upload_file(str(tmp_path / "src" / "m" / "model.yaml"), bucket, "repo/Not a name!/model.yaml")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    local = store.sync()
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == ["m"]
    assert [(r.name, r.version_label) for r in scan(local)] == [("m", "1")]

    client.put_object(Bucket=bucket, Key="repo/m/1/../../../../escaped.txt", Body=b"not for the server's disk")
    with pytest.raises(Unavailable, match=r"repo/m/1/\.\./\.\./\.\./\.\./escaped\.txt"):
        store.sync()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert [(r.name, r.version_label) for r in scan(local)] == [("m", "1")]  # the mirror is left as it was


def _sync_in_a_process(url: str, settings: dict[str, Any], families: tuple[str, ...], expected: dict[str, str],
                       rounds: int, errors: Any) -> None:  # fmt: skip
    """Sync ``rounds`` times; after each, every file in ``expected`` (path -> sha256) must be whole."""
    try:
        store = S3Store(url, ModelStoreSettings(**settings), families)
        for _ in range(rounds):
            local = store.sync()
            for path, sha256 in expected.items():
                got = hashlib.sha256((local / path).read_bytes()).hexdigest()
                assert got == sha256, f"{path}: sha256 {got}, expected {sha256}"
    except BaseException:
        errors.put(f"families {families}: {traceback.format_exc()}")


def test_processes_sharing_a_cache_sync_it_at_the_same_time(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    """A server for one family and a worker for another (or a worker's prefork children) on one
    cache folder: each finds its files whole after every sync, and neither removes the other's."""
    onnx = {seed: linear_onnx(seed=seed) for seed in range(4)}
    for name in ("a", "b", "c"):
        write_model(tmp_path / "src", linear_spec(name), {1: onnx[0], 2: onnx[1]})
        publish(s3, bucket, tmp_path / "src", name)
    write_model(tmp_path / "src", {**linear_spec("emb"), "family": "embedding"}, {1: onnx[2], 3: onnx[3]})
    publish(s3, bucket, tmp_path / "src", "emb")
    sha = {seed: hashlib.sha256(data).hexdigest() for seed, data in onnx.items()}
    platform = {f"{name}/{v}/model.onnx": sha[v - 1] for name in ("a", "b", "c") for v in (1, 2)}
    embedding = {"emb/1/model.onnx": sha[2], "emb/3/model.onnx": sha[3]}
    settings = store_settings(s3, tmp_path / "cache").model_dump()
    url = f"s3://{bucket}/repo"
    spawn = multiprocessing.get_context("spawn")  # obstore's runtime threads do not survive a fork
    errors = spawn.Queue()
    processes = [
        spawn.Process(target=_sync_in_a_process, args=(url, settings, families, expected, 4, errors))
        for families, expected in (
            (("platform",), platform),
            (("embedding",), embedding),
            ((), {**platform, **embedding}),
        )
    ]
    for process in processes:
        process.start()
    client = s3.client()
    for round_ in range(6):  # model.yaml objects change while the processes mirror them
        for name in ("a", "emb"):
            spec = (tmp_path / "src" / name / "model.yaml").read_text()
            client.put_object(Bucket=bucket, Key=f"repo/{name}/model.yaml",
                              Body=f"{spec}description: round {round_}\n".encode())  # fmt: skip
    for process in processes:
        process.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, "\n".join(found)
    assert [p.exitcode for p in processes] == [0, 0, 0]

    # The platform server syncs once more: the embedding worker's files stay.
    local = S3Store(url, ModelStoreSettings(**settings), ("platform",)).sync()
    for path, sha256 in {**platform, **embedding}.items():
        assert hashlib.sha256((local / path).read_bytes()).hexdigest() == sha256, path
    partial = [p.name for p in local.rglob(".*") if p.is_file() and p.name.startswith((".download-", ".model.yaml."))]
    assert partial == []


@contextlib.contextmanager
def another_process_mirroring(store: S3Store) -> Iterator[None]:
    """The cache's lock held, as by another process downloading a large version into it."""
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / ".sync.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a separate open file: it excludes this process's syncs too
        yield


def test_model_yaml_files_are_read_without_the_cache_while_another_process_mirrors_it(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=1)})
    write_model(tmp_path / "src", linear_spec("n"), {1: linear_onnx(seed=2)})
    publish(s3, bucket, tmp_path / "src", "m")
    publish(s3, bucket, tmp_path / "src", "n")
    store = S3Store(f"s3://{bucket}/repo", store_settings(s3, tmp_path / "cache"))
    with ThreadPoolExecutor(1) as pool, another_process_mirroring(store):  # lock released before the pool waits
        published = {f"{name}/model.yaml": (tmp_path / "src" / name / "model.yaml").read_bytes() for name in "mn"}
        assert pool.submit(lambda: _files_of(store, ())).result(timeout=20) == published
        assert set(pool.submit(lambda: _files_of(store, ("n",))).result(timeout=20)) == {"n/model.yaml"}
        assert [r.version_label for r in pool.submit(_scan_specs, store).result(timeout=20)] == ["1", "1"]
    assert not list(store.root.rglob("model.*"))  # the cache was not written


def _files_of(store: S3Store, only: tuple[str, ...]) -> dict[str, bytes]:
    with store.specs(only) as specs:
        return {p.relative_to(specs).as_posix(): p.read_bytes() for p in specs.rglob("*") if p.is_file()}


def _scan_specs(store: S3Store) -> list[Any]:
    with store.specs() as specs:
        return scan(specs)


async def test_the_repository_index_does_not_wait_for_a_sync_downloading_into_the_cache(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=3)})
    publish(s3, bucket, tmp_path / "src", "m")
    settings = RuntimeSettings(model_repository=f"s3://{bucket}/repo", store=store_settings(s3, tmp_path / "cache"),
                               model_control="explicit")  # fmt: skip
    repository = LiveModels(settings)
    await repository.load()
    try:
        write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=3), 2: linear_onnx(seed=4)})
        publish(s3, bucket, tmp_path / "src", "m")
        assert isinstance(repository.store, S3Store)
        with another_process_mirroring(repository.store):
            index = await asyncio.wait_for(repository.index(), 20)
        assert [(e.name, e.version, e.state) for e in index] == [("m", "1", ModelState.READY), ("m", "2", None)]
    finally:
        await repository.close(1)


def test_a_job_submit_reads_the_model_without_waiting_for_a_sync(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    write_model(tmp_path / "src", linear_spec("m"), {1: linear_onnx(seed=1), 2: linear_onnx(seed=2)})
    publish(s3, bucket, tmp_path / "src", "m")
    runtime = RuntimeSettings(model_repository=f"s3://{bucket}/repo", store=store_settings(s3, tmp_path / "cache"))
    settings = Settings(runtime=runtime, jobs=JobsSettings(data_dir=tmp_path / "jobs"))
    app = make_celery(settings.jobs)
    service = JobService(settings, SqliteJobStore(tmp_path / "jobs.sqlite3"), app)
    assert isinstance(service.models, S3Store)
    try:
        with (
            ThreadPoolExecutor(1) as pool,
            another_process_mirroring(service.models),
        ):  # lock released before the pool waits
            submit = pool.submit(service.submit, "t", "platform.score_rows", [], str(tmp_path / "out"),
                                 {"model": "m", "version": "3"})  # fmt: skip
            with pytest.raises(InvalidArgument, match=r"model m has no version '3'; it has \['1', '2'\]"):
                submit.result(timeout=20)  # the store's model.yaml, read while the cache is locked
    finally:
        app.close()
