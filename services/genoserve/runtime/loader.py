"""Checks one model version and creates its warmed-up session (shared by the server and workers)."""

from __future__ import annotations

from genoserve.core.errors import ModelLoadError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.placement import placement
from genoserve.runtime.registry import ModelVersionRecord
from genoserve.runtime.session import OrtSession, runs_on_cpu


def load_session(record: ModelVersionRecord, settings: RuntimeSettings, online: bool = False) -> OrtSession:
    """File checksum, graph signature against model.yaml, warm-up; ModelLoadError with the reason.
    ``online``: for the server (threads per call as ``placement`` plans for concurrent calls)."""
    assert record.spec is not None
    problem = registry.check_file(record)
    if problem:
        raise ModelLoadError(problem)
    plan = placement(record.spec, settings, runs_on_cpu(settings), online)
    session = OrtSession(record.onnx_path, settings, plan.intra_op_threads)
    problems = registry.check_signature(record.spec, session.inputs, session.outputs)
    if problems:
        raise ModelLoadError("ONNX graph does not match model.yaml: " + "; ".join(problems))
    if settings.warmup:
        try:
            session.run({t.name: t.example() for t in record.spec.inputs})
        except Exception as exc:
            raise ModelLoadError(f"warm-up run failed: {exc}") from exc
    return session
