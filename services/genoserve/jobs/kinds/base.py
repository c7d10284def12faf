"""The interface every job kind implements (pure file IO + the model interface; no Celery here)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping
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


class JobKind(abc.ABC):
    #: e.g. "platform.score_rows"
    name: str
    #: Celery queue = the family name.
    queue: str
    #: Parameters the kind accepts, with their defaults ("" = required or none).
    defaults: ClassVar[Mapping[str, str]] = {}

    def parse_params(self, params: Mapping[str, str]) -> dict[str, str]:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise InvalidArgument.field(
                f"params[{unknown[0]}]", f"unknown parameter for {self.name}; known: {sorted(self.defaults)}"
            )
        return {**self.defaults, **params}

    @abc.abstractmethod
    def model(self, params: Mapping[str, str]) -> tuple[str, str]:
        """(model name, version or "") this job runs."""

    @abc.abstractmethod
    def plan(
        self, inputs: list[Path], params: Mapping[str, str], spec: ModelSpec, settings: Settings
    ) -> list[PlannedShard]:
        """Split the inputs into shards; InvalidArgument naming the input for unusable files."""

    @abc.abstractmethod
    def outputs(self, inputs: list[Path], output_dir: Path, params: Mapping[str, str]) -> list[Path]:
        """The final output files this job will create."""

    @abc.abstractmethod
    def run_shard(self, ctx: ShardContext) -> int:
        """Compute one shard and write its result under ``ctx.output_stem``; returns items done."""

    @abc.abstractmethod
    def merge(
        self, inputs: list[Path], shards: list[tuple[PlannedShard, Path]], output_dir: Path, params: Mapping[str, str]
    ) -> list[Path]:
        """Assemble shard results (given in shard order) into the final outputs, atomically."""

    @abc.abstractmethod
    def shard_result(self, output_stem: Path) -> Path:
        """Where ``run_shard`` put its result for ``output_stem``."""
