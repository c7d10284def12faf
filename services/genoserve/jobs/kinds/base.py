"""The interface every job kind implements (pure file IO + the model interface; no Celery here)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from genoserve.core.errors import GenoserveError, InvalidArgument
from genoserve.core.settings import Settings
from genoserve.jobs.kinds.params import MODEL_NAME, ModelParams, Params, parse
from genoserve.runtime.contract import expect_contract
from genoserve.runtime.registry import ModelVersionRecord
from genoserve.runtime.spec import ModelSpec

Array = np.ndarray[Any, Any]
P = TypeVar("P", bound=Params)
C = TypeVar("C")


class InferFn(Protocol):
    """``LoadedModel.infer_sync``: inputs -> outputs; ``log1p_applied`` as there."""

    def __call__(self, inputs: Mapping[str, Array], log1p_applied: Collection[str] = ...) -> dict[str, Array]: ...


def check_model_name(name: str, field: str = "params[model]") -> None:
    """INVALID_ARGUMENT unless ``name`` is a plain model name (checked without the filesystem)."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidArgument.field(
            field,
            "must be a model name (lower-case letters, digits, '.', '_' and '-', e.g. deepbind-ctcf), "
            f"got {name[:80]!r}",
        )


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


def required_model(params: ModelParams, example: str) -> tuple[str, str]:
    """(``params.model``, ``params.version``); INVALID_ARGUMENT when the model is missing, with
    ``example`` (e.g. "a binding model, e.g. deepbind-ctcf") in the message."""
    if not params.model:
        raise InvalidArgument.field("params[model]", f"is required ({example})")
    return params.model, params.version


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
    #: Call with the items of this shard done so far: the job's progress shows them (with the
    #: next heartbeat) before the shard ends.
    progress: Callable[[int], None] = lambda items: None
    #: The family's contract the registry parsed when the worker loaded the model
    #: (``LoadedModel.contract``; None for ``platform``).
    contract: object = None

    def contract_as(self, kind: type[C]) -> C:
        """The model's contract as the family ``kind`` (INVALID_ARGUMENT for another family)."""
        return expect_contract(kind, self.contract, self.spec)

    @property
    def roots(self) -> tuple[Path, ...]:
        """Where every file a job reads must lie (``jobs.input_roots``)."""
        return self.settings.jobs.input_roots


class JobKind(abc.ABC, Generic[P]):
    #: e.g. "platform.score_rows"
    name: str
    #: Celery queue = the family name.
    queue: str
    #: The kind's params: one pydantic model (``genoserve.jobs.kinds.params``), each field documented.
    params_model: type[P]
    #: Every param with its default, as a string (from ``params_model``).
    defaults: ClassVar[Mapping[str, str]] = {}
    #: The boolean params: true/false or 1/0 (any case), stored as "true" / "false".
    flags: ClassVar[frozenset[str]] = frozenset()
    #: Whether an input may be a folder (else only regular files).
    takes_folders: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("params_model")
        if model is not None:
            cls.defaults = model.defaults()
            cls.flags = model.flags()

    def typed(self, params: Mapping[str, str]) -> P:
        """``params`` (a client's, or a job record's) as the kind's model; INVALID_ARGUMENT naming
        ``params[<name>]`` for unknown names and values that break a rule."""
        return parse(self.params_model, self.name, params)

    def parse_params(self, params: Mapping[str, str]) -> dict[str, str]:
        """The params checked and normalized as the job record keeps them: every param, defaults
        filled in, booleans "true"/"false" (see ``typed``)."""
        return self.typed(params).as_strings()

    @abc.abstractmethod
    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        """(model name, version or "") this job runs."""

    @abc.abstractmethod
    def plan(
        self, inputs: list[Path], params: Mapping[str, str], record: ModelVersionRecord, settings: Settings
    ) -> list[PlannedShard]:
        """Split the inputs into shards; InvalidArgument naming the input for unusable files.
        ``record``: the registry's record of the version the job is pinned to (its model.yaml and
        its family's parsed contract, ``record.contract_as``)."""

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
