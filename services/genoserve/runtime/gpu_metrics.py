"""Memory and utilisation of the GPU a server or worker uses, read through NVML at scrape time.

Exported only where NVML answers: the GPU image ships ``nvidia-ml-py`` (the ``gpu`` extra) and the
NVIDIA container toolkit mounts the driver's ``libnvidia-ml``. Values are device-wide (every
process on that GPU), labelled with the GPU's index and UUID; Prometheus adds the pod.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from genoserve.core.settings import RuntimeSettings

log = logging.getLogger(__name__)

MEMORY_USED = "genoserve_gpu_memory_used_bytes"
MEMORY_TOTAL = "genoserve_gpu_memory_total_bytes"
UTILIZATION = "genoserve_gpu_utilization_ratio"
#: Every series this module can export (for checks that alerts and dashboards name real metrics).
METRIC_NAMES = (MEMORY_USED, MEMORY_TOTAL, UTILIZATION)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class GpuCollector(Collector):
    """Reads ``devices`` (NVML indices) through ``nvml`` (the ``pynvml`` module) on every scrape."""

    def __init__(self, nvml: Any, devices: Sequence[int]) -> None:
        self.nvml = nvml
        self.devices = tuple(devices)

    def describe(self) -> list[Any]:
        return []  # no NVML call at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["gpu", "uuid"]
        used = GaugeMetricFamily(MEMORY_USED, "GPU memory in use on the device (all processes).", labels=labels)
        total = GaugeMetricFamily(MEMORY_TOTAL, "GPU memory of the device.", labels=labels)
        busy = GaugeMetricFamily(UTILIZATION, "Fraction of the last sample period the GPU was busy.", labels=labels)
        for index in self.devices:
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                uuid = _text(self.nvml.nvmlDeviceGetUUID(handle))
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            except self.nvml.NVMLError as exc:  # a lost GPU must not break the whole scrape
                log.warning("NVML cannot read GPU %d: %s", index, exc)
                continue
            key = [str(index), uuid]
            used.add_metric(key, float(memory.used))
            total.add_metric(key, float(memory.total))
            busy.add_metric(key, float(rates.gpu) / 100.0)
        yield used
        yield total
        yield busy


def register_gpu_metrics(
    runtime: RuntimeSettings, registry: CollectorRegistry = REGISTRY, nvml: Any | None = None
) -> bool:
    """Export the GPU gauges of ``runtime.cuda_device_id`` when the runtime may use a GPU and NVML
    answers; returns whether they are exported."""
    if runtime.device == "cpu":
        return False
    level = logging.WARNING if runtime.device == "cuda" else logging.DEBUG
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            log.log(level, "no NVML bindings (nvidia-ml-py): no GPU metrics")
            return False
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.log(level, "NVML unavailable, no GPU metrics: %s", exc)
        return False
    registry.register(GpuCollector(nvml, [runtime.cuda_device_id]))
    return True
