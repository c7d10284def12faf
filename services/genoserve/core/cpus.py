"""How many CPUs this process may use: its affinity, capped by a cgroup CPU quota.

In a Kubernetes pod with ``limits.cpu: 2`` on a 64-core node, ``os.sched_getaffinity`` still
lists 64 cores; the quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
in v1) is what the pod gets. Thread counts sized from the affinity alone oversubscribe the quota
and are throttled.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (e.g. 2.0, 0.5), or None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        if quota == "max":
            return None
        quota_us, period_us = int(quota), int(period)
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


@dataclass(frozen=True)
class CpuBudget:
    #: Cores the scheduler lets this process run on (what ONNX Runtime sizes its threads by).
    affinity: int
    #: The cgroup CPU quota in CPUs, None when there is none.
    quota: float | None = None

    @property
    def usable(self) -> int:
        """CPUs this process can keep busy: the affinity capped by the quota (rounded up), >= 1."""
        count = self.affinity if self.quota is None else min(self.affinity, math.ceil(self.quota))
        return max(1, count)


def cpu_budget(root: Path = CGROUP) -> CpuBudget:
    """This process's ``CpuBudget``."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuBudget(affinity, quota_cpus(root))
