r"""The two-stage conditional VAE: ``method="vae"`` (Algorithm 2 of the EIT comparison).

Stage 1 fits a VAE to the normalised flat targets alone (encoder :math:`\Phi(x) = (\mu, s)`,
:math:`z = \mu + s \odot \varepsilon`, decoder :math:`\Psi`),
:math:`\mathcal{L}_1 = \lVert x - \Psi(z) \rVert^2 + \beta\, \mathrm{KL}(\mathcal{N}(\mu, s^2) \Vert \mathcal{N}(0, I))`;
stage 2 freezes it and fits a regression network :math:`f` (optionally after an embedding of y)
to fresh latent draws (eq. 13), :math:`\mathcal{L}_2 = \lVert f(y_i) - z_i \rVert^2`. The reconstruction
is :math:`\Psi(f(y))` (eq. 14, :meth:`VAEPosterior.reconstruct`); draws are
:math:`\Psi(f(y) + \lambda\, r \odot \varepsilon)`, :math:`r` the per-dimension RMS of the stage-2
residuals on held-out pairs and λ the option ``spread``. :math:`r^2` estimates
:math:`\mathbb{E}_y[\operatorname{Var}(z \mid y)]`, the spread averaged over observations, so the
posterior is not calibrated by construction (docs/flow_vae.md; check it with
:func:`bayesinv.diagnostics.sbc_ranks`); it has no density (no importance proposal).

Example:
    >>> post = bayesinv.fit(model, method="vae", num_simulations=5000, latent_dim=4)
    >>> x_hat = post.reconstruct(y_obs)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import held_out
from bayesinv.amortized.method import AmortizedMethod, check_float, register_amortized, train_options
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.nets.vae import TwoStageVAE, VAEOptions

__all__ = ["VAEConfig", "VAESampler", "TwoStageVAE", "VAEPosterior", "VAE"]

#: Training defaults of ``method="vae"`` (they replace TrainOptions' class defaults; the user's options override them).
TRAIN_DEFAULTS = dict(
    max_epochs=200,
    max_steps=None,
    batch_size=256,
    lr=1e-3,
    lr_schedule=None,
    patience=20,
    ema_decay=0.999,
    val_fraction=0.1,
    grad_clip=None,
    weight_decay=0.0,
    normalization="standard",
    precision="float32",
)


@dataclass(frozen=True)
class VAEConfig(VAEOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="vae"``: the fields of :class:`~bayesinv.nets.vae.VAEOptions` (the networks, β) and of
    :class:`~bayesinv.amortized.method.TrainOptions` (defaults :data:`TRAIN_DEFAULTS`, used by each stage)."""

    def __post_init__(self):
        self.check_training()
        self.check_vae()


@dataclass(frozen=True)
class VAESampler:
    r"""Sampling option of ``method="vae"``: ``spread`` λ, the scale of the latent spread (0: the reconstruction)."""

    spread: float = 1.0

    def __post_init__(self):
        check_float(self, "spread", low=0.0)


def build(cfg: VAEConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The two-stage VAE of ``cfg`` for the pairs' layouts, and its saved settings."""
    settings = {**cfg.vae_settings(pairs.target, pairs.condition), "normalization": cfg.normalization}
    return TwoStageVAE.from_settings(settings), settings


def train(net: TwoStageVAE, pairs: Any, cfg: VAEConfig, settings: Any, run: Any, seed: int) -> tuple:
    r"""The two stages (:meth:`~bayesinv.nets.vae.TwoStageVAE.train_stages`); the spread on the pairs they held out."""
    results = net.train_stages(run, pairs.x, pairs.c, cfg.beta, held_out(len(pairs.x), cfg.val_fraction, seed))
    return net, results, {"latent_spread": net.z_spread.cpu().tolist()}


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: VAESampler) -> tuple[Tensor, dict]:
    r"""Decoded latent draws :math:`\Psi(f(y) + \lambda r \odot \varepsilon)`: ``(B, n, D)``."""
    return post.net.sample(c, n, scfg.spread, generator), {"spread": float(scfg.spread)}


class VAEPosterior(AmortizedPosterior):
    r"""A two-stage VAE posterior: the layer's posterior plus :meth:`reconstruct`."""

    @torch.no_grad()
    def reconstruct(self, y: Any) -> dict[str, Tensor]:
        r"""The point reconstruction Ψ(f(y)) of every target site, ``(*shape)`` (or ``(*B, *shape)``)."""
        values = self.sample(y, 1, seed=0, spread=0.0)
        return {k: v.squeeze(-len(s) - 1) for (k, v), s in zip(values.items(), self.target.shapes)}


VAE = register_amortized(AmortizedMethod(
    name="vae", config=VAEConfig, sampler_config=VAESampler, build=build, rebuild=TwoStageVAE.from_settings, loss=None, sample=sample,
    train=train, posterior=VAEPosterior,
    no_density=(
        "method 'vae' has no density (its draws are decoded latent perturbations), so it cannot be scored"
        " or used as an importance-sampling proposal; use method='flow' for a proposal"
    ),
    saved_keys=("architecture", "condition_layout"),
))  # fmt: skip
