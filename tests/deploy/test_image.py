"""The CPU images' environment, built from deploy/docker/Dockerfile's own lines, starts and serves.

tests/deploy/image.py builds the model-free ``cpu`` target as a folder tree: the wheel exactly as
the wheel stage builds it (``pip wheel --no-deps .`` on the files the COPY lines take,
.dockerignore applied: the build generates the gRPC stubs) and a fresh venv with the image's
locked requirements and its onnxruntime pin; then ``cpu-models`` on top of it, the models copied
root-owned (read-only for the image's user). As the image's unprivileged uid with the image's
environment variables: from ``cpu-models``, ``genoserve serve`` answers one call per family and
``genoserve worker`` runs one small job per queue (Redis broker); from ``cpu``, which holds no
models, ``genoserve serve`` stops at start without a model repository and serves one given by the
environment, a read-only folder (the gpu overlay's volume) or object storage (the prod overlay's;
a real S3 API server, the image's default download cache).
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
from tests.support.s3 import S3Server, upload_folder
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


# -- the image with the models (cpu-models) ----------------------------------------------------------


@dataclass
class Images:
    root: Path
    #: Target cpu: no models.
    model_free: LocalImage
    #: Target cpu-models: cpu plus the repository's models/.
    with_models: LocalImage
    #: The files of each, as built (relative to its root filesystem), before any process ran.
    model_free_files: frozenset[Path]
    with_models_files: frozenset[Path]


def _files(image: LocalImage) -> frozenset[Path]:
    return frozenset(p.relative_to(image.fs) for p in image.fs.rglob("*"))


@dataclass
class Built:
    image: LocalImage
    wheel: Path
    data: Path


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    # Not under pytest's tmp_path: its folders are 0700 root, and the image's user must get in.
    root = Path(tempfile.mkdtemp(prefix="genoserve-image-"))
    root.chmod(0o755)
    try:
        model_free = LocalImage(root / "cpu", "cpu").build()
        with_models = model_free.derive("cpu-models", root / "cpu-models")  # the venv built once
        yield Images(root, model_free, with_models, _files(model_free), _files(with_models))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def built(images: Images) -> Built:
    """The cpu-models image, with a job data volume."""
    image = images.with_models
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
    return Built(image, wheel, data)


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
    assert built.image.user is not None
    assert int(uid) == built.image.user[0] != 0
    assert int(count) > 50


def test_the_models_are_read_only_for_the_image_user(built: Built) -> None:
    models = built.image.path(built.image.process_env()["GENOSERVE_MODEL_DIR"].removeprefix(str(built.image.fs)))
    assert models == built.image.path("/opt/genoserve/models")
    assert (models / "platform-mlp" / "model.yaml").is_file()
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
            assert built.image.user is not None
            assert {p.stat().st_uid for p in outputs} == {built.image.user[0]}, kind


# -- the model-free image (cpu) ----------------------------------------------------------------------


def test_each_target_copies_what_its_stages_copy(images: Images) -> None:
    """The stages a target is built from (its FROM chain and what it copies --from) are all built:
    the emulation copied every build-context source their COPY lines name, no other."""
    for image in (images.model_free, images.with_models):
        expected = [
            source
            for stage in image.order()
            for instruction in stage.instructions
            if instruction.op == "COPY" and "--from=" not in instruction.args
            for source in [w for w in instruction.args.split() if not w.startswith("--")][:-1]
        ]
        assert sorted(image.copied) == sorted(expected), image.target
    assert [s.name for s in images.with_models.order()][-2:] == ["cpu", "cpu-models"]


def test_the_model_free_image_holds_no_models(images: Images) -> None:
    image = images.model_free
    assert "models" not in image.copied, "the cpu target copies models/"
    files = images.model_free_files
    assert Path("opt/genoserve") not in files
    assert not [p for p in files if p.name == "model.yaml"], "a model repository in the model-free image"
    assert image.env["GENOSERVE_MODEL_DIR"] == "/models"
    assert Path("models") not in files, "the volume's mount point must not hide a folder of the image"
    # What cpu-models adds to it: the models and the folders they are in, nothing else.
    added = images.with_models_files - files
    assert {p.parts[:3] for p in added} == {("opt", "genoserve"), ("opt", "genoserve", "models")}
    assert files <= images.with_models_files
    assert {p.name for p in images.with_models.path("/opt/genoserve/models").iterdir()} == {
        p.name for p in (REPO / "models").iterdir() if (p / "model.yaml").is_file()
    }


def _model_free_env(images: Images, name: str) -> dict[str, str]:
    """What every pod gets whatever its model source: a writable job state folder (the /data
    volume) and the worker metrics folder of the image."""
    image = images.model_free
    state = images.root / "volumes" / f"data-{name}"
    state.mkdir(parents=True)
    assert image.user is not None
    os.chown(state, *image.user)
    return {
        "GENOSERVE_DATA_DIR": str(state),
        "GENOSERVE_WORKER__METRICS_DIR": str(image.fs / "var/run/genoserve/metrics"),
    }


def test_the_model_free_image_without_a_model_repository_stops_naming_it(images: Images) -> None:
    image = images.model_free
    image.as_user()  # skips where the image's user cannot be taken
    log = images.root / "no-repository.log"
    cmd = [a.replace("0.0.0.0", "127.0.0.1") for a in image.cmd]
    proc = image.popen([*cmd, "--port", str(free_port()), "--metrics-port", str(free_port())], log,
                       _model_free_env(images, "no-repository"))  # fmt: skip
    try:
        code = proc.wait(60)
    finally:
        proc.kill()
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert f"model directory {str(image.path('/models'))!r} does not exist" in text, text[-3000:]


def test_the_model_free_image_serves_a_volume_and_object_storage(images: Images) -> None:
    """As the gpu overlay's pods (components/model-volume: a read-only volume, polled) and the prod
    overlay's (components/model-store: S3 downloads kept in the image's default cache folder)."""
    image = images.model_free
    image.as_user()
    logs = images.root / "logs-model-free"
    logs.mkdir()
    # The volume: root's files, readable and not writable by the image's user (the pods mount it
    # read-only).
    volume = images.root / "volumes" / "genoserve-models"
    shutil.copytree(REPO / "models", volume)
    for path in [volume, *volume.rglob("*")]:
        assert path.stat().st_uid == 0, path
        assert not path.stat().st_mode & 0o002, path
    follow = {"GENOSERVE_RUNTIME__MODEL_CONTROL": "poll", "GENOSERVE_RUNTIME__POLL_INTERVAL_S": "30"}
    cache = image.path(image.env["GENOSERVE_RUNTIME__STORE__CACHE_DIR"])
    assert image.env["GENOSERVE_RUNTIME__STORE__CACHE_DIR"] == "/var/cache/genoserve/models"
    assert image.user is not None
    assert cache.stat().st_uid == image.user[0], "the image's user cannot write its model cache"
    cmd = [a.replace("0.0.0.0", "127.0.0.1") for a in image.cmd]
    with S3Server(logs / "s3.log") as s3:
        client = s3.client()
        client.create_bucket(Bucket="genoserve-models")
        upload_folder(client, "genoserve-models", "models/platform-mlp", REPO / "models" / "platform-mlp")
        sources = {
            "volume": {"GENOSERVE_MODEL_REPOSITORY": str(volume), **follow},
            "store": {"GENOSERVE_MODEL_REPOSITORY": "s3://genoserve-models/models", **s3.env(), **follow},
        }
        ports = {name: free_port() for name in sources}
        procs = {
            name: image.popen(
                [*cmd, "--port", str(ports[name]), "--metrics-port", str(free_port()), "--family", "platform"],
                logs / f"{name}.log",
                {**_model_free_env(images, name), **env},
            )
            for name, env in sources.items()
        }
        try:
            for name, proc in procs.items():

                def up(name: str = name, proc: subprocess.Popen[bytes] = proc) -> bool:
                    assert proc.poll() is None, (logs / f"{name}.log").read_text()[-3000:]
                    with Client(f"127.0.0.1:{ports[name]}", timeout=2, max_attempts=1) as client:
                        return client.health() == "SERVING"

                wait_for(up, f"{name}: health SERVING", 120)
            x = np.random.default_rng(2).random((3, 128), dtype=np.float32)
            reference = ort.InferenceSession(str(REPO / "models/platform-mlp/1/model.onnx")).run(None, {"x": x})[0]
            for name in sources:
                with Client(f"127.0.0.1:{ports[name]}", timeout=30) as client:
                    assert {m.name for m in client.list_models()} == {"platform-mlp"}, name
                    np.testing.assert_allclose(client.infer("platform-mlp", {"x": x})["y"], reference,
                                               rtol=1e-5, atol=1e-5)  # fmt: skip
        except BaseException:
            for name in sources:
                print(f"--- {name}.log\n{(logs / f'{name}.log').read_text()[-6000:]}")
            raise
        finally:
            for proc in procs.values():
                proc.terminate()
            codes = [proc.wait(60) for proc in procs.values()]
    assert codes == [0, 0], codes
    downloaded = list(cache.rglob("model.onnx"))
    assert downloaded, f"nothing downloaded into the image's cache {cache}"
    assert {p.stat().st_uid for p in downloaded} == {image.user[0]}
    assert not [p for p in volume.rglob("*") if p.stat().st_uid != 0], "a process wrote to the volume"
    assert not list(image.path(image.workdir).rglob("*")), "the image's WORKDIR is on the read-only root filesystem"
