"""`genoserve models import torch FILE --name N --family binding|platform`: a TorchScript or
torch.export file as a binding or platform model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from genoserve.cli.common import or_exit


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        dims = tuple(int(d) for d in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"sizes after the batch, e.g. 128 or 100,4; got {value!r}", ctx, param) from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"sizes must be positive, got {value!r}", ctx, param)
    return dims


@click.command("torch")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", required=True, help="Model name in the repository (a new model, or its next version).")
@click.option("--family", type=click.Choice(["binding", "platform"]), required=True,
              help="binding: one-hot DNA [batch, length, 4] -> logits [batch, tasks]; platform: generic.")  # fmt: skip
@click.option("--length", type=click.IntRange(min=1), help="Binding: the input length (default: from a .pt2).")
@click.option("--input-shape", callback=_shape, help="Platform: the input's sizes after the batch, e.g. 128 "
              "or 100,4 (default: from a .pt2).")  # fmt: skip
@click.option("--tasks", default="", help="Names of the output's columns, comma-separated (binding: the tasks).")
@click.option("--input-name", default="x", show_default=True, help="Name of the input port.")
@click.option("--output-name", default="", help="Name(s) of the output port(s), comma-separated "
              "(default: logit for binding, y for platform).")  # fmt: skip
@click.option("--default-strand", type=click.Choice(["forward", "max", "mean"]), default="max", show_default=True,
              help="Binding: strand scoring when a request does not choose.")  # fmt: skip
@click.option("--model-dir", "repository", type=click.Path(path_type=Path), default="models", show_default=True,
              help="The model repository to write to.")  # fmt: skip
@click.option("--description", default="", help="One line on what the model is (default: what was imported).")
def torch_command(file: Path, name: str, family: str, length: int | None, input_shape: tuple[int, ...] | None,
                  tasks: str, input_name: str, output_name: str, default_strand: str, repository: Path,
                  description: str) -> None:  # fmt: skip
    """A TorchScript (torch.jit.save) or torch.export (torch.export.save, .pt2) file -> ONNX + model.yaml.

    The ONNX graph's outputs are checked against torch on made-up inputs (max abs diff 1e-4),
    then written only after the server's checks and a warm-up run. Needs the import extra (torch).
    """
    import logging

    try:
        from genoserve.importers.torch import import_torch
    except ImportError as exc:
        click.echo(f"error: {exc.name or exc}: genoserve models import torch needs the import extra "
                   "(pip install 'genoserve[import]')", err=True)  # fmt: skip
        sys.exit(2)
    from genoserve.core.settings import RuntimeSettings

    logging.getLogger("genoserve").setLevel(logging.ERROR)
    done = or_exit(lambda: import_torch(
        file, repository, name, RuntimeSettings(), "binding" if family == "binding" else "platform",
        length=length, input_shape=input_shape, tasks=_names(tasks), input_name=input_name,
        output_names=_names(output_name), default_strand=default_strand, description=description,
    ))  # fmt: skip
    shape = ", ".join(map(str, done.item_shape))
    click.echo(f"{repository / name} version {done.check.version}: written, checked and warmed up")
    click.echo(f"  {done.format}: input {input_name} [batch, {shape}], outputs {list(done.output_names)}; "
               f"ONNX vs torch max abs diff {done.max_abs_diff:.2g}")  # fmt: skip
