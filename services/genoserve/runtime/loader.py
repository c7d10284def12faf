"""Checks one model version and creates its warmed-up session (shared by the server and workers)."""

from __future__ import annotations

from genoserve.core.errors import ModelLoadError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.registry import ModelVersionRecord
from genoserve.runtime.session import OrtSession


def load_session(record: ModelVersionRecord, settings: RuntimeSettings) -> OrtSession:
    """File checksum, graph signature against model.yaml, warm-up; ModelLoadError with the reason."""
    assert record.spec is not None
    problem = registry.check_file(record)
    if problem:
        raise ModelLoadError(problem)
    session = OrtSession(record.onnx_path, settings)
    problems = registry.check_signature(record.spec, session.inputs, session.outputs)
    if problems:
        raise ModelLoadError("ONNX graph does not match model.yaml: " + "; ".join(problems))
    if settings.warmup:
        try:
            session.run({t.name: t.example() for t in record.spec.inputs})
        except Exception as exc:
            raise ModelLoadError(f"warm-up run failed: {exc}") from exc
    return session
