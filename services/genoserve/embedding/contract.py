"""What the embedding family needs to know of a model: its gene list, batches, latent size.

An embedding model (model.yaml ``family: embedding``) is an scVI encoder exported to ONNX:

- input ``counts``: float32 [batch, n_genes], raw counts in the model's gene order; the input's
  ``labels`` are the gene names (the contract: genes are matched to them by name);
- optional input ``batch``: float32 [batch, n_batches], one-hot, ``labels`` = batch categories
  (present when the encoder takes the batch covariate, scVI's ``encode_covariates``);
- outputs ``latent_mean`` and ``latent_var``: float32 [batch, n_latent], the mean and variance
  of the normal posterior q(z | x).
"""

from __future__ import annotations

from dataclasses import dataclass

from genoserve.core.errors import InvalidArgument
from genoserve.runtime.spec import ModelSpec

COUNTS = "counts"
BATCH = "batch"
MEAN = "latent_mean"
VAR = "latent_var"


@dataclass(frozen=True)
class EmbeddingContract:
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
        if spec.family != "embedding":
            raise InvalidArgument.field("model", f"{spec.name} is a {spec.family} model, not an embedding model")
        inputs = {t.name: t for t in spec.inputs}
        outputs = {t.name: t for t in spec.outputs}
        counts = inputs.get(COUNTS)
        if counts is None or len(counts.shape) != 2 or not counts.labels or MEAN not in outputs:
            raise InvalidArgument.field(
                "model",
                f"{spec.name}: not an embedding model (needs input {COUNTS!r} [batch, genes] with gene "
                f"labels and output {MEAN!r})",
            )
        batch = inputs.get(BATCH)
        return cls(
            genes=counts.labels,
            batches=batch.labels if batch is not None else (),
            n_latent=int(outputs[MEAN].shape[-1]),
            batch_key=str(spec.preprocessing.get("batch_key", "")),
        )
