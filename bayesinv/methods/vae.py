r"""The two-stage conditional VAE: ``method="vae"`` (Algorithm 2 of the EIT comparison).

Stage 1 fits a VAE to the (normalised, flat) targets alone: encoder :math:`\Phi(x) = (\mu, s)`,
:math:`z = \mu + s \odot \varepsilon`, decoder :math:`\Psi`,
:math:`\mathcal{L}_1 = \lVert x - \Psi(z) \rVert^2 + \beta\, \mathrm{KL}(\mathcal{N}(\mu, s^2) \Vert \mathcal{N}(0, I))`.
Stage 2 freezes it and fits a regression network :math:`f` (an MLP, optionally after an
embedding of y) to fresh latent draws (eq. 13): :math:`\mathcal{L}_2 = \lVert f(y_i) - z_i \rVert^2`.
The reconstruction is :math:`\Psi(f(y))` (eq. 14; :meth:`VAEPosterior.reconstruct`); draws are
:math:`\Psi(f(y) + \lambda\, r \odot \varepsilon)`, :math:`r` the per-dimension RMS of the
stage-2 residuals on held-out pairs and λ the option ``spread`` (1). :math:`r^2` estimates
:math:`\mathbb{E}_y[\operatorname{Var}(z \mid y)]`, the latent spread averaged over observations,
so the posterior is not calibrated by construction (docs/flow_vae.md; check it with
:func:`bayesinv.diagnostics.sbc_ranks`), and it has no density (no importance proposal).

Options: the fields of :class:`VAEConfig` (fit) and :class:`VAESampler` (``spread``).

Example:
    >>> post = bayesinv.fit(model, method="vae", num_simulations=5000, latent_dim=4)
    >>> x_hat = post.reconstruct(y_obs)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import held_out, trained_model
from bayesinv.amortized.layout import saved_layout
from bayesinv.amortized.method import AmortizedMethod, check_choice, check_float, check_int, check_sizes, register_amortized, train_options
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.nets.vae import Stage1Loss, Stage2Loss, TwoStageVAE, vae_architecture

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
)


@dataclass(frozen=True)
class VAEConfig(train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="vae"`` (with the training fields of :class:`~bayesinv.amortized.method.TrainOptions`,
    defaults :data:`TRAIN_DEFAULTS`, used by each stage).

    Arguments:
        latent_dim: The latent size k (``None``: ``min(D, 32)``).
        hidden: Encoder hidden sizes (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y inside f.
        embed_dim: The embedding size.
        beta: Weight of the KL term of stage 1 (a Gaussian decoder of variance β/2 in
            normalised units; β = 1 shrinks low-dimensional targets strongly to their mean).
    """

    latent_dim: int | None = None
    hidden: tuple[int, ...] = (128, 128)
    regressor_hidden: tuple[int, ...] = (128, 128)
    embedding: str | None = None
    embed_dim: int = 32
    beta: float = 0.1

    def __post_init__(self):
        self.check_training()
        check_int(self, "latent_dim", none=True)
        check_int(self, "embed_dim")
        check_choice(self, "embedding", (None, "none", "auto", "mlp", "cnn"))
        check_float(self, "beta", low=0.0)
        for name in ("hidden", "regressor_hidden"):
            check_sizes(self, name)


@dataclass(frozen=True)
class VAESampler:
    r"""Sampling options of ``method="vae"``: ``spread``, λ, the scale of the latent spread around f(y) (1; 0 gives the reconstruction)."""

    spread: float = 1.0

    def __post_init__(self):
        check_float(self, "spread", low=0.0)


def build(cfg: VAEConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The two-stage VAE of ``cfg`` for the pairs' layouts, and its saved settings."""
    arch = vae_architecture(cfg, pairs.target, pairs.condition)
    settings = {"architecture": arch, "condition_layout": pairs.condition.to_json(), "beta": float(cfg.beta),
                "normalization": cfg.normalization}  # fmt: skip
    return rebuild(settings), settings


def rebuild(settings: Mapping[str, Any]) -> nn.Module:
    r"""The network of saved settings (``architecture``, ``condition_layout``)."""
    return TwoStageVAE(**settings["architecture"], condition=saved_layout(settings))


def train(net: TwoStageVAE, pairs: Any, cfg: VAEConfig, settings: Mapping[str, Any], run, seed: int):
    r"""Stage 1 (the VAE on targets), stage 2 (f(y) → sampled latent codes), then the latent spread."""
    x, c = pairs.x, pairs.c
    stage1 = run(lambda m, xb: m(xb), Stage1Loss(net, cfg.beta), (x,), ".stage1")
    Stage1Loss(net, cfg.beta).load_state_dict(trained_model(stage1).state_dict())
    net.encoder.requires_grad_(False)
    stage2 = run(lambda m, xb, cb: m(xb, cb), Stage2Loss(net), (x, c), ".stage2")
    net.regressor.load_state_dict(trained_model(stage2).regressor.state_dict())
    net.requires_grad_(True)
    rows = held_out(len(x), cfg.val_fraction, seed)  # the latent spread: on the pairs stage 2 held out
    net.set_spread(x[rows], c[rows])
    return net, [stage1, stage2], {"latent_spread": net.z_spread.cpu().tolist()}


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
    name="vae", config=VAEConfig, sampler_config=VAESampler, build=build, rebuild=rebuild, loss=None, sample=sample,
    train=train, posterior=VAEPosterior,
    no_density=(
        "method 'vae' has no density (its draws are decoded latent perturbations), so it cannot be scored"
        " or used as an importance-sampling proposal; use method='flow' for a proposal"
    ),
    saved_keys=("architecture", "condition_layout"),
))  # fmt: skip
