"""prometheus-client multiprocess mode for prefork workers (no prometheus_client import here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def prepare_metrics_dir(directory: Path) -> None:
    """Empty ``directory`` and name it in ``PROMETHEUS_MULTIPROC_DIR``.

    Must run at the entry point before ``prometheus_client`` is first imported: the library reads
    the variable at import time to decide where metric values live.
    """
    directory = directory.resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
