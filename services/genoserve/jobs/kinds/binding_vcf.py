"""``binding.score_vcf``: VCF + reference -> bgzipped, tabix-indexed VCF with effect INFO fields.

For each model task, two INFO fields (Number=A: one value per ALT) are declared in the header:
``GS_<model>_<task>_DIFF`` (score(alt) - score(ref)) and ``..._LOGITDIFF``, kipoi-veff's
definitions on windows centred on the variant. ALT alleles that cannot be scored (symbolic, ``*``,
longer than 50 bases) get ``.``; a REF that does not match the reference, or an unknown contig,
fails the job naming the file and record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pysam

from genoserve.binding.contract import BindingContract
from genoserve.binding.variants import VariantSpec, check_variant, windows
from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.base import (
    InputRecordError,
    JobKind,
    PlannedShard,
    ShardContext,
    required_model,
    shard_ranges,
)
from genoserve.jobs.kinds.binding import BindingParams, reference_for, score_sequences
from genoserve.jobs.kinds.params import PositiveInt
from genoserve.jobs.paths import input_file, temporary_name
from genoserve.runtime.registry import ModelVersionRecord

#: Problems that leave an ALT unscored ('.') instead of failing the job.
_UNSCORABLE = ("symbolic", "at most", "alt equals ref")


def info_ids(model: str, task: str) -> tuple[str, str]:
    base = re.sub(r"[^0-9A-Za-z_.]", "_", f"GS_{model}_{task}")
    return f"{base}_DIFF", f"{base}_LOGITDIFF"


def _records(path: Path, start: int, stop: int) -> Iterator[tuple[int, Any]]:
    with pysam.VariantFile(str(path)) as vcf:
        for index, record in enumerate(vcf):
            if index >= stop:
                return
            if index >= start:
                yield index, record


class ScoreVcfParams(BindingParams):
    """``binding.score_vcf``: the effect of every ALT allele of VCF files."""

    shard_size: PositiveInt = 20_000
    """VCF records per shard."""
    reference: str = ""
    """A reference genome registered on the server (setting ``binding.references``); empty: the
    server's default reference. Each variant is scored on the model-length windows around it."""


class ScoreVcf(JobKind[ScoreVcfParams]):
    name = "binding.score_vcf"
    queue = "binding"
    params_model = ScoreVcfParams

    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        return required_model(self.typed(params), "a binding model, e.g. deepbind-ctcf")

    def plan(self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord,
             settings: Settings) -> list[PlannedShard]:  # fmt: skip
        record.contract_as(BindingContract)
        typed = self.typed(params)
        reference_for(settings, typed.reference)
        size = typed.shard_size
        shards: list[PlannedShard] = []
        for index, path in enumerate(inputs):
            try:
                with pysam.VariantFile(str(path)) as vcf:
                    count = sum(1 for _ in vcf)
            except (OSError, ValueError) as exc:
                raise InvalidArgument.field(f"inputs[{index}]", f"{path}: not a readable VCF: {exc}") from exc
            shards += shard_ranges(index, count, size, len(shards), settings)
        return shards

    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        names = [p.name.removesuffix(".gz").removesuffix(".bgz").removesuffix(".vcf") for p in inputs]
        return [output_dir / f"{n}.binding.vcf.gz" for n in names]

    def shard_result(self, output_stem: Path) -> Path:
        return output_stem.with_suffix(".parquet")

    def run_shard(self, ctx: ShardContext) -> int:
        path = ctx.inputs[ctx.input_index]
        contract = ctx.contract_as(BindingContract)
        params = self.typed(ctx.params)
        reference = reference_for(ctx.settings, params.reference)
        slots: list[tuple[int, int]] = []  # (record index, alt number) of each scored pair
        sequences: list[str] = []
        alts_per_record: dict[int, int] = {}
        for index, record in _records(path, ctx.start, ctx.stop):
            alts = record.alts or ()
            alts_per_record[index] = len(alts)
            for number, alt in enumerate(alts):
                variant = VariantSpec(record.id or "", record.chrom, record.pos, record.ref or "", alt)
                problem = check_variant(variant, reference)
                if problem is not None:
                    if any(marker in problem for marker in _UNSCORABLE):
                        continue
                    raise InputRecordError(str(path), f"{index} ({record.chrom}:{record.pos})", problem)
                sequences.extend(windows(variant, reference, contract.length))
                slots.append((index, number))
        logits, scores = score_sequences(ctx, sequences, params.strand)
        diff = scores[1::2] - scores[0::2]
        logit_diff = logits[1::2] - logits[0::2]
        table = {
            "record": pa.array([s[0] for s in slots], pa.int64()),
            "alt": pa.array([s[1] for s in slots], pa.int32()),
            "diff": pa.array(list(diff), pa.list_(pa.float32())),
            "logit_diff": pa.array(list(logit_diff), pa.list_(pa.float32())),
        }
        target = self.shard_result(ctx.output_stem)
        tmp = temporary_name(target)
        pq.write_table(pa.table(table).replace_schema_metadata({"tasks": json.dumps(contract.tasks)}), tmp)
        os.replace(tmp, target)
        return ctx.stop - ctx.start

    def merge(self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path,
              params: Mapping[str, str], roots: Sequence[Path]) -> list[Path]:  # fmt: skip
        finals = self.outputs(inputs, output_dir, params, roots)
        model = self.typed(params).model
        for index, (path, final) in enumerate(zip(inputs, finals, strict=True)):
            path = input_file(path, roots)
            effects: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
            tasks: list[str] = []
            for shard, part in shards:
                if shard.input_index != index:
                    continue
                read = pq.read_table(part)
                tasks = json.loads((read.schema.metadata or {}).get(b"tasks", b"[]"))
                table = read.to_pydict()
                for rec, alt, d, ld in zip(
                    table["record"], table["alt"], table["diff"], table["logit_diff"], strict=True
                ):
                    effects[(rec, alt)] = (d, ld)
            self._write(path, final, model, tasks, effects)
        return finals

    def _write(self, path: Path, final: Path, model: str, tasks: list[str],
               effects: dict[tuple[int, int], tuple[list[float], list[float]]]) -> None:  # fmt: skip
        ids = [info_ids(model, task) for task in tasks]
        declared = "".join(
            f'##INFO=<ID={info_id},Number=A,Type=Float,Description="genoserve {model} {task}: {what}">\n'
            for task, pair in zip(tasks, ids, strict=True)
            for info_id, what in zip(pair, ("score(alt) - score(ref)", "logit(alt) - logit(ref)"), strict=True)
        )
        plain = temporary_name(final.with_suffix(""))
        with pysam.VariantFile(str(path)) as vcf, open(plain, "w") as out:
            header = str(vcf.header).splitlines(keepends=True)
            out.write("".join(header[:-1]) + declared + header[-1])  # new INFO lines before #CHROM
            for index, record in enumerate(vcf):
                fields = str(record).rstrip("\n").split("\t")
                alts = record.alts or ()
                added = []
                for t, (diff_id, logit_id) in enumerate(ids):
                    found = [effects.get((index, number)) for number in range(len(alts))]
                    if any(f is not None for f in found):
                        added.append(f"{diff_id}=" + ",".join(_value(f, 0, t) for f in found))
                        added.append(f"{logit_id}=" + ",".join(_value(f, 1, t) for f in found))
                if added:
                    fields[7] = ";".join(added) if fields[7] == "." else fields[7] + ";" + ";".join(added)
                out.write("\t".join(fields) + "\n")
        tmp = temporary_name(final)
        pysam.tabix_compress(str(plain), str(tmp), force=True)
        plain.unlink()
        pysam.tabix_index(str(tmp), preset="vcf", force=True)
        os.replace(f"{tmp}.tbi", f"{final}.tbi")
        os.replace(tmp, final)


def _value(found: tuple[list[float], list[float]] | None, which: int, task: int) -> str:
    return "." if found is None else f"{found[which][task]:.6g}"
