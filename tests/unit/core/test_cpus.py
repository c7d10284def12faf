"""The CPU budget: affinity capped by a cgroup quota (v2 and v1 files), as in a Kubernetes pod."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genoserve.core.cpus import CpuBudget, cpu_budget, quota_cpus


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert quota_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cpus(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path) == 2.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert quota_cpus(tmp_path) is None


def test_no_or_unreadable_cgroup_files_mean_no_quota(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("garbage")
    assert quota_cpus(tmp_path) is None
    (tmp_path / "cpu.max").write_text("100000 0\n")  # a zero period must not stop the server starting
    assert quota_cpus(tmp_path) is None


@pytest.mark.parametrize(
    ("affinity", "quota", "usable"), [(64, 2.0, 2), (64, 0.5, 1), (64, 2.5, 3), (4, 8.0, 4), (16, None, 16)]
)
def test_usable_is_affinity_capped_by_quota_rounded_up(affinity: int, quota: float | None, usable: int) -> None:
    assert CpuBudget(affinity, quota).usable == usable


def test_this_process() -> None:
    budget = cpu_budget()
    assert budget.affinity == len(os.sched_getaffinity(0))
    assert 1 <= budget.usable <= budget.affinity
