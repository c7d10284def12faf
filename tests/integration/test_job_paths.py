"""Bulk jobs stay inside their roots and cannot stall the server: a real server (with two tenants),
real Celery workers, real files, FIFOs and symlinks.

Every path a job opens is confined when it is opened (glob results, folder members, an input or
output folder swapped for a symlink after submit), a FIFO is refused without being opened,
another tenant's output folder is never written, bad path text and bad params are
INVALID_ARGUMENT naming the field, and a cancelled shard stops at its next batch, quietly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

from genoserve.client import Client
from genoserve.core.errors import GenoserveError, InvalidArgument, PermissionDenied
from genoserve.v1 import jobs_pb2
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import REPO, ServerProcess
from tests.support.variants_models import write_fraction_model

pytestmark = pytest.mark.integration

SEGMENT = "segmentation.segment_images"
ROWS = "platform.score_rows"
IMAGE = REPO / "tests" / "data" / "segmentation" / "stardist_tests_img2d_256.tif"
VARIANTS = REPO / "tests" / "data" / "deepvariant"
BAM = VARIANTS / "NA12878_S1.chr20.10_10p1mb.bam"
REF = VARIANTS / "ucsc.hg19.chr20.unittest.fasta.gz"
PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"


@dataclass
class Rig:
    root: Path  # the input and output root
    outside: Path  # a folder outside the roots
    config: Path
    server: ServerProcess
    worker: WorkerProcess  # every queue but segmentation

    def client(self, tenant: str = "a") -> Client:
        return Client(self.server.address, token=f"token-{tenant}", timeout=30)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("job-paths")
    root, outside, models = base / "root", base / "outside", base / "models"
    for folder in (root, outside, models):
        folder.mkdir()
    for name in ("platform-mlp", "cellpose-nuclei", "scvi-pbmc", "deepbind-ctcf"):
        (models / name).symlink_to(REPO / "models" / name)
    write_fraction_model(models, "fraction-7ch", 7)
    for name in (BAM.name, f"{BAM.name}.bai"):
        shutil.copy(VARIANTS / name, root / name)
    for suffix in ("", ".fai", ".gzi"):
        shutil.copy(f"{REF}{suffix}", root / f"{REF.name}{suffix}")
    shutil.copy(IMAGE, outside / "secret.tif")
    tokens = base / "tokens"
    tokens.write_text("token-a lab-a\ntoken-b lab-b\n")
    config = base / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models), "models": ["platform-mlp"]},
        "binding": {"references": {"hg19chr20": str(root / REF.name)}},
        "jobs": {"data_dir": str(base / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 3.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(base / "data" / "metrics")},
    }))  # fmt: skip
    worker = WorkerProcess(config, base / "worker.log", "--queues", "platform,variants,binding,embedding").start()
    server = ServerProcess(
        "--config", str(config), "--tokens-file", str(tokens), model_dir=models, log_path=base / "server.log"
    ).start()
    yield Rig(root, outside, config, server, worker)
    server.terminate()
    worker.stop()


def rows(path: Path, n: int) -> None:
    np.save(path, np.random.default_rng(0).standard_normal((n, 128), dtype=np.float32))


def refused(client: Client, *args: Any, field: str, **kwargs: Any) -> str:
    """Submit, expect INVALID_ARGUMENT naming ``field``; the rule broken. A job that was accepted
    instead is cancelled (so that the test fails without leaving work behind)."""
    error = accepted_or(InvalidArgument, client, *args, **kwargs)
    [violation] = error.violations
    assert violation.field == field, error.message
    return violation.description


E = TypeVar("E", bound=GenoserveError)


def accepted_or(expected: type[E], client: Client, *args: Any, **kwargs: Any) -> E:
    """The ``expected`` error of a submit; an accepted job is cancelled and the test fails."""
    try:
        job = client.submit_job(*args, **kwargs)
    except expected as exc:
        return exc
    client.cancel_job(job.id)
    pytest.fail(f"accepted as job {job.id} instead of {expected.__name__}")


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A FIFO at ``path``; afterwards anything blocked opening it for reading is let go."""
    os.mkfifo(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO when no reader waits


def test_patterns_and_symlinks_in_a_folder_cannot_reach_outside_the_roots(rig: Rig) -> None:
    images = rig.root / "imgs"
    images.mkdir()
    shutil.copy(IMAGE, images / "a.tif")
    linked = rig.root / "linked"
    linked.mkdir()
    shutil.copy(IMAGE, linked / "ok.tif")
    (linked / "link.tif").symlink_to(rig.outside / "secret.tif")
    with rig.client() as client:
        for pattern in ("../../outside/*.tif", "../../../../../../etc/pass*", "/etc/*", "*.tif,sub/*.tif"):
            rule = refused(client, SEGMENT, [str(images)], str(rig.root / "o1"), {"pattern": pattern},
                           field="params[pattern]")  # fmt: skip
            assert "'/'" in rule
        rule = refused(client, SEGMENT, [str(linked)], str(rig.root / "o2"), field="inputs[0]")
        assert "link.tif" in rule
        assert "outside the allowed roots" in rule
    assert not (rig.root / "o1").exists()
    assert not (rig.root / "o2").exists()


def test_path_text_that_the_os_cannot_take_is_invalid_argument(rig: Rig) -> None:
    rows(rig.root / "text.npy", 10)
    good = str(rig.root / "text.npy")
    with rig.client() as client:
        assert "NUL" in refused(client, ROWS, [good + "\0.npy"], str(rig.root / "o"), field="inputs[0]")
        assert "NUL" in refused(client, ROWS, [good], str(rig.root / "o\0x"), field="output_dir")
        long_name = str(rig.root / ("x" * 300 + ".npy"))
        assert "255" in refused(client, ROWS, [long_name], str(rig.root / "o"), field="inputs[0]")
        assert "255" in refused(client, ROWS, [good], str(rig.root / ("d" * 256)), field="output_dir")
        deep = str(rig.root) + "/d" * 2100
        assert "4096" in refused(client, ROWS, [good], deep, field="output_dir")
        assert "4096" in refused(client, ROWS, [deep + "/x.npy"], str(rig.root / "o"), field="inputs[0]")


def test_params_model_names_and_booleans_are_strict(rig: Rig) -> None:
    rows(rig.root / "params.npy", 10)
    good = [str(rig.root / "params.npy")]
    with rig.client() as client:
        for model in ("/etc", "../models/platform-mlp", str(REPO / "models" / "platform-mlp"), "Platform"):
            rule = refused(client, ROWS, good, str(rig.root / "o"), {"model": model}, field="params[model]")
            assert "model name" in rule
            assert "cannot read" not in rule  # says nothing about files
        assert "true or false" in refused(client, ROWS, good, str(rig.root / "o"), {"overwrite": "maybe"},
                                          field="params[overwrite]")  # fmt: skip
        assert "true or false" in refused(client, SEGMENT, [str(IMAGE)], str(rig.root / "o"), {"overlays": "yes"},
                                          field="params[overlays]")  # fmt: skip
        accepted = client.submit_job(ROWS, good, str(rig.root / "params-out"), {"overwrite": "1"})
        assert accepted.params["overwrite"] == "true"
        assert wait_for_job(client, accepted.id).state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_too_many_shards_are_refused_before_any_is_enqueued(rig: Rig) -> None:
    big = rig.root / "sparse.npy"
    with open(big, "wb") as handle:  # a header for 10,001 rows and a hole: 4 KB on disk
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (10_001, 128)})
        handle.truncate(handle.tell() + 10_001 * 128 * 4)
    with rig.client() as client:
        before = len(client.list_jobs(limit=1000))
        started = time.monotonic()
        rule = refused(client, ROWS, [str(big)], str(rig.root / "sparse-out"), {"shard_size": "1"},
                       field="params[shard_size]")  # fmt: skip
        assert time.monotonic() - started < 5
        assert "10001 shards" in rule
        assert "10000" in rule
        assert "larger shard_size" in rule
        assert len(client.list_jobs(limit=1000)) == before


def test_fifos_are_refused_at_once_and_the_server_keeps_answering(rig: Rig) -> None:
    folder = rig.root / "fifo-folder"
    folder.mkdir()
    shutil.copy(IMAGE, folder / "a.tif")
    with (
        fifo(rig.root / "pipe.tif") as pipe,
        fifo(folder / "b.tif"),
        fifo(rig.root / "pipe.npy") as pipe_npy,
        fifo(rig.root / "pipe.h5ad") as pipe_h5ad,
        fifo(rig.root / "pipe.fa") as pipe_fa,
        fifo(rig.root / "pipe.bam") as pipe_bam,
        rig.client() as client,
    ):

        def submit(i: int) -> GenoserveError:
            try:
                client.submit_job(SEGMENT, [str(pipe)], str(rig.root / f"fifo-out{i}"), timeout=15)
            except GenoserveError as exc:
                return exc
            raise AssertionError("a FIFO input was accepted")

        with ThreadPoolExecutor(8) as pool:
            errors = list(pool.map(submit, range(8)))
        for error in errors:
            assert isinstance(error, InvalidArgument), error.message
            assert error.violations[0].field == "inputs[0]"
            assert "pipe.tif" in error.violations[0].description
            assert "FIFO" in error.violations[0].description
        rule = refused(client, SEGMENT, [str(folder)], str(rig.root / "o"), field="inputs[0]")
        assert "b.tif" in rule
        assert "FIFO" in rule
        for kind, path, params in [
            (ROWS, pipe_npy, {}),
            ("embedding.embed_h5ad", pipe_h5ad, {"model": "scvi-pbmc"}),
            ("binding.score_fasta", pipe_fa, {"model": "deepbind-ctcf"}),
            ("variants.call_bam", pipe_bam, {"model": "fraction-7ch", "reference": "hg19chr20"}),
        ]:
            assert "FIFO" in refused(client, kind, [str(path)], str(rig.root / "o"), params, field="inputs[0]")
        assert client.list_jobs(timeout=5) is not None  # Jobs calls still answer
        assert client.health(timeout=5) == "SERVING"


def test_a_bam_index_or_reference_outside_the_roots_is_refused(rig: Rig) -> None:
    linked = rig.root / "linked-index.bam"
    shutil.copy(BAM, linked)
    shutil.copy(f"{BAM}.bai", rig.outside / "index.bai")
    Path(f"{linked}.bai").symlink_to(rig.outside / "index.bai")
    shutil.copy(REF, rig.outside / REF.name)
    shutil.copy(f"{REF}.gzi", rig.outside / f"{REF.name}.gzi")
    (rig.root / REF.name.replace(".fasta", ".outside")).symlink_to(rig.outside / REF.name)
    params = {"model": "fraction-7ch", "reference": "hg19chr20", "regions": "chr20:10000001-10001000"}
    with rig.client() as client:
        rule = refused(client, "variants.call_bam", [str(linked)], str(rig.root / "o"), params, field="inputs[0]")
        assert "linked-index.bam.bai" in rule
        assert "outside the allowed roots" in rule
        other = {**params, "reference": str(rig.root / REF.name.replace(".fasta", ".outside"))}
        rule = refused(client, "variants.call_bam", [str(rig.root / BAM.name)], str(rig.root / "o"), other,
                       field="params[reference]")  # fmt: skip
        assert "outside the allowed roots" in rule


def test_another_tenants_output_folder_is_never_replaced(rig: Rig) -> None:
    rows(rig.root / "mine.npy", 100)
    rows(rig.root / "theirs.npy", 50)
    shared = rig.root / "shared-out"
    with rig.client("a") as a, rig.client("b") as b:
        done = wait_for_job(a, a.submit_job(ROWS, [str(rig.root / "mine.npy")], str(shared)).id)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED
        written = (shared / "mine.scores.npy").read_bytes()
        for inputs in ([rig.root / "mine.npy"], [rig.root / "theirs.npy"]):
            error = accepted_or(PermissionDenied, b, ROWS, [str(p) for p in inputs], str(shared), {"overwrite": "true"})
            assert str(shared) in error.message
            assert "another tenant" in error.message
        again = wait_for_job(a, a.submit_job(ROWS, [str(rig.root / "mine.npy")], str(shared),
                                             {"overwrite": "true"}).id)  # fmt: skip
        assert again.state == jobs_pb2.JOB_STATE_SUCCEEDED  # the owner may replace its own outputs
    assert (shared / "mine.scores.npy").read_bytes() == written
    assert not (shared / "theirs.scores.npy").exists()


def test_paths_are_checked_again_when_the_worker_opens_them(rig: Rig) -> None:
    """Jobs on the segmentation queue wait (no worker) while their paths change; then a worker
    runs them: each fails naming the path, nothing is read or written outside, the worker lives."""
    root, outside = rig.root, rig.outside
    shutil.copy(IMAGE, root / "swap-in.tif")
    (root / "swap-folder").mkdir()
    shutil.copy(IMAGE, root / "swap-folder" / "a.tif")
    shutil.copy(IMAGE, root / "later-fifo.tif")
    (outside / "out-target").mkdir()
    rows(root / "contested.npy", 20)
    with rig.client("a") as a, rig.client("b") as b:
        jobs = {
            "input": a.submit_job(SEGMENT, [str(root / "swap-in.tif")], str(root / "swap-in-out")),
            "member": a.submit_job(SEGMENT, [str(root / "swap-folder")], str(root / "swap-folder-out")),
            "output": a.submit_job(SEGMENT, [str(image_in(root))], str(root / "swap-out")),
            "fifo": a.submit_job(SEGMENT, [str(root / "later-fifo.tif")], str(root / "later-fifo-out")),
            "owner": a.submit_job(SEGMENT, [str(image_in(root))], str(root / "contested")),
        }
        (root / "swap-in.tif").unlink()
        (root / "swap-in.tif").symlink_to(outside / "secret.tif")
        (root / "swap-folder" / "a.tif").unlink()
        (root / "swap-folder" / "a.tif").symlink_to(outside / "secret.tif")
        shutil.rmtree(root / "swap-out")
        (root / "swap-out").symlink_to(outside / "out-target")
        (root / "later-fifo.tif").unlink()
        # The contested folder is emptied on disk and given to tenant b, whose job finishes first.
        shutil.rmtree(root / "contested")
        theirs = wait_for_job(b, b.submit_job(ROWS, [str(root / "contested.npy")], str(root / "contested")).id)
        assert theirs.state == jobs_pb2.JOB_STATE_SUCCEEDED
        written = (root / "contested" / "contested.scores.npy").read_bytes()
        with fifo(root / "later-fifo.tif"):
            worker = WorkerProcess(rig.config, root.parent / "seg-worker.log", "--queues", "segmentation").start()
            try:
                done = {name: wait_for_job(a, job.id, timeout=180) for name, job in jobs.items()}
                assert worker.proc is not None
                assert worker.proc.poll() is None, worker.log()  # bad paths never kill a worker
            finally:
                worker.stop()
    for name, job in done.items():
        assert job.state == jobs_pb2.JOB_STATE_FAILED, (name, job.error, worker.log())
        assert list(job.outputs) == []
    assert "swap-in.tif" in done["input"].error
    assert "outside the allowed roots" in done["input"].error
    assert "a.tif" in done["member"].error
    assert "outside the allowed roots" in done["member"].error
    assert "output_dir" in done["output"].error
    assert str(root / "swap-out") in done["output"].error
    assert "later-fifo.tif" in done["fifo"].error
    assert "FIFO" in done["fifo"].error
    assert str(root / "contested") in done["owner"].error
    assert "another tenant" in done["owner"].error
    assert list((outside / "out-target").iterdir()) == []
    assert (root / "contested" / "contested.scores.npy").read_bytes() == written
    assert sorted(p.name for p in (root / "contested").iterdir() if not p.name.startswith(".")) == [
        "_SUCCESS.json", "contested.scores.npy"
    ]  # fmt: skip
    assert not (root / "swap-in-out" / "swap-in.labels.tif").exists()


def image_in(root: Path) -> Path:
    """A real image inside the root (copied once)."""
    path = root / "image.tif"
    if not path.exists():
        shutil.copy(IMAGE, path)
    return path


def test_cancel_stops_a_running_call_bam_shard_at_its_next_batch_quietly(rig: Rig) -> None:
    out = rig.root / "bam-cancel-out"
    with rig.client() as client:
        job = client.submit_job(
            "variants.call_bam", [str(rig.root / BAM.name)], str(out),
            {"model": "fraction-7ch", "reference": "hg19chr20", "regions": "chr20:10000001-10040000"},
        )  # fmt: skip
        assert job.shards_total == 1
        wait_for_job(client, job.id, until=lambda j: j.state == jobs_pb2.JOB_STATE_RUNNING)
        time.sleep(1.0)
        cancelled_at = time.monotonic()
        assert client.cancel_job(job.id).state == jobs_pb2.JOB_STATE_CANCELLED
        stopped = f"job {job.id} shard 0 stopped"
        while stopped not in rig.worker.log() and time.monotonic() - cancelled_at < 30:
            time.sleep(0.1)
        took = time.monotonic() - cancelled_at
        final = wait_for_job(client, job.id)
    log = rig.worker.log()
    assert stopped in log, log
    assert took < 10, f"the shard ran on for {took:.1f} s after the cancel"
    mine = [line for line in log.splitlines() if job.id in line]
    assert not [line for line in mine if "ERROR" in line], mine
    assert "Traceback" not in log.split(f"job {job.id}", 1)[1]
    assert final.state == jobs_pb2.JOB_STATE_CANCELLED
    assert list(final.outputs) == []
    assert not (out / "NA12878_S1.chr20.10_10p1mb.vcf.gz").exists()
    assert not (out / ".genoserve-staging").exists()
