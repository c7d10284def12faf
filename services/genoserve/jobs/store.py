"""The job store: one JSON document per job, updated atomically. Redis in production, SQLite locally.

Both backends offer the same small interface; every transition is a pure function from
``lifecycle`` applied under the backend's transaction (Redis WATCH/MULTI, SQLite BEGIN IMMEDIATE).
"""

from __future__ import annotations

import abc
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from genoserve.core import metrics
from genoserve.core.errors import NotFound, Unavailable
from genoserve.jobs import records
from genoserve.jobs.records import Job, JobState

log = logging.getLogger(__name__)

T = TypeVar("T")
Mutation = Callable[[Job], T]


class JobStore(abc.ABC):
    """Atomic read-modify-write of job documents, plus listing by tenant."""

    @abc.abstractmethod
    def create(self, job: Job) -> None: ...

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def update(self, job_id: str, mutate: Mutation[T]) -> tuple[Job, T]:
        """Apply ``mutate`` to the stored job atomically; bump version/updated_at if it changed."""

    @abc.abstractmethod
    def list_jobs(self, tenant: str | None, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """Newest first; ``tenant`` None lists every tenant's jobs."""

    @abc.abstractmethod
    def active_ids(self) -> list[str]:
        """Jobs not yet SUCCEEDED, FAILED or CANCELLED."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        pass

    def transition(self, job_id: str, mutate: Mutation[T]) -> tuple[Job, T]:
        """``update`` that also counts jobs reaching a final state (genoserve_jobs_finished_total)."""
        before: list[JobState] = []

        def wrapped(job: Job) -> T:
            before.append(job.state)
            return mutate(job)

        job, result = self.update(job_id, wrapped)
        if job.state.terminal and before and not before[-1].terminal:
            metrics.JOBS_FINISHED.labels(job.kind, job.state.value.lower()).inc()
        return job, result

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job


def _apply(text: str | bytes, mutate: Mutation[T]) -> tuple[Job, T, bool]:
    job = records.load(text)
    before = job.model_dump()
    result = mutate(job)
    changed = job.model_dump() != before
    if changed:
        job.version += 1
        job.updated_at = time.time()
    return job, result, changed


class SqliteJobStore(JobStore):
    """The embedded store: one SQLite file shared by the server and local workers (WAL mode)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
                "state TEXT NOT NULL, created_at REAL NOT NULL, doc TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant, created_at)")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def create(self, job: Job) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, tenant, state, created_at, doc) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.tenant, job.state.value, job.created_at, records.dump(job)),
            )

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return records.load(row[0]) if row else None

    def update(self, job_id: str, mutate: Mutation[T]) -> tuple[Job, T]:
        with self._connect() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found")
            job, result, changed = _apply(row[0], mutate)
            if changed:
                db.execute(
                    "UPDATE jobs SET state = ?, doc = ? WHERE id = ?", (job.state.value, records.dump(job), job_id)
                )
        return job, result

    def list_jobs(self, tenant: str | None, state: JobState | None = None, limit: int = 50) -> list[Job]:
        query = "SELECT doc FROM jobs WHERE 1=1"
        args: list[object] = []
        if tenant is not None:
            query += " AND tenant = ?"
            args.append(tenant)
        if state is not None:
            query += " AND state = ?"
            args.append(state.value)
        query += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [records.load(row[0]) for row in self._db().execute(query, args)]

    def active_ids(self) -> list[str]:
        terminal = tuple(s.value for s in JobState if s.terminal)
        rows = self._db().execute("SELECT id FROM jobs WHERE state NOT IN (?, ?, ?)", terminal)
        return [row[0] for row in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisJobStore(JobStore):
    """Production store. Keys: ``genoserve:job:<id>`` (JSON), ``genoserve:jobs:<tenant>`` and
    ``genoserve:jobs:all`` (sorted by creation time), ``genoserve:jobs:active`` (set).

    Connection errors are retried with backoff for up to ``retry_s`` seconds (a Redis restart),
    then surface as UNAVAILABLE.
    """

    PREFIX = "genoserve:"

    def __init__(self, url: str, retry_s: float = 30.0) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self._redis_errors = (redis.ConnectionError, redis.TimeoutError)
        self._watch_error = redis.WatchError
        retries = max(1, int(retry_s / 0.5))
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=10,
        )

    def _key(self, job_id: str) -> str:
        return f"{self.PREFIX}job:{job_id}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._redis_errors as exc:
            raise Unavailable(f"job store (Redis) unreachable: {exc}") from exc

    def create(self, job: Job) -> None:
        with self._errors():
            pipe = self._client.pipeline()
            pipe.set(self._key(job.id), records.dump(job))
            pipe.zadd(f"{self.PREFIX}jobs:tenant:{job.tenant}", {job.id: job.created_at})
            pipe.zadd(f"{self.PREFIX}jobs:all", {job.id: job.created_at})
            pipe.sadd(f"{self.PREFIX}jobs:active", job.id)
            pipe.execute()

    def get(self, job_id: str) -> Job | None:
        with self._errors():
            text = self._client.get(self._key(job_id))
        return records.load(text) if text else None

    def update(self, job_id: str, mutate: Mutation[T]) -> tuple[Job, T]:
        key = self._key(job_id)
        with self._errors():
            while True:
                with self._client.pipeline() as pipe:
                    try:
                        pipe.watch(key)  # type: ignore[no-untyped-call]
                        text = pipe.get(key)
                        if text is None:
                            raise NotFound(f"job {job_id!r} not found")
                        job, result, changed = _apply(text, mutate)
                        if not changed:
                            pipe.unwatch()
                            return job, result
                        pipe.multi()
                        pipe.set(key, records.dump(job))
                        if job.state.terminal:
                            pipe.srem(f"{self.PREFIX}jobs:active", job_id)
                        pipe.execute()
                        return job, result
                    except self._watch_error:
                        continue  # another writer won the race: re-read and re-apply

    def list_jobs(self, tenant: str | None, state: JobState | None = None, limit: int = 50) -> list[Job]:
        index = f"{self.PREFIX}jobs:all" if tenant is None else f"{self.PREFIX}jobs:tenant:{tenant}"
        out: list[Job] = []
        with self._errors():
            start = 0
            while len(out) < limit:
                ids = [_text(i) for i in self._client.zrevrange(index, start, start + 199)]
                if not ids:
                    break
                start += len(ids)
                for text in self._client.mget([self._key(i) for i in ids]):
                    if text:
                        job = records.load(text)
                        if state is None or job.state is state:
                            out.append(job)
        return out[:limit]

    def active_ids(self) -> list[str]:
        with self._errors():
            return sorted(_text(i) for i in self._client.smembers(f"{self.PREFIX}jobs:active"))

    def close(self) -> None:
        self._client.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_store(url: str) -> JobStore:
    """``redis://...`` / ``rediss://...`` or ``sqlite:///absolute/path``."""
    if url.startswith(("redis://", "rediss://")):
        return RedisJobStore(url)
    if url.startswith("sqlite:///"):
        return SqliteJobStore(Path(url[len("sqlite:///") - 1 :]))
    raise ValueError(f"unsupported job store URL {url!r}")
