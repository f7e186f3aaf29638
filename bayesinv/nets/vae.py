r"""The two-stage conditional VAE network of ``method="vae"``: :class:`TwoStageVAE` and its two stage losses."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout
from bayesinv.nets.embedding import mlp, observation_embedding

__all__ = ["TwoStageVAE", "Stage1Loss", "Stage2Loss", "vae_architecture"]


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
    ):
        super().__init__()
        hidden, regressor_hidden = tuple(hidden), tuple(regressor_hidden)
        self.latent_dim = latent_dim
        self.encoder = mlp([x_dim, *hidden, 2 * latent_dim], nn.SiLU)
        self.decoder = mlp([latent_dim, *hidden[::-1], x_dim], nn.SiLU)
        condition = condition or Layout(("y",), ((c_dim,),))
        emb = observation_embedding(embedding, condition, embed_dim, (128,))
        f_in = embed_dim if emb is not None else c_dim
        self.regressor = nn.Sequential(emb or nn.Identity(), mlp([f_in, *regressor_hidden, latent_dim], nn.SiLU))
        self.register_buffer("z_spread", torch.ones(latent_dim))

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

    def sample(self, c: Tensor, n: int, spread: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        r"""Decoded latent draws :math:`\Psi(f(y) + \lambda r \odot \varepsilon)` for conditions ``(B, C)``: ``(B, n, D)``."""
        z0 = self.regress(c)  # (B, k)
        eps = torch.randn((c.shape[0], n, z0.shape[-1]), generator=generator, device=c.device)
        return self.decoder(z0.unsqueeze(1) + spread * self.z_spread * eps)


def vae_architecture(cfg: Any, target: Layout, condition: Layout) -> dict[str, Any]:
    r"""The JSON-able arguments of :class:`TwoStageVAE` (saved with a posterior) for a config with the fields
    ``latent_dim`` (``None``: ``min(D, 32)``), ``hidden``, ``regressor_hidden``, ``embedding`` and ``embed_dim``."""
    k = cfg.latent_dim if cfg.latent_dim is not None else min(target.dim, 32)
    return dict(x_dim=target.dim, c_dim=condition.dim, latent_dim=k, hidden=list(cfg.hidden),
                regressor_hidden=list(cfg.regressor_hidden), embedding=cfg.embedding, embed_dim=cfg.embed_dim)  # fmt: skip


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
