"""``genoserve jobs submit|status|watch|cancel|list``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format

from genoserve.cli.common import Flags, client_options, make_client, or_exit, progress_bar, quiet_option
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


def job_flags() -> Flags:
    """How ``jobs submit`` spells a job's fields in errors: ``params[crop]`` is ``--param crop``,
    a hint to set a boolean param ``--param crop=true``, ``output_dir`` ``--output``, ``inputs[0]``
    ``--input[0]``."""
    from genoserve.jobs.kinds import KINDS  # only when an error is shown: it imports every family

    booleans = {name: f"--param {name}=true" for kind in KINDS.values() for name in kind.flags}
    return Flags({"output_dir": "--output", "inputs": "--input", **booleans}, params=True)


def _watch(client: Any, job_id: str, quiet: bool) -> jobs_pb2.Job:
    """The job's last state, with a progress bar on stderr meanwhile: items of the shards done
    out of the job's items, shards done, state. (A job reports items as its shards finish, so
    the bar moves a shard at a time.)"""
    job: jobs_pb2.Job | None = None
    with progress_bar(quiet, unit=" items", unit_scale=True, desc=f"job {job_id}") as bar:
        for event in client.watch_job(job_id):
            job = event.job
            if bar.total != job.items_total:
                bar.reset(total=job.items_total)
            bar.set_postfix_str(f"{job.shards_done}/{job.shards_total} shards, {state_name(job.state)}", refresh=False)
            bar.update(job.items_done - bar.n)
    assert job is not None  # watch_job ends with a final state or raises
    return job


def follow(client: Any, job_id: str, quiet: bool = False) -> int:
    """Show progress until the job ends (a bar only when stderr is a terminal and not ``quiet``),
    then one line with its outcome; exit code 0 only if it SUCCEEDED (its outputs on stdout)."""
    job = or_exit(lambda: _watch(client, job_id, quiet), job_flags)
    took = _duration(job.finished_at.seconds - job.started_at.seconds) if job.started_at.seconds else "0s"
    counts = f"{job.shards_done}/{job.shards_total} shards, {job.items_done}/{job.items_total} items in {took}"
    if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
        click.echo(f"job {job.id} SUCCEEDED: {counts}", err=True)
        for output in job.outputs:
            click.echo(output)
        return 0
    click.echo(f"job {job.id} {state_name(job.state)} ({counts}): {job_flags().spell(job.error)}", err=True)
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
@click.option(
    "--param", "params", multiple=True,
    help="Kind parameter NAME=VALUE (repeatable); booleans are true/false or 1/0, e.g. overwrite=true.",
)  # fmt: skip
@click.option("--watch", is_flag=True, help="Follow progress until the job ends; exit 1 if it fails.")
@quiet_option
@client_options
def submit(kind: str, inputs: tuple[str, ...], output_dir: str, params: tuple[str, ...], watch: bool, quiet: bool,
           **conn: Any) -> None:  # fmt: skip
    """Submit a job of KIND; prints its id."""
    # Paths are sent absolute: the server does not share this shell's working directory.
    absolute = [str(Path(p).absolute()) for p in inputs]
    with make_client(**conn) as client:
        output = str(Path(output_dir).absolute())
        job = or_exit(lambda: client.submit_job(kind, absolute, output, _params(params)), job_flags)
        click.echo(job.id)
        if watch:
            sys.exit(follow(client, job.id, quiet))


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
        click.echo(f"  error  {job_flags().spell(job.error)}")
    for output in job.outputs:
        click.echo(f"  -> {output}")


@jobs.command("watch")
@click.argument("job_id")
@quiet_option
@client_options
def watch_cmd(job_id: str, quiet: bool, **conn: Any) -> None:
    """Follow a job until it ends (re-attaches after disconnects); exit 1 unless it succeeded."""
    with make_client(**conn) as client:
        sys.exit(follow(client, job_id, quiet))


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
    if not found:
        click.echo(f"no jobs in state {state}" if state else "no jobs")
        return
    width = max((len(job.kind) for job in found), default=0)
    for job in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at.seconds))
        shards = f"{job.shards_done}/{job.shards_total}"
        click.echo(f"{job.id}  {job.kind:{width}s}  {state_name(job.state):10s} {shards}  {created}")
