"""``genoserve jobs submit|status|watch|cancel|list``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from genoserve.cli.common import client_options, make_client, or_exit
from genoserve.v1 import jobs_pb2

STATE_NAMES = [jobs_pb2.JobState.Name(v).removeprefix("JOB_STATE_") for v in jobs_pb2.JobState.values()][1:]
FINAL = {jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED}


def state_name(value: int) -> str:
    return jobs_pb2.JobState.Name(value).removeprefix("JOB_STATE_")  # type: ignore[arg-type]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def progress_line(event: jobs_pb2.JobEvent, width: int = 30) -> str:
    """``[#####-----] 12/40 shards  1.2M/4.0M items  35.1k items/s  ETA 1m20s  RUNNING``."""
    job = event.job
    fraction = job.items_done / job.items_total if job.items_total else 0.0
    filled = round(fraction * width)
    parts = [
        f"[{'#' * filled}{'-' * (width - filled)}]",
        f"{job.shards_done}/{job.shards_total} shards",
        f"{_count(job.items_done)}/{_count(job.items_total)} items",
        f"{_count(event.items_per_second)} items/s",
    ]
    if event.eta_seconds:
        parts.append(f"ETA {_duration(event.eta_seconds)}")
    parts.append(state_name(job.state))
    return "  ".join(parts)


def follow(client: Any, job_id: str) -> int:
    """Show live progress until the job ends; exit code 0 only if it SUCCEEDED."""
    tty = sys.stderr.isatty()
    last: jobs_pb2.JobEvent | None = None
    for event in or_exit(lambda: client.watch_job(job_id)):
        last = event
        line = progress_line(event)
        if tty:
            click.echo(f"\r{line}\033[K", nl=False, err=True)
        else:
            click.echo(line, err=True)
    if tty:
        click.echo("", err=True)
    assert last is not None
    job = last.job
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        for output in job.outputs:
            click.echo(output)
        return 0
    click.echo(f"job {job.id} {state_name(job.state).lower()}: {job.error}", err=True)
    return 1


@click.group()
def jobs() -> None:
    """Bulk jobs: submit large inputs to the workers and follow them."""


def _params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not k=v", param_hint="--param")
        params[key] = value
    return params


@jobs.command("submit")
@click.argument("kind")
@click.option("--input", "inputs", multiple=True, required=True, help="Input file (repeatable).")
@click.option("--output", "output_dir", required=True, help="Output folder.")
@click.option("--param", "params", multiple=True, help="Kind parameter k=v (repeatable).")
@click.option("--watch", is_flag=True, help="Follow progress until the job ends; exit 1 if it fails.")
@client_options
def submit(kind: str, inputs: tuple[str, ...], output_dir: str, params: tuple[str, ...], watch: bool,
           **conn: Any) -> None:  # fmt: skip
    """Submit a job of KIND; prints its id."""
    # Paths are sent absolute: the server does not share this shell's working directory.
    absolute = [str(Path(p).absolute()) for p in inputs]
    with make_client(**conn) as client:
        job = or_exit(lambda: client.submit_job(kind, absolute, str(Path(output_dir).absolute()), _params(params)))
        click.echo(job.id)
        if watch:
            sys.exit(follow(client, job.id))


@jobs.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@client_options
def status(job_id: str, as_json: bool, **conn: Any) -> None:
    """State, counts, timestamps, error and outputs of one job."""
    with make_client(**conn) as client:
        job = or_exit(lambda: client.get_job(job_id))
    if as_json:
        click.echo(json.dumps(json_format.MessageToDict(job, preserving_proto_field_name=True), indent=2))
        return
    click.echo(f"{job.id}  {job.kind}  {state_name(job.state)}")
    click.echo(f"  shards {job.shards_done}/{job.shards_total}  items {job.items_done}/{job.items_total}")
    click.echo(f"  output {job.output_dir}")
    if job.error:
        click.echo(f"  error  {job.error}")
    for output in job.outputs:
        click.echo(f"  -> {output}")


@jobs.command("watch")
@click.argument("job_id")
@client_options
def watch_cmd(job_id: str, **conn: Any) -> None:
    """Follow a job until it ends (re-attaches after disconnects); exit 1 unless it succeeded."""
    with make_client(**conn) as client:
        sys.exit(follow(client, job_id))


@jobs.command("cancel")
@click.argument("job_id")
@client_options
def cancel(job_id: str, **conn: Any) -> None:
    """Cancel a job: pending shards are dropped, running ones stop, no output is published."""
    with make_client(**conn) as client:
        job = or_exit(lambda: client.cancel_job(job_id))
    click.echo(f"{job.id}  {state_name(job.state)}")


@jobs.command("list")
@click.option("--state", type=click.Choice(STATE_NAMES))
@click.option("--limit", type=int, default=50, show_default=True)
@client_options
def list_cmd(state: str | None, limit: int, **conn: Any) -> None:
    """Your jobs, newest first."""
    value = jobs_pb2.JobState.Value(f"JOB_STATE_{state}") if state else 0
    with make_client(**conn) as client:
        found = or_exit(lambda: client.list_jobs(value, limit))
    width = max((len(job.kind) for job in found), default=0)
    for job in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at.seconds))
        shards = f"{job.shards_done}/{job.shards_total}"
        click.echo(f"{job.id}  {job.kind:{width}s}  {state_name(job.state):10s} {shards}  {created}")
