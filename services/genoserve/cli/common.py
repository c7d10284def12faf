"""Shared pieces of the ``genoserve`` commands: settings from flags/env, client options, errors
(printed once, in the command's own words), progress bars."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click

from genoserve.core.errors import GenoserveError
from genoserve.core.settings import Settings, load_settings

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Flags:
    """How a command spells the fields of the requests it sends, for the server's messages: a
    field is named as the command's flag (``{"crop": "--crop"}``: "crop: ..." -> "--crop: ...",
    "set crop" -> "pass --crop"); with ``params``, a job's ``params[name]`` is ``--param name``."""

    fields: Mapping[str, str] = field(default_factory=dict)
    params: bool = False

    def spell(self, text: str) -> str:
        if self.params:
            text = re.sub(r"\bparams\[([^\]]*)\]", r"--param \1", text)
            text = re.sub(r"\bpass param\b", "pass --param", text)
        for name, flag in self.fields.items():
            text = re.sub(rf"\bset {re.escape(name)}\b", f"pass {flag}", text)
            text = re.sub(rf"(^|; |: ){re.escape(name)}(?=[:\[.]|$)", rf"\g<1>{flag.split('=')[0]}", text)
        return text


NO_FLAGS = Flags()


def build_settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    """The one place that reads the environment: YAML < env < flags."""
    env = dict(os.environ)
    if config is None and env.get("GENOSERVE_CONFIG"):
        config = Path(env["GENOSERVE_CONFIG"])
    return or_exit(lambda: load_settings(config, env, overrides))


def error_lines(exc: GenoserveError, flags: Flags = NO_FLAGS) -> list[str]:
    """What ``or_exit`` prints for ``exc``: each problem once. A message that is its field
    violations joined (as InvalidArgument's are) gives one line per violation; any other message
    comes first, followed by the violations it does not already say."""
    message = flags.spell(exc.message)
    problems = [f"{flags.spell(v.field)}: {flags.spell(v.description)}" for v in getattr(exc, "violations", [])]
    joined = "; ".join(problems)
    clipped_at = message.rfind(" ... (")
    if problems and (message == joined or (clipped_at > 0 and joined.startswith(message[:clipped_at]))):
        head, rest = problems[0], problems[1:]
    else:
        head, rest = message, [p for p in problems if p not in message]
    return [f"error ({exc.code}): {head}", *(f"  {line}" for line in rest)]


def or_exit(call: Callable[[], T], flags: Flags | Callable[[], Flags] = NO_FLAGS) -> T:
    """Run ``call``; a genoserve error is printed once (``error_lines``, fields as ``flags`` spell
    them; a callable is asked only then) and the command exits with code 2."""
    try:
        return call()
    except GenoserveError as exc:
        for line in error_lines(exc, flags if isinstance(flags, Flags) else flags()):
            click.echo(line, err=True)
        sys.exit(2)


class Guarded(Generic[T]):
    """A request stream whose own errors (a bad record read while streaming) survive gRPC, which
    reports an exception raised inside a request iterator only as UNKNOWN ("Exception iterating
    requests!"): the stream ends there, and ``call`` raises the error itself."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items = items
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[T]:
        try:
            yield from self.items
        except Exception as exc:  # re-raised by call/check, with its traceback
            self.failure = exc

    def check(self) -> None:
        """Raise the stream's own error, if it had one."""
        if self.failure is not None:
            raise self.failure

    def call(self, run: Callable[[], R]) -> R:
        """``run()`` (the RPC reading this stream); the stream's own error first, being the cause."""
        try:
            result = run()
        except GenoserveError:
            self.check()
            raise
        self.check()
        return result


def output_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Click callback: an output file whose folder exists, checked before any work is done."""
    if value is not None and not value.absolute().parent.is_dir():
        raise click.BadParameter(f"folder {str(value.parent)!r} does not exist", ctx=ctx, param=param)
    return value


def client_options(func: Any) -> Any:
    options = [
        click.option("--address", envvar="GENOSERVE_ADDRESS", default="localhost:50051", show_default=True),
        click.option("--token", envvar="GENOSERVE_TOKEN", help="Bearer token."),
        click.option("--ca-file", type=click.Path(path_type=Path, exists=True), help="TLS: CA of the server."),
        click.option("--tls", is_flag=True, help="Use TLS with the system's CAs."),
        click.option("--timeout", type=float, default=30.0, show_default=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def quiet_option(func: Any) -> Any:
    return click.option(
        "--quiet", "-q", is_flag=True, help="No progress bar (it is drawn on stderr only when that is a terminal)."
    )(func)


def progress_bar(quiet: bool, **options: Any) -> tqdm[Any]:
    """A tqdm progress bar on stderr: off with ``--quiet`` and when stderr is not a terminal (a
    log file or a pipe gets no bar). ``options`` as tqdm's (total, unit, desc, ...)."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, **options)


def make_client(
    address: str, token: str | None, ca_file: Path | None, tls: bool, timeout: float, shared_memory: bool = False
) -> Any:
    from genoserve.client import Client

    return Client(address, token=token, ca_file=ca_file, tls=tls, timeout=timeout, shared_memory=shared_memory)
