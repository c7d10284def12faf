"""Loads the model versions of the store into sessions and batchers, keeps them in step with it
(``runtime.model_control``), and looks them up.

Versions are immutable: a version number, once loaded, is served as loaded until it is unloaded.
A new version serves only after its checks and warm-up; a version that fails them is reported
and the others keep serving. An unloaded version stops being handed out at once, and the
requests that already hold it finish on it (for up to ``runtime.unload_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from genoserve.core import metrics
from genoserve.core.cpus import CpuBudget, cpu_budget
from genoserve.core.errors import FailedPrecondition, GenoserveError, InvalidArgument, NotFound, Unavailable
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.batcher import BatcherConfig, DynamicBatcher
from genoserve.runtime.loader import load_session
from genoserve.runtime.model import ServedModel
from genoserve.runtime.placement import placement
from genoserve.runtime.registry import ModelState, ModelVersionRecord
from genoserve.runtime.session import CPU, CUDA, OrtSession
from genoserve.runtime.spec import ModelSpec
from genoserve.runtime.store import ModelStore, open_store

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    #: The family's parsed contract (None for ``platform`` and for a model kept out).
    contract: Any = None

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
        # A GPU computes while the CPU is free: its calls stay off the loop, which forms the next batch.
        inline_call_us=0 if provider == CUDA else BatcherConfig.inline_call_us,
    )


Key = tuple[str, str]


def _key(record: ModelVersionRecord) -> Key:
    return (record.name, record.version_label)


def _order(record: ModelVersionRecord) -> tuple[str, int]:
    return (record.name, record.version.version if record.version else -1)


Fingerprint = tuple[tuple[str, ...], tuple[tuple[int, int] | None, ...], str]


def _fingerprint(record: ModelVersionRecord) -> Fingerprint:
    """What a retry of a version that failed would see differently: its declared sha256s, its
    files' (size, mtime) (model.onnx and the files model.yaml lists) and, for a model.yaml that
    cannot be read, the reason."""
    if record.version is None:
        return ((), (), record.reason)
    files = [record.onnx_path, *(record.onnx_path.parent / name for name in record.version.files)]
    seen: list[tuple[int, int] | None] = []
    for path in files:
        try:
            stat = path.stat()
            seen.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            seen.append(None)
    declared = (record.version.sha256, *(f"{name}:{sha}" for name, sha in record.version.files.items()))
    return (declared, tuple(seen), "")


def _forget_metric(record: ModelVersionRecord) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to forget
        metrics.MODEL_READY.remove(record.name, record.version_label)


@dataclass(frozen=True)
class IndexEntry:
    """A model version in the store and what this server makes of it (``state`` None: not loaded)."""

    name: str
    version: str
    state: ModelState | None
    reason: str


class LiveModels:
    """The model versions of ``runtime.model_repository``: loaded ones serve, failed ones say why."""

    def __init__(self, settings: RuntimeSettings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self._records: list[ModelVersionRecord] = []
        self._fingerprints: dict[Key, Fingerprint] = {}
        self._served: dict[Key, ServedModel] = {}
        self._unloading: dict[Key, asyncio.Task[None]] = {}
        #: Versions being checked and warmed up, each with the task loading it.
        self._loading: dict[Key, asyncio.Task[None]] = {}
        self._loaded_once = False
        self._closed = False
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self._budget = cpu_budget()
        # Threads start on demand: room for every core's instance of a per-core model.
        self._executor = ThreadPoolExecutor(max_workers=max(4, 2 * self._budget.usable), thread_name_prefix="ort")
        self._listeners: list[Callable[[], None]] = []
        # Both from the start: a store unreachable from the first read on is seen as one that
        # stopped answering (no success since the start, failures counting up from 0).
        metrics.MODEL_STORE_SYNC_FAILURES.labels(settings.model_control)
        metrics.MODEL_STORE_LAST_SUCCESS.labels(settings.model_control).set_to_current_time()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a model's state changes (health status updates)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def _mutex(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

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

    async def _serve(self, record: ModelVersionRecord) -> None:
        """Load one LOADING version; it serves only once checked and warmed up."""
        assert record.spec is not None
        assert record.version is not None
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self._executor, self._load_version, record)
        if self._closed or not any(r is record for r in self._records):
            why = "the repository closed" if self._closed else "it was unloaded"
            log.info("model %s version %s loaded, not served: %s meanwhile", record.name, record.version_label, why)
            return
        if session is None:
            metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
            self._changed()
            return
        config = batcher_config(record.spec, self.settings, session.provider, self._budget)
        batcher = DynamicBatcher(record.name, session.run, config, self._executor)
        batcher.start()
        self._served[_key(record)] = ServedModel(record.spec, record.version, session, batcher, record.contract)
        record.state = ModelState.READY
        metrics.MODEL_READY.labels(record.name, record.version_label).set(1)
        threads = session.intra_op_threads or "default"
        rows = 2 * config.split_rows
        split = f"; a lone batch of {rows}+ rows split across idle calls" if config.split_rows else ""
        log.info("model %s version %s ready on %s (%d session call(s) at once, intra-op threads: %s%s)",
                 record.name, record.version_label, record.provider, config.instances, threads, split)  # fmt: skip
        self._changed()

    async def _serve_all(self, records: list[ModelVersionRecord]) -> None:
        """Load ``records`` one after the other (one refresh's new versions)."""
        me = asyncio.current_task()
        for record in records:
            try:
                await self._serve(record)
            finally:
                if self._loading.get(_key(record)) is me:
                    del self._loading[_key(record)]

    async def load(self) -> None:
        """The first load: every version in the store (of the selected models and families); a
        failure keeps only that version out. Then, with ``model_control: poll``, the polling."""
        try:
            await self.refresh()
        finally:
            self._loaded_once = True
            self._changed()
            if self.settings.model_control == "poll" and self._poller is None:
                self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is unreachable: what is loaded keeps serving
                message = exc.message if isinstance(exc, GenoserveError) else str(exc)
                log.error("polling %s failed (the loaded versions keep serving): %s", self.store.location, message)

    async def refresh(self, names: tuple[str, ...] = (), version: str = "") -> list[ModelVersionRecord]:
        """Bring what is served in step with the store: versions new to it load, versions gone
        from it unload, a failed version whose files changed is tried again; loaded versions are
        left as they are. ``names`` / ``version`` limit this to those models / that version.
        Returns the versions in that scope once their loads are over (the store's versions, as
        served now, and those being unloaded).

        The lock covers reading the store and the bookkeeping, not the loads (checks and warm-up):
        RepositoryIndex, Unload and other refreshes go on while a version warms up. A version
        unloaded while it loads is never served."""

        def in_scope(key: Key) -> bool:
            return (not names or key[0] in names) and (not version or key[1] in (version, ""))

        async with self._mutex:
            only = names or self.settings.models
            local = await self._read_store(lambda: self.store.sync(only))
            found = await asyncio.to_thread(self._scan, local, only)
            found = [r for r in found if in_scope(_key(r))]
            current = {_key(r): r for r in self._records}
            wanted = {_key(r) for r in found}
            for key, record in current.items():
                if in_scope(key) and key not in wanted and record.state is not ModelState.UNLOADING:
                    log.info(
                        "model %s version %s is gone from %s: unloading", key[0], key[1] or "?", self.store.location
                    )
                    self._start_unload(record)
            todo: list[ModelVersionRecord] = []
            added: list[ModelVersionRecord] = []
            for record in found:
                key = _key(record)
                old = current.get(key)
                if old is not None and old.state is ModelState.UNLOADING:
                    await asyncio.shield(self._unloading[key])  # removed and put back: load it anew
                elif old is not None and not self._retry(old, record):
                    continue
                self._fingerprints[key] = _fingerprint(record)
                self._records = sorted([r for r in self._records if _key(r) != key] + [record], key=_order)
                added.append(record)
                if record.state is ModelState.FAILED or record.spec is None or record.version is None:
                    metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
                else:
                    todo.append(record)
            self._changed()
            if todo:
                loads = asyncio.create_task(self._serve_all(todo))
                self._loading.update((_key(r), loads) for r in todo)
        # This refresh's loads and those another one started (a Load while the poll loads it).
        pending = {task for key, task in self._loading.items() if in_scope(key)}
        if pending:
            await asyncio.gather(*(asyncio.shield(t) for t in pending))
        current = {_key(r): r for r in self._records}
        gone = [r for r in added if _key(r) not in current]  # unloaded while it loaded
        return sorted([r for k, r in current.items() if in_scope(k)] + gone, key=_order)

    async def _read_store(self, read: Callable[[], T]) -> T:
        """``read()`` (a read of the store) in a thread, counted in the store's metrics."""
        control = self.settings.model_control
        try:
            result = await asyncio.to_thread(read)
        except Exception:
            metrics.MODEL_STORE_SYNC_FAILURES.labels(control).inc()
            raise
        metrics.MODEL_STORE_LAST_SUCCESS.labels(control).set_to_current_time()
        return result

    def _scan(self, local: Path, only: tuple[str, ...]) -> list[ModelVersionRecord]:
        return registry.scan(local, only, self.settings.families)

    def _retry(self, old: ModelVersionRecord, new: ModelVersionRecord) -> bool:
        """Whether a version already known is to be loaded again from what the store holds now."""
        key = _key(old)
        if old.state is ModelState.FAILED:
            return self._fingerprints.get(key) != _fingerprint(new)
        if old.version and new.version and old.version.sha256 != new.version.sha256 and not old.reason:
            old.reason = (
                f"the store now declares sha256 {new.version.sha256} for this version; versions are immutable, "
                "so the one loaded keeps serving: publish the change as a new version"
            )
            log.warning("model %s version %s: %s", old.name, old.version_label, old.reason)
        return False

    # -- unloading -------------------------------------------------------------------------------

    def _start_unload(self, record: ModelVersionRecord) -> None:
        """Stop handing ``record`` out now; drain it in the background."""
        key = _key(record)
        served = self._served.pop(key, None)
        if served is None:  # failed, or still loading: nothing to drain
            if record.state is ModelState.LOADING:
                record.state, record.reason = ModelState.UNLOADING, "unloaded while it loaded"
            self._records = [r for r in self._records if r is not record]
            self._fingerprints.pop(key, None)
            _forget_metric(record)
            self._changed()
            return
        record.state = ModelState.UNLOADING
        metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
        self._changed()
        self._unloading[key] = asyncio.create_task(self._drain(record, served))

    async def _drain(self, record: ModelVersionRecord, served: ServedModel) -> None:
        key = _key(record)
        timeout = self.settings.unload_timeout_s
        try:
            await served.released(timeout)
            await served.batcher.close(timeout)
        finally:
            self._records = [r for r in self._records if r is not record]
            self._fingerprints.pop(key, None)
            self._unloading.pop(key, None)
            _forget_metric(record)
            log.info("model %s version %s unloaded", record.name, record.version_label)
            self._changed()

    # -- explicit control (Models/Load, Models/Unload) -------------------------------------------

    def _require_explicit(self, action: str) -> None:
        if self.settings.model_control != "explicit":
            raise FailedPrecondition(
                f"{action} needs runtime.model_control: explicit; this server's is "
                f"{self.settings.model_control!r}"
                + (" (the store decides what is served)" if self.settings.model_control == "poll" else "")
            )

    async def load_model(self, name: str, version: str = "") -> list[ModelVersionRecord]:
        """Load ``name`` (all the versions the store holds, or ``version``) from the store now;
        versions of it gone from the store unload. NOT_FOUND when the store has no such model or
        version; FAILED_PRECONDITION with the reason when nothing asked for could load."""
        self._require_explicit("Load")
        if not name:
            raise InvalidArgument.field("name", "is required")
        records = await self.refresh((name,), version)
        if not records:
            what = f"model {name!r}" + (f" version {version!r}" if version else "")
            families = (
                f" (this server serves the families {list(self.settings.families)})" if self.settings.families else ""
            )
            raise NotFound(f"{what} is not in the repository {self.store.location}{families}")
        if all(r.state is ModelState.FAILED for r in records):
            reasons = "; ".join(f"version {r.version_label or '?'}: {r.reason}" for r in records)
            raise FailedPrecondition(f"model {name} did not load: {reasons}")
        return records

    async def unload(self, name: str, version: str = "") -> list[str]:
        """Stop serving ``name`` (every version, or ``version``); returns once the requests that
        held it have finished (up to ``runtime.unload_timeout_s``). The versions unloaded."""
        self._require_explicit("Unload")
        if not name:
            raise InvalidArgument.field("name", "is required")
        async with self._mutex:
            chosen = [
                r
                for r in self._records
                if r.name == name and version in ("", r.version_label) and r.state is not ModelState.UNLOADING
            ]
            if not chosen:
                what = f"model {name!r}" + (f" version {version!r}" if version else "")
                raise NotFound(f"{what} is not loaded")
            for record in chosen:
                self._start_unload(record)
            draining = [self._unloading[_key(r)] for r in chosen if _key(r) in self._unloading]
        await asyncio.gather(*(asyncio.shield(t) for t in draining))
        return [r.version_label for r in chosen]

    async def index(self) -> list[IndexEntry]:
        """Every model version the store holds, loaded or not, and the loaded ones it no longer
        holds (Triton's RepositoryIndex). Reads the store's model.yaml files (not its model files,
        nor the cache: a refresh downloading a version does not hold it up)."""

        def read() -> list[ModelVersionRecord]:
            with self.store.specs() as specs:
                return self._scan(specs, ())

        found = await self._read_store(read)
        current = {_key(r): r for r in self._records}
        entries: list[IndexEntry] = []
        for record in found:
            known = current.pop(_key(record), None)
            if known is not None:
                entries.append(IndexEntry(record.name, record.version_label, known.state, known.reason))
            else:
                entries.append(IndexEntry(record.name, record.version_label, None, record.reason))
        for record in current.values():
            entries.append(
                IndexEntry(record.name, record.version_label, record.state, record.reason or "not in the store")
            )
        return sorted(entries, key=lambda e: (e.name, int(e.version) if e.version.isdigit() else -1))

    async def close(self, timeout: float | None = None) -> None:
        """Stop polling; drain every batcher (queued requests finish, new ones get UNAVAILABLE)."""
        self._closed = True  # a load still running is not served
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        loads = set(self._loading.values())
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for record in self._records:
            if record.state is ModelState.READY:
                record.state = ModelState.UNLOADING
                metrics.MODEL_READY.labels(record.name, record.version_label).set(0)
        self._changed()
        await asyncio.gather(*(m.batcher.close(timeout) for m in self._served.values()))
        await asyncio.gather(*self._unloading.values(), return_exceptions=True)
        self._executor.shutdown(wait=False)

    # -- lookup ----------------------------------------------------------------------------------

    def statuses(self) -> list[ModelStatus]:
        out = []
        for r in self._records:
            cfg = batcher_config(r.spec, self.settings, r.provider, self._budget) if r.spec else BatcherConfig()
            out.append(ModelStatus(r.name, r.version_label, r.spec, r.state, r.reason, r.provider, cfg, r.contract))
        return out

    def families_ready(self) -> dict[str, bool]:
        """Per family: True when each of its models has a ready version. A model that is only
        loading (added live) or unloading (removed live) does not count until it settles."""
        models: dict[str, list[ModelVersionRecord]] = {}
        for r in self._records:
            if r.spec is not None:
                models.setdefault(r.name, []).append(r)
        ready: dict[str, bool] = {}
        for records in models.values():
            family = records[0].spec.family if records[0].spec else ""
            if any(r.state is ModelState.READY for r in records):
                ok = True
            elif self._loaded_once and all(r.state in (ModelState.LOADING, ModelState.UNLOADING) for r in records):
                continue
            else:
                ok = False
            ready[family] = ready.get(family, True) and ok
        return ready

    @property
    def all_settled(self) -> bool:
        """The first load is over (each version found then is READY or FAILED)."""
        return self._loaded_once

    def latest_version(self, name: str) -> str:
        """The version ``get(name)`` hands out now; "" when none is ready."""
        try:
            return self._lookup(name, "").version
        except GenoserveError:
            return ""

    def get(self, name: str, version: str = "") -> ServedModel:
        """The named version, or the latest ready one; NOT_FOUND / UNAVAILABLE otherwise. The
        calling task holds the version: an unload lets it finish first."""
        served = self._lookup(name, version)
        task = asyncio.current_task()
        if task is not None:
            served.hold(task)
        return served

    def _lookup(self, name: str, version: str) -> ServedModel:
        known = [r for r in self._records if r.name == name]
        if not known:
            names = sorted({r.name for r in self._records})
            raise NotFound(f"model {name!r} is not in the repository; known models: {names}")
        if version:
            served = self._served.get((name, version))
            if served is not None:
                return served
            record = next((r for r in known if r.version_label == version), None)
            if record is None:
                versions = [r.version_label for r in known]
                raise NotFound(f"model {name!r} has no version {version!r}; versions: {versions}")
            raise Unavailable(
                f"model {name} version {version} is not ready: {record.state.name.lower()} {record.reason}".rstrip()
            )
        ready = [r for r in known if r.state is ModelState.READY and _key(r) in self._served]
        if not ready:
            reasons = "; ".join(
                f"version {r.version_label or '?'}: {r.state.name.lower()} {r.reason}".rstrip() for r in known
            )
            raise Unavailable(f"model {name} has no ready version ({reasons})")
        latest = max(ready, key=lambda r: r.version.version if r.version else 0)
        return self._served[_key(latest)]
