"""`genoserve models import scvi MODEL_DIR --name N`: an scvi-tools SCVI model as an embedding model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from genoserve.cli.common import or_exit


@click.command("scvi")
@click.argument("model_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", required=True, help="Model name in the repository (a new model, or its next version).")
@click.option("--model-dir", "repository", type=click.Path(path_type=Path), default="models", show_default=True,
              help="The model repository to write to.")  # fmt: skip
@click.option("--description", default="", help="One line on what the model is (default: what was imported).")
def scvi_command(model_dir: Path, name: str, repository: Path, description: str) -> None:
    """A directory written by scvi.model.SCVI.save -> ONNX encoder + gene list + batch categories.

    The encoder is checked against scvi-tools on the same weights, then written only after the
    server's checks and a warm-up run. Needs the import extra (scvi-tools, torch).
    """
    import logging

    try:
        import scvi  # type: ignore[import-untyped]

        from genoserve.importers.scvi import import_scvi
    except ImportError as exc:
        click.echo(f"error: {exc.name or exc}: genoserve models import scvi needs the import extra "
                   "(pip install 'genoserve[import]')", err=True)  # fmt: skip
        sys.exit(2)
    from genoserve.core.settings import RuntimeSettings

    scvi.settings.verbosity = logging.ERROR  # not its "File ... already downloaded" notes
    logging.getLogger("genoserve").setLevel(logging.ERROR)
    done = or_exit(lambda: import_scvi(model_dir, repository, name, RuntimeSettings(), description))
    summary = done.summary
    batches = f"{len(summary.batches)} batches from obs[{summary.batch_key!r}]" if summary.takes_batch else "no batch"
    click.echo(f"{repository / name} version {done.check.version}: written, checked and warmed up")
    click.echo(f"  {len(summary.genes)} genes, {batches}, {summary.n_latent} latent dimensions "
               f"(scvi-tools {summary.scvi_version})")  # fmt: skip
    click.echo(f"  ONNX vs scvi-tools: latent mean max abs diff {done.mean_diff:.2g}, "
               f"variance {done.var_diff:.2g}")  # fmt: skip
