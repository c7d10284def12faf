"""scVI's variational autoencoder (Lopez et al. 2018, Nature Methods), written for genoserve.

Encoder: log1p(counts) [+ batch one-hot when ``encode_covariates``] -> Linear(n_hidden) +
BatchNorm + ReLU + Dropout -> mean and variance (exp + 1e-4) of a ``n_latent``-d normal q(z|x).
Decoder: z [+ batch one-hot] -> Linear(n_hidden) + BatchNorm + ReLU -> softmax gene proportions
scaled by the observed library size = the negative-binomial mean, gene-wise inverse dispersion
theta, and (ZINB) dropout logits. Loss: -log p(x | z) + kl_weight * KL(q(z|x) || N(0, I)).

The likelihood formulas are the standard NB / ZINB log-densities in the (mean, inverse
dispersion) parameterisation, as written in scvi-tools' ``log_nb_positive`` / ``log_zinb_positive``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

EPS = 1e-8
VAR_EPS = 1e-4


@dataclass(frozen=True)
class VaeConfig:
    n_genes: int
    n_batches: int = 0
    n_hidden: int = 128
    n_latent: int = 10
    dropout: float = 0.1
    likelihood: str = "zinb"  # "nb" or "zinb"
    encode_covariates: bool = False


def _hidden(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    # BatchNorm settings as scvi-tools' FCLayers (momentum 0.01, eps 1e-3).
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """counts float32 [B, G] (+ batch one-hot [B, K]) -> (mean, var), each float32 [B, n_latent]."""

    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        extra = config.n_batches if config.encode_covariates else 0
        self.hidden = _hidden(config.n_genes + extra, config.n_hidden, config.dropout)
        self.mean = nn.Linear(config.n_hidden, config.n_latent)
        self.log_var = nn.Linear(config.n_hidden, config.n_latent)

    def forward(self, counts: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.log1p(counts)
        if self.config.encode_covariates and batch is not None:
            x = torch.cat([x, batch], dim=1)
        h = self.hidden(x)
        return self.mean(h), torch.exp(self.log_var(h)) + VAR_EPS


class Decoder(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden = _hidden(config.n_latent + config.n_batches, config.n_hidden, 0.0)
        self.scale = nn.Linear(config.n_hidden, config.n_genes)
        self.dropout = nn.Linear(config.n_hidden, config.n_genes)

    def forward(self, z: Tensor, batch: Tensor | None, library: Tensor) -> tuple[Tensor, Tensor]:
        """(NB mean [B, G], zero-inflation logits [B, G])."""
        if batch is not None and self.config.n_batches:
            z = torch.cat([z, batch], dim=1)
        h = self.hidden(z)
        return library * F.softmax(self.scale(h), dim=-1), self.dropout(h)


def log_nb(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """log NB(x; mean mu, inverse dispersion theta), elementwise."""
    log_theta_mu = torch.log(theta + mu + EPS)
    return (
        theta * (torch.log(theta + EPS) - log_theta_mu)
        + x * (torch.log(mu + EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb(x: Tensor, mu: Tensor, theta: Tensor, logits: Tensor) -> Tensor:
    """log ZINB(x; mu, theta, dropout logits), elementwise."""
    softplus_neg = F.softplus(-logits)
    log_theta_mu = torch.log(theta + mu + EPS)
    pi_theta = -logits + theta * (torch.log(theta + EPS) - log_theta_mu)
    zero = F.softplus(pi_theta) - softplus_neg
    nonzero = (
        -softplus_neg
        + pi_theta
        + x * (torch.log(mu + EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    return torch.where(x < EPS, zero, nonzero)


class Vae(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.log_theta = nn.Parameter(torch.randn(config.n_genes))

    def loss(self, counts: Tensor, batch: Tensor | None, kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, reconstruction -log p per cell mean, KL per cell mean)."""
        mean, var = self.encoder(counts, batch)
        z = mean + var.sqrt() * torch.randn_like(mean)
        library = counts.sum(1, keepdim=True)
        mu, logits = self.decoder(z, batch, library)
        theta = torch.exp(self.log_theta)
        zinb = self.config.likelihood == "zinb"
        log_p = log_zinb(counts, mu, theta, logits) if zinb else log_nb(counts, mu, theta)
        reconstruction = -log_p.sum(1)
        kl = 0.5 * (var + mean**2 - 1.0 - torch.log(var)).sum(1)
        return (reconstruction + kl_weight * kl).mean(), reconstruction.mean(), kl.mean()


class ExportedEncoder(nn.Module):
    """What ships in ONNX: raw counts (+ batch one-hot) -> (latent mean, latent variance)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, counts: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self.encoder(counts, batch)
        return mean, var
