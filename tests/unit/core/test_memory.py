"""tune_allocator: large buffers freed and allocated again reuse memory instead of faulting in
fresh pages (what makes multi-MiB gRPC requests slow with glibc's defaults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from genoserve.core.memory import tune_allocator

SERVICES = Path(__file__).resolve().parents[3] / "services"

# Buffers of mixed sizes (as requests of different sizes and their dense batches are), written
# in full, freed, and allocated again: page faults per MiB written, after one warm-up round.
PROBE = """
import resource, sys
sys.path.insert(0, {services!r})
from genoserve.core.memory import tune_allocator
assert tune_allocator({keep}) is {tuned}
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [24 << 20, 8 << 20, 30 << 20, 12 << 20]
for n in sizes:
    b = b"\\x01" * n
    del b
before = faults()
for n in sizes * 4:
    b = b"\\x01" * n
    del b
print((faults() - before) / (sum(sizes * 4) >> 20))
"""


def faults_per_mib(keep: int) -> float:
    code = PROBE.format(services=str(SERVICES), keep=keep, tuned=keep > 0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


def test_tuned_allocator_reuses_freed_memory() -> None:
    default, tuned = faults_per_mib(0), faults_per_mib(512)
    assert tuned * 5 < default, (tuned, default)
    assert tuned < 5  # about nothing: the buffers come back from the heap


def test_zero_keeps_glibc_defaults() -> None:
    assert tune_allocator(0) is False
