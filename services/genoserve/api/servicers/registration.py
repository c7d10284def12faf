"""Registering a servicer whose requests a codec parses from the received bytes (not protobuf)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


def add_parsed_servicer(
    server: grpc.aio.Server,
    service_name: str,
    parse: Callable[[bytes], Any],
    serialize: Callable[[Any], bytes],
    unary: dict[str, Callable[..., Any]],
    stream: dict[str, Callable[..., Any]],
) -> None:
    """As a generated ``add_<Service>Servicer_to_server``, with ``parse`` as every method's request
    deserializer (so large tensors can stay in the received bytes) and ``serialize`` for the
    responses: ``unary`` methods are unary-unary, ``stream`` ones stream-stream."""
    handlers = {
        **{
            name: grpc.unary_unary_rpc_method_handler(method, request_deserializer=parse, response_serializer=serialize)
            for name, method in unary.items()
        },
        **{
            name: grpc.stream_stream_rpc_method_handler(
                method, request_deserializer=parse, response_serializer=serialize
            )
            for name, method in stream.items()
        },
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
    server.add_registered_method_handlers(service_name, handlers)
