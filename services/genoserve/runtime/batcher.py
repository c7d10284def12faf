"""Per-model dynamic batcher, after Triton's dynamic batcher.

Requests (each a dict of arrays sharing a leading batch dimension) are queued; a batch is formed
when ``max_batch_size`` items of the same per-item shape are waiting, or when the oldest request has
waited ``max_queue_delay_us``, and no more than ``instances`` batches run at once. The queue is
bounded (full: RESOURCE_EXHAUSTED at once), requests whose deadline passed are dropped before
compute (DEADLINE_EXCEEDED), a request larger than ``max_batch_size`` is split and its parts
reassembled, outputs are sliced back per request, and when a batch fails each of its requests is
re-run alone so that one bad request fails by itself. With ``split_rows`` set, a batch that finds
nothing else queued and other instances idle is split by rows across them (parts of at least
``split_rows`` rows, run at once, outputs concatenated): items are independent along the batch
dimension, which dynamic batching already relies on.

Admission by deadline (``deadline_admission``, on by default): a request with a deadline is
refused at once with RESOURCE_EXHAUSTED when the work queued ahead of it, the calls still running
and its own rows, as estimated from the session calls timed so far (``genoserve.runtime.admission``),
would not finish within ``1 - deadline_headroom`` of the time left to that deadline (the rest is
kept for the work after the model: post-processing, the response), rather than accepted only to
miss it. Nothing is refused this way before a call has been timed, nor while the queue is empty.
Requests without a deadline are bounded by ``max_queue_size`` only.

Session calls run in ``executor`` (ONNX Runtime releases the GIL), except, with one instance, those
estimated to take less than ``inline_call_us``, which run on the event loop: for them the hop to a
thread and back costs more than the loop would do meanwhile.

Note: asyncio timers have millisecond resolution on Linux (epoll), so delays below 1 ms round up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genoserve.core import metrics
from genoserve.core.errors import (
    DeadlineExceeded,
    GenoserveError,
    InternalError,
    ResourceExhausted,
    Unavailable,
)
from genoserve.core.parallel import bounds
from genoserve.runtime.admission import CallCost

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
Tensors = dict[str, Array]
RunFn = Callable[[Mapping[str, Array]], Tensors]


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 64
    max_queue_delay_us: int = 500
    max_queue_size: int = 1024
    instances: int = 1
    split_rows: int = 0
    #: Refuse a request whose deadline the queued work will not let it meet (module docstring).
    deadline_admission: bool = True
    #: Fraction of the time left to a deadline not given to the batcher's estimated work.
    deadline_headroom: float = 0.2
    #: With one instance, a session call that ``run`` is estimated (from the calls timed so far) to
    #: finish in at most this many µs runs on the event loop itself instead of in the executor (0:
    #: always in the executor; ``live.batcher_config`` sets 0 for a GPU session, whose calls leave the CPU
    #: free for the loop). Handing a call to a thread and its result back costs CPU (thread
    #: wake-ups, the GIL passed twice), and while ONNX Runtime's threads take every core the loop
    #: has none to work on meanwhile: measured on 2 cores, side by side with the executor, 256-row
    #: calls of deepbind-ctcf (~2.5 ms) served 1.3x the rows/s inline and 1-row calls of
    #: platform-mlp took ~8 % less server CPU per request. Longer calls stay in the executor, so
    #: that the loop is never held for long.
    inline_call_us: int = 10_000


@dataclass(eq=False)
class _Pending:
    inputs: Mapping[str, Array]
    size: int
    key: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[Tensors]
    deadline: float | None
    enqueued: float = field(default=0.0)


def _shape_key(inputs: Mapping[str, Array]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Requests batch together only when every input has the same per-item shape."""
    return tuple(sorted((name, tuple(a.shape[1:])) for name, a in inputs.items()))


def _batch_size(inputs: Mapping[str, Array]) -> int:
    sizes = {int(a.shape[0]) for a in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs disagree on the batch dimension: {sorted(sizes)}")
    return sizes.pop()


class DynamicBatcher:
    """Gathers concurrent requests for one model version into batched ``run`` calls.

    ``run`` takes and returns dicts of arrays whose first dimension is the batch; it is called in
    ``executor`` (ONNX Runtime releases the GIL). All methods must be called on one event loop.
    """

    def __init__(
        self,
        model: str,
        run: RunFn,
        config: BatcherConfig,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.config = config
        self._run = run
        self._executor = executor
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0  # rows of the requests in _queue (cancelled ones until purged)
        self._cost = CallCost()  # how long session calls take, for admission by deadline
        self._run_cost = CallCost()  # how long ``run`` itself takes (no thread hop): what may run inline
        self._drain = CallCost()  # time between batch completions while the queue was never empty
        self._last_done: float | None = None  # perf_counter of the last completion, if the queue was busy
        self._calls: dict[int, tuple[float, int]] = {}  # running session calls: perf_counter start, rows
        self._call_ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(config.instances)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._drained = asyncio.Event()  # set whenever nothing is queued or running
        # Labelled metric children, looked up once (labels() costs ~µs per call on the hot path).
        self._m_depth = metrics.QUEUE_DEPTH.labels(model)
        self._m_queue = metrics.QUEUE_DURATION.labels(model)
        self._m_infer = metrics.INFERENCE_DURATION.labels(model)
        self._m_batch = metrics.BATCH_SIZE.labels(model)

    # -- public -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model}")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Mapping[str, Array], deadline: float | None = None) -> Tensors:
        """Queue one request and wait for its outputs.

        ``deadline`` is an absolute time on this batcher's clock (``time.monotonic``), or None.
        """
        if self._closing:
            raise Unavailable(f"model {self.model} is shutting down")
        size = _batch_size(inputs)
        now = self._clock()
        if deadline is not None and deadline <= now:
            metrics.BATCH_REJECTED.labels(self.model, "deadline").inc()
            raise DeadlineExceeded(f"model {self.model}: the request's deadline passed before it was queued")
        limit = self.config.max_batch_size
        parts = (
            [inputs]
            if size <= limit
            else [{name: a[start : start + limit] for name, a in inputs.items()} for start in range(0, size, limit)]
        )
        if len(self._queue) + len(parts) > self.config.max_queue_size:
            metrics.BATCH_REJECTED.labels(self.model, "queue_full").inc()
            raise ResourceExhausted(
                f"model {self.model}: queue full ({self.config.max_queue_size} requests waiting); retry later"
            )
        if deadline is not None and self.config.deadline_admission:
            self._admit(size, deadline - now)
        loop = asyncio.get_running_loop()
        pending = [
            _Pending(part, _batch_size(part), _shape_key(part), loop.create_future(), deadline, now) for part in parts
        ]
        self._queue.extend(pending)
        self._queued_rows += size
        self._m_depth.set(len(self._queue))
        self._wakeup.set()
        if len(pending) == 1:  # the common case: no gather (a cancelled caller cancels the future)
            return await pending[0].future
        try:
            results = await asyncio.gather(*(p.future for p in pending))
        finally:
            for p in pending:  # caller cancelled or a sibling part failed: skip the rest
                if not p.future.done():
                    p.future.cancel()
        return {name: np.concatenate([r[name] for r in results]) for name in results[0]}

    def estimated_wait(self, size: int = 0) -> float:
        """Seconds until the queued requests, and then ``size`` more rows, have all run: the running
        calls' remaining time, then the rows in full batches, at the pace of the session calls
        timed (shared among the instances) or, when slower, at the pace the queue was seen to
        drain (which counts the batcher's and the event loop's own work between calls too).
        0 before any call was timed."""
        if not self._cost.measured:
            return 0.0
        instances = self.config.instances
        now = time.perf_counter()
        running = sum(max(0.0, self._cost.seconds(rows) - (now - start)) for start, rows in self._calls.values())
        rows = self._queued_rows + size
        calls = math.ceil(rows / self.config.max_batch_size)
        compute = self._cost.seconds(rows, calls) / instances
        if self._drain.measured:
            compute = max(compute, self._drain.seconds(rows, calls))
        return running / instances + compute

    def admit(self, size: int, deadline: float | None) -> None:
        """Raise ResourceExhausted now if ``submit`` would refuse a request of ``size`` rows with this
        ``deadline`` by admission: for callers with work to do before ``submit`` (preprocessing)
        that they would rather not do for a request the queue cannot serve in time."""
        if deadline is not None and self.config.deadline_admission:
            self._admit(size, deadline - self._clock())

    def _admit(self, size: int, left: float) -> None:
        """Refuse (RESOURCE_EXHAUSTED) a request of ``size`` rows that the queued work will not let
        finish in the ``left`` seconds to its deadline (less the headroom)."""
        if not self._queue or not self._cost.measured:
            return
        needed = self.estimated_wait(size)
        if needed <= left * (1 - self.config.deadline_headroom):
            return
        metrics.BATCH_REJECTED.labels(self.model, "deadline_estimate").inc()
        raise ResourceExhausted(
            f"model {self.model}: overloaded; the {self._queued_rows} rows queued ahead and this request's "
            f"{size} need an estimated {needed:.3f} s, but its deadline is {left:.3f} s away "
            f"({1 - self.config.deadline_headroom:.0%} of it is what the model may take); "
            "retry later, elsewhere or with a longer deadline"
        )

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, let queued and running ones finish (up to ``timeout``), stop."""
        self._closing = True
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self._queue or self._running:
                    self._drained.clear()
                    await self._drained.wait()
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(Unavailable(f"model {self.model} shut down before this request ran"))
        self._queue.clear()
        self._queued_rows = 0
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    # -- batch formation ----------------------------------------------------------------------

    def _purge(self) -> None:
        """Drop cancelled requests and fail those whose deadline has passed."""
        if not self._queue:
            return
        now = self._clock()
        kept: deque[_Pending] = deque()
        rows = 0
        for p in self._queue:
            if p.future.done():
                continue
            if p.deadline is not None and p.deadline <= now:
                metrics.BATCH_REJECTED.labels(self.model, "deadline").inc()
                waited_ms = (now - p.enqueued) * 1e3
                p.future.set_exception(
                    DeadlineExceeded(f"model {self.model}: deadline passed after {waited_ms:.1f} ms in queue")
                )
                continue
            kept.append(p)
            rows += p.size
        self._queue = kept
        self._queued_rows = rows

    def _ready_items(self, key: tuple[Any, ...]) -> int:
        return sum(p.size for p in self._queue if p.key == key)

    def _take_batch(self) -> list[_Pending]:
        key = self._queue[0].key
        batch: list[_Pending] = []
        rest: deque[_Pending] = deque()
        total = 0
        for p in self._queue:
            if p.key == key and total + p.size <= self.config.max_batch_size:
                batch.append(p)
                total += p.size
            else:
                rest.append(p)
        self._queue = rest
        self._queued_rows -= total
        return batch

    async def _loop(self) -> None:
        delay = self.config.max_queue_delay_us / 1e6
        while True:
            self._purge()
            if not self._queue:
                if not self._running:
                    self._drained.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            while True:  # wait until the batch is full or its oldest request has waited long enough
                self._purge()
                if not self._queue:
                    break
                head = self._queue[0]
                if self._closing or self._ready_items(head.key) >= self.config.max_batch_size:
                    break
                remaining = head.enqueued + delay - self._clock()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            if not self._queue:
                self._slots.release()
                continue
            batch = self._take_batch()
            self._m_depth.set(len(self._queue))
            rows = sum(p.size for p in batch)
            parts = 1 + await self._idle_slots(rows)
            if parts == 1 and self._inline(rows):  # runs to the end without suspending: no task
                await self._execute(batch)
                await asyncio.sleep(0)  # let the loop's other work (I/O, signals, responses) in between
                continue
            task = asyncio.get_running_loop().create_task(self._execute(batch, parts))
            self._running.add(task)
            task.add_done_callback(self._task_done)

    async def _idle_slots(self, size: int) -> int:
        """Take the idle instances a batch of ``size`` rows may be split across (``split_rows``):
        only when nothing else waits, so a split never delays a queued request."""
        extra = 0
        split = self.config.split_rows
        while (
            split
            and not self._queue
            and extra + 1 < self.config.instances
            and size >= (extra + 2) * split
            and not self._slots.locked()
        ):
            await self._slots.acquire()  # free: returns at once
            extra += 1
        return extra

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._running and not self._queue:
            self._drained.set()

    # -- execution ------------------------------------------------------------------------------

    async def _call(self, inputs: Mapping[str, Array], size: int) -> Tensors:
        loop = asyncio.get_running_loop()
        call = next(self._call_ids)
        started = time.perf_counter()
        self._calls[call] = (started, size)
        try:
            if self._inline(size):
                outputs, ran = self._timed_run(inputs)
            else:
                outputs, ran = await loop.run_in_executor(self._executor, self._timed_run, inputs)
        finally:
            del self._calls[call]
        seconds = time.perf_counter() - started
        self._m_infer.observe(seconds)
        if size:
            self._cost.observe(size, seconds)
            self._run_cost.observe(size, ran)
        self._m_batch.observe(size)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != size:
                raise InternalError(f"model {self.model}: output {name} has shape {array.shape}, expected batch {size}")
        return outputs

    def _timed_run(self, inputs: Mapping[str, Array]) -> tuple[Tensors, float]:
        """``run`` and the seconds it took itself (without the hop to and from a thread)."""
        started = time.perf_counter()
        outputs = self._run(inputs)
        return outputs, time.perf_counter() - started

    def _inline(self, size: int) -> bool:
        """Whether a call of ``size`` rows is short enough to run on the event loop (``inline_call_us``,
        by the time ``run`` itself took on the calls timed so far): only with one instance (more run
        side by side in the executor), and never before a call was timed, so a model's first
        calls, however slow, go to the executor."""
        limit = self.config.inline_call_us
        if not limit or self.config.instances > 1 or not self._run_cost.measured:
            return False
        return self._run_cost.seconds(size) * 1e6 <= limit

    async def _call_split(self, inputs: Mapping[str, Array], size: int, parts: int) -> Tensors:
        """``_call`` on ``parts`` row ranges at once (each on its own instance), concatenated."""
        if parts <= 1:
            return await self._call(inputs, size)
        ranges = itertools.pairwise(bounds(size, parts))
        calls = [self._call({n: a[lo:hi] for n, a in inputs.items()}, hi - lo) for lo, hi in ranges]
        results = await asyncio.gather(*calls, return_exceptions=True)  # every part done with the inputs
        for result in results:
            if isinstance(result, BaseException):
                raise result
        done = [r for r in results if not isinstance(r, BaseException)]
        return {name: np.concatenate([r[name] for r in done]) for name in done[0]}

    async def _execute(self, batch: list[_Pending], parts: int = 1) -> None:
        try:
            now = self._clock()
            for p in batch:
                self._m_queue.observe(now - p.enqueued)
            total = sum(p.size for p in batch)
            if len(batch) == 1:
                merged: Mapping[str, Array] = batch[0].inputs
            else:
                merged = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
            try:
                outputs = await self._call_split(merged, total, parts)
            except Exception as exc:
                if len(batch) == 1:
                    self._fail(batch[0], exc)
                else:
                    await self._isolate(batch)
                return
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result({name: a[offset : offset + p.size] for name, a in outputs.items()})
                offset += p.size
            self._completed(total)
        finally:
            for _ in range(parts):
                self._slots.release()
            self._wakeup.set()

    def _completed(self, rows: int) -> None:
        """A batch of ``rows`` rows is done: while the queue never emptied, the time since the last
        completion is what the batcher took per batch (the pace ``estimated_wait`` drains at)."""
        now = time.perf_counter()
        if self._last_done is not None and rows:
            self._drain.observe(rows, now - self._last_done)
        self._last_done = now if self._queue else None

    async def _isolate(self, batch: list[_Pending]) -> None:
        """The batch failed: run each request alone so only the failing ones get an error."""
        log.warning("model %s: batch of %d requests failed; re-running them one by one", self.model, len(batch))
        for p in batch:
            if p.future.done():
                continue
            try:
                result = await self._call(p.inputs, p.size)
            except Exception as exc:
                self._fail(p, exc)
            else:
                if not p.future.done():
                    p.future.set_result(result)

    def _fail(self, pending: _Pending, exc: Exception) -> None:
        if pending.future.done():
            return
        if isinstance(exc, GenoserveError):
            pending.future.set_exception(exc)
            return
        log.error("model %s: inference failed", self.model, exc_info=exc)
        error = InternalError(f"model {self.model}: inference failed")
        error.__cause__ = exc
        pending.future.set_exception(error)
