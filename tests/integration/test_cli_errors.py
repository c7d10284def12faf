"""The README's `genoserve predict` commands given obviously wrong input: a one-line error naming
the option or field and the rule, exit code 2, no traceback, no work done first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pysam
import pytest

from tests.support.server import ServerProcess
from tests.support.terminal import run_on_a_terminal

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
BAM = DATA / "deepvariant" / "NA12878_S1.chr20.10_10p1mb.bam"
REF = DATA / "deepvariant" / "ucsc.hg19.chr20.unittest.fasta.gz"
IMAGE = DATA / "segmentation" / "stardist_tests_img2d_256.tif"


def genoserve(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", *args, "--address", server.address],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_predict_variants_malformed_or_unknown_region(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out.vcf"
    common = ("predict", "variants", "--bam", str(BAM), "--reference", str(REF), "--output", str(out))
    result = genoserve(server, *common, "--regions", "chr20:10000000")
    assert_clean_error(result, "regions: 'chr20:10000000': expected CONTIG:START-END")
    # A contig the reference names differently: raised while streaming, still reported as itself.
    result = genoserve(server, *common, "--regions", "20:10000000-10001000")
    assert_clean_error(result, "contig '20' not in the reference")
    assert "Exception iterating requests" not in result.stderr
    assert not out.exists()


def test_predict_variants_region_with_digit_grouping_commas(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out.vcf"
    result = genoserve(
        server, "predict", "variants", "--bam", str(BAM), "--reference", str(REF), "--output", str(out),
        "--regions", "chr20:10,000,000-10,002,000,chr20:10003001-10004000",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with pysam.VariantFile(str(out)) as vcf:
        positions = [record.pos for record in vcf]
    assert positions
    assert all(10_000_000 <= p <= 10_002_000 or 10_003_001 <= p <= 10_004_000 for p in positions)
    assert any(p > 10_003_000 for p in positions)


def test_output_into_a_missing_folder_is_refused_before_any_work(server: ServerProcess, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = genoserve(
        server, "predict", "variants", "--bam", str(BAM), "--reference", str(REF),
        "--regions", "chr20:10000000-10001000", "--output", str(missing / "out.vcf.gz"),
    )  # fmt: skip
    assert_clean_error(result, "--output", "does not exist")
    for option in ("--output", "--overlay", "--cells"):
        args = {"--output": str(tmp_path / "m.tif"), option: str(missing / "file")}
        flat = [item for pair in args.items() for item in pair]
        result = genoserve(server, "predict", "segmentation", "--image", str(IMAGE), *flat)
        assert_clean_error(result, option, "does not exist")
    assert not missing.exists()
    assert not (tmp_path / "m.tif").exists()


def test_binding_vcf_without_a_registered_reference_says_how_to_register_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    vcf = tmp_path / "calls.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chr20,length=63025520>\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchr20\t10000100\tv0\tT\tA\t.\t.\t.\n"
    )
    for extra in ([], ["--reference", "hg19"]):
        result = genoserve(server, "predict", "binding", "--model", "deepbind-ctcf", "--vcf", str(vcf), *extra)
        assert_clean_error(result, "reference: no reference genome is registered on the server", "binding.references")


def test_serve_refuses_a_selection_that_serves_nothing_and_a_busy_port(server: ServerProcess, tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "genoserve.cli.main", "serve", "--host", "127.0.0.1", "--metrics-port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert_clean_error(serve("--port", "0", "--model-dir", str(tmp_path / "none")), "model directory", "does not exist")
    assert_clean_error(serve("--port", "0", "--model", "deepbind-nosuch"), "['deepbind-nosuch'] not in", "platform-mlp")
    assert_clean_error(serve("--port", "0", "--family", "bindings"), "unknown families ['bindings']")
    busy = serve("--port", str(server.port), "--model", "platform-mlp")
    assert_clean_error(busy, f"cannot listen on 127.0.0.1:{server.port}")


def test_worker_refuses_unknown_queues(tmp_path: Path) -> None:
    """(A taken metrics port is no error: tests/integration/test_jobs.py runs two workers on one.)"""
    result = subprocess.run(
        [sys.executable, "-m", "genoserve.cli.main", "worker", "--queues", "binding,bindings"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # its own .genoserve/ (the metrics folder is emptied at start)
    )
    assert_clean_error(result, "worker.queues: unknown ['bindings']")


def test_predict_unreadable_inputs_and_zero_batch(server: ServerProcess, tmp_path: Path) -> None:
    headless = tmp_path / "headless.fa"
    headless.write_text("ACGT\n")
    result = genoserve(server, "predict", "binding", "--model", "deepbind-ctcf", "--fasta", str(headless))
    assert_clean_error(result, "'--fasta'", "line 1: sequence data before the first '>' header")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    result = genoserve(server, "predict", "binding", "--model", "deepbind-ctcf", "--fasta", str(empty))
    assert_clean_error(result, "'--fasta'", "no FASTA records")
    assert not result.stdout
    result = genoserve(server, "predict", "binding", "--model", "deepbind-ctcf", "--vcf", str(headless))
    assert_clean_error(result, "'--vcf'", "not a readable VCF")
    result = genoserve(server, "predict", "binding", "--model", "deepbind-ctcf", "--sequence", "ACGT", "--batch", "0")
    assert_clean_error(result, "'--batch'")
    bed = tmp_path / "bad.bed"
    bed.write_text("chr20\t10000000\t10001000\nchr20\tabc\t10\n")
    result = genoserve(
        server, "predict", "variants", "--bam", str(BAM), "--reference", str(REF), "--bed", str(bed),
        "--output", str(tmp_path / "o.vcf"),
    )  # fmt: skip
    assert_clean_error(result, f"--bed: {bed}: line 2: expected CONTIG START END")


def test_models_list_gives_a_broken_model_its_reason_in_the_last_column(tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "platform-mlp", models / "platform-mlp")
    shutil.copytree(models / "platform-mlp", models / "broken-mlp")
    spec = models / "broken-mlp" / "model.yaml"
    spec.write_text(spec.read_text().replace("name: platform-mlp", "name: broken-mlp"))
    with open(models / "broken-mlp" / "1" / "model.onnx", "ab") as onnx:
        onnx.write(b"x")
    with ServerProcess(model_dir=models, log_path=tmp_path / "server.log") as server:
        result = genoserve(server, "models", "list")
    assert result.returncode == 0, result.stderr
    header, broken, good = result.stdout.splitlines()
    assert header.split() == ["MODEL", "FAMILY", "VERSION", "READY", "INPUTS", "OUTPUTS", "REASON"]
    assert broken.split()[:6] == ["broken-mlp", "platform", "1", "no", "x:float32[?,128]", "y:float32[?,16]"]
    assert "sha256" in broken.split("y:float32[?,16]", 1)[1]
    assert good.split() == ["platform-mlp", "platform", "1", "yes", "x:float32[?,128]", "y:float32[?,16]"]


def test_errors_are_printed_once_naming_the_flags_as_the_cli_spells_them(server: ServerProcess, tmp_path: Path) -> None:
    long = "A" * 150
    result = genoserve(server, "predict", "binding", "--model", "pwm-ctcf", "--sequence", long, "--sequence", "ACGQ")
    assert_clean_error(result)
    assert result.stderr.splitlines() == [
        "error (INVALID_ARGUMENT): sequences[0].bases: sequence 'seq0': length 150 exceeds the model's 101; "
        "pass --crop to centre-crop it",
        "  sequences[1].bases: sequence 'seq1': invalid character 'Q' at position 3 "
        "(allowed: A, C, G, T, N in any case)",
    ]
    # One sequence per request: the bad one is still numbered in the whole input, not in its batch.
    good = "ACGT" * 25 + "A"
    result = genoserve(server, "predict", "binding", "--model", "pwm-ctcf", "--sequence", good, "--sequence", "ACGQ",
                       "--batch", "1")  # fmt: skip
    assert_clean_error(result)
    assert result.stderr.splitlines() == [
        "error (INVALID_ARGUMENT): sequences[1].bases: sequence 'seq1': invalid character 'Q' at position 3 "
        "(allowed: A, C, G, T, N in any case)",
    ]
    h5ad = DATA / "embedding" / "pbmc68k_reduced_counts_700x765.h5ad"
    out = tmp_path / "out.h5ad"
    result = genoserve(server, "predict", "embedding", "--h5ad", str(h5ad), "--output", str(out),
                       "--min-gene-overlap", "1.5")  # fmt: skip
    assert_clean_error(result)
    assert result.stderr == "error (INVALID_ARGUMENT): message 0: --min-gene-overlap: must be within [0, 1], got 1.5\n"
    result = genoserve(server, "predict", "embedding", "--h5ad", str(h5ad), "--output", str(out), "--batch-key", "x")
    assert_clean_error(result, "Invalid value for '--batch-key'", "obs has no column 'x'; columns: ['bulk_labels'")
    assert not out.exists()


def test_predict_variants_draws_progress_on_a_terminal_only(server: ServerProcess, tmp_path: Path) -> None:
    """make_examples takes most of the time: the bar counts the region's base pairs as pileups are made."""
    args = [sys.executable, "-m", "genoserve.cli.main", "predict", "variants", "--bam", str(BAM), "--reference",
            str(REF), "--regions", "chr20:10000001-10003000", "--address", server.address]  # fmt: skip
    code, _, terminal = run_on_a_terminal([*args, "--output", str(tmp_path / "bar.vcf")])
    assert code == 0, terminal
    assert "pileups:  33%" in terminal
    assert "3.00k/3.00k [" in terminal
    assert "sites=" in terminal
    assert terminal.rstrip().endswith(f"written to {tmp_path / 'bar.vcf'}")
    code, _, terminal = run_on_a_terminal([*args, "--output", str(tmp_path / "quiet.vcf"), "--quiet"])
    assert code == 0, terminal
    assert "pileups" not in terminal
    result = subprocess.run([*args, "--output", str(tmp_path / "piped.vcf")], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pileups" not in result.stderr
    assert (tmp_path / "bar.vcf").read_text() == (tmp_path / "quiet.vcf").read_text()
