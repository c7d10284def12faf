"""What the embedding family needs to know of a model: its gene list, batches, latent size.

An embedding model (model.yaml ``family: embedding``) is an scVI encoder exported to ONNX:

- input ``counts``: float32 [batch, n_genes], raw counts in the model's gene order; the input's
  ``labels`` are the gene names (the contract: genes are matched to them by name);
- optional input ``batch``: float32 [batch, n_batches], one-hot, ``labels`` = batch categories
  (present when the encoder takes the batch covariate, scVI's ``encode_covariates``);
- outputs ``latent_mean`` and ``latent_var``: float32 [batch, n_latent], the mean and variance
  of the normal posterior q(z | x);
- ``preprocessing`` (``EmbeddingPreprocessing``): how the model was trained (for model cards and
  importers) and the obs column that holds the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, StrictBool

from genoserve.runtime.contract import ContractViolation, Preprocessing, family_contract
from genoserve.runtime.spec import ModelSpec, TensorSpec

COUNTS = "counts"
BATCH = "batch"
MEAN = "latent_mean"
VAR = "latent_var"


class EmbeddingPreprocessing(Preprocessing):
    family: Literal["embedding"] = "embedding"
    #: The model the encoder comes from (scVI's variational autoencoder).
    architecture: Literal["scvi"] = "scvi"
    #: The count likelihood it was trained with (zero-inflated negative binomial, negative
    #: binomial, Poisson): recorded, the encoder does not depend on it.
    likelihood: Literal["zinb", "nb", "poisson"] = "zinb"
    n_hidden: int | None = Field(None, gt=0)
    #: When given, the size of the latent outputs.
    n_latent: int | None = Field(None, gt=0)
    #: When given, whether the encoder takes the batch (then it has the ``batch`` input).
    encode_covariates: StrictBool | None = None
    #: obs column holding the batch in the training data (for .h5ad jobs), "" when none.
    batch_key: str = ""

    def contract(self, spec: ModelSpec) -> EmbeddingContract:
        return EmbeddingContract.checked(spec, self)


def _check_matrix(tensor: TensorSpec, what: str, problems: list[str]) -> None:
    if tensor.dtype != "float32" or len(tensor.shape) != 2 or tensor.shape[1] < 1:
        problems.append(f"{what} {tensor.name} must be float32 [batch, n] with a fixed n, "
                        f"is {tensor.dtype} {list(tensor.shape)}")  # fmt: skip


def _check_labels(tensor: TensorSpec, what: str, problems: list[str]) -> None:
    if len(tensor.shape) != 2 or tensor.shape[1] < 1:
        return
    if len(tensor.labels) != tensor.shape[1]:
        problems.append(f"input {tensor.name} has {tensor.shape[1]} columns but {len(tensor.labels)} {what} labels")
    elif len(set(tensor.labels)) != len(tensor.labels):
        problems.append(f"input {tensor.name}'s {what} labels are not unique")


@dataclass(frozen=True)
class EmbeddingContract:
    FAMILY: ClassVar[str] = "embedding"

    genes: tuple[str, ...]
    batches: tuple[str, ...]
    n_latent: int
    #: obs column holding the batch in the training data (for .h5ad jobs), "" when none.
    batch_key: str

    @property
    def takes_batch(self) -> bool:
        return bool(self.batches)

    @classmethod
    def of(cls, spec: ModelSpec) -> EmbeddingContract:
        """The contract of an embedding model.yaml, parsed as the registry parses it (for tools and
        tests); ContractViolation naming every broken rule."""
        return family_contract(cls, spec)

    @classmethod
    def checked(cls, spec: ModelSpec, pre: EmbeddingPreprocessing) -> EmbeddingContract:
        """The rules for the ports of ``spec``, whose ``preprocessing`` parsed as ``pre``."""
        inputs = {t.name: t for t in spec.inputs}
        outputs = {t.name: t for t in spec.outputs}
        problems: list[str] = []
        extra_in = sorted(set(inputs) - {COUNTS, BATCH})
        extra_out = sorted(set(outputs) - {MEAN, VAR})
        if extra_in or extra_out:
            problems.append(f"takes inputs {COUNTS!r} (and {BATCH!r}) and gives outputs {MEAN!r} and {VAR!r}; "
                            f"unknown: {extra_in + extra_out}")  # fmt: skip
        counts, batch = inputs.get(COUNTS), inputs.get(BATCH)
        mean, var = outputs.get(MEAN), outputs.get(VAR)
        if counts is None or mean is None or var is None:
            missing = [n for n, t in ((COUNTS, counts), (MEAN, mean), (VAR, var)) if t is None]
            problems.append(f"needs {missing}")
            raise ContractViolation(spec, problems)
        _check_matrix(counts, "input", problems)
        _check_labels(counts, "gene", problems)
        if batch is not None:
            _check_matrix(batch, "input", problems)
            _check_labels(batch, "batch category", problems)
        if pre.encode_covariates is not None and pre.encode_covariates != (batch is not None):
            problems.append(f"preprocessing.encode_covariates is {pre.encode_covariates} but the model "
                            f"{'has' if batch is not None else 'has no'} {BATCH!r} input")  # fmt: skip
        _check_matrix(mean, "output", problems)
        _check_matrix(var, "output", problems)
        if mean.shape != var.shape:
            problems.append(f"outputs {MEAN} {list(mean.shape)} and {VAR} {list(var.shape)} differ in shape")
        elif pre.n_latent is not None and len(mean.shape) == 2 and mean.shape[1] != pre.n_latent:
            problems.append(f"preprocessing.n_latent {pre.n_latent} is not the outputs' size {mean.shape[1]}")
        if problems:
            raise ContractViolation(spec, problems)
        return cls(
            genes=counts.labels,
            batches=batch.labels if batch is not None else (),
            n_latent=int(mean.shape[-1]),
            batch_key=pre.batch_key,
        )
