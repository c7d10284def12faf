"""How many session calls of a model run at once, and on how many threads each.

The operator's settings (``runtime.intra_op_threads``, ``runtime.instances``) win where set (not
0); otherwise an online CPU session follows its model.yaml ``cpu_serving`` block, and everything
else gets one call at a time on ONNX Runtime's default threads. A CPU session's threads are
never sized past the CPUs the process may use (``genoserve.core.cpus``: a container's CPU quota,
which ONNX Runtime's default of one thread per visible core ignores).
"""

from __future__ import annotations

from dataclasses import dataclass

from genoserve.core.cpus import CpuBudget, cpu_budget
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.spec import ModelSpec


@dataclass(frozen=True)
class Placement:
    #: ONNX Runtime intra-op threads per session call; 0: ONNX Runtime's default.
    intra_op_threads: int
    #: Session calls at once (the batcher's concurrent batches).
    instances: int
    #: A lone batch is split across idle instances, parts of at least this many rows (0: never).
    split_rows: int = 0


def placement(
    spec: ModelSpec | None, settings: RuntimeSettings, cpu: bool, online: bool, budget: CpuBudget | None = None
) -> Placement:
    """``cpu``: the session runs on ONNX Runtime's CPU provider; ``online``: for the server's
    batcher (a bulk worker makes one call at a time); ``budget``: the CPUs to plan for (default:
    this process's)."""
    budget = budget or cpu_budget()
    cpus = budget.usable
    hint = spec.cpu_serving if spec is not None and cpu and online else None
    threads = settings.intra_op_threads or (hint.intra_op_threads if hint else 0)
    if settings.instances:
        instances = settings.instances
    elif hint:
        instances = hint.instances or max(1, cpus // threads)
    else:
        instances = 1
    if not threads and cpu and cpus < budget.affinity:
        threads = cpus  # ONNX Runtime would start one per visible core, past the quota
    split = hint.split_rows if hint and instances > 1 else 0
    return Placement(threads, instances, split)
