"""Server interceptors: errors -> status codes (with BadRequest details), auth, metrics, logging.

The error hierarchy is mapped to gRPC status in exactly one place (``ErrorsAndMetrics``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from genoserve.api.auth import TokenTable, current_tenant
from genoserve.core import metrics
from genoserve.core.errors import GenoserveError, InvalidArgument

log = logging.getLogger(__name__)

#: Methods reachable without a token: Kubernetes gRPC probes cannot send metadata.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped (unary or streaming response)."""
    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)


async def abort_with(context: grpc.aio.ServicerContext, error: GenoserveError) -> None:
    """Abort the RPC with the error's status; InvalidArgument carries google.rpc.BadRequest."""
    code = grpc.StatusCode[error.code]
    if isinstance(error, InvalidArgument) and error.violations:
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error.message)
        status.details.add().Pack(detail)
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(code, error.message)


class ErrorsAndMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps exceptions to status codes and records request count and duration per method.

    The wrapped handler is built once per method (and per handler the rest of the chain returns),
    not per call, with its metric children looked up once: this runs on every request.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, method = _split(full_method)
        duration = metrics.REQUEST_DURATION.labels(service, method)
        counters: dict[str, Any] = {}

        def finish(code: str, started: float) -> None:
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = metrics.REQUESTS.labels(service, method, code)
            counter.inc()
            duration.observe(time.perf_counter() - started)

        async def handle(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
            if isinstance(exc, GenoserveError):
                if exc.code == "INTERNAL":
                    log.error("%s/%s failed", service, method, exc_info=exc)
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                log.info("%s/%s -> %s: %s", service, method, exc.code, exc.message)
                await abort_with(context, exc)
            log.exception("%s/%s failed unexpectedly", service, method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            return "INTERNAL"  # pragma: no cover - abort raises

        def code_of(exc: BaseException) -> str:
            if isinstance(exc, GenoserveError):
                return exc.code
            if isinstance(exc, asyncio.CancelledError):
                return "CANCELLED"
            return "INTERNAL"

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                code = "OK"
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    code = _abort_code(context)
                    raise
                except BaseException as exc:
                    code = code_of(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    await handle(exc, context)
                finally:
                    finish(code, started)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                code = "OK"
                try:
                    async for item in _responses(behavior(request, context)):
                        yield item
                except grpc.aio.AbortError:
                    code = _abort_code(context)
                    raise
                except BaseException as exc:
                    code = code_of(exc)
                    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                        raise
                    await handle(exc, context)
                finally:
                    finish(code, started)

            return wrapped

        return _rewrap(handler, unary, stream)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's responses: it either yields them or writes them with ``context.write``."""
    if inspect.isawaitable(result):
        await result
        return
    async for item in result:
        yield item


def _abort_code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class BearerAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires ``authorization: Bearer <token>`` on every method but health checks."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _rewrap(handler, self._unary, self._stream)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        header = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value
        current_tenant.set(self.tokens.authenticate(header))

    def _unary(self, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._authenticate(context)
            return await behavior(request, context)

        return wrapped

    def _stream(self, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self._authenticate(context)
            async for item in _responses(behavior(request, context)):
                yield item

        return wrapped
