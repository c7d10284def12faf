"""Request limits on a real server: every request's cost is bounded by a setting checked before the
work (refusals are INVALID_ARGUMENT naming the setting and the value), bad tensor shapes are
INVALID_ARGUMENT instead of INTERNAL, and error texts that quote a huge input still fit in gRPC's
metadata (the client sees the INVALID_ARGUMENT, truncated, not RESOURCE_EXHAUSTED)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from genoserve.api.codecs import tensor as codec
from genoserve.client.client import embed_request
from genoserve.v1 import (
    binding_pb2,
    binding_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    tensor_pb2,
)
from tests.support.binding_models import random_dna, write_match_model, write_reference
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

MAX_PIXELS = 1_000_000  # segmentation.max_pixels here; every other limit keeps its default
LONG = 2000  # input length of the long binding model (mutagenesis: 6,001 sequences of 2,000 bases)
SEGMENT = "cellpose-nuclei"


@dataclass
class Rig:
    server: ServerProcess
    contig: str

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.server.address)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("limits")
    models = root / "models"
    for name in ("deepbind-ctcf", SEGMENT, "scvi-pbmc", "scvi-sim-batch"):
        shutil.copytree(REPO / "models" / name, models / name)
    write_match_model(models, "match-long", "GATTACAGGC", "TESTTF", length=LONG)
    contig = random_dna(3000, seed=5)
    reference = write_reference(root / "ref.fa", {"chrT": contig})
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models)},
        "binding": {"references": {"test": str(reference)}},
        "segmentation": {"max_pixels": MAX_PIXELS},
        "jobs": {"data_dir": str(root / "data")},
    }))  # fmt: skip
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start(timeout=120)
    yield Rig(server, contig)
    assert server.terminate() == 0, server.log()


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def assert_invalid(error: grpc.RpcError, *fragments: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def peak_growth_mib(pid: int, action: Callable[[], None]) -> float:
    """How far the process's peak resident memory rose above its resident memory during ``action``
    (writing 5 to clear_refs resets the peak to the current resident memory)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_kb(pid, "VmRSS")
    action()
    return (_status_kb(pid, "VmHWM") - before) / 1024


def png_bomb(side: int) -> bytes:
    """A ~160 KB grey PNG declaring ``side`` x ``side`` zero pixels (side^2 bytes once decoded)."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_bomb(side: int, tile: int = 1024) -> bytes:
    """A ~400 KB zlib-tiled uint8 TIFF declaring ``side`` x ``side`` zero pixels."""
    zero = np.zeros((tile, tile), np.uint8)
    count = (-(-side // tile)) ** 2
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, data=(zero for _ in range(count)), shape=(side, side), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib")  # fmt: skip
    return buffer.getvalue()


def segment(rig: Rig, image: segmentation_pb2.Image, **fields: Any) -> segmentation_pb2.SegmentResponse:
    request = segmentation_pb2.SegmentRequest(model=SEGMENT, image=image, **fields)
    with rig.channel() as channel:
        response: segmentation_pb2.SegmentResponse = segmentation_pb2_grpc.SegmentationStub(channel).Segment(
            request, timeout=120
        )
    return response


# -- segmentation --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "make", "size"), [("tiff", tiff_bomb, 20_000), ("png", png_bomb, 13_000)])
def test_huge_declared_image_is_refused_before_it_is_decoded(
    rig: Rig, kind: str, make: Callable[[int], bytes], size: int
) -> None:
    data = make(size)
    assert len(data) < 600_000
    errors: list[grpc.RpcError] = []
    assert rig.server.proc is not None
    growth = peak_growth_mib(
        rig.server.proc.pid,
        lambda: errors.append(refused(lambda: segment(rig, segmentation_pb2.Image(encoded=data)))),
    )
    # Decoding would take size^2 bytes (400 MB for the TIFF, 169 MB for the PNG).
    assert growth < 64, f"{kind}: peak memory rose {growth:.0f} MiB while refusing"
    assert_invalid(errors[0], "image.encoded", f"{size}x{size}", "segmentation.max_pixels", str(MAX_PIXELS))


def test_pixels_after_rescaling_for_the_diameter_are_limited(rig: Rig) -> None:
    image = segmentation_pb2.Image(array=codec.from_numpy(np.zeros((256, 256), np.uint8)))
    # The model's cell diameter is 12: diameter 2 rescales 256x256 to 1536x1536 (49 tiles).
    error = refused(lambda: segment(rig, image, diameter=2.0))
    assert_invalid(error, "1536x1536", "segmentation.max_network_pixels", str(3 * MAX_PIXELS))
    assert segment(rig, image, diameter=24.0).masks.shape == [256, 256]  # downscaled: well within


def test_a_thin_image_runs_as_thin_tiles_within_the_limit(rig: Rig) -> None:
    """A 1x20000 image once ran as 87 tiles of 256x256, 255/256 of them padding, and was refused;
    a side shorter than a tile now runs at its own size (rounded up to the network's multiple of
    8), as cellpose does: 94 tiles of 8x256, well within segmentation.max_network_pixels."""
    image = segmentation_pb2.Image(array=codec.from_numpy(np.zeros((1, 20_000), np.uint8)))
    assert segment(rig, image).masks.shape == [1, 20_000]
    wide = segmentation_pb2.Image(array=codec.from_numpy(np.zeros((1, 60_000), np.uint8)))
    error = refused(lambda: segment(rig, wide, diameter=2.0))  # x6: 6x360000, 1688 tiles of 8x256
    assert_invalid(error, "image.array.shape", "1688 tiles of 8x256", "segmentation.max_network_pixels")


# -- embedding -----------------------------------------------------------------------------------


def _embed(rig: Rig, request: bytes) -> bytes:
    with rig.channel() as channel:
        call = channel.unary_unary("/genoserve.v1.CellEmbedding/Embed")
        response: bytes = call(request, timeout=60)
    return response


def _empty_cells(n: int, genes: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(n + 1, np.int32)), shape=(n, genes))


def _genes(model: str) -> list[str]:
    spec = yaml.safe_load((REPO / "models" / model / "model.yaml").read_text())
    return list(spec["inputs"][0]["labels"])


def test_cells_per_embed_request_are_limited(rig: Rig) -> None:
    genes = _genes("scvi-pbmc")
    request = embed_request("scvi-pbmc", genes, _empty_cells(60_000, len(genes)))
    error = refused(lambda: _embed(rig, request))
    assert_invalid(error, "counts", "60000 cells", "embedding.max_cells", "16384")
    assert _embed(rig, embed_request("scvi-pbmc", genes, _empty_cells(100, len(genes))))


def test_dense_values_per_embed_request_are_limited(rig: Rig) -> None:
    """10,000 cells of a 2,000-gene model lay out 20 M values (80 MB), over the default 16 M."""
    genes = _genes("scvi-sim-batch")
    request = embed_request("scvi-sim-batch", genes, _empty_cells(10_000, len(genes)), batch_labels=["batch0"])
    error = refused(lambda: _embed(rig, request))
    assert_invalid(error, "counts", "20000000", "embedding.max_dense_values", "16777216")


def test_embed_stream_limits_each_message(rig: Rig) -> None:
    genes = _genes("scvi-pbmc")
    requests = [
        embed_request("scvi-pbmc", genes, _empty_cells(10, len(genes))),
        embed_request("", [], _empty_cells(20_000, len(genes))),
    ]
    with rig.channel() as channel:
        call = channel.stream_stream("/genoserve.v1.CellEmbedding/EmbedStream")
        responses = call(iter(requests), timeout=60)
        assert next(responses)
        error = refused(lambda: next(responses))
    assert_invalid(error, "message 1", "20000 cells", "embedding.max_cells")


# -- binding -------------------------------------------------------------------------------------


def _binding(rig: Rig) -> tuple[grpc.Channel, binding_pb2_grpc.SequenceBindingStub]:
    channel = rig.channel()
    return channel, binding_pb2_grpc.SequenceBindingStub(channel)


def test_sequences_per_predict_are_limited(rig: Rig) -> None:
    many = [binding_pb2.Sequence(id=f"s{i}", bases="A") for i in range(30_000)]
    channel, stub = _binding(rig)
    with channel:
        error = refused(lambda: stub.Predict(binding_pb2.PredictRequest(model="deepbind-ctcf", sequences=many),
                                             timeout=120))  # fmt: skip
        assert_invalid(error, "sequences", "30000", "binding.max_sequences", "4096")
        requests = [
            binding_pb2.PredictRequest(model="deepbind-ctcf", sequences=many[:10]),
            binding_pb2.PredictRequest(model="deepbind-ctcf", sequences=many[:5000]),
        ]
        responses = stub.PredictStream(iter(requests), timeout=120)
        assert len(next(responses).results) == 10
        error = refused(lambda: next(responses))
    assert_invalid(error, "batch 1", "5000", "binding.max_sequences")


def test_bases_per_score_variants_and_mutagenesis_are_limited(rig: Rig) -> None:
    variants = [
        binding_pb2.Variant(id=f"v{pos}", chrom="chrT", pos=pos, ref=rig.contig[pos - 1],
                            alt="C" if rig.contig[pos - 1] != "C" else "G")
        for pos in range(1, 1101)
    ]  # fmt: skip
    channel, stub = _binding(rig)
    with channel:
        request = binding_pb2.ScoreVariantsRequest(model="match-long", reference="test", variants=variants)
        error = refused(lambda: stub.ScoreVariants(request, timeout=120))
        # 1,100 variants x (ref + alt) x 2,000 bases = 4.4 M bases > 4,194,304.
        assert_invalid(error, "variants", "4400000", "binding.max_bases", "4194304")
        ok = stub.ScoreVariants(binding_pb2.ScoreVariantsRequest(model="match-long", reference="test",
                                                                 variants=variants[:10]), timeout=60)  # fmt: skip
        assert len(ok.results) == 10
        mutagenesis = binding_pb2.MutagenesisRequest(
            model="match-long", sequence=binding_pb2.Sequence(id="m", bases="A")
        )
        error = refused(lambda: stub.Mutagenesis(mutagenesis, timeout=120))
        # 1 + 3 x 2,000 sequences of 2,000 bases.
        assert_invalid(error, "sequence", "12002000", "binding.max_bases")


# -- generic tensors and segmentation model inputs -----------------------------------------------


def _infer(rig: Rig, shape: list[int], data: bytes = b"", name: str = "image") -> models_pb2.InferResponse:
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=data)
    with rig.channel() as channel:
        response: models_pb2.InferResponse = models_pb2_grpc.ModelsStub(channel).Infer(
            models_pb2.InferRequest(model=SEGMENT, inputs={name: tensor}), timeout=60
        )
    return response


@pytest.mark.parametrize(
    ("shape", "data", "rule"),
    [
        ([0, 2**62, 2**62], b"", "too large"),
        ([2**62, 4, 0], b"", "too large"),
        ([0, 2**31, 2**31], b"", "too large"),
        ([1] * 65, b"\0" * 4, "at most 32 dimensions"),
        ([1] * 100_000, b"", "at most 32 dimensions"),
        ([-1, 1, 8, 8], b"", ">= 0"),
    ],
)
def test_impossible_tensor_shapes_are_invalid_argument(rig: Rig, shape: list[int], data: bytes, rule: str) -> None:
    error = refused(lambda: _infer(rig, shape, data))
    assert_invalid(error, "inputs[image].shape", rule)
    _short(error)


@pytest.mark.parametrize("size", [(1, 1), (17, 33), (8, 12)])
def test_segmentation_model_input_sides_must_be_multiples_of_8(rig: Rig, size: tuple[int, int]) -> None:
    shape = [1, 1, *size]
    error = refused(lambda: _infer(rig, shape, np.zeros(shape, np.float32).tobytes()))
    assert_invalid(error, "inputs[image]", "multiples of 8", f"{size[0]}x{size[1]}")


def test_segmentation_model_input_sides_are_at_most_one_tile(rig: Rig) -> None:
    shape = [1, 1, 8, 264]
    error = refused(lambda: _infer(rig, shape, np.zeros(shape, np.float32).tobytes()))
    assert_invalid(error, "inputs[image]", "256", "Segment")
    shape = [2, 1, 16, 256]
    outputs = _infer(rig, shape, np.zeros(shape, np.float32).tobytes()).outputs
    assert list(outputs["flows_cellprob"].shape) == [2, 3, 16, 256]


# -- error texts that quote huge inputs ----------------------------------------------------------

MEGA = 1_000_000


def _short(error: grpc.RpcError) -> str:
    details = error.details()
    assert len(details.encode()) <= 1024, len(details)
    return str(details)


def test_a_megabyte_bad_sequence_id_comes_back_invalid_argument_truncated(rig: Rig) -> None:
    channel, stub = _binding(rig)
    request = binding_pb2.PredictRequest(
        model="deepbind-ctcf", sequences=[binding_pb2.Sequence(id="q" * MEGA, bases="ACGTXACGT")]
    )
    with channel:
        error = refused(lambda: stub.Predict(request, timeout=60))
    assert_invalid(error, "sequences[0].bases", "invalid character 'X' at position 4", f"{MEGA} characters")
    _short(error)
    status = rpc_status.from_call(error)  # the details trailer is consistent with the message
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "sequences[0].bases"


def test_megabyte_names_come_back_with_their_own_status_truncated(rig: Rig) -> None:
    with rig.channel() as channel:
        stub = models_pb2_grpc.ModelsStub(channel)
        error = refused(lambda: stub.GetModel(models_pb2.GetModelRequest(name="n" * MEGA), timeout=30))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "nnnn" in _short(error)
        error = refused(lambda: stub.Infer(models_pb2.InferRequest(model="m" * MEGA), timeout=30))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        _short(error)
    shape = [1, 1, 8, 8]
    error = refused(lambda: _infer(rig, shape, np.zeros(shape, np.float32).tobytes(), name="i" * MEGA))
    assert_invalid(error, "iiii")
    _short(error)


def test_thousands_of_bad_sequences_come_back_with_the_details_that_fit(rig: Rig) -> None:
    request = binding_pb2.PredictRequest(
        model="deepbind-ctcf", sequences=[binding_pb2.Sequence(id=f"s{i}", bases="ACGTX") for i in range(4000)]
    )
    channel, stub = _binding(rig)
    with channel:
        error = refused(lambda: stub.Predict(request, timeout=60))
    assert_invalid(error, "sequences[0].bases: sequence 's0': invalid character 'X' at position 4")
    _short(error)
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.ByteSize() <= 1536
    shown = bad_request.field_violations
    assert [v.field for v in shown[:2]] == ["sequences[0].bases", "sequences[1].bases"]
    assert shown[-1].description == f"{4000 - (len(shown) - 1)} more violation(s) left out"


def test_a_megabyte_duplicate_gene_name_comes_back_invalid_argument_truncated(rig: Rig) -> None:
    big = "G" * MEGA
    request = embed_request("scvi-pbmc", [big, big], _empty_cells(1, 2))
    error = refused(lambda: _embed(rig, request))
    assert_invalid(error, "counts.gene_names", "must be unique", f"{MEGA} characters", "columns 0 and 1")
    _short(error)
