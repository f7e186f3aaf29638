r"""The two-stage conditional VAE: ``method="vae"`` (Algorithm 2 of the EIT comparison).

Stage 1 fits a VAE to target draws alone (normalised, flat ``x``): an encoder
:math:`\Phi(x) = (\mu(x), s(x))`, latent draws :math:`z = \mu(x) + s(x) \odot
\varepsilon`, a decoder :math:`\Psi`, and

.. math:: \mathcal{L}_1 = \lVert x - \Psi(z) \rVert^2 + \beta\,
          \mathrm{KL}(\mathcal{N}(\mu, s^2) \,\Vert\, \mathcal{N}(0, I)).

Stage 2 freezes the VAE and fits a regression network :math:`f` (an MLP, optionally
after an MLP/CNN embedding of y) to *sampled* latent codes — fresh
:math:`z_i \sim \mathcal{N}(\mu(x_i), s(x_i)^2)` at every step, not the means
(eq. 13): :math:`\mathcal{L}_2 = \lVert f(y_i) - z_i \rVert^2`.

The reconstruction is :math:`\Psi(f(y))` (eq. 14; :meth:`VAEPosterior.reconstruct`).
Posterior draws are :math:`\Psi(f(y) + \lambda\, r \odot \varepsilon)`,
:math:`\varepsilon \sim \mathcal{N}(0, I)`, where :math:`r` is the per-dimension root
mean square of the stage-2 residuals :math:`z_i - f(y_i)` on held-out pairs and
:math:`\lambda` the sampling option ``spread`` (default 1). Since :math:`f` is a
least-squares fit, :math:`f(y) \approx \mathbb{E}[z \mid y]` and :math:`r^2` estimates
:math:`\mathbb{E}_y[\operatorname{Var}(z \mid y)]`: the latent posterior spread *averaged
over observations* (encoder noise and regression error included), as a diagonal
Gaussian. It is not the spread of p(x | y) for a given y — not heteroscedastic, not
correlated across latent dimensions, and distorted by the decoder's non-linearity —
so this posterior is not calibrated by construction; check it with
:func:`bayesinv.diagnostics.sbc_ranks` / ``tarp_coverage``. It has no density, so it
cannot be an importance-sampling proposal (use ``method="flow"``).

Options: the fields of :class:`VAEConfig` (fit) and :class:`VAESampler` (``spread``).

Example:
    >>> post = bayesinv.fit(model, method="vae", num_simulations=5000, latent_dim=4)
    >>> x_hat = post.reconstruct(y_obs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout
from bayesinv.amortized.method import AmortizedMethod, check_choice, check_float, check_int, register_amortized, train_options
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.errors import OptionError
from bayesinv.nets.vae import Stage1Loss, Stage2Loss, TwoStageVAE

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
    used by each stage).

    Arguments:
        latent_dim: The latent size k (``None``: ``min(D, 32)``).
        hidden: Encoder hidden sizes (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y inside f.
        embed_dim: The embedding size.
        beta: Weight of the KL term of stage 1 (a Gaussian decoder of variance β/2 in
            normalised units; β = 1 shrinks low-dimensional targets strongly to their mean).
        normalization: ``"standard"`` (default), ``"minmax"`` or ``"none"``.
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
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(h, int) and h >= 1 for h in v):
                raise OptionError(f"VAEConfig: option {name}={v!r} must be a tuple of integers >= 1")


@dataclass(frozen=True)
class VAESampler:
    r"""Sampling options of ``method="vae"``.

    Arguments:
        spread: λ, the scale of the latent spread around f(y) (1; 0 gives the reconstruction).
    """

    spread: float = 1.0

    def __post_init__(self):
        check_float(self, "spread", low=0.0)


def rebuild(settings: Mapping[str, Any]) -> nn.Module:
    r"""The network of saved settings (``architecture``, ``condition_layout``)."""
    cond = settings.get("condition_layout")
    return TwoStageVAE(**settings["architecture"], condition=Layout.from_json(cond) if cond else None)


def build(cfg: VAEConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The two-stage VAE of ``cfg`` for the pairs' layouts, and its saved settings."""
    k = cfg.latent_dim if cfg.latent_dim is not None else min(pairs.target.dim, 32)
    arch = dict(x_dim=pairs.target.dim, c_dim=pairs.condition.dim, latent_dim=k, hidden=list(cfg.hidden),
                regressor_hidden=list(cfg.regressor_hidden), embedding=cfg.embedding, embed_dim=cfg.embed_dim)  # fmt: skip
    settings = {"architecture": arch, "condition_layout": pairs.condition.to_json(), "beta": float(cfg.beta),
                "normalization": cfg.normalization}  # fmt: skip
    return rebuild(settings), settings


def train(net: TwoStageVAE, pairs: Any, cfg: VAEConfig, settings: Mapping[str, Any], run, seed: int):
    r"""Stage 1 (the VAE on targets), stage 2 (f(y) → sampled latent codes), then the latent spread."""
    x, c = pairs.x, pairs.c
    stage1 = run(lambda m, xb: m(xb), Stage1Loss(net, cfg.beta), (x,), ".stage1")
    Stage1Loss(net, cfg.beta).load_state_dict((stage1.model if stage1.ema_model is None else stage1.ema_model).state_dict())
    net.encoder.requires_grad_(False)
    stage2 = run(lambda m, xb, cb: m(xb, cb), Stage2Loss(net), (x, c), ".stage2")
    net.regressor.load_state_dict((stage2.model if stage2.ema_model is None else stage2.ema_model).regressor.state_dict())
    net.requires_grad_(True)
    # the latent spread: RMS of the residuals z − f(y) on the pairs held out by stage 2
    n_val = max(1, int(round(len(x) * cfg.val_fraction)))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_val]
    with torch.no_grad():
        dev = next(net.parameters()).device
        resid = net.encode_sample(x[perm].to(dev)) - net.regress(c[perm].to(dev))
        net.z_spread.copy_(resid.square().mean(0).sqrt())
    stages = [{"train_steps": r.steps, "best_val_loss": r.best_val if math.isfinite(r.best_val) else None} for r in (stage1, stage2)]
    return net, [stage1, stage2], {"stages": stages, "latent_spread": net.z_spread.cpu().tolist()}


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: VAESampler) -> tuple[Tensor, dict]:
    r"""Decoded latent draws :math:`\Psi(f(y) + \lambda r \odot \varepsilon)`: ``(B, n, D)``."""
    z0 = post.net.regress(c)  # (B, k)
    eps = torch.randn((c.shape[0], n, z0.shape[-1]), generator=generator, device=c.device)
    z = z0.unsqueeze(1) + scfg.spread * post.net.z_spread * eps
    return post.net.decoder(z), {"spread": float(scfg.spread)}


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
