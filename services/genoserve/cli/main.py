"""``genoserve`` command line: the entry point, the only place that reads flags and environment."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from genoserve.cli.common import build_settings, client_options, make_client, or_exit
from genoserve.cli.importers import import_group
from genoserve.cli.jobs import jobs
from genoserve.cli.predict import predict
from genoserve.core.errors import InvalidArgument, Unavailable
from genoserve.core.settings import RuntimeSettings, Settings


@click.group()
@click.version_option(package_name="genoserve")
def cli() -> None:
    """genoserve: serve genomics deep-learning models over gRPC."""


@cli.command()
@click.option("--config", type=click.Path(path_type=Path, exists=True), help="YAML settings file.")
@click.option("--host", help="Address to bind (default localhost).")
@click.option("--port", type=int, help="gRPC port (default 50051; 0 picks a free one).")
@click.option("--metrics-port", type=int, help="Prometheus /metrics port (default 9095; 0 disables).")
@click.option("--health-port", type=int, help="Plaintext grpc.health.v1-only port for probes (default 0: off).")
@click.option(
    "--model-dir",
    help="Model repository: a folder, a mounted volume or s3://bucket/prefix (default models/).",
)
@click.option(
    "--model-control", type=click.Choice(["none", "poll", "explicit"]),
    help="none: serve what the repository holds at start; poll: follow it; explicit: models load/unload.",
)  # fmt: skip
@click.option("--poll-interval", type=float, help="Seconds between reads of the repository (--model-control poll).")
@click.option("--model", "models", multiple=True, help="Serve only this model (repeatable).")
@click.option("--family", "families", multiple=True, help="Serve only models of this family (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Execution provider.")
@click.option("--intra-op-threads", type=int, help="ONNX Runtime threads per session.")
@click.option("--tokens-file", type=click.Path(path_type=Path), help="Bearer tokens: '<token> [tenant]' lines.")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path), help="Server private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(path_type=Path), help="CA for client certificates (mTLS).")
@click.option("--grace-period", type=float, help="Seconds to drain in-flight requests on SIGTERM.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option(
    "--with-worker", is_flag=True,
    help="Also start one bulk-job worker for every queue (with this --model-dir, --device, --intra-op-threads).",
)  # fmt: skip
@click.option(
    "--shared-memory", is_flag=True, default=None,
    help="Read request tensors that clients on this machine leave in shared memory (/dev/shm/genoserve*).",
)  # fmt: skip
def serve(config: Path | None, **flags: Any) -> None:
    """Start the gRPC server and serve every model in the model repository."""
    from genoserve.api.server import serve as run_server
    from genoserve.core.logging import configure_logging
    from genoserve.core.memory import tune_allocator
    from genoserve.core.metrics import start_metrics_endpoint

    overrides = {
        "server.host": flags["host"],
        "server.port": flags["port"],
        "server.metrics_port": flags["metrics_port"],
        "server.health_port": flags["health_port"],
        "server.grace_period_s": flags["grace_period"],
        "server.shared_memory": flags["shared_memory"],
        "server.auth.tokens_file": flags["tokens_file"],
        "server.tls.cert_file": flags["tls_cert"],
        "server.tls.key_file": flags["tls_key"],
        "server.tls.client_ca_file": flags["tls_client_ca"],
        "runtime.model_repository": flags["model_dir"],
        "runtime.model_control": flags["model_control"],
        "runtime.poll_interval_s": flags["poll_interval"],
        "runtime.models": list(flags["models"]) or None,
        "runtime.families": list(flags["families"]) or None,
        "runtime.device": flags["device"],
        "runtime.intra_op_threads": flags["intra_op_threads"],
        "logging.level": flags["log_level"],
    }
    settings = build_settings(config, overrides)
    or_exit(lambda: _check_selection(settings.runtime))
    configure_logging(settings.logging)
    tune_allocator(settings.runtime.malloc_keep_mb)
    or_exit(lambda: start_metrics_endpoint(settings.server.metrics_port, settings.server.host))
    if settings.server.metrics_port:
        from genoserve.runtime.gpu_metrics import register_gpu_metrics

        register_gpu_metrics(settings.runtime)
    worker = _spawn_worker(config, flags) if flags["with_worker"] else None
    try:
        or_exit(lambda: _run_or_explain(run_server, settings))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=settings.server.grace_period_s + 30)


def _check_selection(runtime: RuntimeSettings) -> None:
    """Refuse a model folder that does not exist and --model/--family names that select nothing."""
    from genoserve.jobs.celery_app import FAMILY_QUEUES
    from genoserve.runtime.store import LocalStore, open_store

    try:
        store = open_store(runtime)
    except ValueError as exc:
        raise InvalidArgument.field("runtime.model_repository", str(exc)) from exc
    if isinstance(store, LocalStore):  # object storage is read (and retried) once the server runs
        folder = store.path
        field = "runtime.model_repository" if runtime.model_repository else "runtime.model_dir"
        if not folder.is_dir():
            raise InvalidArgument.field(field, f"model directory {str(folder)!r} does not exist")
        present = sorted(p.parent.name for p in folder.glob("*/model.yaml"))
        unknown = [name for name in runtime.models if name not in present]
        if unknown:
            raise InvalidArgument.field("runtime.models", f"{unknown} not in {str(folder)!r}; its models: {present}")
    families = [name for name in runtime.families if name not in FAMILY_QUEUES]
    if families:
        raise InvalidArgument.field("runtime.families", f"unknown families {families}; known: {list(FAMILY_QUEUES)}")


def _run_or_explain(run_server: Callable[[Settings], Coroutine[Any, Any, None]], settings: Settings) -> None:
    """Run the server; a port that cannot be bound is a one-line error, not a traceback."""
    try:
        asyncio.run(run_server(settings))
    except RuntimeError as exc:
        if "Failed to bind" not in str(exc):
            raise
        where = f"{settings.server.host}:{settings.server.port}"
        raise Unavailable(f"cannot listen on {where}: in use or not bindable (another server running?)") from exc


#: ``serve`` flags that a ``--with-worker`` worker takes too: it reads the model repository the
#: server pins job versions from, on the same device.
WORKER_FLAGS = (
    ("model_dir", "--model-dir"),
    ("device", "--device"),
    ("intra_op_threads", "--intra-op-threads"),
    ("log_level", "--log-level"),
)


def _spawn_worker(config: Path | None, flags: dict[str, Any]) -> subprocess.Popen[bytes]:
    """``genoserve worker`` as a child process with the same config, environment and the ``serve``
    flags that apply to a worker (``WORKER_FLAGS``)."""
    argv = [sys.executable, "-m", "genoserve.cli.main", "worker"]
    if config is not None:
        argv += ["--config", str(config)]
    for key, flag in WORKER_FLAGS:
        if flags.get(key) is not None:
            argv += [flag, str(flags[key])]
    return subprocess.Popen(argv)


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
        infos = or_exit(lambda: client.list_models(family))
    if as_json:
        for info in infos:
            click.echo(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True)))
        return
    # The reason a model is not ready comes last: it can be long (a sha256 mismatch names both).
    rows: list[tuple[str, ...]] = [("MODEL", "FAMILY", "VERSION", "READY", "INPUTS", "OUTPUTS", "REASON")]
    for info in infos:
        ready = "yes" if info.ready else ("no" if info.reason else "loading")
        rows.append(
            (
                info.name,
                info.family or "?",
                info.version or "?",
                ready,
                _ports(info.inputs, dtype_from_proto),
                _ports(info.outputs, dtype_from_proto),
                "" if info.ready else info.reason,
            )
        )
    if all(not row[-1] for row in rows[1:]):
        rows = [row[:-1] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo(("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip())


@models.command("show")
@client_options
@click.argument("name")
@click.option("--version", default="", help="Version (default: latest ready).")
def models_show(name: str, version: str, **conn: Any) -> None:
    """Full metadata of one model version as JSON."""
    with make_client(**conn) as client:
        info = or_exit(lambda: client.get_model(name, version))
    click.echo(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True), indent=2))


def _labels(values: tuple[str, ...]) -> dict[str, list[str]]:
    """``PORT=a,b,c`` or ``PORT=@file`` (one label per line) -> {port: labels}."""
    out: dict[str, list[str]] = {}
    for value in values:
        port, sep, rest = value.partition("=")
        if not sep or not port:
            raise click.BadParameter(f"{value!r}: expected PORT=a,b,c or PORT=@FILE", param_hint="--labels")
        if rest.startswith("@"):
            try:
                out[port] = [line.strip() for line in Path(rest[1:]).read_text().splitlines() if line.strip()]
            except OSError as exc:
                raise click.BadParameter(f"{rest[1:]}: {exc.strerror}", param_hint="--labels") from exc
        else:
            out[port] = [label for label in rest.split(",") if label]
    return out


def _preprocessing(values: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each VALUE read as YAML (``30``, ``max``, ``[1, 99]``, ``true``)."""
    import yaml

    out: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--set")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"{value!r}: {exc}", param_hint="--set") from exc
    return out


def _quiet_loading() -> None:
    """The offline commands print each version's outcome themselves: not the loader's log too."""
    import logging

    logging.getLogger("genoserve").setLevel(logging.CRITICAL)


@models.command("validate")
@click.argument("folder", type=click.Path(path_type=Path), default="models")
@click.option("--model", "names", multiple=True, help="Only this model (repeatable).")
def models_validate(folder: Path, names: tuple[str, ...]) -> None:
    """Check a model repository offline, as the server would load it (for a model repo's CI)."""
    from genoserve.core.settings import RuntimeSettings
    from genoserve.runtime.authoring import check_repository

    _quiet_loading()
    checks = or_exit(lambda: check_repository(folder, RuntimeSettings(), names))
    if not checks:
        click.echo(f"{folder}: no models found (a model is <name>/model.yaml)", err=True)
        sys.exit(1)
    for check in checks:
        status = "ok" if check.ok else f"FAILED: {check.reason}"
        click.echo(f"{check.name} version {check.version or '?'}: {status}")
    if not all(check.ok for check in checks):
        sys.exit(1)


@models.command("add")
@click.argument("name")
@click.option("--onnx", "onnx_file", required=True, type=click.Path(path_type=Path), help="The ONNX file.")
@click.option("--model-dir", type=click.Path(path_type=Path), default="models", show_default=True,
              help="The model repository to write to.")  # fmt: skip
@click.option("--family", type=click.Choice(["platform", "binding", "variants", "segmentation", "embedding"]),
              help="Family of a new model (see docs/contracts.md).")  # fmt: skip
@click.option("--labels", multiple=True, help="Labels of a port: PORT=a,b,c or PORT=@FILE (repeatable).")
@click.option("--set", "settings_", multiple=True, help="A preprocessing entry KEY=VALUE (repeatable).")
@click.option("--description", default="", help="One line on what the model is.")
def models_add(
    name: str, onnx_file: Path, model_dir: Path, family: str | None, labels: tuple[str, ...],
    settings_: tuple[str, ...], description: str,
) -> None:  # fmt: skip
    """Add a model, or the next version of one, from an ONNX file: written only if it would load."""
    from genoserve.core.settings import RuntimeSettings
    from genoserve.runtime.authoring import NewModel, add_version

    new = NewModel(family, _labels(labels), _preprocessing(settings_), description) if family else None
    _quiet_loading()
    check = or_exit(lambda: add_version(model_dir, name, onnx_file, RuntimeSettings(), new))
    click.echo(f"{model_dir / name} version {check.version}: written, checked and warmed up")


@models.command("load")
@client_options
@click.argument("name")
@click.option("--version", default="", help="Only this version (default: every version in the store).")
def models_load(name: str, version: str, **conn: Any) -> None:
    """Load a model from the model store now (server with --model-control explicit)."""
    with make_client(**conn) as client:
        infos = or_exit(lambda: client.load_model(name, version))
    for info in infos:
        state = "ready" if info.ready else f"failed: {info.reason}"
        click.echo(f"{info.name} version {info.version}: {state}")
    if not any(info.ready for info in infos):
        sys.exit(1)


@models.command("unload")
@client_options
@click.argument("name")
@click.option("--version", default="", help="Only this version (default: every loaded version).")
def models_unload(name: str, version: str, **conn: Any) -> None:
    """Stop serving a model; returns once its running requests have finished."""
    with make_client(**conn) as client:
        versions = or_exit(lambda: client.unload_model(name, version))
    click.echo(f"{name}: unloaded version(s) {', '.join(versions)}")


@models.command("index")
@client_options
def models_index(**conn: Any) -> None:
    """Every model version in the server's model store, loaded or not."""
    from genoserve.v1 import models_pb2

    with make_client(**conn) as client:
        entries = or_exit(lambda: client.repository_index())
    if not entries:
        click.echo("the model store holds no models")
        return
    rows = [("MODEL", "VERSION", "STATE", "REASON")]
    for entry in entries:
        state = models_pb2.ModelState.Name(entry.state).removeprefix("MODEL_STATE_").lower()
        rows.append((entry.name, entry.version or "?", state, entry.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo(("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3]).rstrip())


@cli.command()
@click.option("--config", type=click.Path(path_type=Path, exists=True), help="YAML settings file.")
@click.option("--queues", help="Comma-separated queues (families) to consume; default all.")
@click.option("--concurrency", type=int, help="Prefork worker processes (default 1).")
@click.option(
    "--metrics-port", type=int,
    help="Worker /metrics port (default 9096; 0 disables). When another process holds it (make serve's worker), "
    "the worker logs a warning and runs without an endpoint of its own.",
)  # fmt: skip
@click.option(
    "--model-dir",
    help="Model repository: a folder, a mounted volume or s3://bucket/prefix (default models/).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Execution provider.")
@click.option("--intra-op-threads", type=int, help="ONNX Runtime threads per session.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def worker(config: Path | None, **flags: Any) -> None:
    """Start a Celery worker that runs bulk-job shards for the given queues."""
    from genoserve.core.logging import configure_logging
    from genoserve.core.memory import tune_allocator

    queues = [q.strip() for q in flags["queues"].split(",") if q.strip()] if flags["queues"] else None
    overrides = {
        "worker.queues": queues,
        "worker.concurrency": flags["concurrency"],
        "worker.metrics_port": flags["metrics_port"],
        "runtime.model_repository": flags["model_dir"],
        "runtime.device": flags["device"],
        "runtime.intra_op_threads": flags["intra_op_threads"],
        "logging.level": flags["log_level"],
    }
    settings = build_settings(config, overrides)
    from genoserve.jobs.celery_app import FAMILY_QUEUES

    unknown = [q for q in settings.worker.queues if q not in FAMILY_QUEUES]
    if unknown:
        or_exit(
            lambda: _raise(InvalidArgument.field("worker.queues", f"unknown {unknown}; known: {list(FAMILY_QUEUES)}"))
        )
    configure_logging(settings.logging)
    tune_allocator(settings.runtime.malloc_keep_mb)  # before the prefork: the children inherit it
    from genoserve.core.multiprocess import prepare_metrics_dir

    prepare_metrics_dir(settings.worker.metrics_dir)  # before prometheus_client is first imported
    from genoserve.jobs.tasks import run_worker

    or_exit(lambda: run_worker(settings))


def _raise(error: Exception) -> None:
    raise error


cli.add_command(jobs)
cli.add_command(predict)
models.add_command(import_group)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
