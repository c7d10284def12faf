"""VariantCalling end to end on a real server and worker, with an exactly known model (allele
fraction at the centre column) and DeepVariant's real data (NA12878 BAM, golden examples)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pysam
import pytest
import yaml

from genoserve.api.codecs.variants import call_request, pileup_example
from genoserve.client import AsyncClient, Client
from genoserve.core import errors
from genoserve.v1 import jobs_pb2, variants_pb2, variants_pb2_grpc
from genoserve.variants.examples import PileupExample, read_examples
from genoserve.variants.make_examples import Region, make_examples
from genoserve.variants.pipeline import to_example_calls
from genoserve.variants.postprocess import postprocess
from genoserve.variants.tfrecord import read_records
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import ServerProcess
from tests.support.variants_models import fraction_reference, write_fraction_model

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "deepvariant"
BAM = DATA / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DATA / "ucsc.hg19.chr20.unittest.fasta.gz"
GOLDEN = DATA / "golden.calling_examples.tfrecord.gz"
REGION = "chr20:10000000-10003000"


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("variants")
    models = root / "models"
    write_fraction_model(models, "fraction-7ch", 7)
    write_fraction_model(models, "fraction-6ch", 6)
    for name in ("NA12878_S1.chr20.10_10p1mb.bam", "NA12878_S1.chr20.10_10p1mb.bam.bai", GOLDEN.name):
        shutil.copy(DATA / name, root / name)
    for suffix in ("", ".fai", ".gzi"):
        shutil.copy(f"{REF}{suffix}", root / f"{REF.name}{suffix}")
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models)},
        "binding": {"references": {"hg19chr20": str(root / REF.name)}},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 5.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics")},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "variants").start()
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    yield Rig(root, server, worker)
    server.terminate()
    worker.stop()


def test_call_variants_from_pileups_matches_the_known_model(rig: Rig) -> None:
    _, examples = make_examples(BAM, REF, Region.parse(REGION))
    assert len(examples) > 5
    messages = [pileup_example(e, f"e{i}") for i, e in enumerate(examples)]
    with Client(rig.server.address) as client:
        assert client.health("genoserve.v1.VariantCalling") == "SERVING"
        response = client.call_variants(messages, sample_name="NA12878")
    assert response.model == "fraction-7ch"  # picked for 7-channel pileups
    got = np.array([list(r.probabilities) for r in response.results], dtype=np.float32)
    want = fraction_reference(np.stack([e.image for e in examples]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    expected = postprocess(to_example_calls(examples, want))
    assert [(c.pos, c.ref, list(c.alts), list(c.genotype)) for c in response.calls] == [
        (c.start + 1, c.reference_bases, c.alternate_bases, list(c.genotype)) for c in expected
    ]
    first = response.calls[0]
    assert (first.chrom, first.pos, first.ref, list(first.alts)) == ("chr20", 10000117, "C", ["T"])
    assert list(first.example_ids) == ["e0"]


def test_golden_tf_examples_in_a_stream_with_split_multi_allelic_sites(rig: Rig) -> None:
    records = list(read_records(GOLDEN))
    batches = [
        [variants_pb2.PileupExample(id=str(i), tf_example=records[i]) for i in range(start, min(start + 10, 84))]
        for start in range(0, 84, 10)
    ]
    with Client(rig.server.address) as client:
        responses = list(client.call_variants_stream(batches))
    assert len(responses) == len(batches)
    calls = [c for r in responses for c in r.calls]
    assert len(calls) == 78  # 84 examples, three multi-allelic sites of three examples each
    assert not any(r.site_errors for r in responses)
    tri = next(c for c in calls if c.pos == 10002458)
    assert list(tri.alts) in (["GTT", "GTTT"], ["GTT"], ["GTTT"])
    assert len(tri.example_ids) == 3


def test_wrong_layout_is_invalid_argument_stating_the_layout(rig: Rig) -> None:
    example = next(iter(read_examples(GOLDEN)))
    bad = pileup_example(example)
    bad.pileup.shape[:] = [221, 100, 7]
    with Client(rig.server.address) as client, pytest.raises(errors.InvalidArgument) as info:
        client.call_variants([bad])
    assert "uint8 [100, 221, 6]" in info.value.message or "uint8 [100, 221, 7]" in info.value.message
    six = pileup_example(example)
    six.pileup.shape[:] = [100, 221, 6]
    six.pileup.data = example.image[..., :6].tobytes()
    with Client(rig.server.address) as client, pytest.raises(errors.InvalidArgument, match="expects pileups"):
        client.call_variants([six], model="fraction-7ch")
    with Client(rig.server.address) as client:
        response = client.call_variants([six])  # 6 channels: the 6-channel model is chosen
    assert response.model == "fraction-6ch"


def test_one_bad_example_gets_its_own_error(rig: Rig) -> None:
    examples = list(read_examples(GOLDEN))[:3]
    messages = [pileup_example(e, f"e{i}") for i, e in enumerate(examples)]
    messages[1].alt_allele_indices[:] = [5]
    with Client(rig.server.address) as client:
        response = client.call_variants(messages)
    assert response.results[1].HasField("error")
    assert response.results[1].error.field == "examples[1].alt_allele_indices"
    assert len(response.results[0].probabilities) == 3
    assert [c.pos for c in response.calls] == [examples[0].start + 1, examples[2].start + 1]


def test_numpy_examples_go_as_one_batched_tensor_with_the_same_results(rig: Rig) -> None:
    golden = list(read_examples(GOLDEN))
    request = call_request(golden)
    assert request.HasField("pileups")
    assert list(request.pileups.shape) == [84, 100, 221, 7]
    assert not any(m.HasField("pileup") for m in request.examples)
    messages = [pileup_example(e) for e in golden]
    with Client(rig.server.address) as client:
        batched = client.call_variants(golden, sample_name="NA12878")
        per_example = client.call_variants(messages, sample_name="NA12878")
    assert [r.id for r in batched.results] == [m.id for m in messages]
    assert [list(r.probabilities) for r in batched.results] == [list(r.probabilities) for r in per_example.results]
    assert list(batched.calls) == list(per_example.calls)
    assert len(batched.calls) == 78
    # One example with bad alleles: its own error; the others are called from their rows.
    bad = [*golden[:3]]
    bad[1] = replace(bad[1], alt_allele_indices=(5,))
    with Client(rig.server.address) as client:
        response = client.call_variants(bad)
    assert response.results[1].error.field == "examples[1].alt_allele_indices"
    assert [list(r.probabilities) for r in (response.results[0], response.results[2])] == [
        list(batched.results[0].probabilities),
        list(batched.results[2].probabilities),
    ]


def test_batched_tensor_layout_errors_name_the_field(rig: Rig) -> None:
    golden = list(read_examples(GOLDEN))[:2]
    short = call_request(golden)
    short.pileups.shape[0] = 1
    short.pileups.data = short.pileups.data[: 100 * 221 * 7]
    both = call_request(golden)
    both.examples[1].pileup.CopyFrom(pileup_example(golden[1]).pileup)
    with Client(rig.server.address) as client:
        with pytest.raises(errors.InvalidArgument, match=r"examples\[0\]\.pileup.*is required"):
            client.call_variants(list(short.examples))  # no pileups at all
        with pytest.raises(errors.InvalidArgument) as info:
            client._call(client.variants.CallVariants, short, 10)
        assert "pileups: expected uint8 [2, 100, 221, 6 or 7]" in info.value.message
        assert "got uint8 [1, 100, 221, 7]" in info.value.message
        with pytest.raises(errors.InvalidArgument, match=r"examples\[1\]\.pileup: must be unset"):
            client._call(client.variants.CallVariants, both, 10)


def test_async_client_streams_numpy_examples(rig: Rig) -> None:
    golden = list(read_examples(GOLDEN))

    async def run() -> list[variants_pb2.CallVariantsResponse]:
        async def batches() -> AsyncIterator[list[PileupExample]]:
            for start in range(0, 84, 10):  # multi-allelic sites split across batches
                yield golden[start : start + 10]

        async with AsyncClient(rig.server.address) as client:
            return [r async for r in client.call_variants_stream(batches(), sample_name="NA12878")]

    responses = asyncio.run(run())
    assert len(responses) == 9
    assert sum(len(r.calls) for r in responses) == 78
    assert not any(r.site_errors for r in responses)


def test_cli_predict_variants_writes_an_indexed_vcf(rig: Rig) -> None:
    out = rig.root / "cli.vcf.gz"
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "predict", "variants", "--bam", str(BAM), "--reference",
         str(REF), "--regions", REGION, "--output", str(out), "--address", rig.server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (rig.root / "cli.vcf.gz.tbi").exists()
    with pysam.VariantFile(str(out)) as vcf:
        assert list(vcf.header.samples) == ["NA12878"]
        records = list(vcf.fetch("chr20", 10_000_000, 10_003_000))
    assert records
    assert records[0].pos == 10000117
    from_examples = rig.root / "cli-examples.vcf"
    fai = rig.root / "contigs.fai"
    fai.write_text("chr19\t59128983\nchr20\t63025520\t10\t60\t61\n")
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "predict", "variants", "--examples", str(GOLDEN),
         "--contigs", str(fai), "--output", str(from_examples), "--address", rig.server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with pysam.VariantFile(str(from_examples)) as vcf:
        assert list(vcf.header.samples) == ["NA12878"]
        assert [(c.name, c.length) for c in vcf.header.contigs.values()] == [("chr19", 59128983), ("chr20", 63025520)]
        assert len(list(vcf)) == 78


def test_a_long_call_bam_shard_reports_progress_before_it_ends(rig: Rig) -> None:
    """One 60 kb shard (60 make_examples partitions, several heartbeats long): the job's items_done
    moves within it."""
    with Client(rig.server.address) as client:
        job = client.submit_job(
            "variants.call_bam", [str(rig.root / BAM.name)], str(rig.root / "progress-out"),
            {"model": "fraction-7ch", "reference": "hg19chr20", "regions": "chr20:10000001-10060000",
             "shard_size": "60000"},
        )  # fmt: skip
        assert job.shards_total == 1
        events = list(client.watch_job(job.id))
    final = events[-1].job
    assert final.state == jobs_pb2.JOB_STATE_SUCCEEDED, (final.error, rig.worker.log())
    within = sorted({e.job.items_done for e in events if e.job.shards_done == 0 and e.job.items_done > 0})
    assert within, "no progress was reported before the shard ended"
    assert all(n % 1000 == 0 and n < 60_000 for n in within)  # whole partitions, not the shard's end
    assert final.items_done == final.items_total == 60_000


def test_call_bam_and_call_examples_jobs(rig: Rig) -> None:
    bam = rig.root / BAM.name
    golden = rig.root / GOLDEN.name
    with Client(rig.server.address) as client:
        by_bam = client.submit_job(
            "variants.call_bam", [str(bam)], str(rig.root / "bam-out"),
            {"model": "fraction-7ch", "reference": "hg19chr20", "regions": "chr20:10000001-10006000",
             "shard_size": "2000"},
        )  # fmt: skip
        by_examples = client.submit_job(
            "variants.call_examples", [str(golden)], str(rig.root / "ex-out"),
            {"model": "fraction-7ch", "reference": "hg19chr20"},
        )  # fmt: skip
        (rig.root / "lengths.tsv").write_text("# name\tlength\nchr20\t63025520\n")
        with_contigs = client.submit_job(
            "variants.call_examples", [str(golden)], str(rig.root / "ex-contigs"),
            {"model": "fraction-7ch", "contigs": str(rig.root / "lengths.tsv")},
        )  # fmt: skip
        (rig.root / "bad.fai").write_text("chr20\t63025520\nchr21 many\n")
        with pytest.raises(errors.InvalidArgument, match=r"params\[contigs\]: .*bad.fai: line 2: expected NAME"):
            client.submit_job(
                "variants.call_examples", [str(golden)], str(rig.root / "ex-bad"),
                {"model": "fraction-7ch", "contigs": str(rig.root / "bad.fai")},
            )  # fmt: skip
        done = [wait_for_job(client, j.id, timeout=180) for j in (by_bam, by_examples, with_contigs)]
    for job in done:
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, (job.error, rig.worker.log())
    with pysam.VariantFile(str(rig.root / "ex-contigs" / "calls.vcf.gz")) as vcf:
        assert [(c.name, c.length) for c in vcf.header.contigs.values()] == [("chr20", 63025520)]
        assert len(list(vcf)) == 78
    with pysam.VariantFile(str(rig.root / "bam-out" / "NA12878_S1.chr20.10_10p1mb.vcf.gz")) as vcf:
        positions = [r.pos for r in vcf.fetch("chr20", 10_000_000, 10_006_000)]
    # Sharded by 2 kb chunks, merged in order, nothing duplicated at the chunk edges.
    _, examples = make_examples(BAM, REF, Region.parse("chr20:10000001-10006000"))
    assert positions == sorted({e.start + 1 for e in examples})
    with pysam.VariantFile(str(rig.root / "ex-out" / "calls.vcf.gz")) as vcf:
        assert len(list(vcf)) == 78
        assert list(vcf.header.samples) == ["NA12878"]
        assert vcf.header.contigs["chr20"].length == 63025520  # from the registered reference's .fai


def test_jobs_fail_naming_file_and_contig_or_record(rig: Rig) -> None:
    unindexed = rig.root / "noindex.bam"
    shutil.copy(BAM, unindexed)
    truncated = rig.root / "truncated.bam"
    truncated.write_bytes(BAM.read_bytes()[:2_000_000])
    shutil.copy(f"{BAM}.bai", f"{truncated}.bai")
    corrupt = rig.root / "corrupt.tfrecord"
    raw = bytearray(b"".join(_framed(r) for r in list(read_records(GOLDEN))[:3]))
    raw[-10] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    params = {"model": "fraction-7ch", "reference": "hg19chr20"}
    with Client(rig.server.address) as client:
        jobs = [
            client.submit_job("variants.call_bam", [str(unindexed)], str(rig.root / "f1"),
                              {**params, "regions": "chr20:10000001-10001000"}),
            client.submit_job("variants.call_bam", [str(rig.root / BAM.name)], str(rig.root / "f2"),
                              {**params, "regions": "20:10000001-10001000"}),
            client.submit_job("variants.call_examples", [str(corrupt)], str(rig.root / "f3"), params),
            client.submit_job("variants.call_bam", [str(truncated)], str(rig.root / "f4"),
                              {**params, "regions": "chr20:10090001-10095000"}),
        ]  # fmt: skip
        done = [wait_for_job(client, j.id, timeout=120) for j in jobs]
    assert all(j.state == jobs_pb2.JOB_STATE_FAILED for j in done), [j.error for j in done]
    assert "noindex.bam" in done[0].error
    assert "index" in done[0].error
    assert "'20'" in done[1].error
    assert "chr20" in done[1].error
    assert "truncated.bam" in done[3].error
    assert "truncated" in done[3].error.split("truncated.bam", 1)[1]
    assert "corrupt.tfrecord" in done[2].error
    assert "record 2" in done[2].error
    assert "CRC" in done[2].error


def _framed(data: bytes) -> bytes:
    from genoserve.variants.tfrecord import encode_record

    return encode_record(data)


def test_empty_request_and_unknown_model(rig: Rig) -> None:
    example = pileup_example(next(iter(read_examples(GOLDEN))))
    with grpc.insecure_channel(rig.server.address) as channel:
        stub = variants_pb2_grpc.VariantCallingStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CallVariants(variants_pb2.CallVariantsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.CallVariants(variants_pb2.CallVariantsRequest(model="nope", examples=[example]), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
