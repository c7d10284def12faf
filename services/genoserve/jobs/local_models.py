"""Model sessions in a worker process: loaded on first use, checked like the server does."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from genoserve.core.errors import ModelLoadError
from genoserve.core.settings import RuntimeSettings
from genoserve.runtime import registry
from genoserve.runtime.loader import load_session
from genoserve.runtime.model import LoadedModel
from genoserve.runtime.registry import ModelState
from genoserve.runtime.store import open_store

log = logging.getLogger(__name__)


class LocalModels:
    """``get(name, version)`` -> a LoadedModel from the model store (``runtime.model_repository``;
    a job pins its version when it is submitted), loaded on first use and kept while it is among
    the ``max_loaded`` most recently used (a worker that runs jobs of many models or versions does
    not keep every session it ever loaded; a shard holding a dropped one finishes on it).

    ``batch_size`` (the worker's rows per session call) replaces the model's online
    ``batching.max_batch_size`` as the largest session call: that bound is there to keep online
    latency down, while bulk work runs fastest in large calls. 0 keeps the model's own bound.
    """

    def __init__(self, settings: RuntimeSettings, batch_size: int = 0, max_loaded: int = 8) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.max_loaded = max_loaded
        self.store = open_store(settings)
        self._cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self) -> list[tuple[str, str]]:
        """(name, version asked for) of the models kept loaded, least recently used first."""
        with self._lock:
            return list(self._cache)

    def get(self, name: str, version: str = "") -> LoadedModel:
        with self._lock:
            cached = self._cache.get((name, version))
            if cached is not None:
                self._cache.move_to_end((name, version))
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
            while len(self._cache) > self.max_loaded:
                (dropped, label), _ = self._cache.popitem(last=False)
                log.info("model %s version %s unloaded: least recently used of %d", dropped, label or "latest",
                         self.max_loaded + 1)  # fmt: skip
            return model
