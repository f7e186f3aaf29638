r"""The two-stage conditional VAE network of ``method="vae"``: :class:`TwoStageVAE`, its options
(:class:`VAEOptions`, :func:`vae_architecture`) and its two stage losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import train_stage
from bayesinv.amortized.layout import Layout, saved_layout
from bayesinv.amortized.method import check_choice, check_float, check_int, check_sizes
from bayesinv.errors import OptionError
from bayesinv.nets.embedding import mlp, observation_embedding

__all__ = ["TwoStageVAE", "VAEOptions", "Stage1Loss", "Stage2Loss", "vae_architecture"]


class TwoStageVAE(nn.Module):
    r"""Encoder, decoder and regression network of the two-stage conditional VAE.

    Arguments:
        x_dim: The target size D.
        c_dim: The (flat) condition size C.
        latent_dim: The latent size k.
        hidden: Hidden sizes of the encoder (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y before f.
        embed_dim: The embedding size.
        embed_pool: The CNN embedding's pooling, ``"mean"`` or ``"flatten"``.
        condition: The condition layout (for ``"cnn"``).

    Example:
        >>> net = TwoStageVAE(4, 6, latent_dim=2)
        >>> net.decoder(net.regress(torch.randn(3, 6))).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        x_dim: int,
        c_dim: int,
        latent_dim: int = 8,
        hidden: Sequence[int] = (128, 128),
        regressor_hidden: Sequence[int] = (128, 128),
        embedding: str | None = None,
        embed_dim: int = 32,
        condition: Layout | None = None,
        embed_pool: str = "mean",
    ):
        super().__init__()
        hidden, regressor_hidden = tuple(hidden), tuple(regressor_hidden)
        self.latent_dim = latent_dim
        self.encoder = mlp([x_dim, *hidden, 2 * latent_dim], nn.SiLU)
        self.decoder = mlp([latent_dim, *hidden[::-1], x_dim], nn.SiLU)
        condition = condition or Layout(("y",), ((c_dim,),))
        emb = observation_embedding(embedding, condition, embed_dim, (128,), pool=embed_pool)
        f_in = embed_dim if emb is not None else c_dim
        self.regressor = nn.Sequential(emb or nn.Identity(), mlp([f_in, *regressor_hidden, latent_dim], nn.SiLU))
        self.register_buffer("z_spread", torch.ones(latent_dim))

    @classmethod
    def from_settings(cls, settings: Any) -> "TwoStageVAE":
        r"""The network of a posterior's saved settings (``architecture``: the arguments, ``condition_layout``)."""
        return cls(**settings["architecture"], condition=saved_layout(settings))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Latent mean and log-variance, each ``(*, k)``."""
        return _encode(self.encoder, x)

    def encode_sample(self, x: Tensor) -> Tensor:
        r"""A latent draw :math:`z = \mu(x) + s(x) \odot \varepsilon`."""
        mu, logvar = self.encode(x)
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def regress(self, c: Tensor) -> Tensor:
        r"""f(y): the latent code predicted from the condition, ``(*, k)``."""
        return self.regressor(c)

    @torch.no_grad()
    def set_spread(self, x: Tensor, c: Tensor) -> None:
        r"""Sets the latent spread r to the root mean square of the residuals :math:`z - f(y)` of pairs ``(x, c)``."""
        dev = self.z_spread.device
        resid = self.encode_sample(x.to(dev)) - self.regress(c.to(dev))
        self.z_spread.copy_(resid.square().mean(0).sqrt())

    def train_stages(self, run: Any, x: Tensor, c: Tensor, beta: float, spread_rows: Tensor) -> list:
        r"""Stage 1 (:class:`Stage1Loss` on the targets ``x``), stage 2 (:class:`Stage2Loss`, the encoder frozen), each
        by ``run``, the shared loop (:func:`~bayesinv.amortized.fit.train_stage`), then the latent spread on the pairs
        ``spread_rows`` (:meth:`set_spread`); returns the two stages' results."""
        stage1 = train_stage(run, Stage1Loss(self, beta), (x,), ".stage1")
        self.encoder.requires_grad_(False)
        stage2 = train_stage(run, Stage2Loss(self), (x, c), ".stage2")
        self.requires_grad_(True)
        self.set_spread(x[spread_rows], c[spread_rows])
        return [stage1, stage2]

    def sample(self, c: Tensor, n: int, spread: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        r"""Decoded latent draws :math:`\Psi(f(y) + \lambda r \odot \varepsilon)` for conditions ``(B, C)``: ``(B, n, D)``."""
        z0 = self.regress(c)  # (B, k)
        eps = torch.randn((c.shape[0], n, z0.shape[-1]), generator=generator, device=c.device)
        return self.decoder(z0.unsqueeze(1) + spread * self.z_spread * eps)


@dataclass(frozen=True)
class VAEOptions:
    r"""The network options of the two-stage VAE (``method="vae"``).

    Arguments:
        latent_dim: The latent size k (``None``: ``min(D, 32)``).
        hidden: Encoder hidden sizes (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y inside f.
        embed_dim: The embedding size.
        embed_pool: The CNN embedding's pooling: ``"mean"`` (shift invariant) or ``"flatten"`` (position-aware).
        beta: Weight of the KL term of stage 1 (a Gaussian decoder of variance β/2 in
            normalised units; β = 1 shrinks low-dimensional targets strongly to their mean).
    """

    latent_dim: int | None = None
    hidden: tuple[int, ...] = (128, 128)
    regressor_hidden: tuple[int, ...] = (128, 128)
    embedding: str | None = None
    embed_dim: int = 32
    embed_pool: str = "mean"
    beta: float = 0.1

    def check_vae(self) -> None:
        r"""Validates the fields (called by the config's ``__post_init__``)."""
        check_int(self, "latent_dim", none=True)
        check_int(self, "embed_dim")
        check_choice(self, "embedding", (None, "none", "auto", "mlp", "cnn"))
        check_choice(self, "embed_pool", ("mean", "flatten"))
        if self.embed_pool != "mean" and self.embedding not in ("cnn", "auto"):
            raise OptionError(f"{type(self).__name__}: embed_pool={self.embed_pool!r} needs embedding='cnn' (or 'auto'), "
                              f"got embedding={self.embedding!r}")
        check_float(self, "beta", low=0.0)
        for name in ("hidden", "regressor_hidden"):
            check_sizes(self, name)

    def vae_settings(self, target: Layout, condition: Layout) -> dict[str, Any]:
        r"""The JSON-able settings of the network (saved with a posterior; read by :meth:`TwoStageVAE.from_settings`)."""
        arch = vae_architecture(self, target, condition)
        return {"architecture": arch, "condition_layout": condition.to_json(), "beta": float(self.beta)}


def vae_architecture(cfg: VAEOptions, target: Layout, condition: Layout) -> dict[str, Any]:
    r"""The JSON-able arguments of :class:`TwoStageVAE` (saved with a posterior) for the options ``cfg``
    (``latent_dim`` ``None``: ``min(D, 32)``)."""
    k = cfg.latent_dim if cfg.latent_dim is not None else min(target.dim, 32)
    return dict(x_dim=target.dim, c_dim=condition.dim, latent_dim=k, hidden=list(cfg.hidden),
                regressor_hidden=list(cfg.regressor_hidden), embedding=cfg.embedding, embed_dim=cfg.embed_dim,
                **({"embed_pool": cfg.embed_pool} if cfg.embed_pool != "mean" else {}))  # fmt: skip


def _encode(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    mu, logvar = encoder(x).chunk(2, dim=-1)
    return mu, logvar.clamp(-12.0, 8.0)


class Stage1Loss(nn.Module):
    r"""Stage 1 loss: ‖x − Ψ(z)‖² + β KL(N(μ, s²) ‖ N(0, I)), summed over dims, batch mean."""

    def __init__(self, net: TwoStageVAE, beta: float):
        super().__init__()
        self.encoder, self.decoder, self.beta = net.encoder, net.decoder, beta

    def forward(self, x: Tensor) -> Tensor:
        mu, logvar = _encode(self.encoder, x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = (self.decoder(z) - x).square().sum(-1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
        return (rec + self.beta * kl).mean()


class Stage2Loss(nn.Module):
    r"""Stage 2 loss: ‖f(y) − z‖², z a fresh draw of the frozen encoder (not its mean)."""

    def __init__(self, net: TwoStageVAE):
        super().__init__()
        self.regressor = net.regressor
        self._frozen = [net.encoder]  # not a submodule: stays out of the optimiser and the EMA

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        with torch.no_grad():
            mu, logvar = _encode(self._frozen[0], x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return (self.regressor(c) - z).square().sum(-1).mean()
