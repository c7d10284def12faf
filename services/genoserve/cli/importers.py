"""`genoserve models import ...`: models trained with other tools into the model repository."""

from __future__ import annotations

import click


@click.group("import")
def import_group() -> None:
    """Convert a model trained with another tool into the model repository (ONNX + model.yaml)."""


from genoserve.cli.import_scvi import scvi_command  # noqa: E402

import_group.add_command(scvi_command)

from genoserve.cli.import_torch import torch_command  # noqa: E402

import_group.add_command(torch_command)

from genoserve.cli.import_cellpose import cellpose_command  # noqa: E402

import_group.add_command(cellpose_command)
