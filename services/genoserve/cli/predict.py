"""``genoserve predict <family>``: online predictions from files, printed as TSV."""

from __future__ import annotations

import functools
import itertools
import re
import sys
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import click

from genoserve.cli.common import (
    Flags,
    Guarded,
    client_options,
    make_client,
    or_exit,
    output_file,
    progress_bar,
    quiet_option,
)

T = TypeVar("T")
R = TypeVar("R")

#: The request fields each command fills from its flags, as the command spells them in errors.
BINDING = Flags({"crop": "--crop", "strand": "--strand", "reference": "--reference", "model": "--model"})
VARIANTS = Flags({"regions": "--regions", "model": "--model", "sample_name": "--sample", "channels": "--channels"})
SEGMENTATION = Flags({
    "diameter": "--diameter", "cellprob_threshold": "--cellprob-threshold", "flow_threshold": "--flow-threshold",
    "min_size": "--min-size", "channels": "--channel", "image": "--image", "model": "--model",
})  # fmt: skip
EMBEDDING = Flags({
    "min_gene_overlap": "--min-gene-overlap", "not_raw_counts": "--not-raw-counts", "layer": "--layer",
    "batch_labels": "--batch-key", "model": "--model", "gene_names": "--h5ad",
})  # fmt: skip


def batched(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(items, size)):
        yield batch


@click.group()
def predict() -> None:
    """Online predictions from files (small inputs; use `genoserve jobs` for large ones)."""
    from genoserve.core.memory import tune_allocator

    tune_allocator()  # requests of many MiB: reuse freed memory instead of faulting in fresh pages


def _numbered_in_input(run: Callable[[], R], size: int) -> R:
    """``run()`` of a PredictStream of ``size``-sequence batches; its error ("batch N:
    sequences[i] ...") numbered as one request of every sequence would number it."""
    from genoserve.core.errors import FieldViolation, InvalidArgument

    try:
        return run()
    except InvalidArgument as exc:
        found = re.fullmatch(r"batch (\d+): (.*)", exc.message, re.DOTALL)
        if found is None:
            raise
        offset = int(found.group(1)) * size

        def renumber(text: str) -> str:
            return re.sub(r"\bsequences\[(\d+)\]", lambda m: f"sequences[{offset + int(m.group(1))}]", text)

        violations = [FieldViolation(renumber(v.field), v.description) for v in exc.violations]
        raise InvalidArgument(renumber(found.group(2)), violations) from exc


def _fasta(path: Path) -> Iterator[tuple[str, str]]:
    from genoserve.binding.readers import read_fasta

    try:
        for record in read_fasta(path, 0, sys.maxsize, 0, 1):
            yield record.id, record.bases
    except (OSError, ValueError) as exc:  # FastaFormatError names the line
        raise click.BadParameter(f"{path}: {exc}", param_hint="'--fasta'") from exc


def _vcf_variants(path: Path) -> Iterator[Any]:
    import pysam

    from genoserve.v1 import binding_pb2

    try:
        with pysam.VariantFile(str(path)) as vcf:
            for record in vcf:
                for alt in record.alts or ():
                    label = record.id or f"{record.chrom}:{record.pos}"
                    yield binding_pb2.Variant(
                        id=label, chrom=record.chrom, pos=record.pos, ref=record.ref or "", alt=alt
                    )
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not a readable VCF ({exc})", param_hint="'--vcf'") from exc


@predict.command("binding")
@click.option("--model", required=True, help="A binding model, e.g. deepbind-ctcf.")
@click.option("--fasta", type=click.Path(path_type=Path, exists=True), help="Score every sequence of a FASTA.")
@click.option("--sequence", "sequences", multiple=True, help="Score this sequence (repeatable).")
@click.option("--vcf", type=click.Path(path_type=Path, exists=True), help="Score every ALT of a VCF.")
@click.option("--reference", default="", help="With --vcf: a reference registered on the server.")
@click.option("--strand", type=click.Choice(["forward", "max", "mean"]), default=None)
@click.option("--crop", is_flag=True, help="Centre-crop sequences longer than the model's length.")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True, help="Items per request.")
@click.option("--mutagenesis", is_flag=True, help="Per sequence, the logit change of every substitution (TSV).")
@click.option("--logo", type=click.Path(path_type=Path, dir_okay=False), callback=output_file,
              help="With --mutagenesis: a PNG logo of the first task's map averaged over the sequences.")  # fmt: skip
@client_options
def binding(model: str, fasta: Path | None, sequences: tuple[str, ...], vcf: Path | None, reference: str,
            strand: str | None, crop: bool, batch: int, mutagenesis: bool, logo: Path | None,
            **conn: Any) -> None:  # fmt: skip
    """TSV to stdout: per sequence the score and logit of every task; per variant the effects."""
    if sum(x is not None and x != () for x in (fasta, sequences or None, vcf)) != 1:
        raise click.UsageError("give exactly one of --fasta, --sequence, --vcf")
    if (logo is not None and not mutagenesis) or (mutagenesis and vcf is not None):
        raise click.UsageError("--logo needs --mutagenesis, which takes --fasta or --sequence")
    with make_client(**conn) as client:
        if mutagenesis:
            from genoserve.cli.logo import mutagenesis_tsv

            items = _fasta(fasta) if fasta is not None else iter((f"seq{i}", s) for i, s in enumerate(sequences))
            if not mutagenesis_tsv(client, model, items, strand or "", crop, logo, lambda c: or_exit(c, BINDING)):
                raise click.BadParameter(f"{fasta}: no FASTA records ('>' headers)", param_hint="'--fasta'")
            return
        if vcf is not None:
            header = False
            for chunk in batched(_vcf_variants(vcf), batch):
                response = or_exit(
                    functools.partial(client.score_variants, model, chunk, reference, strand or ""), BINDING
                )
                if not header:
                    tasks = [f"{t}_{k}" for t in response.tasks for k in ("diff", "logit_diff")]
                    click.echo("\t".join(["id", "chrom", "pos", "ref", "alt", *tasks, "error"]))
                    header = True
                for variant, result in zip(chunk, response.results, strict=True):
                    values = [f"{v:.6g}" for d, lg in zip(result.diff, result.logit_diff, strict=True) for v in (d, lg)]
                    if result.HasField("error"):
                        values = ["."] * (2 * len(response.tasks))
                    click.echo("\t".join([variant.id, variant.chrom, str(variant.pos), variant.ref, variant.alt,
                                          *values, result.error.message or "."]))  # fmt: skip
            return
        items = _fasta(fasta) if fasta is not None else iter((f"seq{i}", s) for i, s in enumerate(sequences))
        chunks = Guarded(batched(items, batch))  # a bad FASTA record ends the stream with its own error
        header = False

        def stream() -> None:  # chunks on one PredictStream: the server works on several at once
            nonlocal header
            for response in client.predict_stream(model, chunks, strand or "", crop):
                if not header:
                    columns = [f"{t}_{k}" for t in response.tasks for k in ("score", "logit")]
                    click.echo("\t".join(["id", *columns]))
                    header = True
                for result in response.results:
                    values = [f"{v:.6g}" for s, lg in zip(result.scores, result.logits, strict=True) for v in (s, lg)]
                    click.echo("\t".join([result.id, *values]))

        or_exit(lambda: _numbered_in_input(lambda: chunks.call(stream), batch), BINDING)
        if not header and fasta is not None:  # nothing was scored: say so rather than print nothing
            raise click.BadParameter(f"{fasta}: no FASTA records ('>' headers)", param_hint="'--fasta'")


def _regions(texts: tuple[str, ...], bed: Path | None) -> list[Any]:
    from genoserve.variants.make_examples import Region

    # Split at commas that start a new CONTIG:..., not at digit-grouping commas (10,000,000).
    parts = [part for text in texts for part in re.split(r",(?=[^,:]+:)", text) if part.strip()]
    regions = [or_exit(functools.partial(Region.parse, part), VARIANTS) for part in parts]
    if bed is not None:
        from genoserve.variants.evaluate import read_bed

        for contig, intervals in or_exit(functools.partial(read_bed, bed, "--bed")).items():
            regions += [Region(contig, start, end) for start, end in intervals]
    return regions


def _example_batches(
    bam: Path | None,
    reference: Path | None,
    regions: list[Any],
    examples: tuple[Path, ...],
    channels: int,
    size: int,
    realign: bool = True,
    advance: Callable[[int], object] = lambda _: None,
) -> Iterator[list[Any]]:
    """Request batches: pileups built here from the BAM (sent as one batched tensor per request),
    or tf.Examples passed through unchanged. ``advance`` is told the base pairs done (BAM) or the
    examples read, as they are."""
    from genoserve.v1 import variants_pb2
    from genoserve.variants.tfrecord import read_records

    if bam is not None:
        from genoserve.variants.make_examples import PARTITION_SIZE, Region, make_examples

        assert reference is not None
        for region in regions:
            # make_examples works in partitions of PARTITION_SIZE bp, each on its own: calling it
            # per partition gives the same examples and progress as the pileups are made.
            pending: list[Any] = []
            for start in range(region.start, region.end, PARTITION_SIZE):
                part = Region(region.contig, start, min(region.end, start + PARTITION_SIZE))
                _, made = make_examples(bam, reference, part, channels=channels, realign=realign)
                pending.extend(made)
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
                advance(part.end - part.start)
            if pending:
                yield pending
        return
    for path in examples:
        items = (
            variants_pb2.PileupExample(id=f"{path.name}:{i}", tf_example=data)
            for i, data in enumerate(read_records(path))
        )
        for batch in batched(items, size):
            yield batch
            advance(len(batch))


@predict.command("variants")
@click.option("--bam", type=click.Path(path_type=Path, exists=True), help="Indexed BAM to call.")
@click.option("--reference", type=click.Path(path_type=Path, exists=True), help="Indexed FASTA (.fai).")
@click.option("--regions", multiple=True, help="CONTIG:START-END (1-based), comma-separated or repeated.")
@click.option("--bed", type=click.Path(path_type=Path, exists=True), help="Regions as BED.")
@click.option(
    "--examples",
    type=click.Path(path_type=Path, exists=True),
    multiple=True,
    help="DeepVariant make_examples TFRecord(s) to call instead of a BAM.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    callback=output_file,
    help="VCF (.vcf or bgzipped .vcf.gz).",
)
@click.option(
    "--contigs",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Contig lengths for the VCF header with --examples: a .fai (NAME<TAB>LENGTH lines); "
    "--reference also gives them.",
)
@click.option("--model", default="", help="A variants model (default: the server's one for the channel count).")
@click.option("--channels", type=click.Choice(["6", "7"]), default="7", show_default=True)
@click.option("--sample", default="", help="Sample name (default: the BAM read group's SM).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Examples per request.")
@click.option(
    "--realign/--no-realign",
    default=True,
    show_default=True,
    help="Realign reads locally before building pileups (DeepVariant's default).",
)
@click.option(
    "--shared-memory", is_flag=True,
    help="Send the pileups built from --bam through shared memory (to a server on this machine started "
    "with --shared-memory; --examples records go on the channel as they are).",
)  # fmt: skip
@quiet_option
@client_options
def variants(bam: Path | None, reference: Path | None, regions: tuple[str, ...], bed: Path | None,
             examples: tuple[Path, ...], output: Path, contigs: Path | None, model: str, channels: str, sample: str,
             batch: int, realign: bool, quiet: bool, **conn: Any) -> None:  # fmt: skip
    """Call variants through the server: BAM + reference + regions (pileups built here) or
    make_examples TFRecords -> VCF (bgzipped and tabix-indexed for .vcf.gz). A progress bar on
    stderr counts the base pairs (or examples) done and the sites called."""
    from genoserve.api.codecs.variants import to_variant_call
    from genoserve.variants.pipeline import write_calls
    from genoserve.variants.vcf import read_contigs, reference_contigs

    if (bam is None) == (not examples):
        raise click.UsageError("give either --bam (with --reference and --regions/--bed) or --examples")
    wanted = _regions(regions, bed) if bam is not None else []
    if bam is not None and (reference is None or not wanted):
        raise click.UsageError("--bam needs --reference and at least one region (--regions or --bed)")
    if bam is not None and not sample:
        from genoserve.variants.make_examples import sample_name
        from genoserve.variants.reads import open_alignments

        handle = or_exit(lambda: open_alignments(bam))
        sample = sample_name(handle)
        handle.close()
    if examples and not sample:
        from genoserve.variants.examples import read_examples

        first = next(iter(or_exit(lambda: list(itertools.islice(read_examples(examples[0]), 1)))), None)
        sample = first.sample_name if first else ""
    calls: list[Any] = []
    problems = 0
    total = sum(r.end - r.start for r in wanted) if bam is not None else None
    unit, desc = ("bp", "pileups") if bam is not None else (" examples", "examples")
    with make_client(**conn) as client, progress_bar(quiet, total=total, unit=unit, unit_scale=True, desc=desc) as bar:
        batches = Guarded(_example_batches(bam, reference, wanted, examples, int(channels), batch, realign, bar.update))

        def call() -> list[Any]:
            responses = []
            for response in client.call_variants_stream(batches, model, "", sample):
                responses.append(response)
                bar.set_postfix(sites=sum(len(r.calls) for r in responses), refresh=False)
            return responses

        responses = or_exit(lambda: batches.call(call), VARIANTS)
    for response in responses:
        calls.extend(to_variant_call(c) for c in response.calls)
        for result in response.results:
            if result.HasField("error"):
                problems += 1
                click.echo(f"example {result.id}: {result.error.field}: {result.error.message}", err=True)
        for error in response.site_errors:
            problems += 1
            click.echo(f"{error.field}: {error.message}", err=True)
    if contigs is not None:
        path = contigs
        known = or_exit(lambda: read_contigs(path, "--contigs"))
    elif reference is not None:
        known = reference_contigs(reference)
    else:  # tf.Examples carry no contig lengths: the header lists the contigs without one
        known = []
    write_calls(output, calls, known, sample or "SAMPLE")
    passing = sum(c.filters == ["PASS"] for c in calls)
    click.echo(f"{len(calls)} sites ({passing} PASS) written to {output}", err=True)
    if problems:
        sys.exit(1)


@predict.command("segmentation")
@click.option("--model", default="cellpose-nuclei", show_default=True, help="A segmentation model.")
@click.option(
    "--image",
    "image_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A TIFF or PNG image; each page of a multi-page TIFF is segmented as its own image.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    callback=output_file,
    help="Write the label mask here (TIFF, uint16/uint32; a multi-page TIFF in gives one label page per page).",
)
@click.option(
    "--overlay",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=output_file,
    help="Also write outlines on the image (PNG; for a multi-page TIFF one PNG per page, <name>_p0000.png, ...).",
)
@click.option(
    "--cells",
    "cells_path",
    type=click.Path(path_type=Path, dir_okay=False),
    callback=output_file,
    help="Per-cell stats (CSV; image column as in the bulk job: the file's stem, <stem>_p0000 for pages).",
)
@click.option("--channel", "channels", type=int, multiple=True, help="Channel index fed to the model (repeatable).")
@click.option("--diameter", type=float, default=0.0, show_default=True, help="Mean cell diameter (px); 0: no rescale.")
@click.option("--cellprob-threshold", type=float, default=None, help="Logit threshold (default 0).")
@click.option("--flow-threshold", type=float, default=None, help="Flow-error threshold (default 0.4; 0: off).")
@click.option("--min-size", type=int, default=None, help="Smallest mask in pixels (default 15).")
@client_options
def segmentation(model: str, image_path: Path, output: Path, overlay: Path | None, cells_path: Path | None,
                 channels: tuple[int, ...], diameter: float, cellprob_threshold: float | None,
                 flow_threshold: float | None, min_size: int | None, **conn: Any) -> None:  # fmt: skip
    """Segment one image (or each page of a multi-page TIFF, as the bulk job does): label TIFF to
    --output; prints the number of cells per image."""
    from genoserve.client import masks_of
    from genoserve.core.errors import InvalidArgument
    from genoserve.segmentation import images
    from genoserve.segmentation.csvout import image_name, write_cells_csv

    data = image_path.read_bytes()
    try:
        pages = images.read_images(str(image_path)) if data[:4] in images.TIFF_MAGIC else []
    except InvalidArgument:
        pages = []  # undecodable: sent as it is, so the server names the rule broken
    stack = len(pages) > 1
    # One image: the file's bytes as they are; a stack: each page as a raw array.
    sources: list[tuple[int | None, Any]] = list(enumerate(pages)) if stack else [(None, data)]
    masks_per_page: list[Any] = []
    rows: list[dict[str, Any]] = []
    with make_client(**conn) as client:
        for page, source in sources:
            response = or_exit(functools.partial(
                client.segment, model, source, channels=channels, diameter=diameter,
                cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold, min_size=min_size,
            ), SEGMENTATION)  # fmt: skip
            masks = masks_of(response)
            masks_per_page.append(masks)
            name = image_name(image_path, page)
            rows.extend({"image": name, "label": c.label, "area": c.area, "centroid_y": c.centroid_y,
                         "centroid_x": c.centroid_x, "bbox_min_y": c.bbox_min_y, "bbox_min_x": c.bbox_min_x,
                         "bbox_max_y": c.bbox_max_y, "bbox_max_x": c.bbox_max_x, "mean_intensity": c.mean_intensity}
                        for c in response.cells)  # fmt: skip
            if overlay is not None:
                picture = source if page is not None else images.decode(data, str(image_path))
                target = overlay if page is None else overlay.with_name(f"{overlay.stem}_p{page:04d}{overlay.suffix}")
                target.write_bytes(images.overlay_png(picture, masks))
            click.echo(f"{image_path}{'' if page is None else f' page {page}'}: {response.n_cells} cells")
    if stack:
        images.write_label_pages(str(output), masks_per_page)
    else:
        images.write_labels(str(output), masks_per_page[0])
    if cells_path is not None:
        write_cells_csv(cells_path, rows)
    click.echo(f"{len(masks_per_page)} image(s), {len(rows)} cells -> {output}")


@predict.command("embedding")
@click.option("--model", default="scvi-pbmc", show_default=True, help="An embedding model.")
@click.option("--h5ad", "source", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Counts: an .h5ad (X or --layer) or a 10x Cell Ranger .h5.")  # fmt: skip
@click.option("--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Writes an .h5ad: the input plus obsm['X_scVI'] and uns['genoserve'] provenance.")  # fmt: skip
@click.option("--layer", default="", help="Read counts from this layer instead of X.")
@click.option("--batch-key", default="", help="obs column with each cell's batch, for a model with a batch covariate "
              "(default: the batch_key its model.yaml names).")  # fmt: skip
@click.option("--umap", "picture", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a PNG: UMAP of the latent (at most 10,000 cells, subsampled).")  # fmt: skip
@click.option("--color-by", default="", help="obs column that colours the PNG.")
@click.option("--variances", is_flag=True, help="Also write the posterior variances to obsm['X_scVI_var'].")
@click.option("--min-gene-overlap", type=float, default=0.0, help="Default 0.8.")
@click.option("--not-raw-counts", is_flag=True, help="Allow non-integer values.")
@click.option("--chunk", type=int, default=4096, show_default=True, help="Cells per message.")
@quiet_option
@client_options
def embedding(model: str, source: Path, output: Path, layer: str, batch_key: str, picture: Path | None, color_by: str,
              variances: bool, min_gene_overlap: float, not_raw_counts: bool, chunk: int, quiet: bool,
              **conn: Any) -> None:  # fmt: skip
    """Embed every cell of a file through CellEmbedding.EmbedStream, reading and writing in chunks
    (a progress bar on stderr counts the cells)."""
    from genoserve.embedding.plot import embedding_png

    if output.resolve() == source.resolve():
        raise click.UsageError("--output must differ from --h5ad")
    for column, option in ((batch_key, "--batch-key"), (color_by if picture is not None else "", "--color-by")):
        _check_obs_column(source, column, option)
    with make_client(**conn) as client:
        batch_key = batch_key or or_exit(functools.partial(_default_batch_key, client, model, source))
        summary = or_exit(functools.partial(_embed_file, client, model, source, output, layer, batch_key,
                                            min_gene_overlap, not_raw_counts, chunk, variances, quiet),
                          EMBEDDING)  # fmt: skip
    click.echo(summary)
    if picture is not None:
        embedding_png(output, picture, color_by=color_by)
        click.echo(f"wrote {picture}")


def _check_obs_column(source: Path, column: str, option: str) -> None:
    """An obs column named by ``option`` exists, checked before any work is done."""
    from genoserve.core.errors import InvalidArgument
    from genoserve.embedding.h5io import read_obs_column

    if not column:
        return
    try:
        read_obs_column(source, column, 0, 1)
    except InvalidArgument as exc:
        rule = exc.violations[0].description if exc.violations else exc.message
        raise click.BadParameter(rule, param_hint=f"'{option}'") from exc
    except (OSError, KeyError) as exc:  # not an .h5ad (a 10x .h5 has no obs)
        raise click.BadParameter(f"{source}: no obs columns to read ({exc})", param_hint=f"'{option}'") from exc


def _default_batch_key(client: Any, model: str, source: Path) -> str:
    """For a model with a batch covariate (a ``batch`` input, its labels the batches): the obs
    column its model.yaml names (``preprocessing.batch_key``, as the ``embedding.embed_h5ad`` job
    reads it and as scvi-tools' ``batch_key`` was set up). "" for a model without a batch input (the
    server then says what is missing); a usage error, before any work, when the model names no
    column or the file's obs lacks it."""
    from genoserve.embedding.contract import BATCH

    info = client.get_model(model)
    batches = next((list(t.labels) for t in info.inputs if t.name == BATCH), [])
    if not batches:
        return ""
    key = str(info.preprocessing.get("batch_key", ""))
    rule = f"{model} takes each cell's batch, one of {batches}: pass --batch-key (the obs column that holds it)"
    if not key:
        raise click.BadParameter(f"{rule}; its model.yaml names none", param_hint="'--batch-key'")
    try:
        _check_obs_column(source, key, "--batch-key")
    except click.BadParameter as exc:
        raise click.BadParameter(f"{rule}; its model.yaml names obs[{key!r}]: {exc.message}",
                                 param_hint="'--batch-key'") from exc  # fmt: skip
    click.echo(f"batch of each cell: obs[{key!r}] (the batch_key of {model}'s model.yaml)", err=True)
    return key


def _embed_file(client: Any, model: str, source: Path, output: Path, layer: str, batch_key: str,
                min_gene_overlap: float, not_raw_counts: bool, chunk: int, variances: bool = False,
                quiet: bool = True) -> str:  # fmt: skip
    from genoserve.api.codecs.tensor import to_numpy
    from genoserve.client.client import embed_request
    from genoserve.embedding.h5io import EmbeddingWriter, open_counts, read_obs_column

    with open_counts(source, layer) as counts:

        def requests() -> Iterator[Any]:
            for start in range(0, counts.n_cells, chunk):
                stop = min(start + chunk, counts.n_cells)
                matrix = counts.read(start, stop)
                labels = read_obs_column(source, batch_key, start, stop) if batch_key else []
                genes = counts.genes if start == 0 else []
                yield embed_request(model if start == 0 else "", genes, matrix, counts.cell_ids(start, stop), labels,
                                    min_gene_overlap, not_raw_counts, return_variances=variances)  # fmt: skip

        stream = Guarded(requests())
        writer: EmbeddingWriter | None = None
        last: Any = None
        try:
            with progress_bar(quiet, total=counts.n_cells, unit=" cells", unit_scale=True) as bar:

                def embed_all() -> None:
                    nonlocal writer, last
                    for response in client.embed_stream(stream):
                        latent = to_numpy(response.latent, "latent")
                        if writer is None:
                            var_key = "X_scVI_var" if variances else ""
                            writer = EmbeddingWriter(counts, output, latent.shape[1], variances_key=var_key)
                        writer.write(latent, to_numpy(response.variances, "variances") if variances else None)
                        bar.update(latent.shape[0])
                        last = response

                stream.call(embed_all)  # a file the stream could not read fails here, before finish
            if writer is None or last is None:
                raise click.ClickException(f"{source}: no cells")
            overlap = last.gene_overlap
            writer.finish({
                "model": last.model, "version": last.version, "gene_overlap": float(overlap.fraction),
                "genes_matched": int(overlap.matched), "model_genes": int(overlap.model_genes),
                "source": str(source), "layer": layer or "X", "written_by": "genoserve predict embedding",
                **({"batch_key": batch_key} if batch_key else {}),
                **({"variances_key": "X_scVI_var"} if variances else {}),
            })  # fmt: skip
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    return (f"wrote {output}: {counts.n_cells} cells, obsm['X_scVI'] from {last.model} v{last.version}, "
            f"gene overlap {overlap.fraction:.3f} ({overlap.matched}/{overlap.model_genes})")  # fmt: skip
