"""Loads every model version of the repository into sessions and batchers; looks them up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from genoserve.core import metrics
from genoserve.core.cpus import CpuBudget, cpu_budget
from genoserve.core.errors import GenoserveError, NotFound, Unavailable
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.batcher import BatcherConfig, DynamicBatcher
from genoserve.runtime.loader import load_session
from genoserve.runtime.model import ServedModel
from genoserve.runtime.placement import placement
from genoserve.runtime.registry import ModelState, ModelVersionRecord
from genoserve.runtime.session import CPU, OrtSession
from genoserve.runtime.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    """What operators see of one model version (``spec`` is None when model.yaml is unreadable)."""

    name: str
    version: str
    spec: ModelSpec | None
    state: ModelState
    reason: str
    provider: str
    batching: BatcherConfig

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


def batcher_config(
    spec: ModelSpec, settings: RuntimeSettings, provider: str = "", budget: CpuBudget | None = None
) -> BatcherConfig:
    """The model's batching over the server's defaults; ``provider``: its session's, once loaded,
    and ``budget`` the server's CPUs (the instance count depends on both: ``genoserve.runtime.placement``)."""
    defaults = settings.batching
    own = spec.batching
    plan = placement(spec, settings, provider == CPU, online=True, budget=budget)
    return BatcherConfig(
        max_batch_size=own.max_batch_size or defaults.max_batch_size,
        max_queue_delay_us=own.max_queue_delay_us
        if own.max_queue_delay_us is not None
        else defaults.max_queue_delay_us,
        max_queue_size=own.max_queue_size or defaults.max_queue_size,
        instances=plan.instances,
        split_rows=plan.split_rows,
        deadline_admission=defaults.deadline_admission,
        deadline_headroom=defaults.deadline_headroom,
    )


class ModelRepository:
    """All model versions of ``settings.model_dir``: loaded ones serve, failed ones say why."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._records: list[ModelVersionRecord] = []
        self._served: dict[tuple[str, str], ServedModel] = {}
        self._budget = cpu_budget()
        # Threads start on demand: room for every core's instance of a per-core model.
        self._executor = ThreadPoolExecutor(max_workers=max(4, 2 * self._budget.usable), thread_name_prefix="ort")
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a model's state changes (health status updates)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- loading -------------------------------------------------------------------------------

    def _load_version(self, record: ModelVersionRecord) -> OrtSession | None:
        """Check the file and the graph, create the session and warm it up (runs in a thread)."""
        try:
            session = load_session(record, self.settings, online=True)
        except GenoserveError as exc:
            record.fail(exc.message)
            return None
        record.provider = session.provider
        return session

    async def load(self) -> None:
        """Scan the repository and load each version; a failure keeps only that version out."""
        self._records = registry.scan(self.settings.model_dir, self.settings.models, self.settings.families)
        self._changed()
        loop = asyncio.get_running_loop()
        for record in self._records:
            if record.state is ModelState.FAILED or record.spec is None or record.version is None:
                continue
            session = await loop.run_in_executor(self._executor, self._load_version, record)
            if session is None:
                metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
                self._changed()
                continue
            config = batcher_config(record.spec, self.settings, session.provider, self._budget)
            batcher = DynamicBatcher(record.name, session.run, config, self._executor)
            batcher.start()
            self._served[(record.name, record.version_label)] = ServedModel(
                record.spec, record.version, session, batcher
            )
            record.state = ModelState.READY
            metrics.MODEL_READY.labels(record.name, record.version_label).set(1)
            threads = session.intra_op_threads or "default"
            rows = 2 * config.split_rows
            split = f"; a lone batch of {rows}+ rows split across idle calls" if config.split_rows else ""
            log.info("model %s version %s ready on %s (%d session call(s) at once, intra-op threads: %s%s)",
                     record.name, record.version_label, record.provider, config.instances, threads, split)  # fmt: skip
            self._changed()

    async def close(self, timeout: float | None = None) -> None:
        """Drain every batcher (queued requests finish, new ones get UNAVAILABLE)."""
        for record in self._records:
            if record.state is ModelState.READY:
                record.state = ModelState.UNLOADING
                metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
        self._changed()
        await asyncio.gather(*(m.batcher.close(timeout) for m in self._served.values()))
        self._executor.shutdown(wait=False)

    # -- lookup ----------------------------------------------------------------------------------

    def statuses(self) -> list[ModelStatus]:
        out = []
        for r in self._records:
            cfg = batcher_config(r.spec, self.settings, r.provider, self._budget) if r.spec else BatcherConfig()
            out.append(ModelStatus(r.name, r.version_label, r.spec, r.state, r.reason, r.provider, cfg))
        return out

    def families_ready(self) -> dict[str, bool]:
        """Per family: True when every version of that family that was found is ready."""
        ready: dict[str, bool] = {}
        for r in self._records:
            if r.spec is None:
                continue
            ready[r.spec.family] = ready.get(r.spec.family, True) and r.state is ModelState.READY
        return ready

    @property
    def all_settled(self) -> bool:
        """Every record is READY or FAILED (loading is over)."""
        return all(r.state in (ModelState.READY, ModelState.FAILED) for r in self._records)

    def get(self, name: str, version: str = "") -> ServedModel:
        """The named version, or the latest ready one. NOT_FOUND / UNAVAILABLE otherwise."""
        known = [r for r in self._records if r.name == name]
        if not known:
            names = sorted({r.name for r in self._records})
            raise NotFound(f"model {name!r} is not in the repository; known models: {names}")
        if version:
            served = self._served.get((name, version))
            if served is not None and not self._closing(name, version):
                return served
            record = next((r for r in known if r.version_label == version), None)
            if record is None:
                versions = [r.version_label for r in known]
                raise NotFound(f"model {name!r} has no version {version!r}; versions: {versions}")
            raise Unavailable(
                f"model {name} version {version} is not ready: {record.state.name.lower()} {record.reason}".rstrip()
            )
        ready = [r for r in known if r.state is ModelState.READY]
        if not ready:
            reasons = "; ".join(
                f"version {r.version_label or '?'}: {r.state.name.lower()} {r.reason}".rstrip() for r in known
            )
            raise Unavailable(f"model {name} has no ready version ({reasons})")
        latest = max(ready, key=lambda r: r.version.version if r.version else 0)
        return self._served[(name, latest.version_label)]

    def _closing(self, name: str, version: str) -> bool:
        return any(
            r.name == name and r.version_label == version and r.state is ModelState.UNLOADING for r in self._records
        )
