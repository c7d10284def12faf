"""`genoserve models import ...`: models trained with other tools into the model repository."""

from __future__ import annotations

import click


@click.group("import")
def import_group() -> None:
    """Convert a model trained with another tool into the model repository (ONNX + model.yaml)."""
