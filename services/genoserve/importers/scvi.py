"""`genoserve models import scvi`: a directory written by scvi-tools' ``SCVI.save`` -> an embedding model.

What is taken from the directory, and how (the sources are scvi-tools 1.4's
``scvi/module/_vae.py`` ``VAE._regular_inference``, ``scvi/nn/_base_components.py``
``Encoder.forward`` and ``FCLayers.forward``, and ``scvi/model/base/_vaemixin.py``
``get_latent_representation``):

- the encoder: scvi-tools' own module, loaded by ``SCVI.load(dir, adata=False)`` (or, for a model
  scvi-tools cannot build without data, with a placeholder AnnData from the registry); the graph is
  its z encoder as ``_regular_inference`` calls it: log1p of the counts when the module's
  ``log_variational`` is true (raw counts otherwise), the batch one-hot given to the encoder's
  ``FCLayers`` (which take a one-hot as it is, and inject it into every layer when
  ``deeply_inject_covariates``), then ``mean_encoder`` and ``var_activation(var_encoder) +
  var_eps``: the mean and variance of q(z | x), what ``get_latent_representation`` returns
  (``return_dist=True`` gives the variance, ``qz.scale ** 2``);
- genes: the registry's ``X`` column names (the training AnnData's ``var_names``), as the
  ``counts`` input's labels; batches: the registry's batch categories, as the ``batch`` input's
  labels, present when the encoder takes the batch (``encode_covariates`` with two or more);
- library size: with ``use_observed_lib_size`` it is log of the counts' sum, otherwise the
  module's ``l_encoder`` estimates it; either way it scales only the decoder, so the latent does
  not depend on it and the graph has no library output;
- covariates: categorical or continuous covariates besides the batch are refused when the
  encoder takes them (``encode_covariates``: the embedding contract has no input for them);
  when only the decoder sees them the encoder, and the import, do not need them.

Refused as well: another model class than ``SCVI``, a ``latent_distribution`` other than
``normal`` (the logistic-normal latent is a Monte Carlo average), a learned batch embedding
(``batch_representation="embedding"``) in the encoder, a likelihood the contract does not name.

The graph is checked against scvi-tools' own ``module.inference`` on made-up counts before
``add_version`` runs the server's checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from genoserve.core.errors import InvalidArgument
from genoserve.core.settings import RuntimeSettings
from genoserve.embedding.contract import BATCH, COUNTS, MEAN, VAR
from genoserve.importers.torch import TOLERANCE, add_onnx, export_onnx, max_abs_diff
from genoserve.runtime.authoring import NewModel, VersionCheck

Array = np.ndarray[Any, Any]

LIKELIHOODS = ("zinb", "nb", "poisson")
#: Made-up cells the graph is checked on against scvi-tools.
CHECK_CELLS = 64


@dataclass(frozen=True)
class ScviSummary:
    """What the importer read from a saved SCVI model."""

    scvi_version: str
    genes: list[str]
    #: Batch categories the encoder takes (empty when it takes no batch).
    batches: list[str]
    #: obs column of the batch when the encoder takes it, else "".
    batch_key: str
    n_latent: int
    n_hidden: int
    likelihood: str
    log_variational: bool
    observed_library: bool
    #: Covariates only the decoder sees (they do not reach the graph).
    decoder_only: list[str]

    @property
    def takes_batch(self) -> bool:
        return bool(self.batches)


def _refuse(model_dir: Path, rule: str) -> InvalidArgument:
    return InvalidArgument.field("model_dir", f"{model_dir}: {rule}")


def _placeholder_adata(registry: dict[str, Any]) -> Any:
    """An AnnData ``SCVI.load`` accepts for ``registry``'s setup: its genes (counts of 1), every
    category of its batch, labels and categorical covariates, zero continuous covariates."""
    import anndata as ad

    fields, setup = registry["field_registries"], registry["setup_args"]
    genes = [str(g) for g in fields["X"]["state_registry"]["column_names"]]
    columns: dict[str, list[Any]] = {}
    for field, key in (("batch", "batch_key"), ("labels", "labels_key")):
        if setup.get(key):
            columns[setup[key]] = list(fields[field]["state_registry"]["categorical_mapping"])
    columns |= {k: list(v) for k, v in fields.get("extra_categorical_covs", {}).get("state_registry", {})
                .get("mappings", {}).items()}  # fmt: skip
    n = max([2, *(len(values) for values in columns.values())])
    obs = {key: [values[i % len(values)] for i in range(n)] for key, values in columns.items()}
    obs |= {key: [0.0] * n for key in setup.get("continuous_covariate_keys") or []}
    if setup.get("size_factor_key"):
        obs[setup["size_factor_key"]] = [1.0] * n
    counts = np.ones((n, len(genes)), dtype=np.float32)
    adata = ad.AnnData(counts, obs={k: np.asarray(v) for k, v in obs.items()})
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.var_names = genes
    if setup.get("layer"):
        adata.layers[setup["layer"]] = counts
    return adata


def load_scvi(model_dir: Path) -> tuple[Any, ScviSummary]:
    """The saved SCVI model (on the CPU, eval mode) and what the importer needs of it;
    INVALID_ARGUMENT naming what is missing or not supported."""
    import scvi  # type: ignore[import-untyped]

    if not (model_dir / "model.pt").is_file():
        raise _refuse(model_dir, "has no model.pt: give a directory written by scvi.model.SCVI.save")
    try:
        registry = scvi.model.SCVI.load_registry(str(model_dir))
    except Exception as exc:  # scvi-tools raises ValueError, KeyError, pickling errors
        raise _refuse(model_dir, f"scvi-tools cannot read its registry: {type(exc).__name__}: {exc}") from exc
    model_name = registry.get("model_name")
    if model_name != "SCVI":
        raise _refuse(model_dir, f"holds a {model_name} model; the importer takes scvi.model.SCVI models")
    try:
        model = scvi.model.SCVI.load(str(model_dir), adata=False, accelerator="cpu")
    except Exception:
        # scvi-tools 1.4 cannot build some models without an AnnData (use_observed_lib_size=False
        # computes the library prior from the data): give it a placeholder with the registry's
        # genes and categories; the state dict then overwrites whatever it computed.
        try:
            placeholder = _placeholder_adata(registry)
            model = scvi.model.SCVI.load(str(model_dir), adata=placeholder, accelerator="cpu")
        except Exception as exc:
            raise _refuse(model_dir, f"scvi-tools cannot load it: {type(exc).__name__}: {exc}") from exc
    module = model.module.eval()
    fields = registry.get("field_registries", {})
    setup = registry.get("setup_args", {})
    genes = [str(g) for g in fields.get("X", {}).get("state_registry", {}).get("column_names", [])]
    if len(genes) != module.n_input:
        raise _refuse(model_dir, f"its registry names {len(genes)} genes for an encoder of {module.n_input}")
    covariates = [*(setup.get("categorical_covariate_keys") or []), *(setup.get("continuous_covariate_keys") or [])]
    if module.encode_covariates and covariates:
        raise _refuse(model_dir, f"the encoder takes covariates besides the batch ({covariates}; encode_covariates="
                      "True); the embedding contract has only the batch input: train with encode_covariates=False "
                      "or without them")  # fmt: skip
    if module.latent_distribution != "normal":
        raise _refuse(model_dir, f"latent_distribution is {module.latent_distribution!r}; only 'normal' is "
                      "supported (the latent is then the posterior mean)")  # fmt: skip
    if module.gene_likelihood not in LIKELIHOODS:
        raise _refuse(model_dir, f"gene_likelihood {module.gene_likelihood!r} is not one the embedding "
                      f"contract records {list(LIKELIHOODS)}")  # fmt: skip
    takes_batch = bool(module.encode_covariates) and module.n_batch > 1
    if takes_batch and module.batch_representation != "one-hot":
        raise _refuse(model_dir, f"the encoder takes a learned batch embedding (batch_representation="
                      f"{module.batch_representation!r}); only 'one-hot' is supported")  # fmt: skip
    batches: list[str] = []
    if takes_batch:
        mapping = fields.get("batch", {}).get("state_registry", {}).get("categorical_mapping", [])
        batches = [str(c) for c in mapping]
        if len(batches) != module.n_batch:
            raise _refuse(model_dir, f"its registry names {len(batches)} batches for an encoder of {module.n_batch}")
    summary = ScviSummary(
        scvi_version=str(registry.get("scvi_version", "?")),
        genes=genes,
        batches=batches,
        batch_key=str(setup.get("batch_key") or "") if takes_batch else "",
        n_latent=int(module.n_latent),
        n_hidden=int(module.z_encoder.mean_encoder.in_features),
        likelihood=str(module.gene_likelihood),
        log_variational=bool(module.log_variational),
        observed_library=bool(module.use_observed_lib_size),
        decoder_only=covariates + ([] if takes_batch or module.n_batch < 2 else [str(setup.get("batch_key"))]),
    )
    return model, summary


class ScviEncoder(nn.Module):
    """scvi-tools' z encoder as ``VAE._regular_inference`` runs it: counts float32 [cells, genes]
    (+ batch one-hot float32 [cells, batches]) -> (latent mean, latent variance), float32
    [cells, n_latent] each. The modules are scvi-tools' own; only the wiring is here."""

    def __init__(self, module: Any, takes_batch: bool) -> None:
        super().__init__()
        self.z_encoder = module.z_encoder
        self.log_variational = bool(module.log_variational)
        self.takes_batch = takes_batch
        # FCLayers wants one categorical argument per category list it was built with; a list
        # of one category (a single batch) is ignored, as None.
        self.n_categorical = len(module.z_encoder.encoder.n_cat_list)

    def forward(self, counts: torch.Tensor, batch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.log1p(counts) if self.log_variational else counts
        categorical = (batch,) if self.takes_batch else (None,) * self.n_categorical
        hidden = self.z_encoder.encoder(x, *categorical)
        mean = self.z_encoder.mean_encoder(hidden)
        var = self.z_encoder.var_activation(self.z_encoder.var_encoder(hidden)) + self.z_encoder.var_eps
        return mean, var


def made_up_cells(summary: ScviSummary, n: int, seed: int = 0) -> tuple[Array, Array | None]:
    """Negative-binomial counts float32 [n, genes] and, when the encoder takes it, a batch one-hot."""
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(1, 0.4, size=(n, len(summary.genes))).astype(np.float32)
    counts[rng.random(counts.shape) < 0.7] = 0.0  # sparse, as single-cell counts are
    if not summary.takes_batch:
        return counts, None
    return counts, np.eye(len(summary.batches), dtype=np.float32)[rng.integers(0, len(summary.batches), n)]


def scvi_posterior(module: Any, counts: Array, batch: Array | None) -> tuple[Array, Array]:
    """(mean, variance) of q(z | x) from scvi-tools' ``module.inference``, as
    ``get_latent_representation(return_dist=True)`` computes them."""
    n = len(counts)
    index = np.zeros(n, dtype=np.int64) if batch is None else batch.argmax(axis=1)
    with torch.no_grad():
        out = module.inference(x=torch.from_numpy(counts), batch_index=torch.from_numpy(index)[:, None],
                               cont_covs=None, cat_covs=None)  # fmt: skip
    qz = out["qz"]
    return qz.loc.numpy(), qz.scale.square().numpy()


def export_encoder(module: Any, summary: ScviSummary) -> bytes:
    """The encoder as ONNX: ``counts`` (+ ``batch``) -> ``latent_mean``, ``latent_var``."""
    encoder = ScviEncoder(module, summary.takes_batch).eval()
    counts, batch = made_up_cells(summary, 4)
    example = [torch.from_numpy(counts)] + ([torch.from_numpy(batch)] if batch is not None else [])
    names = [COUNTS, BATCH] if batch is not None else [COUNTS]
    return export_onnx(encoder, example, names, [MEAN, VAR])


def check_encoder(graph: bytes, module: Any, summary: ScviSummary) -> tuple[float, float]:
    """(max abs diff of the means, of the variances): the graph in ONNX Runtime against
    scvi-tools on ``CHECK_CELLS`` made-up cells; INVALID_ARGUMENT beyond ``TOLERANCE``."""
    counts, batch = made_up_cells(summary, CHECK_CELLS, seed=1)
    feeds = {COUNTS: counts} | ({BATCH: batch} if batch is not None else {})
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    mean, var = session.run([MEAN, VAR], feeds)
    want_mean, want_var = scvi_posterior(module, counts, batch)
    diffs = max_abs_diff(mean, want_mean), max_abs_diff(var, want_var)
    if not max(diffs) <= TOLERANCE:
        raise InvalidArgument.field("model_dir", f"the ONNX encoder disagrees with scvi-tools: latent mean by "
                                    f"{diffs[0]:.3g}, variance by {diffs[1]:.3g} (tolerance {TOLERANCE:g}); "
                                    "nothing written")  # fmt: skip
    return diffs


@dataclass(frozen=True)
class ScviImport:
    check: VersionCheck
    summary: ScviSummary
    mean_diff: float
    var_diff: float


def describe(model_dir: Path, summary: ScviSummary) -> str:
    library = "observed library size" if summary.observed_library else "library size from scVI's l_encoder"
    extra = f"; decoder-only covariates {summary.decoder_only}" if summary.decoder_only else ""
    return (f"scVI encoder imported from {model_dir.name} (scvi-tools {summary.scvi_version}, {summary.likelihood}, "
            f"n_latent {summary.n_latent}, {library}, not part of the latent{extra})")  # fmt: skip


def import_scvi(model_dir: Path, repository: Path, name: str, settings: RuntimeSettings,
                description: str = "") -> ScviImport:  # fmt: skip
    """Convert the SCVI model in ``model_dir``, check it against scvi-tools and add it as the
    next version of ``name`` in ``repository``; INVALID_ARGUMENT otherwise (nothing written)."""
    model, summary = load_scvi(model_dir)
    graph = export_encoder(model.module, summary)
    mean_diff, var_diff = check_encoder(graph, model.module, summary)
    labels = {COUNTS: summary.genes} | ({BATCH: summary.batches} if summary.takes_batch else {})
    preprocessing = {
        "architecture": "scvi", "likelihood": summary.likelihood, "n_hidden": summary.n_hidden,
        "n_latent": summary.n_latent, "encode_covariates": summary.takes_batch, "batch_key": summary.batch_key,
    }  # fmt: skip
    new = NewModel("embedding", labels, preprocessing, description or describe(model_dir, summary))
    check = add_onnx(repository, name, graph, settings, new)
    return ScviImport(check, summary, mean_diff, var_diff)
