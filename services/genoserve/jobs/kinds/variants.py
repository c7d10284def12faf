"""Bulk job kinds of the variants family.

``variants.call_bam``: indexed BAM(s) + reference + regions (``regions`` param or ``bed``) -> one
bgzipped, tabix-indexed VCF per BAM, sharded by region chunks of ``shard_size`` bp.
``variants.call_examples``: DeepVariant make_examples TFRecord(s) -> one VCF (``calls.vcf.gz``),
one shard per input file (a site's examples stay in one file, as make_examples writes them).

``reference`` is a reference registered in settings (binding.references) or a FASTA path under
the job input roots. The VCF header's contig lengths come from the BAM (``call_bam``); for
``call_examples`` (tf.Examples carry no lengths) from a ``contigs`` file (a .fai, or NAME<TAB>LENGTH
lines, under the input roots), else from ``reference`` (or the default registered reference);
with none of these the contigs are listed without a length. Problems with the data (missing BAM
index, a contig the BAM does not have, a truncated BAM, a TFRecord CRC error) fail the job naming
the file and the contig or record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import numpy.typing as npt
import pysam
from pydantic import BeforeValidator

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import InputRecordError, JobKind, PlannedShard, ShardContext, check_shard_count
from genoserve.jobs.kinds.params import Flag, ModelName, ModelParams, at_least
from genoserve.jobs.paths import confine, input_file, temporary_name
from genoserve.runtime.registry import ModelVersionRecord
from genoserve.runtime.spec import ModelSpec
from genoserve.variants.evaluate import read_bed
from genoserve.variants.examples import parse_example
from genoserve.variants.make_examples import PARTITION_SIZE, Region, make_examples
from genoserve.variants.pipeline import Predict, call_examples, write_calls
from genoserve.variants.postprocess import VariantCall
from genoserve.variants.tfrecord import RecordError, read_records
from genoserve.variants.vcf import read_contigs, reference_contigs

DEFAULT_MODEL = "deepvariant-cnn-7ch"


def _channels(spec: ModelSpec) -> int:
    if spec.family != "variants" or len(spec.inputs) != 1 or spec.inputs[0].shape[1:3] != (100, 221):
        raise InvalidArgument.field("params[model]", f"{spec.name} is not a variants model (uint8 [-1, 100, 221, C])")
    channels = spec.inputs[0].shape[3]
    if channels not in (6, 7):
        raise InvalidArgument.field("params[model]", f"{spec.name} takes {channels} channels; 6 or 7 are supported")
    return channels


def _beside(path: Path, roots: Sequence[Path], field: str, suffixes: Sequence[str]) -> None:
    """Files that libraries open next to ``path`` (an index), where present, are confined too."""
    for suffix in suffixes:
        for candidate in (Path(f"{path}{suffix}"), path.with_suffix(suffix)):
            if os.path.lexists(candidate):
                input_file(candidate, roots, field)


def alignments(path: Path, roots: Sequence[Path], field: str = "inputs") -> Path:
    """A BAM/CRAM input about to be opened: it and the index files beside it lie under ``roots``."""
    real = input_file(path, roots, field)
    _beside(path, roots, field, (".bai", ".csi", ".crai"))
    return real


def _predict(ctx: ShardContext) -> Predict:
    name_in, name_out = ctx.spec.inputs[0].name, ctx.spec.outputs[0].name

    def predict(batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        ctx.check()
        return np.asarray(ctx.infer({name_in: batch})[name_out], dtype=np.float32)

    return predict


def resolve_reference(settings: Settings, raw: str, required: bool = True) -> Path | None:
    """A registered reference name, or a FASTA path confined to the job input roots."""
    if not raw:
        default = settings.binding.resolved_default
        if default:
            return Path(settings.binding.references[default])
        if required:
            raise InvalidArgument.field("params[reference]", "is required (a registered name or a FASTA path)")
        return None
    if raw in settings.binding.references:
        return Path(settings.binding.references[raw])
    registered = sorted(settings.binding.references)
    roots = settings.jobs.input_roots
    try:
        path = confine(raw, roots, "params[reference]", must_exist=True)
    except InvalidArgument as exc:
        if "/" not in raw and not raw.endswith((".fa", ".fasta", ".gz")) and "does not exist" in exc.message:
            raise InvalidArgument.field(
                "params[reference]",
                f"{raw!r} is neither a registered reference (registered: {registered}; setting "
                "binding.references) nor a FASTA file",
            ) from exc
        raise
    path = input_file(path, roots, "params[reference]")
    if not os.path.lexists(f"{path}.fai"):
        raise InvalidArgument.field("params[reference]", f"{raw}: no .fai index beside the FASTA (samtools faidx)")
    _beside(path, roots, "params[reference]", (".fai", ".gzi"))
    return path


def _write_part(target: Path, calls: list[VariantCall], contigs: list[tuple[str, int]] | None = None) -> None:
    """JSON lines: an optional ``{"contigs": [[name, length], ...]}`` line, then one call per line."""
    tmp = temporary_name(target)
    with open(tmp, "w") as fh:
        if contigs:
            fh.write(json.dumps({"contigs": contigs}) + "\n")
        for call in calls:
            fh.write(json.dumps(asdict(call)) + "\n")
    os.replace(tmp, target)


def _read_part(path: Path) -> tuple[list[VariantCall], list[tuple[str, int]]]:
    calls: list[VariantCall] = []
    contigs: list[tuple[str, int]] = []
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            item = json.loads(line)
            if "contigs" in item:
                contigs = [(str(name), int(length)) for name, length in item["contigs"]]
            else:
                calls.append(VariantCall(**item))
    return calls, contigs


def _contigs_param(settings: Settings, params: CallExamplesParams) -> list[tuple[str, int]] | None:
    """Contig lengths for the VCF header: the ``contigs`` file (a .fai), else the reference's."""
    if params.contigs:
        roots = settings.jobs.input_roots
        path = confine(params.contigs, roots, "params[contigs]", must_exist=True)
        return read_contigs(input_file(path, roots, "params[contigs]"), "params[contigs]")
    reference = resolve_reference(settings, params.reference, required=False)
    return reference_contigs(reference) if reference is not None else None


def _write_final(final: Path, calls: list[VariantCall], contigs: list[tuple[str, int]], sample: str) -> None:
    """bgzipped VCF + .tbi (``pipeline.write_calls``) under temporary names, then renamed (index first)."""
    tmp = temporary_name(final)
    tmp = tmp.with_name(tmp.name + ".vcf.gz")
    write_calls(tmp, calls, contigs, sample)
    os.replace(f"{tmp}.tbi", f"{final}.tbi")
    os.replace(tmp, final)


class VariantsParams(ModelParams):
    model: ModelName = ""
    """A variants model (empty: deepvariant-cnn-7ch)."""
    reference: str = ""
    """The reference: a name registered on the server (setting ``binding.references``) or a FASTA
    path (with .fai) under the job input roots; empty: the server's default reference."""
    sample: str = ""
    """Sample name in the VCF (empty: call_bam takes the BAM read group's SM, call_examples the
    examples' own)."""


class CallBamParams(VariantsParams):
    """``variants.call_bam``: call variants from indexed BAMs, one VCF per BAM."""

    regions: str = ""
    """Comma-separated regions CONTIG:START-END (1-based, inclusive) to call; with neither regions
    nor bed: every contig of the BAM."""
    bed: str = ""
    """A BED file of regions to call (under the job input roots), added to ``regions``."""
    shard_size: Annotated[int, BeforeValidator(at_least(1000, "bp"))] = 1_000_000
    """Base pairs of the regions per shard (at least 1000)."""
    realign: Flag = True
    """Realign reads locally before the pileups are built (DeepVariant's default)."""


class CallExamplesParams(VariantsParams):
    """``variants.call_examples``: call DeepVariant make_examples TFRecords into one VCF."""

    contigs: str = ""
    """Contig lengths for the VCF header: a .fai (NAME<TAB>LENGTH lines) under the job input roots;
    empty: the reference's, else the contigs are listed without a length."""


V = TypeVar("V", bound=VariantsParams)


class _VariantsKind(JobKind[V]):
    queue = "variants"

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        typed = self.typed(params)
        return typed.model or DEFAULT_MODEL, typed.version

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".calls.jsonl")


class CallBam(_VariantsKind[CallBamParams]):
    name = "variants.call_bam"
    params_model = CallBamParams

    def _regions(self, path: Path, params: CallBamParams, settings: Settings) -> list[Region]:
        regions = [Region.parse(r, "params[regions]") for r in params.regions.split(",") if r.strip()]
        if params.bed:
            roots = settings.jobs.input_roots
            bed = input_file(confine(params.bed, roots, "params[bed]", must_exist=True), roots, "params[bed]")
            regions += [Region(c, s, e) for c, spans in read_bed(bed, "params[bed]").items() for s, e in spans]
        if not regions:  # every contig of the BAM
            try:
                with pysam.AlignmentFile(str(path), "rb") as bam:
                    regions = [Region(n, 0, ln) for n, ln in zip(bam.references, bam.lengths, strict=True)]
            except (OSError, ValueError) as exc:
                raise InvalidArgument.field("inputs", f"{path}: not a readable BAM: {exc}") from exc
        return regions

    def _chunks(self, path: Path, params: Mapping[str, str], settings: Settings, planned: int = 0) -> list[Region]:
        """The input's regions cut into shards of ``shard_size`` bp (``planned``: shards of the
        job's earlier inputs, counted against ``jobs.max_shards_per_job``)."""
        typed = self.typed(params)
        size = typed.shard_size
        regions = self._regions(path, typed, settings)
        check_shard_count(planned + sum(-(-(r.end - r.start) // size) for r in regions), size, settings)
        chunks = []
        for region in regions:
            for start in range(region.start, region.end, size):
                chunks.append(Region(region.contig, start, min(region.end, start + size)))
        return chunks

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        assert record.spec is not None
        _channels(record.spec)
        resolve_reference(settings, self.typed(params).reference)
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            path = alignments(path, settings.jobs.input_roots, f"inputs[{index}]")
            for k, chunk in enumerate(self._chunks(path, params, settings, len(shards))):
                shards.append(PlannedShard(index, k, k + 1, chunk.end - chunk.start))
        return shards

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        return [output_dir / f"{p.name.removesuffix('.bam').removesuffix('.cram')}.vcf.gz" for p in inputs]

    def run_shard(self, ctx: ShardContext) -> int:
        path = alignments(ctx.inputs[ctx.input_index], ctx.roots)
        typed = self.typed(ctx.params)
        reference = resolve_reference(ctx.settings, typed.reference)
        assert reference is not None
        region = self._chunks(path, ctx.params, ctx.settings)[ctx.start]
        examples = []
        # make_examples works in partitions of PARTITION_SIZE bp, each on its own: calling it per
        # partition gives the same examples and lets a cancelled job stop between partitions.
        for start in range(region.start, region.end, PARTITION_SIZE):
            ctx.check()
            partition = Region(region.contig, start, min(region.end, start + PARTITION_SIZE))
            try:
                _, made = make_examples(path, reference, partition, channels=_channels(ctx.spec), realign=typed.realign)
            except InvalidArgument as exc:
                raise InputRecordError(str(path), f"region {region}", exc.message) from exc
            examples.extend(made)
            ctx.progress(partition.end - region.start)
        calls = call_examples(examples, _predict(ctx))
        ctx.check()
        _write_part(self.shard_result(ctx.output_stem), calls)
        return region.end - region.start

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        from genoserve.variants.make_examples import sample_name

        finals = self.outputs(inputs, output_dir, params, roots)
        inputs = [alignments(p, roots) for p in inputs]
        for index, final in enumerate(finals):
            calls = [c for shard, part in shards if shard.input_index == index for c in _read_part(part)[0]]
            sample = self.typed(params).sample
            if not sample:
                with pysam.AlignmentFile(str(inputs[index]), "rb") as bam:
                    sample = sample_name(bam)
                    contigs = list(zip(bam.references, bam.lengths, strict=True))
            else:
                with pysam.AlignmentFile(str(inputs[index]), "rb") as bam:
                    contigs = list(zip(bam.references, bam.lengths, strict=True))
            _write_final(final, calls, contigs, sample)
        return finals


class CallExamples(_VariantsKind[CallExamplesParams]):
    name = "variants.call_examples"
    params_model = CallExamplesParams

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        assert record.spec is not None
        _channels(record.spec)
        _contigs_param(settings, self.typed(params))
        return [PlannedShard(i, 0, 1, 1) for i in range(len(inputs))]

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        return [output_dir / "calls.vcf.gz"]

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        channels = _channels(ctx.spec)
        examples = []
        try:
            for index, data in enumerate(read_records(path)):
                example = parse_example(data, f"{path}: record {index}", ctx.settings.variants.max_alts_per_site)
                if example.image.shape != (100, 221, channels):
                    raise InputRecordError(
                        str(path),
                        index,
                        f"pileup shape {list(example.image.shape)}; model takes [100, 221, {channels}]",
                    )
                examples.append(example)
        except RecordError as exc:
            raise InputRecordError(str(path), exc.index, exc.message) from exc
        except InvalidArgument as exc:
            raise InputRecordError(str(path), len(examples), exc.message) from exc
        typed = self.typed(ctx.params)
        if typed.sample:
            for example in examples:
                example.sample_name = typed.sample
        try:
            calls = call_examples(examples, _predict(ctx))
        except InvalidArgument as exc:
            raise InputRecordError(str(path), "examples", exc.message) from exc
        _write_part(self.shard_result(ctx.output_stem), calls, _contigs_param(ctx.settings, typed))
        return 1

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        [final] = self.outputs(inputs, output_dir, params, roots)
        parts = [_read_part(part) for _, part in shards]
        calls = [c for part_calls, _ in parts for c in part_calls]
        # Lengths come from the shards (resolved there from `contigs` or `reference`, which needs
        # the settings); without either, the examples' contigs are listed without a length (write_calls).
        contigs = next((part_contigs for _, part_contigs in parts if part_contigs), [])
        sample = self.typed(params).sample or next((c.sample_name for c in calls if c.sample_name), "") or "SAMPLE"
        _write_final(final, calls, contigs, sample)
        return [final]
