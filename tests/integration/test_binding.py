"""SequenceBinding end to end on a real server with an exactly known model and a planted motif."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pysam
import pytest
import yaml

from genoserve.api.codecs.tensor import to_numpy
from genoserve.client import Client
from genoserve.core import errors
from genoserve.v1 import binding_pb2, binding_pb2_grpc, jobs_pb2
from tests.support.binding_models import random_dna, write_match_model, write_reference
from tests.support.jobs import WorkerProcess, wait_for_job
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

MOTIF = "GATTACAGGC"  # the test model's site; no reverse-complement palindrome
SITE = 500  # 0-based start of the planted site on chrT
LENGTH = 101


@dataclass
class Rig:
    root: Path
    server: ServerProcess
    worker: WorkerProcess
    reference: str

    def stub(self, channel: grpc.Channel) -> binding_pb2_grpc.SequenceBindingStub:
        return binding_pb2_grpc.SequenceBindingStub(channel)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("binding")
    models = root / "models"
    write_match_model(models, "match-test", MOTIF, "TESTTF")
    background = random_dna(2000, seed=3)
    contig = background[:SITE] + MOTIF + background[SITE + len(MOTIF) :]
    assert contig.count(MOTIF) == 1
    reference = write_reference(root / "ref.fa", {"chrT": contig})
    config = root / "genoserve.yaml"
    config.write_text(yaml.safe_dump({
        "runtime": {"model_dir": str(models)},
        "binding": {"references": {"test": str(reference)}},
        "jobs": {"data_dir": str(root / "data"), "input_roots": [str(root)], "output_roots": [str(root)],
                 "shard_lease_s": 3.0, "sweep_interval_s": 0.5},
        "worker": {"metrics_dir": str(root / "data" / "metrics")},
    }))  # fmt: skip
    worker = WorkerProcess(config, root / "worker.log", "--queues", "binding").start()
    server = ServerProcess("--config", str(config), model_dir=models, log_path=root / "server.log").start()
    yield Rig(root, server, worker, contig)
    server.terminate()
    worker.stop()


def predict(rig: Rig, *sequences: tuple[str, str], **kwargs: Any) -> binding_pb2.PredictResponse:
    request = binding_pb2.PredictRequest(
        model="match-test", sequences=[binding_pb2.Sequence(id=i, bases=b) for i, b in sequences], **kwargs
    )
    with grpc.insecure_channel(rig.server.address) as channel:
        response: binding_pb2.PredictResponse = rig.stub(channel).Predict(request, timeout=30)
    return response


def test_health_and_metadata(rig: Rig) -> None:
    with Client(rig.server.address) as client:
        assert client.health("genoserve.v1.SequenceBinding") == "SERVING"
        [info] = client.list_models(family="binding")
    assert list(info.outputs[0].labels) == ["TESTTF"]


def test_predict_scores_sites_on_either_strand_lower_case_and_padding(rig: Rig) -> None:
    reverse = MOTIF[::-1].translate(str.maketrans("ACGT", "TGCA"))
    response = predict(
        rig,
        ("site", "A" * 20 + MOTIF.lower() + "A" * 71),
        ("short", "cc" + MOTIF + "tt"),  # 14 bases: N-padded to 101
        ("rc", "A" * 30 + reverse + "A" * 61),
        ("none", "A" * 101),
    )
    assert list(response.tasks) == ["TESTTF"]
    assert [r.id for r in response.results] == ["site", "short", "rc", "none"]
    logits = [r.logits[0] for r in response.results]
    assert logits[:3] == [2.0, 2.0, 2.0]  # max strand by default: the reverse-strand site counts
    assert logits[3] < 0
    np.testing.assert_allclose(response.results[0].scores[0], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    forward = predict(rig, ("rc", "A" * 30 + reverse + "A" * 61), strand=binding_pb2.STRAND_FORWARD)
    assert forward.results[0].logits[0] < 2.0
    mean = predict(rig, ("rc", "A" * 30 + reverse + "A" * 61), strand=binding_pb2.STRAND_MEAN)
    assert forward.results[0].logits[0] < mean.results[0].logits[0] < 2.0


def test_bad_sequences_are_invalid_argument_naming_id_and_position(rig: Rig) -> None:
    with pytest.raises(grpc.RpcError) as info:
        predict(rig, ("fine", "ACGT"), ("broken", "ACGTXACGT"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequences[1].bases" in (info.value.details() or "")
    assert "'broken': invalid character 'X' at position 4" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as too_long:
        predict(rig, ("long", "A" * 150))
    assert "length 150 exceeds the model's 101" in (too_long.value.details() or "")
    cropped = predict(rig, ("long", "A" * 70 + MOTIF + "A" * 70), crop=True)
    assert cropped.results[0].logits[0] == 2.0


def test_predict_stream_answers_each_batch_in_order(rig: Rig) -> None:
    batches = [
        binding_pb2.PredictRequest(
            model="match-test",
            sequences=[binding_pb2.Sequence(id=f"b{n}s{k}", bases=random_dna(101, n * 10 + k)) for k in range(n + 1)],
        )
        for n in range(4)
    ]
    with grpc.insecure_channel(rig.server.address) as channel:
        responses = list(rig.stub(channel).PredictStream(iter(batches), timeout=30))
    assert [[r.id for r in resp.results] for resp in responses] == [[s.id for s in b.sequences] for b in batches]


def test_score_variants_breaking_site_is_strongly_negative_neutral_is_zero(rig: Rig) -> None:
    site_base = rig.reference[SITE + 4]  # inside the motif
    other = "C" if site_base != "C" else "G"
    far = SITE + 30  # the intact site stays in both windows and dominates: no effect
    variants = [
        binding_pb2.Variant(id="breaks", chrom="chrT", pos=SITE + 5, ref=site_base, alt=other),
        binding_pb2.Variant(id="neutral", chrom="chrT", pos=far + 1, ref=rig.reference[far],
                            alt="A" if rig.reference[far] != "A" else "T"),
        binding_pb2.Variant(id="badref", chrom="chrT", pos=SITE + 5, ref="N" if site_base != "N" else "A", alt="T"),
        binding_pb2.Variant(id="deletion", chrom="chrT", pos=SITE, ref=rig.reference[SITE - 1 : SITE + 3],
                            alt=rig.reference[SITE - 1]),
    ]  # fmt: skip
    request = binding_pb2.ScoreVariantsRequest(model="match-test", variants=variants)
    with grpc.insecure_channel(rig.server.address) as channel:
        response = rig.stub(channel).ScoreVariants(request, timeout=30)
    results = {r.id: r for r in response.results}
    assert response.reference == "test"
    assert results["breaks"].logit_diff[0] == -1.0  # one mismatch in the site
    assert results["breaks"].diff[0] < -0.1
    assert results["neutral"].logit_diff[0] == 0.0
    assert abs(results["neutral"].diff[0]) < 1e-6
    assert results["deletion"].logit_diff[0] < -0.9  # deleting 3 of the site's bases breaks it
    assert not results["breaks"].HasField("error")
    assert results["badref"].error.field == "variants[2]"
    assert "does not match the reference" in results["badref"].error.message
    assert list(results["badref"].diff) == []
    with pytest.raises(grpc.RpcError) as info, grpc.insecure_channel(rig.server.address) as channel:
        rig.stub(channel).ScoreVariants(
            binding_pb2.ScoreVariantsRequest(model="match-test", reference="hg38", variants=variants), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown reference 'hg38'" in (info.value.details() or "")


def test_mutagenesis_maps_the_site(rig: Rig) -> None:
    bases = rig.reference[SITE - 45 : SITE - 45 + LENGTH]
    request = binding_pb2.MutagenesisRequest(model="match-test", sequence=binding_pb2.Sequence(id="win", bases=bases))
    with grpc.insecure_channel(rig.server.address) as channel:
        response = rig.stub(channel).Mutagenesis(request, timeout=30)
    deltas = to_numpy(response.logit_deltas, "logit_deltas")
    assert deltas.shape == (LENGTH, 4, 1)
    own = np.array(["ACGT".index(b) for b in bases])
    assert np.all(deltas[np.arange(LENGTH), own, 0] == 0)
    site = slice(45, 45 + len(MOTIF))
    assert np.all(deltas[site].sum(axis=1)[:, 0] == -3.0)  # each of 3 substitutions loses one match
    assert np.abs(deltas[:30]).max() == 0  # far from the site nothing changes
    assert response.reference_scores[0] == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_score_fasta_bed_and_vcf_jobs(rig: Rig) -> None:
    fasta = rig.root / "seqs.fa.gz"
    records = [(f"s{i}", random_dna(101, 100 + i)) for i in range(30)] + [("hit", "A" * 20 + MOTIF + "A" * 71)]
    fasta.write_bytes(gzip.compress("".join(f">{i} desc\n{s[:60]}\n{s[60:]}\n" for i, s in records).encode()))
    bed = rig.root / "peaks.bed"
    bed.write_text(f"track name=x\nchrT\t{SITE}\t{SITE + 10}\tpeak\nchrT\t1500\t1600\tbg\n")
    vcf = rig.root / "calls.vcf"
    snv_ref = rig.reference[SITE + 4]
    near = rig.reference[SITE + 30]
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chrT,length=2000>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        f"chrT\t{SITE + 5}\tv1\t{snv_ref}\t{'C' if snv_ref != 'C' else 'G'},<DEL>\t.\tPASS\t.\n"
        f"chrT\t{SITE + 31}\tv2\t{near}\t{'A' if near != 'A' else 'T'}\t.\tPASS\t.\n"
    )
    params = {"model": "match-test", "shard_size": "7"}
    with Client(rig.server.address) as client:
        jobs = {
            "fasta": client.submit_job("binding.score_fasta", [str(fasta)], str(rig.root / "out"), params),
            "bed": client.submit_job("binding.score_bed", [str(bed)], str(rig.root / "out"),
                                     {**params, "format": "tsv"}),
            "vcf": client.submit_job("binding.score_vcf", [str(vcf)], str(rig.root / "out"), params),
        }  # fmt: skip
        done = {k: wait_for_job(client, j.id, timeout=120) for k, j in jobs.items()}
    for kind, job in done.items():
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, (kind, job.error, rig.worker.log())
    table = pq.read_table(rig.root / "out" / "seqs.binding.parquet").to_pydict()
    assert table["id"] == [i for i, _ in records]
    assert table["TESTTF_logit"][-1] == 2.0
    tsv = (rig.root / "out" / "peaks.binding.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:4] == ["chrom", "start", "end", "name"]
    assert float(tsv[1].split("\t")[5]) == 2.0  # the peak over the site: TESTTF_logit
    out_vcf = rig.root / "out" / "calls.binding.vcf.gz"
    assert (rig.root / "out" / "calls.binding.vcf.gz.tbi").exists()
    with pysam.VariantFile(str(out_vcf)) as scored:
        assert "GS_match-test_TESTTF_DIFF".replace("-", "_") in scored.header.info
        found = {r.id: r for r in scored.fetch("chrT")}  # uses the tabix index
    assert found["v1"].info["GS_match_test_TESTTF_LOGITDIFF"] == (-1.0, None)
    assert found["v2"].info["GS_match_test_TESTTF_LOGITDIFF"] == (0.0,)


def test_bad_fasta_record_fails_the_job_naming_file_record_and_line(rig: Rig) -> None:
    fasta = rig.root / "bad.fa"
    fasta.write_text(">ok\nACGT\n>oops\nACGTQ\n")
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "jobs", "submit", "binding.score_fasta", "--input", str(fasta),
         "--output", str(rig.root / "bad-out"), "--param", "model=match-test", "--watch",
         "--address", rig.server.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{fasta}: record 1 ('oops', line 3): sequence 'oops': invalid character 'Q' at position 4" in result.stderr


def test_bad_strand_or_crop_param_is_refused_at_submit(rig: Rig) -> None:
    fasta = rig.root / "one.fa"
    fasta.write_text(">a\nACGT\n")
    vcf = rig.root / "one.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    cases = [
        ("binding.score_fasta", fasta, {"strand": "both"}, "params[strand]: must be forward, max or mean, got 'both'"),
        ("binding.score_fasta", fasta, {"crop": "yes"}, "params[crop]: must be true or false, got 'yes'"),
        ("binding.score_vcf", vcf, {"strand": "both"}, "params[strand]: must be forward, max or mean, got 'both'"),
    ]
    with Client(rig.server.address) as client:
        for kind, path, extra, message in cases:
            with pytest.raises(errors.InvalidArgument, match=re.escape(message)):
                client.submit_job(kind, [str(path)], str(rig.root / "never"), {"model": "match-test", **extra})
    assert not (rig.root / "never").exists()


def test_cli_predict_binding_fasta_and_vcf(rig: Rig) -> None:
    fasta = rig.root / "cli.fa"
    fasta.write_text(f">hit\n{'A' * 20}{MOTIF}{'A' * 71}\n>miss\n{'A' * 101}\n")
    cli = [sys.executable, "-m", "genoserve.cli.main", "predict", "binding", "--model", "match-test",
           "--address", rig.server.address]  # fmt: skip
    out = subprocess.run([*cli, "--fasta", str(fasta)], capture_output=True, text=True, timeout=60, check=True)
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert lines[0] == ["id", "TESTTF_score", "TESTTF_logit"]
    assert lines[1][0] == "hit"
    assert float(lines[1][2]) == 2.0
    assert float(lines[2][2]) < 0
    vcf = rig.root / "cli.vcf"
    ref_base = rig.reference[SITE + 4]
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chrT,length=2000>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
        f"chrT\t{SITE + 5}\tbreak\t{ref_base}\t{'C' if ref_base != 'C' else 'G'}\t.\tPASS\t.\n"
        f"chrT\t{SITE + 5}\twrong\t{'A' if ref_base != 'A' else 'C'}\tT\t.\tPASS\t.\n"
    )
    out = subprocess.run([*cli, "--vcf", str(vcf), "--reference", "test"], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    rows = {line.split("\t")[0]: line.split("\t") for line in out.stdout.splitlines()[1:]}
    assert float(rows["break"][6]) == -1.0  # TESTTF_logit_diff
    assert "does not match the reference" in rows["wrong"][-1]


def test_cli_mutagenesis_tsv_and_logo(rig: Rig) -> None:
    """predict binding --mutagenesis prints every substitution's logit change; --logo draws the
    map averaged over the sequences, whose letters at the site spell the motif."""
    from PIL import Image

    from genoserve.cli.logo import information_content, probabilities

    fasta = rig.root / "ism.fa"
    fasta.write_text(f">one\n{'A' * 40}{MOTIF}{'A' * 51}\n>two\n{'C' * 40}{MOTIF}{'C' * 51}\n")
    logo = rig.root / "logo.png"
    cli = [sys.executable, "-m", "genoserve.cli.main", "predict", "binding", "--model", "match-test",
           "--address", rig.server.address, "--fasta", str(fasta), "--mutagenesis", "--logo", str(logo)]  # fmt: skip
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True)
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert lines[0] == ["id", "position", "base", "task", "A", "C", "G", "T"]
    assert len(lines) == 1 + 2 * LENGTH
    rows = {(r[0], int(r[1])): r for r in lines[1:]}
    site_row = rows[("one", 41)]  # the site's first base, G
    assert site_row[2:4] == ["G", "TESTTF"]
    assert [float(v) for v in site_row[4:]] == [-1.0, -1.0, 0.0, -1.0]
    assert [float(v) for v in rows[("two", 1)][4:]] == [0.0, 0.0, 0.0, 0.0]
    with Image.open(logo) as image:
        assert image.format == "PNG"
        assert image.size[0] > 400
    # What the logo draws: the site's bases carry the information, the flanks none.
    deltas = np.zeros((LENGTH, 4))
    for i, base in enumerate(MOTIF):
        deltas[40 + i] = [0.0 if b == base else -1.0 for b in "ACGT"]
    ic = information_content(probabilities(deltas))
    assert (ic[40 : 40 + len(MOTIF)] > 0.1).all()  # one nat per mismatch: p = 0.475 for the own base
    assert np.abs(ic[:40]).max() < 1e-9
    no_mutagenesis = subprocess.run([*cli[:-3], "--logo", str(logo)], capture_output=True, text=True, timeout=60)
    assert no_mutagenesis.returncode == 2
    assert "--logo needs --mutagenesis" in no_mutagenesis.stderr
    nowhere = subprocess.run([*cli[:-1], str(rig.root / "missing" / "logo.png")], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert nowhere.returncode == 2
    assert "folder" in nowhere.stderr
    assert "does not exist" in nowhere.stderr
    assert not nowhere.stdout  # refused before any sequence was sent
