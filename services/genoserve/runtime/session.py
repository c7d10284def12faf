"""ONNX Runtime sessions: provider choice, threads, warm-up, and IO binding on GPU."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from genoserve.core.errors import ModelLoadError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.prologue import rewrite
from genoserve.runtime.spec import DTYPES

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class PortSignature:
    """An input or output as the ONNX graph declares it (dims are ints or symbolic names)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]


def choose_providers(settings: RuntimeSettings, available: Sequence[str]) -> list[Any]:
    """Providers in preference order: CUDA first when present and asked for, CPU always last."""
    if settings.device == "cuda" and CUDA not in available:
        raise ModelLoadError("device=cuda but this onnxruntime build has no CUDAExecutionProvider")
    providers: list[Any] = []
    if settings.device in ("auto", "cuda") and CUDA in available:
        providers.append((CUDA, {"device_id": settings.cuda_device_id}))
    providers.append(CPU)
    return providers


def runs_on_cpu(settings: RuntimeSettings) -> bool:
    """Whether a session made with ``settings`` would run on the CPU provider."""
    return bool(choose_providers(settings, ort.get_available_providers())[0] == CPU)


def _rewritten(path: Path, fold_log1p: bool) -> tuple[bytes, frozenset[str]] | None:
    """The graph's bytes after ``prologue.rewrite`` and the inputs whose log1p was folded out, or
    None when nothing changed. Graphs with weights in external files are left alone (their bytes
    alone would not hold the weights)."""
    graph = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        return None
    folded, changed = rewrite(graph, fold_log1p)
    return (graph.SerializeToString(), folded) if changed else None


#: ONNX Runtime's input type names -> numpy dtypes (for the test input of ``_disagreement``).
_ORT_DTYPES = {ort_type: dtype for dtype, ort_type in DTYPES.values()}


def _disagreement(original: str, rewritten: ort.InferenceSession, folded: frozenset[str], providers: list[Any]) -> str:
    """ "" when the rewritten session gives the original graph's outputs (within float rounding)
    for a small made-up input of non-negative whole numbers (4 per dynamic dimension), else what
    differed."""
    try:
        before = ort.InferenceSession(original, providers=providers)
        rng = np.random.default_rng(0)
        feeds = {}
        for port in before.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 4 for d in port.shape]
            feeds[port.name] = rng.poisson(2.0, size=shape).astype(_ORT_DTYPES[port.type])
        expected = before.run(None, feeds)
        got = rewritten.run(None, {n: np.log1p(a) if n in folded else a for n, a in feeds.items()})
    except Exception as exc:  # an input this test cannot make up, or a graph that does not run
        return f"cannot compare: {exc}"
    for port, want, have in zip(before.get_outputs(), expected, got, strict=True):
        scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
        if np.shape(want) != np.shape(have) or not np.allclose(have, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)):
            return f"output {port.name} differs"
    return ""


class OrtSession:
    """One ONNX Runtime inference session for one model version; ``run`` is thread-safe.

    ``log1p_inputs``: inputs whose leading log1p was folded out of the graph
    (``settings.graph_rewrites``, ``genoserve.runtime.prologue``): ``run`` takes log1p(x) for them, not x.
    """

    def __init__(self, path: Path, settings: RuntimeSettings, intra_op_threads: int | None = None) -> None:
        """``intra_op_threads``: threads per call (None: ``settings.intra_op_threads``; 0: ONNX
        Runtime's default); ``genoserve.runtime.placement`` decides it for the loader."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
        if threads:
            options.intra_op_num_threads = threads
        if settings.inter_op_threads:
            options.inter_op_num_threads = settings.inter_op_threads
        spin = "1" if settings.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        providers = choose_providers(settings, ort.get_available_providers())
        self.log1p_inputs: frozenset[str] = frozenset()
        try:
            # On a GPU the graph's log1p costs next to nothing; the host's numpy one would not.
            rewritten = _rewritten(path, providers[0] == CPU) if settings.graph_rewrites else None
            if rewritten is not None:
                try:
                    self._session = ort.InferenceSession(rewritten[0], sess_options=options, providers=providers)
                    problem = _disagreement(str(path), self._session, rewritten[1], providers)
                except Exception as exc:  # the rewrite's fault, not the model's: serve it as it is
                    problem = f"cannot load: {exc}"
                if problem:
                    log.warning("%s: the rewritten first layer disagrees with the graph (%s); serving the graph as "
                                "it is", path, problem)  # fmt: skip
                    rewritten = None
                else:
                    self.log1p_inputs = rewritten[1]
                    log.info("%s: first layer rewritten at load (log1p taken by the caller for: %s)", path,
                             sorted(self.log1p_inputs) or "none")  # fmt: skip
            if rewritten is None:
                self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.provider: str = self._session.get_providers()[0]
        self.intra_op_threads = threads
        self._device_id = settings.cuda_device_id
        self._output_names = [o.name for o in self._session.get_outputs()]

    @property
    def inputs(self) -> list[PortSignature]:
        return [PortSignature(i.name, i.type, tuple(i.shape)) for i in self._session.get_inputs()]

    @property
    def outputs(self) -> list[PortSignature]:
        return [PortSignature(o.name, o.type, tuple(o.shape)) for o in self._session.get_outputs()]

    @property
    def on_gpu(self) -> bool:
        return self.provider == CUDA

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run one batch. Inputs and outputs are host numpy arrays keyed by name."""
        if self.on_gpu:
            return self._run_bound(feeds)
        outputs = self._session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, outputs, strict=True))

    def _run_bound(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        # IO binding: inputs are copied to the device once, outputs are allocated on the device by
        # ONNX Runtime and copied back once, instead of per-node host round trips.
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, outputs, strict=True))
