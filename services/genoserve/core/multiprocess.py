"""prometheus-client multiprocess mode for prefork workers (no prometheus_client import here)."""

from __future__ import annotations

import os
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def prepare_metrics_dir(directory: Path) -> None:
    """Clear ``directory`` of the metric files of processes that are gone and name it in
    ``PROMETHEUS_MULTIPROC_DIR``.

    Files of live processes stay: a second ``genoserve worker`` started beside another (``make
    serve``'s) shares the folder, and the one /metrics endpoint then reports both. Must run at the
    entry point before ``prometheus_client`` is first imported: the library reads the variable at
    import time to decide where metric values live.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):  # prometheus_client names them <kind>_<pid>.db
        pid = path.stem.rsplit("_", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            path.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
