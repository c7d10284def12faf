"""Fuzz every RPC of a real server: no input may give INTERNAL or UNKNOWN, and the server stays up.

A fixed seed and a bounded count per method (so the run is the same every time and takes well
under a minute). Each method starts from a valid request on the repository's models; each try
applies one mutation: a field set to an edge value (huge, negative, NaN, empty, NUL, a path that
escapes, an unknown enum number), a repeated field emptied or grown, a tensor shape or dtype
changed without its bytes, or the serialized bytes flipped, cut, spliced or grown. The server's
answer must be a deliberate status (OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...);
DEADLINE_EXCEEDED is allowed only for Jobs/Watch (a job with no worker never ends).
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tifffile
import yaml
from google.protobuf import descriptor as pb
from google.protobuf.message import Message

from genoserve.api.codecs.variants import pileup_example
from genoserve.client import Client
from genoserve.client.client import _infer_request, embed_request, segment_request, variants_request
from genoserve.inference import open_inference_pb2 as oip
from genoserve.v1 import (
    binding_pb2,
    embedding_pb2,
    jobs_pb2,
    models_pb2,
    segmentation_pb2,
    variants_pb2,
)
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.tfrecord import read_records
from tests.support.embedding import pbmc_csr
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

SEED = 20261205
TRIES_PER_METHOD = 120
DATA = REPO / "tests" / "data"
BAM = DATA / "deepvariant" / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DATA / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
GOLDEN = DATA / "deepvariant" / "golden.calling_examples.tfrecord.gz"
TIFF = DATA / "segmentation" / "stardist_tests_img2d_256.tif"

BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EDGE_INTS = [0, 1, -1, 7, 2**31 - 1, -(2**31), 2**32 + 3, 2**62, 2**63 - 1, -(2**63)]
EDGE_FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 3.5e38, 1e-45, 2.0]
EDGE_STRINGS = ["", "\x00", "é€", "../../../../etc/passwd", "/etc/*", "A" * 20_000, "N", "-1", "maybe", "chr20"]


@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    kind: str  # unary | stream (bidirectional) | server_stream
    seeds: list[Message]


# -- the server and valid seeds -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("fuzz")
    for suffix in ("", ".fai", ".gzi"):
        shutil.copy(f"{REF}{suffix}", root / f"{REF.name}{suffix}")
    np.save(root / "rows.npy", np.zeros((4, 128), np.float32))
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "binding": {"references": {"hg19chr20": str(root / REF.name)}},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)]},
    }))  # fmt: skip
    proc = ServerProcess("--config", str(config), log_path=root / "server.log").start()
    proc.root = root  # type: ignore[attr-defined]
    yield proc
    proc.terminate()


def _seeds(root: Path, job_id: str) -> list[Method]:
    seq = "ACGT" * 25 + "A"
    counts, genes = pbmc_csr()
    image = tifffile.imread(TIFF)[:64, :64]
    _, examples = make_examples(BAM, REF, Region.parse("chr20:10000000-10000400"))
    golden = next(iter(read_records(GOLDEN)))
    variant = binding_pb2.Variant(id="v", chrom="chr20", pos=10_000_117, ref="C", alt="T")
    b, m, s, e, v, j = "genoserve.v1.SequenceBinding", "genoserve.v1.Models", "genoserve.v1.Segmentation", \
        "genoserve.v1.CellEmbedding", "genoserve.v1.VariantCalling", "genoserve.v1.Jobs"  # fmt: skip
    predict = binding_pb2.PredictRequest(model="deepbind-ctcf", sequences=[binding_pb2.Sequence(id="a", bases=seq)])
    embed = embedding_pb2.EmbedRequest.FromString(embed_request("scvi-pbmc", genes, counts[:8]))
    calls = variants_pb2.CallVariantsRequest.FromString(variants_request(examples[:3]))
    messages = variants_pb2.CallVariantsRequest(
        examples=[pileup_example(examples[0], "e0"), variants_pb2.PileupExample(id="tf", tf_example=golden)]
    )
    submit = jobs_pb2.SubmitJobRequest(
        kind="platform.score_rows", inputs=[str(root / "rows.npy")], output_dir=str(root / "out"),
        params={"shard_size": "2", "overwrite": "true"},
    )  # fmt: skip
    oip_request = oip.ModelInferRequest(
        model_name="platform-mlp",
        id="f",
        inputs=[oip.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2, 128])],
        raw_input_contents=[np.ones((2, 128), np.float32).tobytes()],
    )
    return [
        Method(f"/{b}/Predict", binding_pb2.PredictRequest, "unary", [predict]),
        Method(f"/{b}/PredictStream", binding_pb2.PredictRequest, "stream", [predict]),
        Method(f"/{b}/ScoreVariants", binding_pb2.ScoreVariantsRequest, "unary",
               [binding_pb2.ScoreVariantsRequest(model="deepbind-ctcf", reference="hg19chr20", variants=[variant])]),
        Method(f"/{b}/Mutagenesis", binding_pb2.MutagenesisRequest, "unary",
               [binding_pb2.MutagenesisRequest(model="deepbind-ctcf", sequence=binding_pb2.Sequence(id="m", bases=seq))]
               ),
        Method(f"/{m}/ListModels", models_pb2.ListModelsRequest, "unary", [models_pb2.ListModelsRequest()]),
        Method(f"/{m}/InferStream", models_pb2.InferRequest, "stream",
               [_infer_request("platform-mlp", {"x": np.ones((2, 128), np.float32)}, "")]),
        Method("/inference.GRPCInferenceService/ModelInfer", oip.ModelInferRequest, "unary", [oip_request]),
        Method("/inference.GRPCInferenceService/ModelStreamInfer", oip.ModelInferRequest, "stream", [oip_request]),
        Method("/inference.GRPCInferenceService/ModelMetadata", oip.ModelMetadataRequest, "unary",
               [oip.ModelMetadataRequest(name="platform-mlp")]),
        Method(f"/{m}/RepositoryIndex", models_pb2.RepositoryIndexRequest, "unary",
               [models_pb2.RepositoryIndexRequest()]),
        Method(f"/{m}/GetModel", models_pb2.GetModelRequest, "unary",
               [models_pb2.GetModelRequest(name="platform-mlp")]),
        Method(f"/{m}/Infer", models_pb2.InferRequest, "unary", [
            _infer_request("platform-mlp", {"x": np.ones((2, 128), np.float32)}, ""),
            _infer_request("cellpose-nuclei", {"image": np.ones((1, 1, 64, 64), np.float32)}, ""),
        ]),
        Method(f"/{s}/Segment", segmentation_pb2.SegmentRequest, "unary", [
            segment_request("cellpose-nuclei", image), segment_request("cellpose-nuclei", TIFF.read_bytes()),
        ]),
        Method(f"/{e}/Embed", embedding_pb2.EmbedRequest, "unary", [embed]),
        Method(f"/{e}/EmbedStream", embedding_pb2.EmbedRequest, "stream", [embed]),
        Method(f"/{v}/CallVariants", variants_pb2.CallVariantsRequest, "unary", [calls, messages]),
        Method(f"/{v}/CallVariantsStream", variants_pb2.CallVariantsRequest, "stream", [calls]),
        Method(f"/{j}/Submit", jobs_pb2.SubmitJobRequest, "unary", [submit]),
        Method(f"/{j}/Get", jobs_pb2.GetJobRequest, "unary", [jobs_pb2.GetJobRequest(id=job_id)]),
        Method(f"/{j}/List", jobs_pb2.ListJobsRequest, "unary", [jobs_pb2.ListJobsRequest(limit=5)]),
        Method(f"/{j}/Cancel", jobs_pb2.CancelJobRequest, "unary", [jobs_pb2.CancelJobRequest(id=job_id)]),
        Method(f"/{j}/Watch", jobs_pb2.WatchJobRequest, "server_stream", [jobs_pb2.WatchJobRequest(id=job_id)]),
    ]  # fmt: skip


# -- mutations ------------------------------------------------------------------------------------


def _fields(message: Message, rng: random.Random, depth: int = 0) -> tuple[Message, pb.FieldDescriptor]:
    """A random field of ``message`` or of a sub-message that is set (descending at random)."""
    fields = list(message.DESCRIPTOR.fields)
    field = rng.choice(fields)
    if depth < 4 and rng.random() < 0.6:
        subs = [f for f in fields if f.message_type is not None and _present(message, f)]
        if subs:
            sub = rng.choice(subs)
            value = getattr(message, sub.name)
            if sub.is_repeated:
                items = list(value.values()) if sub.message_type.GetOptions().map_entry else list(value)
                children = [c for c in items if isinstance(c, Message)]
                if children:
                    return _fields(rng.choice(children), rng, depth + 1)
            else:
                return _fields(value, rng, depth + 1)
    return message, field


def _present(message: Message, field: pb.FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    return message.HasField(field.name)


def _edge(field: pb.FieldDescriptor, rng: random.Random) -> object:
    t = pb.FieldDescriptor
    if field.type in (t.TYPE_INT32, t.TYPE_SINT32, t.TYPE_SFIXED32):
        return rng.choice([v for v in EDGE_INTS if -(2**31) <= v < 2**31])
    if field.type in (t.TYPE_UINT32, t.TYPE_FIXED32):
        return rng.choice([v for v in EDGE_INTS if 0 <= v < 2**32])
    if field.type in (t.TYPE_INT64, t.TYPE_SINT64, t.TYPE_SFIXED64):
        return rng.choice(EDGE_INTS)
    if field.type in (t.TYPE_UINT64, t.TYPE_FIXED64):
        return rng.choice([v for v in EDGE_INTS if v >= 0])
    if field.type in (t.TYPE_FLOAT, t.TYPE_DOUBLE):
        value = rng.choice(EDGE_FLOATS)
        return min(value, 3.4e38) if field.type == t.TYPE_FLOAT and math.isfinite(value) else value
    if field.type == t.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type == t.TYPE_ENUM:
        return rng.choice([*(v.number for v in field.enum_type.values), 99, -5])
    if field.type == t.TYPE_STRING:
        return rng.choice(EDGE_STRINGS)
    if field.type == t.TYPE_BYTES:
        return rng.choice([b"", b"\x00", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))), b"\xff" * 9])
    raise AssertionError(field.type)


def _mutate_field(request: Message, rng: random.Random) -> str:
    if not request.DESCRIPTOR.fields:  # e.g. RepositoryIndexRequest: the byte mutations cover it
        return f"{request.DESCRIPTOR.name} has no fields"
    message, field = _fields(request, rng)
    where = f"{message.DESCRIPTOR.name}.{field.name}"
    value = getattr(message, field.name)
    if field.is_repeated:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = rng.choice(["", "x", "image", *list(value.keys())])
            if field.message_type.fields_by_name["value"].message_type is None:
                value[key] = rng.choice(EDGE_STRINGS)
                return f"{where}[{key!r}] = edge"
            value[key].CopyFrom(type(value[key])())
            return f"{where}[{key!r}] = empty message"
        action = rng.choice(["clear", "grow", "edge"])
        if action == "clear" or (field.message_type is not None and not len(value)):
            del value[:]
            return f"{where} cleared"
        if field.message_type is not None:
            for _ in range(rng.choice([1, 50])):
                value.add().CopyFrom(rng.choice(list(value)))
            return f"{where} grown"
        if action == "grow":
            value.extend([_edge(field, rng) for _ in range(rng.choice([1, 3, 65]))])
            return f"{where} grown"
        del value[:]
        value.append(_edge(field, rng))
        return f"{where} = [edge]"
    if field.message_type is not None:
        message.ClearField(field.name)
        return f"{where} cleared"
    edge = _edge(field, rng)
    setattr(message, field.name, edge)
    return f"{where} = {str(edge)[:40]!r}"


#: Tensor shapes that broke the codec before (zero elements with huge dims, 65 dims, overflow).
EDGE_SHAPES = [[0, 2**62, 2**62], [1] * 65, [2**40, 2**40], [2**62, 4], [-1, 128], [], [0], [3, -2], [1, 1, 1, 1]]


def _tensors(message: Message) -> list[Message]:
    """Every genoserve.v1.Tensor inside ``message``."""
    found = [message] if message.DESCRIPTOR.full_name == "genoserve.v1.Tensor" else []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            items = value.values() if field.message_type.GetOptions().map_entry else value
            for item in items:
                if isinstance(item, Message):
                    found += _tensors(item)
        else:
            found += _tensors(value)
    return found


def _mutate_tensor(request: Message, rng: random.Random) -> str | None:
    tensors = _tensors(request)
    if not tensors:
        return None
    tensor = rng.choice(tensors)
    if rng.random() < 0.7:
        shape = rng.choice(EDGE_SHAPES)
        del tensor.shape[:]  # type: ignore[attr-defined]
        tensor.shape.extend(shape)  # type: ignore[attr-defined]
        if 0 in shape or rng.random() < 0.3:
            tensor.data = b""  # type: ignore[attr-defined]  # as many bytes as zero elements take
        return f"Tensor.shape = {shape if len(shape) < 8 else f'{len(shape)} dims'}"
    tensor.dtype = rng.choice([0, 1, 2, 3, 5, 7, 9, 11, 12, 13, 40])  # type: ignore[attr-defined]
    return f"Tensor.dtype = {tensor.dtype}"  # type: ignore[attr-defined]


def _mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    buf = bytearray(data)
    action = rng.choice(["flip", "cut", "insert", "splice"])
    if not buf:
        return bytes(rng.getrandbits(8) for _ in range(8)), "random"
    i = rng.randrange(len(buf))
    if action == "flip":
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif action == "cut":
        del buf[i:]
    elif action == "insert":
        buf[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
    else:
        j = rng.randrange(len(buf))
        buf[i:i] = buf[j : j + rng.randint(1, 64)]
    return bytes(buf), action


# -- the run --------------------------------------------------------------------------------------


def _call(channel: grpc.Channel, method: Method, payload: bytes) -> grpc.StatusCode:
    timeout = 3.0 if method.kind == "server_stream" else 20.0
    try:
        if method.kind == "unary":
            channel.unary_unary(method.path)(payload, timeout=timeout)
        elif method.kind == "stream":
            list(channel.stream_stream(method.path)(iter([payload, payload]), timeout=timeout))
        else:
            list(channel.unary_stream(method.path)(payload, timeout=timeout))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_no_mutated_request_gives_internal_or_unknown(server: ServerProcess) -> None:
    root: Path = server.root  # type: ignore[attr-defined]
    with Client(server.address, timeout=30) as client:
        job = client.submit_job("platform.score_rows", [str(root / "rows.npy")], str(root / "first"))
    rng = random.Random(SEED)
    failures: list[str] = []
    tried = 0
    with grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        for method in _seeds(root, job.id):
            for seed in method.seeds:  # the seeds themselves are served
                code = _call(channel, method, seed.SerializeToString())
                assert code == grpc.StatusCode.OK, f"{method.path}: the valid seed gave {code}\n{server.log()}"
            for attempt in range(TRIES_PER_METHOD):
                seed = rng.choice(method.seeds)
                if attempt % 3 == 2:
                    payload, what = _mutate_bytes(seed.SerializeToString(), rng)
                else:
                    mutated = type(seed)()
                    mutated.CopyFrom(seed)
                    tensor = _mutate_tensor(mutated, rng) if attempt % 3 == 1 else None
                    what = tensor or "; ".join(_mutate_field(mutated, rng) for _ in range(rng.choice([1, 1, 2])))
                    payload = mutated.SerializeToString()
                code = _call(channel, method, payload)
                tried += 1
                allowed_deadline = method.kind == "server_stream"
                if code in BAD or (code == grpc.StatusCode.DEADLINE_EXCEEDED and not allowed_deadline):
                    failures.append(f"{method.path} [{what}] -> {code.name}")
    with Client(server.address, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.infer("platform-mlp", {"x": np.ones((1, 128), np.float32)})["y"].shape == (1, 16)
    assert tried == TRIES_PER_METHOD * 22
    assert not failures, "\n".join(failures[:40]) + f"\n({len(failures)} of {tried})\n" + server.log()[-3000:]
