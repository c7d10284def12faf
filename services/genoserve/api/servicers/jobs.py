"""genoserve.v1.Jobs: thin servicer over JobService.

Its blocking calls run on its own threads, apart from the event loop's default executor that the
online services use: Submit (which inspects inputs) on ``jobs.submit_threads`` threads, the
others on a second small pool, so that slow submits hold up neither job reads nor predictions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from genoserve.api.auth import current_tenant
from genoserve.api.codecs import jobs as codec
from genoserve.jobs.service import JobService
from genoserve.v1 import jobs_pb2, jobs_pb2_grpc

#: How often Watch looks at the job store for changes.
WATCH_POLL_S = 0.2
#: Threads for Get, List, Cancel and Watch's store reads.
READ_THREADS = 4

T = TypeVar("T")


class JobsServicer(jobs_pb2_grpc.JobsServicer):
    SERVICE_NAME = "genoserve.v1.Jobs"

    def __init__(self, service: JobService) -> None:
        self.service = service
        self._closing = asyncio.Event()
        self._submits = ThreadPoolExecutor(service.settings.jobs.submit_threads, thread_name_prefix="jobs-submit")
        self._reads = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="jobs-read")

    def close(self) -> None:
        """Server shutdown: end Watch streams now (clients re-attach) instead of at the grace period."""
        self._closing.set()  # the pools stay: calls in flight during the grace period still use them

    async def _run(self, pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def Submit(self, request: jobs_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        submit = functools.partial(
            self.service.submit, current_tenant.get(), request.kind, list(request.inputs), request.output_dir,
            dict(request.params),
        )  # fmt: skip
        job = await self._run(self._submits, submit)
        return codec.job_message(job)

    async def Get(self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        job = await self._run(self._reads, functools.partial(self.service.get, current_tenant.get(), request.id))
        return codec.job_message(job)

    async def List(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        state = codec.state_from_proto(request.state)
        jobs = await self._run(
            self._reads, functools.partial(self.service.list, current_tenant.get(), state, request.limit)
        )
        return jobs_pb2.ListJobsResponse(jobs=[codec.job_message(j) for j in jobs])

    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext) -> jobs_pb2.Job:
        job = await self._run(self._reads, functools.partial(self.service.cancel, current_tenant.get(), request.id))
        return codec.job_message(job)

    async def Watch(
        self, request: jobs_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        tenant = current_tenant.get()
        version = -1
        while True:
            job = await self._run(self._reads, functools.partial(self.service.get, tenant, request.id))
            if job.version != version:
                version = job.version
                yield codec.job_event(job)
            if job.state.terminal or self._closing.is_set():
                return  # a stream that ends before a final state tells the client to re-attach
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), WATCH_POLL_S)
