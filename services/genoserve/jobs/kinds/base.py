"""The interface every job kind implements (pure file IO + the model interface; no Celery here)."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.core.settings import Settings
from genoserve.runtime.spec import ModelSpec

Array = np.ndarray[Any, Any]


class InferFn(Protocol):
    """``LoadedModel.infer_sync``: inputs -> outputs; ``log1p_applied`` as there."""

    def __call__(self, inputs: Mapping[str, Array], log1p_applied: Collection[str] = ...) -> dict[str, Array]: ...


#: A model name, as model.yaml's ``name`` (genoserve.runtime.spec): a plain name, never a path.
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def check_model_name(name: str, field: str = "params[model]") -> None:
    """INVALID_ARGUMENT unless ``name`` is a plain model name (checked without the filesystem)."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument.field(
            field,
            "must be a model name (lower-case letters, digits, '.', '_' and '-', e.g. deepbind-ctcf), "
            f"got {name[:80]!r}",
        )


def flag(params: Mapping[str, str], name: str) -> bool:
    """``params[name]`` as a boolean: true/false or 1/0 (any case); INVALID_ARGUMENT otherwise."""
    raw = params.get(name, "false")
    value = raw.strip().lower()
    if value not in (*_TRUE, *_FALSE):
        raise InvalidArgument.field(f"params[{name}]", f"must be true or false, got {raw[:40]!r} (1 and 0 work too)")
    return value in _TRUE


def shard_ranges(index: int, n: int, size: int, planned: int, settings: Settings) -> list[PlannedShard]:
    """Items [0, n) of input ``index`` in shards of ``size``, unless that would take the job past
    ``jobs.max_shards_per_job`` (``planned`` shards already): then INVALID_ARGUMENT naming
    ``params[shard_size]``, before any shard is made."""
    check_shard_count(planned + -(-n // size), size, settings, n)
    return [PlannedShard(index, s, min(s + size, n), min(s + size, n) - s) for s in range(0, n, size)]


def check_shard_count(count: int, size: int, settings: Settings, items: int = 0) -> None:
    limit = settings.jobs.max_shards_per_job
    if count > limit:
        hint = f", e.g. {-(-items // limit)} or more" if items else ""
        raise InvalidArgument.field(
            "params[shard_size]",
            f"shard_size {size} would make {count} shards; a job may have at most {limit} "
            f"(setting jobs.max_shards_per_job): use a larger shard_size{hint}",
        )


def positive_int(params: Mapping[str, str], name: str) -> int:
    """``params[name]`` as an integer >= 1, else INVALID_ARGUMENT naming ``params[<name>]``."""
    try:
        value = int(params[name])
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgument.field(f"params[{name}]", f"must be a positive integer, got {params[name]!r}")
    return value


def required_model(params: Mapping[str, str], example: str) -> tuple[str, str]:
    """(``params[model]``, ``params[version]`` or ""); INVALID_ARGUMENT when the model is missing,
    with ``example`` (e.g. "a binding model, e.g. deepbind-ctcf") in the message."""
    if not params.get("model"):
        raise InvalidArgument.field("params[model]", f"is required ({example})")
    return params["model"], params.get("version", "")


class InputRecordError(GenoserveError):
    """A record of an input file breaks a rule: the job fails at once, naming file and record."""

    code = "INVALID_ARGUMENT"

    def __init__(self, path: str, record: int | str, rule: str) -> None:
        super().__init__(f"{path}: record {record}: {rule}")
        self.path = path
        self.record = record


class ShardCancelled(Exception):
    """The job was cancelled (or failed elsewhere) while this shard ran."""


@dataclass(frozen=True)
class PlannedShard:
    input_index: int
    start: int
    stop: int
    items: int
    #: Byte offset of the shard's first item in its input, for kinds that seek (0: read from start).
    offset: int = 0


@dataclass
class ShardContext:
    """What a kind's ``run_shard`` gets: where to read, where to write, the model, and callbacks."""

    inputs: list[Path]
    input_index: int
    start: int
    stop: int
    offset: int
    params: dict[str, str]
    spec: ModelSpec
    settings: Settings
    #: Write the shard's result here (the kind picks the suffix; write atomically).
    output_stem: Path
    infer: InferFn
    batch_size: int
    #: Call between chunks: raises ShardCancelled when the job is no longer running.
    check: Callable[[], None]
    #: The model's inputs whose leading log1p the caller takes (``LoadedModel.log1p_inputs``).
    log1p_inputs: frozenset[str] = frozenset()

    @property
    def roots(self) -> tuple[Path, ...]:
        """Where every file a job reads must lie (``jobs.input_roots``)."""
        return self.settings.jobs.input_roots


class JobKind(abc.ABC):
    #: e.g. "platform.score_rows"
    name: str
    #: Celery queue = the family name.
    queue: str
    #: Parameters the kind accepts, with their defaults ("" = required or none).
    defaults: ClassVar[Mapping[str, str]] = {}
    #: Whether an input may be a folder (else only regular files).
    takes_folders: ClassVar[bool] = False
    #: Boolean parameters: true/false or 1/0 (any case), stored as "true" / "false".
    flags: ClassVar[frozenset[str]] = frozenset({"overwrite"})

    def parse_params(self, params: Mapping[str, str]) -> dict[str, str]:
        """The params with defaults filled in; unknown names, a model that is not a plain model
        name and booleans other than true/false/1/0 are INVALID_ARGUMENT naming the param."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise InvalidArgument.field(
                f"params[{unknown[0][:80]}]", f"unknown parameter for {self.name}; known: {sorted(self.defaults)}"
            )
        parsed = {**self.defaults, **params}
        if parsed.get("model"):
            check_model_name(parsed["model"])
        version = parsed.get("version", "")
        if version and not version.isdigit():
            raise InvalidArgument.field("params[version]", f"must be a version number, got {version[:40]!r}")
        for name in sorted(self.flags & parsed.keys()):
            parsed[name] = "true" if flag(parsed, name) else "false"
        return parsed

    @abc.abstractmethod
    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        """(model name, version or "") this job runs."""

    @abc.abstractmethod
    def plan(
        self, inputs: list[Path], params: Mapping[str, str], spec: ModelSpec, settings: Settings
    ) -> list[PlannedShard]:
        """Split the inputs into shards; InvalidArgument naming the input for unusable files."""

    @abc.abstractmethod
    def outputs(
        self, inputs: list[Path], output_dir: Path, params: Mapping[str, str], roots: Sequence[Path]
    ) -> list[Path]:
        """The final output files this job will create (``roots``: where inputs may lie)."""

    @abc.abstractmethod
    def run_shard(self, ctx: ShardContext) -> int:
        """Compute one shard and write its result under ``ctx.output_stem``; returns items done.

        The worker has checked the shard's input (``ctx.inputs[ctx.input_index]``) against the
        roots just before; any other file opened here is checked with
        ``genoserve.jobs.paths.input_file`` against ``ctx.roots`` first."""

    @abc.abstractmethod
    def merge(
        self,
        inputs: list[Path],
        shards: list[tuple[PlannedShard, Path]],
        output_dir: Path,
        params: Mapping[str, str],
        roots: Sequence[Path],
    ) -> list[Path]:
        """Assemble shard results (given in shard order) into the final outputs, atomically.

        Every input file opened here is checked with ``genoserve.jobs.paths.input_file`` against
        ``roots`` first."""

    @abc.abstractmethod
    def shard_result(self, output_stem: Path) -> Path:
        """Where ``run_shard`` put its result for ``output_stem``."""
