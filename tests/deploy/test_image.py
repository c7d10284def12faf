"""The CPU image's environment, built from deploy/docker/Dockerfile's own lines, starts and serves.

tests/deploy/image.py builds the ``cpu`` stage as a folder tree: the wheel exactly as the wheel
stage builds it (``pip wheel --no-deps .`` on the files the COPY lines take, .dockerignore
applied: the build generates the gRPC stubs), a fresh venv with the image's locked requirements
and its onnxruntime pin, the models copied root-owned (read-only for the image's user). Then,
as the image's unprivileged uid with the image's environment variables, ``genoserve serve``
answers one call per family and ``genoserve worker`` runs one small job per queue (Redis broker).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from packaging.utils import canonicalize_name as canonical
from packaging.version import Version

from genoserve.client import Client
from genoserve.v1 import jobs_pb2
from tests.deploy.image import DOCKERFILE, LocalImage, context_files, parse, pinned
from tests.deploy.local import wait_for
from tests.deploy.manifests import DEPLOY, REPO
from tests.support.embedding import pbmc_csr
from tests.support.jobs import wait_for_job
from tests.support.redis import RedisServer
from tests.support.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DV = REPO / "tests" / "data" / "deepvariant"
BAM = DV / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DV / "ucsc.hg19.chr20.unittest.fasta.gz"
TIFF = REPO / "tests" / "data" / "segmentation" / "stardist_tests_img2d_256.tif"
PBMC = REPO / "tests" / "data" / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
REQUIREMENTS = DEPLOY / "docker" / "requirements.txt"


def _protos_generate() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("protos_generate", REPO / "protos" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- drift between the Dockerfile, the lock and what the tests run -----------------------------------


def test_every_context_file_the_dockerfile_copies_is_copied_by_the_emulation() -> None:
    """A COPY source that is missing from the build context (or the .dockerignore) fails here."""
    for stage in parse().values():
        for instruction in stage.instructions:
            if instruction.op == "COPY" and "--from=" not in instruction.args:
                words = [w for w in instruction.args.split() if not w.startswith("--")]
                for source in words[:-1]:
                    assert context_files(source), f"{stage.name}: COPY {source}: nothing in the build context"


def test_the_wheel_stage_copies_what_the_package_build_reads() -> None:
    """pip wheel reads pyproject.toml, setup.py, MANIFEST.in, README.md, protos/ and services/."""
    [copied] = [[w for i in parse()["wheel"].instructions if i.op == "COPY" for w in i.args.split()[:-1]]]
    for needed in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "protos", "services"):
        assert needed in copied, f"the wheel stage does not COPY {needed}"


def test_tests_run_the_onnxruntime_the_images_pin() -> None:
    text = DOCKERFILE.read_text()
    cpu, gpu = pinned("onnxruntime", text), pinned("onnxruntime-gpu", text)
    assert cpu == gpu, f"CPU image onnxruntime {cpu}, GPU image onnxruntime-gpu {gpu}"
    assert importlib.metadata.version("onnxruntime") == cpu, "the tests run another onnxruntime than the image"


def test_the_build_generates_stubs_no_newer_than_the_locked_grpcio() -> None:
    """Stubs from grpcio-tools X refuse to import under a grpcio older than X."""
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    tools = pinned("grpcio-tools", " ".join(build))
    assert Version(tools) <= Version(pinned("grpcio", REQUIREMENTS.read_text()))


# -- the image ---------------------------------------------------------------------------------------


@dataclass
class Built:
    image: LocalImage
    wheel: Path
    data: Path


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    # Not under pytest's tmp_path: its folders are 0700 root, and the image's user must get in.
    root = Path(tempfile.mkdtemp(prefix="genoserve-image-"))
    root.chmod(0o755)
    try:
        image = LocalImage(root).build()
        [wheel] = list((image.fs / "wheels").glob("genoserve-*.whl"))
        data = image.fs / "data"  # a volume the pods mount, writable by the image's user
        data.mkdir()
        for path in (BAM, BAM.with_suffix(".bam.bai"), REF, *(REF.with_name(REF.name + s) for s in (".fai", ".gzi"))):
            shutil.copy(path, data / path.name)
        shutil.copy(TIFF, data / TIFF.name)
        shutil.copy(PBMC, data / PBMC.name)
        np.save(data / "rows.npy", np.random.default_rng(0).random((40, 128), dtype=np.float32))
        seqs = ["ACGT" * 25 + "A", "CCGCGNGGNGGCAG" * 7 + "ACG", "T" * 101]
        (data / "peaks.fa").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
        if image.can_switch_user:
            assert image.user is not None
            for path in [data, *data.rglob("*")]:
                os.chown(path, *image.user)
        yield Built(image, wheel, data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_holds_every_generated_module(built: Built) -> None:
    generate = _protos_generate()
    names = set(zipfile.ZipFile(built.wheel).namelist())
    for module in generate.expected_modules():  # type: ignore[attr-defined]
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, f"{module} is missing from the wheel"
    assert "genoserve/nucleus/variants_pb2.py" in names
    assert not any(n.startswith("genoserve/training/") for n in names), "the serving image must not carry training"


def test_the_venv_holds_exactly_the_lock_and_the_onnxruntime_pin(built: Built) -> None:
    freeze = subprocess.run(
        [str(built.image.bin / "python"), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    ).stdout
    installed = {canonical(line.split("==")[0]): line.split("==")[1] for line in freeze.splitlines() if "==" in line}
    installed |= {canonical(line.split(" @ ")[0]): "wheel" for line in freeze.splitlines() if " @ " in line}
    locked = {
        canonical(line.split("==")[0]): line.split("==")[1]
        for line in REQUIREMENTS.read_text().splitlines()
        if line and not line.startswith("#")
    }
    expected = {**locked, "onnxruntime": pinned("onnxruntime", DOCKERFILE.read_text()), "genoserve": "wheel"}
    tools = {"pip", "setuptools", "wheel"}  # what `python -m venv` brings
    assert {k: v for k, v in installed.items() if k not in tools} == expected
    assert "torch" not in installed


def test_every_module_imports_as_the_image_user(built: Built) -> None:
    """genoserve.api.server imports genoserve.nucleus through genoserve.variants.examples."""
    code = (
        "import os, pkgutil, importlib, genoserve\n"
        "names = [m.name for m in pkgutil.walk_packages(genoserve.__path__, 'genoserve.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(os.getuid(), len(names))\n"
    )
    result = built.image.python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    uid, count = result.stdout.split()
    if built.image.can_switch_user:
        assert built.image.user is not None
        assert int(uid) == built.image.user[0] != 0
    assert int(count) > 50


def test_the_models_are_read_only_for_the_image_user(built: Built) -> None:
    models = built.image.path(built.image.process_env()["GENOSERVE_MODEL_DIR"].removeprefix(str(built.image.fs)))
    assert (models / "platform-mlp" / "model.yaml").is_file()
    if built.image.can_switch_user:
        result = built.image.python(f"open({str(models / 'platform-mlp' / 'x')!r}, 'w')")
        assert "Permission denied" in result.stderr


def _env(built: Built, redis: RedisServer) -> dict[str, str]:
    """Settings a deployment passes (env and a volume); the image's own ENV comes first."""
    return {
        "GENOSERVE_BROKER_URL": redis.url,
        "GENOSERVE_DATA_DIR": str(built.data / "state"),
        "GENOSERVE_JOBS__INPUT_ROOTS": json.dumps([str(built.data)]),
        "GENOSERVE_JOBS__OUTPUT_ROOTS": json.dumps([str(built.data)]),
        "GENOSERVE_JOBS__SWEEP_INTERVAL_S": "0.5",
        "GENOSERVE_BINDING__REFERENCES": json.dumps({"hg19chr20": str(built.data / REF.name)}),
        "GENOSERVE_WORKER__METRICS_DIR": str(built.image.fs / "var/run/genoserve/metrics"),
    }


def test_serve_and_worker_start_as_the_image_user_and_serve_every_family(built: Built) -> None:
    image = built.image
    logs = image.root / "logs"
    logs.mkdir(exist_ok=True)
    port, metrics, worker_metrics = free_port(), free_port(), free_port()
    cmd = [a.replace("0.0.0.0", "127.0.0.1") for a in image.cmd]
    with RedisServer(image.root / "redis") as redis:
        env = _env(built, redis)
        server = image.popen([*cmd, "--port", str(port), "--metrics-port", str(metrics)], logs / "serve.log", env)
        worker = image.popen(["worker", "--metrics-port", str(worker_metrics)], logs / "worker.log", env)
        try:
            _serve_every_family(built, f"127.0.0.1:{port}", [server, worker], logs)
        except BaseException:
            for log in ("serve.log", "worker.log"):  # shown by pytest with the failure
                print(f"--- {log}\n{(logs / log).read_text()[-6000:]}")
            raise
        finally:
            for proc in (server, worker):
                proc.terminate()
            codes = [proc.wait(60) for proc in (server, worker)]
        assert codes == [0, 0], (
            codes,
            (logs / "serve.log").read_text()[-3000:],
            (logs / "worker.log").read_text()[-3000:],
        )
    workdir = image.path(image.workdir)
    assert not list(workdir.rglob("*")), "the image's WORKDIR is on the read-only root filesystem in the pods"


def _serve_every_family(built: Built, address: str, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    def up() -> bool:
        for proc in procs:
            assert proc.poll() is None, (logs / "serve.log").read_text()[-3000:] + (logs / "worker.log").read_text()
        with Client(address, timeout=2, max_attempts=1) as client:
            return client.health() == "SERVING"

    wait_for(up, "health SERVING", 120)
    data = built.data
    with Client(address, timeout=60) as client:
        # platform: the served output is ONNX Runtime's on the same graph
        x = np.random.default_rng(1).random((4, 128), dtype=np.float32)
        reference = ort.InferenceSession(str(REPO / "models/platform-mlp/1/model.onnx"))
        np.testing.assert_allclose(client.infer("platform-mlp", {"x": x})["y"], reference.run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        # binding
        scores = client.predict_sequences("deepbind-ctcf", [("a", "ACGT" * 25 + "A")])
        assert 0.0 <= scores.results[0].scores[0] <= 1.0
        # variants: pileups built here from the real BAM
        from genoserve.api.codecs.variants import pileup_example
        from genoserve.variants.make_examples import Region, make_examples

        _, examples = make_examples(BAM, REF, Region.parse("chr20:10000000-10001500"))
        called = client.call_variants([pileup_example(e, f"e{i}") for i, e in enumerate(examples)])
        assert called.calls
        assert called.model.startswith("deepvariant-cnn")
        # segmentation
        import tifffile

        segmented = client.segment("cellpose-nuclei", tifffile.imread(TIFF))
        assert segmented.n_cells > 10
        # embedding
        counts, genes = pbmc_csr()
        embedded = client.embed("scvi-pbmc", genes, counts[:20])
        assert list(embedded.latent.shape) == [20, 10]
        # one job per queue
        jobs = {
            "platform.score_rows": ([data / "rows.npy"], {}),
            "binding.score_fasta": ([data / "peaks.fa"], {"model": "deepbind-ctcf"}),
            "variants.call_bam": ([data / BAM.name], {"model": "deepvariant-cnn-7ch", "reference": "hg19chr20",
                                                      "regions": "chr20:10000001-10001500"}),
            "segmentation.segment_images": ([data / TIFF.name], {"model": "cellpose-nuclei"}),
            "embedding.embed_h5ad": ([data / PBMC.name], {"model": "scvi-pbmc"}),
        }  # fmt: skip
        submitted = {
            kind: client.submit_job(kind, [str(p) for p in inputs], str(data / "out" / kind), params)
            for kind, (inputs, params) in jobs.items()
        }
        for kind, job in submitted.items():
            done = wait_for_job(client, job.id, timeout=240)
            assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED, (
                kind,
                done.error,
                (logs / "worker.log").read_text()[-3000:],
            )
            outputs = [p for p in (data / "out" / kind).iterdir() if p.is_file()]
            assert outputs, kind
            if built.image.can_switch_user:
                assert built.image.user is not None
                assert {p.stat().st_uid for p in outputs} == {built.image.user[0]}, kind
