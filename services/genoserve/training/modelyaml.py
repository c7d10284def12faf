"""Writes a model directory (``model.yaml`` + ``<version>/model.onnx``) in the registry's format."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from genoserve.runtime.spec import ModelSpec


def write_model_dir(
    root: Path,
    spec: dict[str, Any],
    version: int,
    onnx_bytes: bytes,
    metrics: dict[str, float],
    provenance: dict[str, str],
) -> Path:
    """Write ``root/<name>/<version>/model.onnx`` and add/replace that version in model.yaml.

    Returns the model directory. The yaml is validated against the registry's schema first.
    """
    directory = root / spec["name"]
    (directory / str(version)).mkdir(parents=True, exist_ok=True)
    (directory / str(version) / "model.onnx").write_bytes(onnx_bytes)
    entry = {
        "version": version,
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "provenance": provenance,
    }
    path = directory / "model.yaml"
    versions = []
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        versions = [v for v in old.get("versions", []) if v.get("version") != version]
    document = {**spec, "versions": sorted([*versions, entry], key=lambda v: v["version"])}
    ModelSpec.model_validate(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return Path(directory)
