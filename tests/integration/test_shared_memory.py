"""Request tensors through POSIX shared memory (``Tensor.shared_memory``) on a real server started
with ``--shared-memory``: the same answers as over the channel for every family, bad references
as INVALID_ARGUMENT with the server still serving, and a server without the setting refusing them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pysam
import pytest
import tifffile
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genoserve.api.codecs.tensor import from_numpy, to_numpy
from genoserve.client import AsyncClient, Client, masks_of
from genoserve.core.errors import InvalidArgument
from genoserve.v1 import models_pb2, models_pb2_grpc, tensor_pb2
from genoserve.variants.examples import read_examples
from tests.support.embedding import pbmc_csr
from tests.support.server import REPO, ServerProcess, metric, scrape

pytestmark = pytest.mark.integration

GOLDEN = REPO / "tests" / "data" / "deepvariant" / "golden.calling_examples.tfrecord.gz"
NUCLEI = REPO / "tests" / "data" / "segmentation" / "stardist_tests_img2d_256.tif"
BAM = REPO / "tests" / "data" / "deepvariant" / "NA12878_S1.chr20.10_10p1mb.bam"
REF = REPO / "tests" / "data" / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("shm") / "server.log"
    process = ServerProcess("--shared-memory", log_path=log).start()
    yield process
    assert process.terminate() == 0, process.log()


def test_every_family_answers_the_same_through_shared_memory(shm_server: ServerProcess) -> None:
    matrix, genes = pbmc_csr()
    order = np.random.default_rng(0).permutation(len(genes))  # genes still aligned by name
    shuffled, shuffled_genes = matrix[:, order].tocsr(), [genes[i] for i in order]
    examples = list(read_examples(GOLDEN))[:12]
    image = np.asarray(tifffile.imread(NUCLEI))
    x = np.random.default_rng(1).normal(size=(5, 128)).astype(np.float32)
    with (
        Client(shm_server.address, timeout=60) as wire,
        Client(shm_server.address, timeout=60, shared_memory=True) as shm,
    ):
        assert shm.shared_memory is not None
        a = wire.embed("scvi-pbmc", genes, matrix[:300])
        b = shm.embed("scvi-pbmc", shuffled_genes, shuffled[:300])
        np.testing.assert_allclose(to_numpy(b.latent, "latent"), to_numpy(a.latent, "latent"), atol=1e-5)
        assert b.gene_overlap.fraction == 1.0
        dense = shm.embed("scvi-pbmc", genes, matrix[:50].toarray())  # a dense matrix too
        np.testing.assert_allclose(to_numpy(dense.latent, "latent"), to_numpy(a.latent, "latent")[:50], atol=1e-5)

        called_wire = wire.call_variants(examples, sample_name="NA12878")
        called_shm = shm.call_variants(examples, sample_name="NA12878")
        assert [list(r.probabilities) for r in called_shm.results] == [
            list(r.probabilities) for r in called_wire.results
        ]
        assert [(c.pos, list(c.genotype)) for c in called_shm.calls] == [
            (c.pos, list(c.genotype)) for c in called_wire.calls
        ]

        np.testing.assert_array_equal(masks_of(shm.segment("cellpose-nuclei", image)),
                                      masks_of(wire.segment("cellpose-nuclei", image)))  # fmt: skip
        np.testing.assert_array_equal(
            shm.infer("platform-mlp", {"x": x})["y"], wire.infer("platform-mlp", {"x": x})["y"]
        )
        names = shm.shared_memory.names
        assert names
        assert all(n.startswith("genoserve-") for n in names)
        assert all((SHM / n).exists() for n in names)
        # Objects are reused from request to request, not made anew.
        for _ in range(3):
            shm.embed("scvi-pbmc", genes, matrix[:300])
        assert shm.shared_memory.names == names
    assert not any((SHM / n).exists() for n in names)  # closing the client removed them


def test_a_call_variants_stream_through_shared_memory_answers_as_on_the_channel(shm_server: ServerProcess) -> None:
    examples = list(read_examples(GOLDEN))
    batches = [examples[i : i + 10] for i in range(0, len(examples), 10)]
    with (
        Client(shm_server.address, timeout=60) as wire,
        Client(shm_server.address, timeout=60, shared_memory=True) as shm,
    ):
        on_wire = list(wire.call_variants_stream(batches, sample_name="NA12878"))
        shared = list(shm.call_variants_stream(batches, sample_name="NA12878"))
        assert shm.shared_memory is not None
        names = shm.shared_memory.names
        assert names  # the pileups did go through shared memory
        shm.call_variants(batches[0])  # every object came back to the pool: this one needs no new object
        assert shm.shared_memory.names == names
    assert len(shared) == len(on_wire) >= len(batches)
    for a, b in zip(shared, on_wire, strict=True):
        assert [list(r.probabilities) for r in a.results] == [list(r.probabilities) for r in b.results]
        assert [(c.pos, c.ref, list(c.alts), list(c.genotype)) for c in a.calls] == [
            (c.pos, c.ref, list(c.alts), list(c.genotype)) for c in b.calls
        ]
    assert sum(len(r.calls) for r in shared) > 0


def _predict_variants(address: str, out: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    cli = subprocess.Popen(
        [sys.executable, "-m", "genoserve.cli.main", "predict", "variants", "--bam", str(BAM), "--reference",
         str(REF), "--regions", "chr20:10000000-10003000", "--batch", "16", "--output", str(out), *flags,
         "--address", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )  # fmt: skip
    try:
        _, stderr = cli.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        exited = cli.poll()
        if exited is not None:
            pytest.fail(f"predict variants exited ({exited}), but a process it started holds its stderr open")
        cli.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack on stderr
        _, stderr = cli.communicate(timeout=30)
        pytest.fail(f"predict variants {' '.join(flags)} still running after 120 s; its threads:\n{stderr}")
    return cli, stderr


def test_predict_variants_with_shared_memory_writes_the_same_vcf(
    shm_server: ServerProcess, server: ServerProcess, tmp_path: Path
) -> None:
    refused, stderr = _predict_variants(server.address, tmp_path / "refused.vcf", "--shared-memory")
    assert refused.returncode == 2, stderr  # the flag does send shared memory: this server does not read it
    assert "does not read shared memory" in stderr
    records = {}
    for flags in ((), ("--shared-memory",)):
        out = tmp_path / f"out{len(flags)}.vcf"
        cli, stderr = _predict_variants(shm_server.address, out, *flags)
        assert cli.returncode == 0, stderr
        assert not list(SHM.glob(f"genoserve-{cli.pid}-*"))  # the CLI's objects are gone when it exits
        with pysam.VariantFile(str(out)) as vcf:
            records[flags] = [str(r) for r in vcf]
    assert records[()]
    assert records[("--shared-memory",)] == records[()]


def _infer(address: str, tensor: tensor_pb2.Tensor) -> models_pb2.InferResponse:
    with grpc.insecure_channel(address) as channel:
        response: models_pb2.InferResponse = models_pb2_grpc.ModelsStub(channel).Infer(
            models_pb2.InferRequest(model="platform-mlp", inputs={"x": tensor}), timeout=30
        )
        return response


def _expect_invalid(address: str, tensor: tensor_pb2.Tensor, *needles: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _infer(address, tensor)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for needle in needles:
        assert needle in caught.value.details(), caught.value.details()


def test_bad_references_are_invalid_argument_and_the_server_keeps_serving(shm_server: ServerProcess) -> None:
    x = np.ones((2, 128), np.float32)
    region = shared_memory.SharedMemory(name="genoserve-test-bad-refs", create=True, size=x.nbytes)
    try:
        np.frombuffer(region.buf, dtype=np.float32)[:] = x.ravel()
        header = from_numpy(x)
        header.ClearField("data")

        def ref(name: str, offset: int = 0) -> tensor_pb2.Tensor:
            tensor = tensor_pb2.Tensor()
            tensor.CopyFrom(header)
            tensor.shared_memory.name, tensor.shared_memory.offset = name, offset
            return tensor

        before = metric(scrape(shm_server), "genoserve_shared_memory_read_bytes_total")
        from_shm = _infer(shm_server.address, ref(region.name)).outputs["y"]
        assert metric(scrape(shm_server), "genoserve_shared_memory_read_bytes_total") == before + x.nbytes
        on_wire = _infer(shm_server.address, from_numpy(x)).outputs["y"]
        np.testing.assert_array_equal(to_numpy(from_shm, "y"), to_numpy(on_wire, "y"))
        _expect_invalid(
            shm_server.address, ref("other-prefix"), "inputs[x].shared_memory.name", "must start with 'genoserve'"
        )
        _expect_invalid(shm_server.address, ref("genoserve/../etc"), "contain no '/'")
        _expect_invalid(shm_server.address, ref("genoserve-no-such-object"), "no shared-memory object", "same machine")
        _expect_invalid(shm_server.address, ref(region.name, 8), "inputs[x].shared_memory.offset", "past the end")
        both = ref(region.name)
        both.data = x.tobytes()
        _expect_invalid(shm_server.address, both, "inputs[x].data", "must be empty when shared_memory is set")
        with Client(shm_server.address) as client:  # still serving, and over the channel too
            assert client.infer("platform-mlp", {"x": x})["y"].shape == (2, 16)
    finally:
        region.close()
        region.unlink()


def test_a_server_without_the_setting_refuses_shared_memory(server: ServerProcess) -> None:
    x = np.ones((1, 128), np.float32)
    with Client(server.address, shared_memory=True) as client:
        with pytest.raises(InvalidArgument) as caught:
            client.infer("platform-mlp", {"x": x})
        assert "inputs[x].shared_memory" in str(caught.value)
        assert "server.shared_memory" in str(caught.value)
        assert client.shared_memory is not None
        names = client.shared_memory.names
    assert names
    assert not any((SHM / n).exists() for n in names)


async def test_the_async_client_uses_shared_memory_too(shm_server: ServerProcess) -> None:
    matrix, genes = pbmc_csr()
    image = np.asarray(tifffile.imread(NUCLEI))
    async with (
        AsyncClient(shm_server.address, timeout=60) as wire,
        AsyncClient(shm_server.address, timeout=60, shared_memory=True) as shm,
    ):
        a, b = await asyncio.gather(
            wire.embed("scvi-pbmc", genes, matrix[:100]), shm.embed("scvi-pbmc", genes, matrix[:100])
        )
        np.testing.assert_allclose(to_numpy(b.latent, "latent"), to_numpy(a.latent, "latent"), atol=1e-5)
        masks = masks_of(await shm.segment("cellpose-nuclei", image))
        np.testing.assert_array_equal(masks, masks_of(await wire.segment("cellpose-nuclei", image)))
        assert shm.shared_memory is not None
        names = shm.shared_memory.names
        assert names
    assert not any((SHM / n).exists() for n in names)


def _ref(name: str, rows: int = 2) -> tensor_pb2.Tensor:
    """A platform-mlp ``x`` of ``rows`` rows said to be in shared-memory object ``name``."""
    tensor = from_numpy(np.zeros((rows, 128), np.float32))
    tensor.ClearField("data")
    tensor.shared_memory.name = name
    return tensor


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A free name under /dev/shm for one test, removed afterwards whatever it became."""
    name = f"genoserve-test-{os.getpid()}-{os.urandom(4).hex()}"
    yield name
    path = SHM / name
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def test_a_fifo_is_refused_and_the_server_keeps_answering_everyone(shm_server: ServerProcess, shm_name: str) -> None:
    """A FIFO held the event loop in open() until someone wrote to it: health and every client waited."""
    os.mkfifo(SHM / shm_name)
    x = np.ones((2, 128), np.float32)
    with (
        grpc.insecure_channel(shm_server.address) as channel,
        futures.ThreadPoolExecutor(1) as pool,
        Client(shm_server.address, timeout=10) as client,
    ):
        client.infer("platform-mlp", {"x": x})  # connected and warm: the timings below are the server's
        fifo_call = pool.submit(_infer, shm_server.address, _ref(shm_name))
        try:
            time.sleep(0.5)  # the FIFO request has reached the server
            started = time.monotonic()
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert client.infer("platform-mlp", {"x": x}, timeout=5)["y"].shape == (2, 16)
            assert time.monotonic() - started < 3.0
            with pytest.raises(grpc.RpcError) as caught:
                fifo_call.result(timeout=5)
        finally:
            if not fifo_call.done():  # a stuck server: let its open() return so the module can go on
                with contextlib.suppress(OSError):
                    os.close(os.open(SHM / shm_name, os.O_WRONLY | os.O_NONBLOCK))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[x].shared_memory.name" in caught.value.details()
    assert "regular shared-memory object" in caught.value.details()


def _symlink_to_a_private_file(path: Path, tmp_path: Path) -> int:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 7919)
    secret.chmod(0o600)
    path.symlink_to(secret)
    return 7919


def _symlink_to_etc_shadow(path: Path, tmp_path: Path) -> int:
    target = Path("/etc/shadow") if Path("/etc/shadow").exists() else Path("/etc/passwd")
    path.symlink_to(target)
    return target.stat().st_size


def _directory(path: Path, tmp_path: Path) -> int:
    path.mkdir()
    return -1


def _object_of_another_user(path: Path, tmp_path: Path) -> int:
    path.write_bytes(np.ones((2, 128), np.float32).tobytes() + b"\0" * 5007)
    os.chown(path, 12345, 12345)
    return path.stat().st_size


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
@pytest.mark.parametrize(
    "make", [_symlink_to_a_private_file, _symlink_to_etc_shadow, _directory, _object_of_another_user]
)
def test_what_is_not_the_servers_own_regular_object_is_refused_without_its_size(
    shm_server: ServerProcess, shm_name: str, tmp_path: Path, make: Callable[[Path, Path], int]
) -> None:
    size = make(SHM / shm_name, tmp_path)
    for rows in (2, 10_000):  # fits inside the target (was read), and past its end (said its size)
        with pytest.raises(grpc.RpcError) as caught:
            _infer(shm_server.address, _ref(shm_name, rows))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        details = caught.value.details()
        assert details.startswith("inputs[x].shared_memory.name: must name a regular shared-memory object owned by")
        assert str(size) not in details.replace(shm_name, "")
    with Client(shm_server.address) as client:
        assert client.infer("platform-mlp", {"x": np.ones((1, 128), np.float32)})["y"].shape == (1, 16)
