"""The one model interface every family uses: arrays in, arrays out, batched, never protobuf."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import numpy as np

from genoserve.core.errors import InternalError, InvalidArgument
from genoserve.runtime.batcher import DynamicBatcher
from genoserve.runtime.contract import other_family
from genoserve.runtime.session import OrtSession
from genoserve.runtime.spec import ModelSpec, VersionSpec
from genoserve.runtime.validate import check_inputs

Array = np.ndarray[Any, Any]
C = TypeVar("C")


class LoadedModel:
    """A model version with its session: ``infer_sync`` runs in chunks of ``max_batch_size``.

    Bulk workers use it directly; the server wraps it with a dynamic batcher (``ServedModel``).
    Inputs are ``{input name: array}`` with the batch first; outputs ``{output name: array}``.

    Inputs in ``log1p_inputs`` lost their graph's leading log1p to the caller (see
    ``genoserve.runtime.prologue``): a caller that already took log1p of them (in place, on an
    array it built anyway) names them in ``log1p_applied``; for the others the model takes it here.
    """

    def __init__(
        self, spec: ModelSpec, version: VersionSpec, session: OrtSession, max_batch_size: int, contract: Any = None
    ) -> None:
        self.spec = spec
        self.version_spec = version
        self.session = session
        self.max_batch_size = max_batch_size
        #: The family's contract, parsed when the model was read (None for ``platform``).
        self.contract = contract

    def contract_as(self, kind: type[C]) -> C:
        """The contract as the family ``kind`` (e.g. ``BindingContract``); INVALID_ARGUMENT naming
        the model when it is of another family."""
        if not isinstance(self.contract, kind):
            family = getattr(kind, "FAMILY", kind.__name__)
            raise InvalidArgument.field("model", f"{self.name} {other_family(self.family, family)}")
        return self.contract

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return str(self.version_spec.version)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def log1p_inputs(self) -> frozenset[str]:
        return self.session.log1p_inputs

    def _prologue(self, inputs: Mapping[str, Array], log1p_applied: Collection[str]) -> Mapping[str, Array]:
        """``inputs`` with log1p taken of the folded ones the caller did not take it of."""
        wrong = set(log1p_applied) - self.log1p_inputs
        if wrong:  # a family bug: the graph would take log1p a second time
            raise InternalError(f"model {self.name}: log1p applied to {sorted(wrong)}, which the graph takes itself")
        todo = self.log1p_inputs.difference(log1p_applied)
        if not todo.intersection(inputs):
            return inputs
        return {name: np.log1p(a) if name in todo else a for name, a in inputs.items()}

    def infer_sync(self, inputs: Mapping[str, Array], log1p_applied: Collection[str] = ()) -> dict[str, Array]:
        """Validate and run directly, ``max_batch_size`` items per session call."""
        size = check_inputs(self.spec, inputs)
        inputs = self._prologue(inputs, log1p_applied)
        step = self.max_batch_size
        chunks = [self.session.run({n: a[i : i + step] for n, a in inputs.items()}) for i in range(0, size, step)]
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


class ServedModel(LoadedModel):
    """A loaded model version behind its dynamic batcher (the online path)."""

    def __init__(
        self, spec: ModelSpec, version: VersionSpec, session: OrtSession, batcher: DynamicBatcher, contract: Any = None
    ) -> None:
        super().__init__(spec, version, session, batcher.config.max_batch_size, contract)
        self.batcher = batcher
        self._holders: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    def hold(self, task: asyncio.Task[Any]) -> None:
        """``task`` (a request's handler) uses this version: an unload waits for it."""
        self._holders.add(task)

    async def released(self, timeout: float) -> None:
        """Until every task that holds this version is done, for up to ``timeout`` seconds."""
        current = asyncio.current_task()
        pending = {t for t in self._holders if not t.done() and t is not current}
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def admit(self, rows: int, deadline: float | None) -> None:
        """Raise ResourceExhausted now if the batcher would refuse ``rows`` rows by this ``deadline``
        (for callers that prepare a request before ``infer``: no preparation for a refusal)."""
        self.batcher.admit(rows, deadline)

    async def infer(
        self, inputs: Mapping[str, Array], deadline: float | None = None, log1p_applied: Collection[str] = ()
    ) -> dict[str, Array]:
        """Validate, queue in the dynamic batcher and await this request's slice of the outputs.

        ``deadline``: absolute ``time.monotonic()`` after which the request is dropped uncomputed.
        """
        check_inputs(self.spec, inputs)
        if self.log1p_inputs.difference(log1p_applied).intersection(inputs):
            inputs = await asyncio.to_thread(self._prologue, inputs, log1p_applied)
        else:
            inputs = self._prologue(inputs, log1p_applied)  # only checks log1p_applied
        return await self.batcher.submit(inputs, deadline)
