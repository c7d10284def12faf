"""``genoserve`` command line: the entry point, the only place that reads flags and environment."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from genoserve.core.errors import GenoserveError
from genoserve.core.settings import Settings, load_settings


def build_settings(config: Path | None, overrides: dict[str, Any]) -> Settings:
    env = dict(os.environ)
    if config is None and env.get("GENOSERVE_CONFIG"):
        config = Path(env["GENOSERVE_CONFIG"])
    return load_settings(config, env, overrides)


@click.group()
@click.version_option(package_name="genoserve")
def cli() -> None:
    """genoserve: serve genomics deep-learning models over gRPC."""


@cli.command()
@click.option("--config", type=click.Path(path_type=Path, exists=True), help="YAML settings file.")
@click.option("--host", help="Address to bind (default localhost).")
@click.option("--port", type=int, help="gRPC port (default 50051; 0 picks a free one).")
@click.option("--metrics-port", type=int, help="Prometheus /metrics port (default 9095; 0 disables).")
@click.option("--model-dir", type=click.Path(path_type=Path), help="Model repository (default models/).")
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Execution provider.")
@click.option("--intra-op-threads", type=int, help="ONNX Runtime threads per session.")
@click.option("--tokens-file", type=click.Path(path_type=Path), help="Bearer tokens: '<token> [tenant]' lines.")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path), help="Server private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(path_type=Path), help="CA for client certificates (mTLS).")
@click.option("--grace-period", type=float, help="Seconds to drain in-flight requests on SIGTERM.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def serve(config: Path | None, **flags: Any) -> None:
    """Start the gRPC server and serve every model in the model repository."""
    from genoserve.api.server import serve as run_server
    from genoserve.core.logging import configure_logging
    from genoserve.core.metrics import start_metrics_endpoint

    overrides = {
        "server.host": flags["host"],
        "server.port": flags["port"],
        "server.metrics_port": flags["metrics_port"],
        "server.grace_period_s": flags["grace_period"],
        "server.auth.tokens_file": flags["tokens_file"],
        "server.tls.cert_file": flags["tls_cert"],
        "server.tls.key_file": flags["tls_key"],
        "server.tls.client_ca_file": flags["tls_client_ca"],
        "runtime.model_dir": flags["model_dir"],
        "runtime.models": list(flags["models"]) or None,
        "runtime.device": flags["device"],
        "runtime.intra_op_threads": flags["intra_op_threads"],
        "logging.level": flags["log_level"],
    }
    settings = _or_exit(lambda: build_settings(config, overrides))
    configure_logging(settings.logging)
    start_metrics_endpoint(settings.server.metrics_port, settings.server.host)
    asyncio.run(run_server(settings))


def _or_exit(build: Any) -> Any:
    try:
        return build()
    except GenoserveError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)


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


def make_client(address: str, token: str | None, ca_file: Path | None, tls: bool, timeout: float) -> Any:
    from genoserve.client import Client

    return Client(address, token=token, ca_file=ca_file, tls=tls, timeout=timeout)


@cli.group()
def models() -> None:
    """Models served by a running server."""


def _shape(dims: Any) -> str:
    return "[" + ",".join("?" if d == -1 else str(d) for d in dims) + "]"


def _ports(tensors: Any, dtype_name: Any) -> str:
    return ", ".join(f"{t.name}:{dtype_name(t.dtype)}{_shape(t.shape)}" for t in tensors)


@models.command("list")
@client_options
@click.option("--family", default="", help="Only this family.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per model).")
def models_list(family: str, as_json: bool, **conn: Any) -> None:
    """Each model version: family, version, inputs/outputs and readiness."""
    from genoserve.api.codecs.tensor import dtype_from_proto

    with make_client(**conn) as client:
        infos = _or_exit(lambda: client.list_models(family))
    if as_json:
        for info in infos:
            click.echo(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True)))
        return
    rows = [("MODEL", "FAMILY", "VERSION", "READY", "INPUTS", "OUTPUTS")]
    for info in infos:
        ready = "yes" if info.ready else f"no ({info.reason or 'loading'})"
        rows.append(
            (
                info.name,
                info.family or "?",
                info.version or "?",
                ready,
                _ports(info.inputs, dtype_from_proto),
                _ports(info.outputs, dtype_from_proto),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


@models.command("show")
@client_options
@click.argument("name")
@click.option("--version", default="", help="Version (default: latest ready).")
def models_show(name: str, version: str, **conn: Any) -> None:
    """Full metadata of one model version as JSON."""
    with make_client(**conn) as client:
        info = _or_exit(lambda: client.get_model(name, version))
    click.echo(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True), indent=2))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
