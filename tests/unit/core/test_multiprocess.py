"""The worker metrics folder keeps the files of live processes and drops those of gone ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genoserve.core.multiprocess import prepare_metrics_dir


def test_files_of_gone_processes_are_removed_live_ones_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    folder = tmp_path / "metrics"
    folder.mkdir()
    live = folder / f"counter_{os.getpid()}.db"
    dead = folder / f"histogram_{dead_pid}.db"
    for path in (live, dead, folder / "gauge_livesum_notapid.db"):
        path.write_bytes(b"x")
    prepare_metrics_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == [live.name]
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder.resolve())
