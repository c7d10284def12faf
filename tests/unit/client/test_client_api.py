"""``Client`` and ``AsyncClient`` offer the same methods with the same parameters (the async ones
awaited, their streams async iterators that also take async iterables), so that code moves
between them by adding ``await``/``async for`` and nothing else."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

from genoserve.client import AsyncClient, Client

#: Dunder methods that differ by design: the context-manager protocols.
_PROTOCOL = {"__enter__": "__aenter__", "__exit__": "__aexit__"}


def _public(cls: type) -> dict[str, Callable[..., Any]]:
    return {name: member for name, member in vars(cls).items() if callable(member) and not name.startswith("_")}


class _Synchronous(ast.NodeTransformer):
    """``X | AsyncIterable[X]`` -> ``X``; ``AsyncIterator[Y]`` -> ``Iterator[Y]``; the async
    client's own name -> the blocking one's."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        right = node.right
        if isinstance(right, ast.Subscript) and isinstance(right.value, ast.Name) and right.value.id == "AsyncIterable":
            return self.visit(node.left)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        renamed = {"AsyncIterator": "Iterator", "AsyncClient": "Client"}.get(node.id, node.id)
        return ast.copy_location(ast.Name(renamed, node.ctx), node)


def _annotation(value: Any, asynchronous: bool) -> str:
    if value is inspect.Parameter.empty:
        return ""
    text = value if isinstance(value, str) else inspect.formatannotation(value)
    tree = ast.parse(text, mode="eval")
    return ast.unparse(_Synchronous().visit(tree) if asynchronous else tree)


def _shape(function: Callable[..., Any], asynchronous: bool) -> tuple[Any, ...]:
    signature = inspect.signature(function)
    parameters = tuple(
        (p.name, p.kind, p.default, _annotation(p.annotation, asynchronous)) for p in signature.parameters.values()
    )
    return parameters, _annotation(signature.return_annotation, asynchronous)


def test_the_same_public_methods() -> None:
    assert sorted(_public(Client)) == sorted(_public(AsyncClient))
    assert len(_public(Client)) >= 21  # every method both clients had before they shared a base


def test_the_same_parameters_defaults_and_types() -> None:
    asynchronous = _public(AsyncClient)
    for name, method in _public(Client).items():
        assert _shape(method, False) == _shape(asynchronous[name], True), name
    for sync_name, async_name in _PROTOCOL.items():
        assert _shape(getattr(Client, sync_name), False) == _shape(getattr(AsyncClient, async_name), True)


def test_blocking_methods_block_and_async_methods_are_awaited_or_async_iterated() -> None:
    for name, method in _public(Client).items():
        assert not inspect.iscoroutinefunction(method), name
        assert not inspect.isasyncgenfunction(method), name
        other = getattr(AsyncClient, name)
        if inspect.isgeneratorfunction(method):
            assert inspect.isasyncgenfunction(other), name
        else:
            assert inspect.iscoroutinefunction(other), name


async def test_the_same_attributes() -> None:
    """Both build their stubs and settings in the shared base (an unused channel connects to nothing)."""
    with Client("127.0.0.1:1", timeout=5) as blocking:
        async with AsyncClient("127.0.0.1:1", timeout=5) as asynchronous:
            assert vars(blocking).keys() == vars(asynchronous).keys()
            assert blocking.config == asynchronous.config
            assert {"models", "jobs", "binding", "variants", "segmentation", "embedding"} <= vars(blocking).keys()
