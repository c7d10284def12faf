"""GPU gauges through NVML: values and labels per device, a lost GPU skipped, no export without NVML.

NVML needs an NVIDIA driver, which these machines do not have: ``FakeNvml`` stands in for the
``pynvml`` module with the same functions and exception class.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from genoserve.core.settings import RuntimeSettings
from genoserve.runtime.gpu_metrics import GpuCollector, register_gpu_metrics


class FakeNvml:
    class NVMLError(Exception):
        pass

    def __init__(self, init_fails: bool = False, lost: tuple[int, ...] = ()) -> None:
        self.init_fails = init_fails
        self.lost = lost
        self.initialised = False

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")
        self.initialised = True

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index in self.lost:
            raise self.NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=80 * 2**30, used=(10 + handle) * 2**30, free=(70 - handle) * 2**30)

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle:04d}".encode()  # older bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=35, memory=12)


def test_collector_reports_memory_and_utilisation_per_device() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(), [0, 1]))
    labels = {"gpu": "1", "uuid": "GPU-0001"}
    assert registry.get_sample_value("genoserve_gpu_memory_used_bytes", labels) == 11 * 2**30
    assert registry.get_sample_value("genoserve_gpu_memory_total_bytes", labels) == 80 * 2**30
    assert registry.get_sample_value("genoserve_gpu_utilization_ratio", labels) == pytest.approx(0.35)
    text = generate_latest(registry).decode()
    assert 'genoserve_gpu_memory_used_bytes{gpu="0",uuid="GPU-0000"} 1.073741824e+10' in text


def test_a_lost_gpu_is_skipped_and_the_scrape_still_succeeds() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml(lost=(1,)), [0, 1]))
    assert registry.get_sample_value("genoserve_gpu_memory_used_bytes", {"gpu": "0", "uuid": "GPU-0000"})
    assert registry.get_sample_value("genoserve_gpu_memory_used_bytes", {"gpu": "1", "uuid": "GPU-0001"}) is None


def test_registered_for_the_configured_cuda_device() -> None:
    registry = CollectorRegistry()
    nvml = FakeNvml()
    assert register_gpu_metrics(RuntimeSettings(device="cuda", cuda_device_id=3), registry, nvml)
    assert nvml.initialised
    assert registry.get_sample_value("genoserve_gpu_memory_used_bytes", {"gpu": "3", "uuid": "GPU-0003"}) == 13 * 2**30


def test_not_registered_on_cpu_or_without_a_driver() -> None:
    registry = CollectorRegistry()
    assert not register_gpu_metrics(RuntimeSettings(device="cpu"), registry, FakeNvml())
    assert not register_gpu_metrics(RuntimeSettings(device="auto"), registry, FakeNvml(init_fails=True))
    # This machine has neither the NVML bindings (gpu extra) nor a driver: nothing is exported.
    assert not register_gpu_metrics(RuntimeSettings(device="auto"), registry)
    assert "genoserve_gpu" not in generate_latest(registry).decode()
