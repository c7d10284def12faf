"""Scores an exported binding model on both strands as the server does, and its metrics on the
held-out sets (no torch).

Strand modes: ``forward`` (the given strand), ``max`` and ``mean`` of the forward and the
reverse-complement logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from genoserve.training.binding import benchmark
from genoserve.training.binding.motifs import Motif, max_log_odds
from genoserve.training.binding.onehot import reverse_complement
from genoserve.training.binding.rule import GRAMMARS
from genoserve.training.binding.simulate import Backgrounds, SimulatedSet
from genoserve.training.metrics import auprc, auroc

Array = np.ndarray[Any, Any]


def cpu_session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session (``threads`` 0 lets ONNX Runtime choose)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def strand_logits(session: ort.InferenceSession, x: Array, strand: str = "max", batch_size: int = 512) -> Array:
    """x: float32 ``[n, length, 4]`` -> float32 ``[n, tasks]`` logits combined over strands."""
    if strand not in ("forward", "max", "mean"):
        raise ValueError(f"strand must be forward, max or mean, got {strand!r}")
    parts = []
    for lo in range(0, x.shape[0], batch_size):
        chunk = np.ascontiguousarray(x[lo : lo + batch_size], dtype=np.float32)
        forward = session.run(["logit"], {"x": chunk})[0]
        if strand == "forward":
            parts.append(forward)
            continue
        reverse = session.run(["logit"], {"x": reverse_complement(chunk)})[0]
        parts.append(np.maximum(forward, reverse) if strand == "max" else (forward + reverse) / 2)
    return np.concatenate(parts).astype(np.float32)


def task_metrics(labels: Array, scores: Array, tasks: Sequence[str], prefix: str = "") -> dict[str, float]:
    """labels, scores: ``[n, tasks]``. One task: ``auroc``, ``auprc``; several: the macro means
    plus ``auroc_<task>`` and ``auprc_<task>``. Keys start with ``prefix``."""
    per_task = {
        task: (auroc(labels[:, j], scores[:, j]), auprc(labels[:, j], scores[:, j])) for j, task in enumerate(tasks)
    }
    metrics = {
        f"{prefix}auroc": float(np.mean([v[0] for v in per_task.values()])),
        f"{prefix}auprc": float(np.mean([v[1] for v in per_task.values()])),
    }
    if len(tasks) > 1:
        for task, (roc, prc) in per_task.items():
            metrics[f"{prefix}auroc_{task}"] = roc
            metrics[f"{prefix}auprc_{task}"] = prc
    return metrics


# --- the evaluation sets every binding model is scored on ---------------------------------------

Scorer = Callable[[Array], Array]
"""one-hot float32 ``[n, length, 4]`` -> scores ``[n, tasks]`` (both strands combined)."""


@dataclass(frozen=True)
class EvalSets:
    """One TF's held-out sets: the training mix's ``test`` split (rule labels), ``single_site``
    (:func:`.benchmark.single_site_set`) and the grammar sets by task name."""

    test: SimulatedSet
    single_site: SimulatedSet
    grammar: dict[str, SimulatedSet]


def eval_sets(
    motifs: Mapping[str, Motif],
    tf: str,
    test: SimulatedSet,
    rng: np.random.Generator,
    backgrounds: Backgrounds,
    single_site_n: int,
    grammar_n: int,
) -> EvalSets:
    """The single-site and grammar sets of ``tf`` at ``test``'s length (composite only for a TF
    with a grammar pair)."""
    length = test.codes.shape[1]
    single = benchmark.single_site_set(motifs, tf, single_site_n, rng, backgrounds, length)
    tasks = [t for t in benchmark.GRAMMAR_TASKS if t == "cluster_vs_lone" or tf in GRAMMARS]
    grammar = {t: benchmark.grammar_set(motifs, tf, t, grammar_n, rng, backgrounds, length) for t in tasks}
    return EvalSets(test, single, grammar)


def set_metrics(score: Scorer, sets: EvalSets, task: int = 0, suffix: str = "") -> dict[str, float]:
    """``auroc``/``auprc`` on the test split (column ``task``), ``single_site_auroc``/``_auprc`` and
    ``auroc_<grammar task>``; every name followed by ``suffix``."""
    out: dict[str, float] = {}
    test = score(sets.test.one_hot())[:, task]
    out[f"auroc{suffix}"] = auroc(sets.test.labels[:, task], test)
    out[f"auprc{suffix}"] = auprc(sets.test.labels[:, task], test)
    single = score(sets.single_site.one_hot())[:, task]
    out[f"single_site_auroc{suffix}"] = auroc(sets.single_site.labels[:, 0], single)
    out[f"single_site_auprc{suffix}"] = auprc(sets.single_site.labels[:, 0], single)
    for name, data in sets.grammar.items():
        out[f"auroc_{name}{suffix}"] = auroc(data.labels[:, 0], score(data.one_hot())[:, task])
    return out


def pwm_scorer(log_odds: Sequence[Array]) -> Scorer:
    """The PWM scan (max over windows and both strands) of each matrix: a numpy :data:`Scorer`."""

    def score(x: Array) -> Array:
        rc = reverse_complement(x)
        return np.stack([np.maximum(max_log_odds(x, lo), max_log_odds(rc, lo)) for lo in log_odds], axis=1)

    return score


def session_scorer(session: ort.InferenceSession, strand: str = "max") -> Scorer:
    return lambda x: strand_logits(session, x, strand=strand)
