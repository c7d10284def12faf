"""Model sessions in a worker process: loaded on first use, checked like the server does."""

from __future__ import annotations

import threading

from genoserve.core.errors import ModelLoadError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.loader import load_session
from genoserve.runtime.model import LoadedModel
from genoserve.runtime.registry import ModelState
from genoserve.runtime.store import open_store


class LocalModels:
    """``get(name, version)`` -> a LoadedModel, cached for the life of the process, from the
    model store (``runtime.model_repository``; a job pins its version when it is submitted).

    ``batch_size`` (the worker's rows per session call) replaces the model's online
    ``batching.max_batch_size`` as the largest session call: that bound is there to keep online
    latency down, while bulk work runs fastest in large calls. 0 keeps the model's own bound.
    """

    def __init__(self, settings: RuntimeSettings, batch_size: int = 0) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.store = open_store(settings)
        self._cache: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str, version: str = "") -> LoadedModel:
        with self._lock:
            cached = self._cache.get((name, version))
            if cached is not None:
                return cached
            scanned = registry.scan(self.store.sync((name,)), (name,))
            records = [r for r in scanned if r.state is not ModelState.FAILED]
            if version:
                records = [r for r in records if r.version_label == version]
            if not records:
                broken = [r.reason for r in scanned if r.reason and (not version or r.version_label in (version, ""))]
                why = f": {broken[0]}" if broken else ""
                raise ModelLoadError(
                    f"model {name} version {version or 'latest'} not found in {self.store.location}{why}"
                )
            record = max(records, key=lambda r: r.version.version if r.version else 0)
            assert record.spec is not None
            assert record.version is not None
            session = load_session(record, self.settings)
            max_batch = self.batch_size or record.spec.batching.max_batch_size or self.settings.batching.max_batch_size
            model = LoadedModel(record.spec, record.version, session, max_batch, record.contract)
            self._cache[(name, version)] = model
            return model
