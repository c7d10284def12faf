"""`genoserve models import cellpose CHECKPOINT --name N`: a Cellpose model file as a segmentation model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from genoserve.cli.common import or_exit


@click.command("cellpose")
@click.argument("checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--name", required=True, help="Model name in the repository (a new model, or its next version).")
@click.option("--model-dir", "repository", type=click.Path(path_type=Path), default="models", show_default=True,
              help="The model repository to write to.")  # fmt: skip
@click.option("--diameter", type=float, default=None,
              help="The model's mean cell diameter in pixels [default: the checkpoint's diam_mean].")  # fmt: skip
@click.option("--channels", type=int, default=1, show_default=True,
              help="Image channels the served model takes: 1 = one channel, the nuclear input zeros (cellpose's "
                   "channels=[0,0] or [c,0]); 2 = channel to segment and nuclear channel "
                   "(channels=[c,n]).")  # fmt: skip
@click.option("--description", default="", help="One line on what the model is (default: what was imported).")
def cellpose_command(
    checkpoint: Path, name: str, repository: Path, diameter: float | None, channels: int, description: str
) -> None:
    """A Cellpose 2.x/3.x model file (the CPnet U-Net, as cellpose saves it) -> ONNX + model.yaml.

    The network is checked against cellpose's own on the same weights, then written only after
    the server's checks and a warm-up run. Needs the import extra (torch, cellpose 3).
    """
    import logging

    try:
        import cellpose  # type: ignore[import-untyped]  # noqa: F401

        from genoserve.importers.cellpose import import_cellpose
    except ImportError as exc:
        click.echo(f"error: {exc.name or exc}: genoserve models import cellpose needs the import extra "
                   "(make setup, or pip install 'genoserve[import]' 'cellpose>=3,<4')", err=True)  # fmt: skip
        sys.exit(2)
    from genoserve.core.settings import RuntimeSettings

    logging.getLogger("genoserve").setLevel(logging.ERROR)
    done = or_exit(
        lambda: import_cellpose(checkpoint, repository, name, RuntimeSettings(), diameter, channels, description)
    )
    net = done.checkpoint
    labels = "unknown" if net.diam_labels is None else f"{net.diam_labels:.4g} px"
    click.echo(f"{repository / name} version {done.check.version}: written, checked and warmed up")
    click.echo(f"  CPnet nbase {list(net.nbase)}, diameter {done.diameter:.4g} px (diam_labels {labels}), "
               f"{done.channels} of {net.nchan} channel(s) served, size multiple {net.size_multiple}")  # fmt: skip
    click.echo(f"  ONNX vs cellpose's network on made-up tiles: max abs diff {done.max_abs_diff:.2g} (outputs up to "
               f"{done.output_scale:.3g}); model.onnx {done.onnx_bytes / 1e6:.1f} MB")  # fmt: skip
