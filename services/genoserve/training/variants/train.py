"""Train the variant-calling CNNs (6 and 7 channels) on simulated reads over real chr20 sequence.

    python -m genoserve.training.variants.train --out models --seed 0
        [--reference R --bam B --truth T --confident C]   (defaults: tests/data/deepvariant/)
    python -m genoserve.training.variants.train --out models --evaluate-only   (re-measure only)

Training data: reads simulated over chr20:10,100,000-10,700,000 (the non-N part of the reference
after the real NA12878 region), ``len(Settings.simulations)`` times with different seeds (different
planted variants), one per read profile in ``TRAIN_SIMULATIONS``; pileups are made by
make_examples' own path, local realigner included (``dataset.build``). Held-out evaluation: a
fresh simulation over chr20:59,800,000-59,950,000 (the reference's other non-N stretch) with its
own seed and the simulator's default profile, called end to end (candidates -> realigned pileups
-> ONNX model -> postprocess) and compared with the planted truth.
With the real data files (by default those in tests/data/deepvariant) the real NA12878 region
chr20:10,000,000-10,010,000 is called and evaluated too. All figures go into each model.yaml.
``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pysam
import torch
from torch import nn

from genoserve.training.modelyaml import write_model_dir
from genoserve.training.variants.dataset import LabelledExamples, build
from genoserve.training.variants.model import PileupCNN
from genoserve.training.variants.simulate import SimulatedSample, SimulationConfig, simulate
from genoserve.variants.evaluate import GenotypedSite, evaluate, read_bed, read_vcf_sites
from genoserve.variants.examples import CHANNELS_6, CHANNELS_7
from genoserve.variants.make_examples import Region
from genoserve.variants.pipeline import LABELS, Predict, call_examples, call_region

DATA = Path("tests/data/deepvariant")
DEFAULT_REFERENCE = DATA / "ucsc.hg19.chr20.unittest.fasta.gz"
CONTIG = "chr20"
TRAIN = (10_100_000, 10_700_000)
HELD_OUT = (59_800_000, 59_950_000)
REAL_REGION = "chr20:10000000-10010000"
PIECE = 50_000

#: Mapping-bias segments (real alleles at low allele fraction and MAPQ) and paralog reads that carry
#: the copy's other differences too, on the simulator's default read profile (that of the held-out data).
_WITH_ARTEFACTS = SimulationConfig(bias_segment_rate=1 / 8000, paralog_divergence=(0.005, 0.03))

#: The training replicates' profiles: the default read profile, and one that varies more:
#: fragment-length spread; base-quality profiles with a plateau near 38 and a third of bases at
#: 40-41, fewer randomly low-MAPQ reads (about 5 % below 60), both read-level profiles of the
#: NA12878 BAM (no labels used). Both with the artefacts above.
TRAIN_SIMULATIONS = (
    _WITH_ARTEFACTS,
    replace(
        _WITH_ARTEFACTS,
        fragment_sd_range=(40.0, 90.0),
        min_fragment=150,
        quality_start_range=(30.0, 35.0),
        quality_end_range=(28.0, 34.0),
        quality_plateau_range=(36.5, 41.0),
        low_mq_fraction=0.05,
    ),
)


@dataclass
class Settings:
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    train: tuple[int, int] = TRAIN
    held_out: tuple[int, int] = HELD_OUT
    #: One training replicate (the whole training span, its own seed) per read profile.
    simulations: tuple[SimulationConfig, ...] = TRAIN_SIMULATIONS
    workers: int = 2


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def simulate_range(
    fasta: pysam.FastaFile, span: tuple[int, int], seed: int, config: SimulationConfig | None = None
) -> list[SimulatedSample]:
    samples = []
    for i, start in enumerate(range(span[0], span[1], PIECE)):
        end = min(span[1], start + PIECE)
        samples.append(simulate(CONTIG, fasta.fetch(CONTIG, start, end), start, seed * 1000 + i, config))
    return samples


def _training_piece(job: tuple[str, int, int, SimulationConfig]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Images and labels of one simulated piece (``reference`` at ``start``, ``seed``)."""
    reference, start, seed, config = job
    part = build(simulate(CONTIG, reference, start, seed, config))
    return part.images, part.labels


def training_data(
    fasta: pysam.FastaFile, settings: Settings, seed: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """All replicates' pieces simulated and built (``settings.workers`` processes; the result does
    not depend on their number), concatenated in piece order."""
    jobs = []
    for replicate, config in enumerate(settings.simulations):
        for i, start in enumerate(range(settings.train[0], settings.train[1], PIECE)):
            end = min(settings.train[1], start + PIECE)
            piece_seed = (seed + 1 + 100 * replicate) * 1000 + i
            jobs.append((fasta.fetch(CONTIG, start, end), start, piece_seed, config))
    if settings.workers > 1:
        with get_context("spawn").Pool(settings.workers) as pool:
            parts = pool.map(_training_piece, jobs, chunksize=1)
    else:
        parts = [_training_piece(job) for job in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fit(
    images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], channels: int, settings: Settings, seed: int
) -> PileupCNN:
    torch.manual_seed(seed)
    model = PileupCNN(channels, settings.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    steps = settings.epochs * max(1, -(-len(images) // settings.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.01)
    rng = np.random.default_rng(seed)
    x_all = torch.from_numpy(images[..., :channels].copy())
    y_all = torch.from_numpy(labels)
    model.train()
    for epoch in range(settings.epochs):
        order = torch.from_numpy(rng.permutation(len(images)))
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            x = x_all[idx]
            if rng.random() < 0.5:  # reads are unordered in meaning: flip row order within the read band
                x = torch.cat([x[:, :5], x[:, 5:].flip(1)], dim=1)
            loss = loss_fn(model.logits(x), y_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        print(f"  {channels}ch epoch {epoch + 1}/{settings.epochs} loss {total / len(order):.4f}", flush=True)
    model.eval()
    return model


def export(model: PileupCNN, channels: int) -> bytes:
    example = torch.zeros((2, 100, 221, channels), dtype=torch.uint8)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,  # type: ignore[arg-type]
        input_names=["pileup"],
        output_names=["probabilities"],
        dynamic_axes={"pileup": {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return buffer.getvalue()


def onnx_predict(onnx_bytes: bytes) -> Predict:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    def predict(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.asarray(session.run(None, {"pileup": batch})[0], dtype=np.float32)

    return predict


def held_out_metrics(
    predict: Predict, samples: list[SimulatedSample], data: list[LabelledExamples], channels: int
) -> dict[str, float]:
    """Example accuracy and call-level SNP/INDEL precision, recall, F1 against the planted truth."""
    metrics: dict[str, float] = {}
    correct = total = 0
    calls: list[GenotypedSite] = []
    truth: list[GenotypedSite] = []
    regions: dict[str, list[tuple[int, int]]] = {CONTIG: []}
    references = {s.start: s for s in samples}
    for sample, part in zip(samples, data, strict=True):
        examples = part.examples
        for e in examples:
            e.image = e.image[..., :channels]
        if examples:
            probabilities = np.concatenate(
                [predict(np.stack([e.image for e in examples[i : i + 256]])) for i in range(0, len(examples), 256)]
            )
            correct += int((probabilities.argmax(1) == part.labels).sum())
            total += len(examples)
        for call in call_examples(examples, predict):
            calls.append(
                GenotypedSite(
                    CONTIG,
                    call.start,
                    (call.reference_bases, *call.alternate_bases),
                    call.genotype,
                    call.filters == ["PASS"],
                )
            )
        truth.extend(GenotypedSite(CONTIG, v.start, (v.ref, v.alt), v.genotype) for v in sample.truth)
        regions[CONTIG].append((sample.start + 300, sample.start + len(sample.reference) - 300))

    def fetch(contig: str, start: int, end: int) -> str:
        for offset, s in references.items():
            if offset <= start < offset + len(s.reference):
                return s.reference[start - offset : end - offset]
        return "N" * (end - start)

    result = evaluate(calls, truth, fetch, regions=regions)
    metrics["heldout_example_accuracy"] = correct / max(1, total)
    metrics["heldout_examples"] = total
    for kind, counts in (("snp", result.snp), ("indel", result.indel)):
        metrics[f"heldout_{kind}_precision"] = counts.precision
        metrics[f"heldout_{kind}_recall"] = counts.recall
        metrics[f"heldout_{kind}_f1"] = counts.f1
        metrics[f"heldout_{kind}_truth"] = counts.tp + counts.fn
    return metrics


def real_metrics(
    predict: Predict, channels: int, bam: Path, reference: Path, truth: Path, confident: Path
) -> dict[str, float]:
    """Calls on the real NA12878 region against GIAB truth inside the confident regions."""
    region = Region.parse(REAL_REGION)
    variant_calls, _ = call_region(bam, reference, region, predict, channels=channels)
    calls = [
        GenotypedSite(
            c.reference_name,
            c.start,
            (c.reference_bases, *c.alternate_bases),
            c.genotype,
            c.filters == ["PASS"],
        )
        for c in variant_calls
    ]
    with pysam.FastaFile(str(reference)) as fasta:
        result = evaluate(
            calls,
            read_vcf_sites(truth),
            lambda c, s, e: fasta.fetch(c, s, e),
            read_bed(confident),
            {region.contig: [(region.start, region.end)]},
        )
    out: dict[str, float] = {}
    for kind, counts in (("snp", result.snp), ("indel", result.indel)):
        out[f"na12878_{kind}_tp"] = counts.tp
        out[f"na12878_{kind}_fp"] = counts.fp
        out[f"na12878_{kind}_fn"] = counts.fn
        out[f"na12878_{kind}_precision"] = counts.precision
        out[f"na12878_{kind}_recall"] = counts.recall
    return out


def spec(channels: int) -> dict[str, Any]:
    names = CHANNELS_7 if channels == 7 else CHANNELS_6
    return {
        "name": f"deepvariant-cnn-{channels}ch",
        "family": "variants",
        "description": (
            f"Compact residual CNN over DeepVariant-layout pileups ({channels} channels) -> genotype "
            "probabilities for the alt alleles shown; trained on simulated reads over real chr20 sequence."
        ),
        "inputs": [
            {
                "name": "pileup",
                "dtype": "uint8",
                "shape": [-1, 100, 221, channels],
                "description": "DeepVariant pileup image, rows x columns x channels, raw pixel values",
            }
        ],
        "outputs": [
            {
                "name": "probabilities",
                "dtype": "float32",
                "shape": [-1, 3],
                "labels": list(LABELS),
                "description": "P(hom-ref), P(het), P(hom-alt)",
            }
        ],
        "preprocessing": {"height": 100, "width": 221, "channels": list(names), "layout": "NHWC"},
        # No waiting for a batch to fill: requests carry tens to hundreds of examples, and a session
        # call that waits for more leaves its core idle (batches still form from the requests
        # queued while every instance is busy).
        "batching": {"max_batch_size": 128, "max_queue_delay_us": 0, "max_queue_size": 4096},
        # A convolution-heavy model fed in batches of ~100 examples: on a CPU, one single-threaded
        # call per core beats one call on every core (tests/bench/variants_bench.py); a request
        # alone is split across the idle calls (84 examples: 2 x 42 on two cores).
        "cpu_serving": {"intra_op_threads": 1, "instances": 0, "split_rows": 16},
    }


def measure(
    onnx_bytes: bytes, channels: int, test_samples: list[SimulatedSample], args: argparse.Namespace
) -> dict[str, float]:
    """Held-out simulation metrics, and real NA12878 ones when --bam/--truth/--confident are given."""
    predict = onnx_predict(onnx_bytes)
    test_parts = [build(s, channels=7) for s in test_samples]
    metrics = held_out_metrics(predict, test_samples, test_parts, channels)
    if args.bam and args.truth and args.confident:
        metrics.update(real_metrics(predict, channels, args.bam, args.reference, args.truth, args.confident))
    return metrics


def reevaluate(args: argparse.Namespace) -> None:
    import yaml

    with pysam.FastaFile(str(args.reference)) as fasta:
        test_samples = simulate_range(fasta, Settings().held_out, args.seed + 7919)
    for channels in args.channels:
        directory = args.out / f"deepvariant-cnn-{channels}ch"
        meta = yaml.safe_load((directory / "model.yaml").read_text())
        entry = next(v for v in meta["versions"] if v["version"] == args.version)
        onnx_bytes = (directory / str(args.version) / "model.onnx").read_bytes()
        metrics = measure(onnx_bytes, channels, test_samples, args)
        metrics["train_examples"] = entry["metrics"].get("train_examples", 0)
        write_model_dir(args.out, spec(channels), args.version, onnx_bytes, metrics, entry["provenance"])
        print(f"re-measured {directory}: {metrics}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--bam", type=Path, default=_existing(DATA / "NA12878_S1.chr20.10_10p1mb.bam"))
    parser.add_argument("--truth", type=Path, default=_existing(DATA / "test_nist.b37_chr20_100kbp_at_10mb.vcf.gz"))
    parser.add_argument("--confident", type=Path, default=_existing(DATA / "test_nist.b37_chr20_100kbp_at_10mb.bed"))
    parser.add_argument("--channels", type=int, nargs="+", default=[7, 6], choices=[6, 7])
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (smoke test)")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-measure the metrics of the models already in --out (same ONNX bytes) and rewrite model.yaml",
    )
    args = parser.parse_args(argv)
    if args.evaluate_only:
        reevaluate(args)
        return

    torch.set_num_threads(2)
    settings = Settings()
    if args.quick:
        settings = Settings(
            epochs=1,
            train=(TRAIN[0], TRAIN[0] + 10_000),
            held_out=(HELD_OUT[0], HELD_OUT[0] + 10_000),
            simulations=TRAIN_SIMULATIONS[1:],
            workers=1,
        )
    started = time.time()
    with pysam.FastaFile(str(args.reference)) as fasta:
        images, labels = training_data(fasta, settings, args.seed)
        test_samples = simulate_range(fasta, settings.held_out, args.seed + 7919)
    print(f"training examples {len(labels)} (classes {np.bincount(labels, minlength=3).tolist()})", flush=True)
    for channels in args.channels:
        model = fit(images, labels, channels, settings, args.seed)
        onnx_bytes = export(model, channels)
        metrics = measure(onnx_bytes, channels, test_samples, args)
        metrics["train_examples"] = len(labels)
        directory = write_model_dir(
            args.out,
            spec(channels),
            args.version,
            onnx_bytes,
            metrics,
            provenance={
                "script": "genoserve.training.variants.train",
                "seed": str(args.seed),
                "train_region": (
                    f"{CONTIG}:{settings.train[0] + 1}-{settings.train[1]} "
                    f"(simulated reads, {len(settings.simulations)} replicates)"
                ),
                "held_out_region": f"{CONTIG}:{settings.held_out[0] + 1}-{settings.held_out[1]} (simulated reads)",
                "reference": "UCSC hg19 chr20 (DeepVariant test data)",
            },
        )
        shown = {k: round(v, 4) for k, v in metrics.items()}
        print(f"wrote {directory}: {shown} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
