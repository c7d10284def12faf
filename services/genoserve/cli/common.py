"""Shared pieces of the ``genoserve`` commands: settings from flags/env, client options, errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from genoserve.core.errors import GenoserveError
from genoserve.core.settings import Settings, load_settings

T = TypeVar("T")


def build_settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    """The one place that reads the environment: YAML < env < flags."""
    env = dict(os.environ)
    if config is None and env.get("GENOSERVE_CONFIG"):
        config = Path(env["GENOSERVE_CONFIG"])
    return or_exit(lambda: load_settings(config, env, overrides))


def or_exit(call: Callable[[], T]) -> T:
    """Run ``call``; a genoserve error becomes a one-line message and exit code 2."""
    try:
        return call()
    except GenoserveError as exc:
        click.echo(f"error ({exc.code}): {exc.message}", err=True)
        for violation in getattr(exc, "violations", []):
            click.echo(f"  {violation.field}: {violation.description}", err=True)
        sys.exit(2)


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


def make_client(
    address: str, token: str | None, ca_file: Path | None, tls: bool, timeout: float, shared_memory: bool = False
) -> Any:
    from genoserve.client import Client

    return Client(address, token=token, ca_file=ca_file, tls=tls, timeout=timeout, shared_memory=shared_memory)
