"""Server interceptors: errors -> status codes (with BadRequest details), auth, metrics, logging,
and requests whose bytes do not decode.

The error hierarchy is mapped to gRPC status in exactly one place (``ErrorsAndMetrics``). Order
(outermost first): ``ErrorsAndMetrics``, ``BearerAuth`` (when enabled), ``UndecodableRequests``.
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
from genoserve.core.errors import FieldViolation, GenoserveError, InvalidArgument, clipped

log = logging.getLogger(__name__)

#: Methods reachable without a token: Kubernetes gRPC probes cannot send metadata.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)

#: Bytes of ``google.rpc.BadRequest`` field violations sent with an INVALID_ARGUMENT: with the
#: message (``genoserve.core.errors.MAX_MESSAGE_BYTES``) the status stays well inside the 8 KiB of
#: trailing metadata a gRPC client accepts.
MAX_DETAILS_BYTES = 1536
_FIELD_BYTES = 200
_DESCRIPTION_BYTES = 512

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or "unknown"


def _rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped (unary or streaming response), and its request
    deserializer replaced if one is given. The server uses the outermost handler's deserializer;
    each interceptor copies the one of the handler it wraps."""
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)


def _violations(violations: list[FieldViolation]) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The violations as sent: each field and description clipped, and as many as fit in
    ``MAX_DETAILS_BYTES`` (the count of the others in a last one)."""
    out: list[error_details_pb2.BadRequest.FieldViolation] = []
    size = 0
    for i, v in enumerate(violations):
        item = error_details_pb2.BadRequest.FieldViolation(
            field=clipped(v.field, _FIELD_BYTES), description=clipped(v.description, _DESCRIPTION_BYTES)
        )
        size += item.ByteSize() + 4
        if size > MAX_DETAILS_BYTES - 64:
            rest = len(violations) - i
            out.append(error_details_pb2.BadRequest.FieldViolation(
                field="...", description=f"{rest} more violation(s) left out"))  # fmt: skip
            break
        out.append(item)
    return out


async def abort_with(context: grpc.aio.ServicerContext, error: GenoserveError) -> None:
    """Abort the RPC with the error's status; InvalidArgument carries google.rpc.BadRequest. The
    message and details are clipped so that the status always fits in gRPC's metadata."""
    code = grpc.StatusCode[error.code]
    message = clipped(error.message)
    if isinstance(error, InvalidArgument) and error.violations:
        detail = error_details_pb2.BadRequest(field_violations=_violations(error.violations))
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message)
        status.details.add().Pack(detail)
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(code, message)


class _WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that wraps each method's handler. The wrapped handler is built once per
    method (and per handler the rest of the chain returns), not per call: this runs on every
    request."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not self._applies(details.method):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _applies(self, method: str) -> bool:
        return True

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorsAndMetrics(_WrappingInterceptor):
    """Maps exceptions to status codes and records request count and duration per method (the
    metric children are looked up once per method)."""

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
                log.info("%s/%s -> %s: %s", service, method, exc.code, clipped(exc.message))
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


class BearerAuth(_WrappingInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method but health checks."""

    def __init__(self, tokens: TokenTable) -> None:
        super().__init__()
        self.tokens = tokens

    def _applies(self, method: str) -> bool:
        return not method.startswith(PUBLIC_PREFIXES)

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return _rewrap(handler, self._unary, self._stream)

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


class _Undecodable:
    """What the request deserializer gives for bytes it cannot decode (the decoder's message)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _undecodable_error(request: _Undecodable, message: int | None) -> InvalidArgument:
    field = "request" if message is None else f"request message {message}"
    return InvalidArgument.field(field, f"cannot be decoded: {request.reason}")


class UndecodableRequests(_WrappingInterceptor):
    """Request bytes that do not decode (a corrupt or foreign protobuf encoding) -> INVALID_ARGUMENT
    naming the request (the message number on a stream) and the decoder's reason, where gRPC
    itself answers UNKNOWN or INTERNAL. Innermost, so authentication comes first."""

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserializer = handler.request_deserializer
        if deserializer is None:
            return handler

        def deserialize(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception as exc:  # any decoder failure is the client's bytes
                return _Undecodable(str(exc) or type(exc).__name__)

        def checked(request: Any) -> Any:
            if handler.request_streaming:
                return _checked_stream(request)
            if isinstance(request, _Undecodable):
                raise _undecodable_error(request, None)
            return request

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await behavior(checked(request), context)

            return wrapped

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for item in _responses(behavior(checked(request), context)):
                    yield item

            return wrapped

        return _rewrap(handler, unary, stream, deserialize)


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    number = 0
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise _undecodable_error(request, number)
        yield request
        number += 1
