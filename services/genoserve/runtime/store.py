"""Where model versions come from: a local folder (or mounted volume), or S3-compatible storage.

Both give the repository as a local folder laid out as ``genoserve.runtime.spec`` describes, which
``genoserve.runtime.registry`` scans and checks. Object storage is mirrored into a cache folder:
each model's ``model.yaml`` and the files of the versions it lists. A version file is downloaded
only when the cached copy does not match the sha256 its model.yaml declares; a download that does
not match is left for the registry's checksum check to keep out (naming both sums), and is not
fetched again until its object changes.

Several processes may share one cache folder (a server and its ``--with-worker``, a worker's
prefork children): a sync holds an exclusive lock on ``<cache root>/.sync.lock`` (``flock``), so
one process mirrors at a time; files are put in place by rename, so a process reading the cache
sees a file either whole or not yet there. A process serving some families leaves the version
files of the other families' models as they are: only versions gone from the store leave the cache.

What only needs the model.yaml files (the repository index, a job's submit) reads them with
``specs`` into a folder of its own, without the cache or its lock: it does not wait for a sync
that is downloading a large version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import yaml

from genoserve.core.errors import Unavailable
from genoserve.core.settings import ModelStoreSettings, RuntimeSettings
from genoserve.runtime.authoring import MODEL_NAME
from genoserve.runtime.registry import MODEL_FILE, ONNX_FILE, sha256_of

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger(__name__)

#: Per cached model: the ETag of each mirrored object, and of downloads refused for their sha256.
_INDEX = ".store-index.json"
#: In the cache root: held (flock) by the process that mirrors the store into it.
_LOCK = ".sync.lock"
#: Files being written: a temporary name beside their target, renamed into place when whole.
_PARTIAL = (".download-", f".{MODEL_FILE}.")


class ModelStore(Protocol):
    """The repository as a local folder that ``sync`` brings up to date."""

    @property
    def location(self) -> str:
        """Where the models come from, for logs and errors (``s3://bucket/prefix`` or a path)."""
        ...

    def sync(self, only: tuple[str, ...] = ()) -> Path:
        """Bring the local folder up to date (only the models named in ``only``, if given)."""
        ...

    def specs(self, only: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Path]:
        """A folder holding the store's ``<model>/model.yaml`` files as they are now (only the
        models named in ``only``, if given), to read while in the ``with`` block; no version files."""
        ...


@dataclass
class LocalStore:
    """A folder on local disk or a mounted volume (a PVC): used in place."""

    path: Path

    @property
    def location(self) -> str:
        return str(self.path)

    def sync(self, only: tuple[str, ...] = ()) -> Path:
        if not self.path.is_dir():
            raise FileNotFoundError(f"model directory {self.path} does not exist")
        return self.path

    def specs(self, only: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Path]:
        return contextlib.nullcontext(self.sync(only))


def _declared_versions(text: bytes) -> tuple[str, dict[str, dict[str, str]]]:
    """The family and ``{version: {file in the version's folder: sha256}}`` (model.onnx and the
    version's ``files``) as a model.yaml gives them; ("", {}) when it cannot be read (the
    registry reports why when it scans the mirrored file)."""
    try:
        raw = yaml.safe_load(text)
        versions = raw.get("versions") or []
        sums: dict[str, dict[str, str]] = {}
        for v in versions:
            if isinstance(v, dict):
                files = {str(path): str(sha256) for path, sha256 in (v.get("files") or {}).items()}
                sums[str(v["version"])] = {**files, ONNX_FILE: str(v.get("sha256", ""))}
        return str(raw.get("family", "")), sums
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return "", {}


class S3Store:
    """``s3://bucket/prefix`` mirrored into ``settings.cache_dir/<bucket>/<prefix>``.

    Uses obstore (the Rust ``object_store`` crate: retries, AWS credential chain, any S3 API).
    """

    def __init__(self, url: str, settings: ModelStoreSettings, families: tuple[str, ...] = ()) -> None:
        from obstore.store import S3Store as _Client

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"model repository {url!r}: expected s3://bucket/prefix")
        self._location = url.rstrip("/")
        #: Only these families' version files are fetched (a server for one family needs no others').
        self.families = families
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.root = settings.cache_dir / self.bucket / self.prefix if self.prefix else settings.cache_dir / self.bucket
        options: dict[str, Any] = {}
        for key, value in (
            ("endpoint", settings.endpoint),
            ("region", settings.region),
            ("access_key_id", settings.access_key_id),
            ("secret_access_key", settings.secret_access_key),
            ("token", settings.session_token),
        ):
            if value:
                options[key] = value
        client_options: ClientConfig = {"allow_http": True} if settings.allow_http else {}
        # A store that does not answer fails a sync within about half a minute (obstore's default
        # is 10 retries over 3 minutes), so a poll reports it and the loaded versions keep serving.
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
        self._client = _Client(
            self.bucket, prefix=self.prefix or None, client_options=client_options, retry_config=retry, **options
        )
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return self._location

    # -- listing ---------------------------------------------------------------------------------

    def _objects(self) -> dict[str, str]:
        """Every object under the prefix: relative path -> ETag."""
        import obstore

        objects: dict[str, str] = {}
        try:
            for batch in obstore.list(self._client):
                for meta in batch:
                    objects[meta["path"]] = meta.get("e_tag") or f"{meta['size']}-{meta['last_modified']}"
        except Exception as exc:  # obstore raises its own error classes per cause
            raise Unavailable(f"model repository {self.location}: cannot list objects: {_first_line(exc)}") from exc
        return objects

    def _download(self, key: str, target: Path, prefix: str = ".download-") -> str:
        """Stream one object to ``target`` (atomically, through a temporary file named ``prefix``...
        beside it); its sha256."""
        import obstore

        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in obstore.get(self._client, key):
                    view = memoryview(chunk)
                    digest.update(view)
                    fh.write(view)
            os.replace(tmp, target)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and not type(exc).__module__.startswith("obstore"):
                raise
            raise Unavailable(f"model repository {self.location}: cannot download {key}: {_first_line(exc)}") from exc
        return digest.hexdigest()

    # -- mirroring -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's only sync (thread lock), and the cache's only writer (file lock)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / _LOCK, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
                yield

    def sync(self, only: tuple[str, ...] = ()) -> Path:
        with self._exclusive():
            objects = self._objects()
            models = _model_names(objects)
            for stale in self.root.iterdir():
                if stale.is_dir() and stale.name not in models and not stale.name.startswith("."):
                    log.info("model %s is gone from %s: removed from the cache", stale.name, self.location)
                    shutil.rmtree(stale, ignore_errors=True)
            for name in models:
                if not only or name in only:
                    self._sync_model(name, objects)
        return self.root

    @contextlib.contextmanager
    def specs(self, only: tuple[str, ...] = ()) -> Iterator[Path]:
        objects = self._objects()
        with tempfile.TemporaryDirectory(prefix="genoserve-specs-") as tmp:
            root = Path(tmp)
            for name in _model_names(objects):
                if not only or name in only:
                    self._download(f"{name}/{MODEL_FILE}", root / name / MODEL_FILE)
            yield root

    def _sync_model(self, name: str, objects: dict[str, str]) -> None:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        for partial in folder.glob(".*"):
            if partial.is_file() and partial.name.startswith(_PARTIAL):
                partial.unlink(missing_ok=True)  # left by a process that stopped mid-download
        index_path = folder / _INDEX
        try:
            index: dict[str, Any] = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        mirrored: dict[str, str] = index.get("mirrored", {})
        refused: dict[str, str] = index.get("refused", {})
        yaml_key = f"{name}/{MODEL_FILE}"
        yaml_path = folder / MODEL_FILE
        fresh: Path | None = None
        if mirrored.get(yaml_key) != objects[yaml_key] or not yaml_path.is_file():
            # Downloaded beside, moved into place last: a scan never sees a model.yaml whose
            # versions' files are not mirrored yet.
            fresh = folder / f".{MODEL_FILE}.{os.getpid()}.new"
            self._download(yaml_key, fresh, prefix=f".{MODEL_FILE}.")
        family, declared = _declared_versions((fresh or yaml_path).read_bytes())
        # Another family's versions are listed for the registry, which leaves them out: their
        # files are not fetched here (a process serving that family may have them in the cache).
        fetch = declared if not self.families or family in self.families else {}
        for version, sums in fetch.items():
            prefix = f"{name}/{version}/"
            for key, etag in objects.items():
                if not key.startswith(prefix):
                    continue
                target = folder / key[len(name) + 1 :]
                if ".." in Path(key).parts or not target.resolve().is_relative_to(folder.resolve()):
                    log.error("%s/%s: not a path inside the model's folder: skipped", self.location, key)
                    continue
                wanted = sums.get(key[len(prefix) :], "")
                if target.is_file() and etag in (mirrored.get(key), refused.get(key)):
                    continue  # unchanged since it was fetched (a refused one is not fetched again)
                if target.is_file() and wanted and sha256_of(target) == wanted:
                    mirrored[key] = etag
                    continue
                got = self._download(key, target)
                if wanted and got != wanted:
                    # Left in place: the registry's checksum check keeps the version out and says why.
                    refused[key] = etag
                    log.error("%s/%s: sha256 is %s, %s declares %s", self.location, key, got, yaml_key, wanted)
                    continue
                refused.pop(key, None)
                mirrored[key] = etag
        for child in folder.iterdir():
            if child.is_dir() and child.name not in declared:  # gone from the store
                shutil.rmtree(child, ignore_errors=True)
                gone = f"{name}/{child.name}/"
                mirrored = {k: v for k, v in mirrored.items() if not k.startswith(gone)}
                refused = {k: v for k, v in refused.items() if not k.startswith(gone)}
        if fresh is not None:
            os.replace(fresh, yaml_path)
            mirrored[yaml_key] = objects[yaml_key]
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
        with os.fdopen(fd, "w") as fh:
            json.dump({"mirrored": mirrored, "refused": refused}, fh)
        os.replace(tmp, index_path)


def _model_names(objects: dict[str, str]) -> list[str]:
    """The models in a listing: ``<name>/model.yaml`` keys whose name is a model name."""
    return sorted(
        name
        for name, _, file in (key.partition("/") for key in objects)
        if file == MODEL_FILE and MODEL_NAME.fullmatch(name)
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_store(settings: RuntimeSettings) -> ModelStore:
    """The store ``runtime.model_repository`` (else ``runtime.model_dir``) names."""
    where = settings.model_repository
    if where.startswith("s3://"):
        return S3Store(where, settings.store, settings.families)
    if "://" in where:
        raise ValueError(f"runtime.model_repository {where!r}: expected a local path or s3://bucket/prefix")
    return LocalStore(Path(where) if where else settings.model_dir)
