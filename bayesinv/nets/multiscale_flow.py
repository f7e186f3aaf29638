r"""Unconditional flow priors p(x) with an explicit generator x = G(z), z ~ N(0, I).

- :class:`MultiscaleFlow` — a Glow-like multi-scale flow for fields ``(C, H, W)`` (Kingma &
  Dhariwal, 2018; Dinh et al., 2017): at each of L scales, a squeeze (2×2 space-to-depth)
  then K steps of actnorm → invertible 1×1 convolution (LU-parametrised) → affine coupling
  (the :class:`~bayesinv.nets.coupling.AffineCoupling` of the conditional flow, with no
  condition), then half the channels are factored out as latent variables (the last scale
  keeps all of them).
- :class:`VectorFlowPrior` — a plain RealNVP-style affine coupling flow for flat vectors.

Both work on flat normalised vectors ``(B, D)`` and have the same interface:
``to_latent(x) -> (z, log|det ∂z/∂x|)``, ``generate(z) -> x`` (= G(z), differentiable),
``log_prob(x)``, ``sample(n)`` and ``loss(x)`` (the negative log-likelihood, batch mean). The
latent ``z`` of a field is the concatenation of the factored-out tensors, flattened.

Example:
    >>> flow = MultiscaleFlow([1, 16, 16], scales=2, steps=2, hidden=16)
    >>> x = torch.randn(8, 256)
    >>> z, logdet = flow.to_latent(x)
    >>> torch.allclose(flow.generate(z), x, atol=1e-4)
    True
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesinv.errors import ProblemError
from bayesinv.nets.coupling import AffineCoupling, multiscale_latent_shapes

__all__ = ["ActNorm", "InvConv1x1", "MultiscaleFlow", "VectorFlowPrior"]


class ActNorm(nn.Module):
    r"""Per-channel affine ``(h − b) · e^{−log s}``, initialised from data (:meth:`initialize`) to zero mean, unit variance."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialize(self, h: Tensor) -> None:
        r"""Sets the bias and scale from a batch ``(B, C, H, W)``."""
        self.bias.copy_(h.mean((0, 2, 3), keepdim=True))
        self.log_scale.copy_(torch.log(h.std((0, 2, 3), keepdim=True).clamp_min(1e-3)))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = (h - self.bias) * torch.exp(-self.log_scale)
        return out, (-self.log_scale.sum() * h.shape[2] * h.shape[3]).expand(h.shape[0])

    def inverse(self, u: Tensor) -> Tensor:
        return u * torch.exp(self.log_scale) + self.bias


class InvConv1x1(nn.Module):
    r"""An invertible 1×1 convolution :math:`W = P L (U + \operatorname{diag}(\pm e^{s}))`, from a random rotation."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        eye = torch.eye(self.perm.shape[0], device=self.perm.device, dtype=self.perm.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_diag))
        return self.perm @ lower @ upper

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weight()
        out = torch.einsum("ij,bjhw->bihw", w, h)
        return out, (self.log_diag.sum() * h.shape[2] * h.shape[3]).expand(h.shape[0])

    def inverse(self, u: Tensor) -> Tensor:
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.weight()), u)


class _Step(nn.Module):
    r"""actnorm → 1×1 convolution → affine coupling (channel mask)."""

    def __init__(self, channels: int, hidden: int, parity: int):
        super().__init__()
        self.norm = ActNorm(channels)
        self.mix = InvConv1x1(channels)
        self.coupling = AffineCoupling(channels, 0, hidden, f"channel{parity}")

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        h, ld1 = self.norm(h)
        h, ld2 = self.mix(h)
        h, ld3 = self.coupling(h, h[:, :0])
        return h, ld1 + ld2 + ld3

    def inverse(self, u: Tensor) -> Tensor:
        u = self.coupling.inverse(u, u[:, :0])
        return self.norm.inverse(self.mix.inverse(u))


class MultiscaleFlow(nn.Module):
    r"""A multi-scale Glow-like flow prior p(x) for fields ``(C, H, W)`` given as flat vectors ``(B, C·H·W)``.

    Arguments:
        x_shape: ``[C, H, W]``; H and W divisible by ``2**scales``.
        scales: Number of scales L (squeeze, K steps, factor-out half the channels).
        steps: Flow steps K per scale.
        hidden: Channels of the coupling CNNs.
    """

    def __init__(self, x_shape: Sequence[int], scales: int = 2, steps: int = 4, hidden: int = 64):
        super().__init__()
        c, h, w = (int(v) for v in x_shape)
        if scales < 1 or h % 2**scales or w % 2**scales:
            raise ProblemError(f"a {h}×{w} field cannot be squeezed {scales} times (H and W must be divisible by {2**scales})")
        self.x_shape, self.scales = (c, h, w), int(scales)
        self.levels = nn.ModuleList()
        ch = c
        for i in range(scales):
            ch *= 4
            self.levels.append(nn.ModuleList(_Step(ch, hidden, k % 2) for k in range(steps)))
            if i < scales - 1:
                ch //= 2

    @property
    def dim(self) -> int:
        return math.prod(self.x_shape)

    def _latent_shapes(self) -> list[tuple[int, int, int]]:
        return multiscale_latent_shapes(self.x_shape, self.scales)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        r"""Data-dependent initialisation of every actnorm from a batch of flat fields ``(B, D)`` (Glow)."""
        h = x.reshape(-1, *self.x_shape)
        for i, level in enumerate(self.levels):
            h = F.pixel_unshuffle(h, 2)
            for step in level:
                step.norm.initialize(h)
                h, _ = step(h)
            if i < self.scales - 1:
                _, h = h.chunk(2, 1)

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""z = G⁻¹(x) ``(B, D)`` and log|det ∂z/∂x| ``(B,)`` for flat fields ``(B, D)``."""
        h = x.reshape(-1, *self.x_shape)
        zs, logdet = [], x.new_zeros(h.shape[0])
        for i, level in enumerate(self.levels):
            h = F.pixel_unshuffle(h, 2)
            for step in level:
                h, ld = step(h)
                logdet = logdet + ld
            if i < self.scales - 1:
                z, h = h.chunk(2, 1)
                zs.append(z.flatten(1))
        zs.append(h.flatten(1))
        return torch.cat(zs, 1), logdet

    def generate(self, z: Tensor) -> Tensor:
        r"""x = G(z) ``(B, D)`` for flat latents ``(B, D)``."""
        shapes = self._latent_shapes()
        sizes = [math.prod(s) for s in shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, 1), shapes)]
        h = parts[-1]
        for i in reversed(range(self.scales)):
            if i < self.scales - 1:
                h = torch.cat([parts[i], h], 1)
            for step in reversed(self.levels[i]):
                h = step.inverse(h)
            h = F.pixel_shuffle(h, 2)
        return h.flatten(1)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""log p(x) ``(B,)`` of flat fields."""
        z, logdet = self.to_latent(x)
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1) + logdet

    def loss(self, x: Tensor) -> Tensor:
        r"""The negative log-likelihood per dimension, batch mean."""
        return -self.log_prob(x).mean() / self.dim

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` draws ``(n, D)`` (latents scaled by ``temperature``)."""
        p = next(self.parameters())
        z = torch.randn(n, self.dim, device=p.device, dtype=p.dtype, generator=generator) * temperature
        return self.generate(z)


class _VectorCoupling(nn.Module):
    r"""An affine coupling of flat vectors: the entries of one parity stay, the others become
    :math:`x \odot e^{\tanh s} + t` with :math:`(s, t)` an MLP of the kept ones (starts as the identity)."""

    def __init__(self, dim: int, hidden: Sequence[int], parity: int):
        super().__init__()
        mask = (torch.arange(dim) % 2 == parity).float()
        self.register_buffer("mask", mask)
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.SiLU()]
            width = int(h)
        layers.append(nn.Linear(width, 2 * dim))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def _st(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(kept).chunk(2, -1)
        return torch.tanh(s) * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._st(x * self.mask)
        return x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t), s.sum(-1)

    def inverse(self, u: Tensor) -> Tensor:
        s, t = self._st(u * self.mask)
        return u * self.mask + (1 - self.mask) * ((u - t) * torch.exp(-s))


class VectorFlowPrior(nn.Module):
    r"""A RealNVP-style affine coupling flow prior for flat vectors ``(B, D)``, D ≥ 2: alternating
    parity masks, each coupling followed by a fixed random permutation (the last one excepted).

    Arguments:
        dim: The vector size D.
        transforms: Coupling transformations.
        hidden: Hidden sizes of the coupling MLPs.
    """

    def __init__(self, dim: int, transforms: int = 4, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        if dim < 2:
            raise ProblemError(f"an affine coupling flow needs a target of 2 or more entries; this one has {dim}")
        self.dim = int(dim)
        self.couplings = nn.ModuleList(_VectorCoupling(self.dim, hidden, k % 2) for k in range(int(transforms)))
        gen = torch.Generator().manual_seed(0)
        perms = torch.stack([torch.randperm(self.dim, generator=gen) for _ in range(int(transforms))])
        self.register_buffer("perms", perms)
        self.register_buffer("inverse_perms", torch.argsort(perms, -1))

    def initialize(self, x: Tensor) -> None:
        r"""No data-dependent initialisation (the data are normalised by the amortized layer)."""

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for k, coupling in enumerate(self.couplings):
            x, ld = coupling(x)
            logdet = logdet + ld
            if k < len(self.couplings) - 1:
                x = x[:, self.perms[k]]
        return x, logdet

    def generate(self, z: Tensor) -> Tensor:
        for k in reversed(range(len(self.couplings))):
            if k < len(self.couplings) - 1:
                z = z[:, self.inverse_perms[k]]
            z = self.couplings[k].inverse(z)
        return z

    def log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self.to_latent(x)
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1) + logdet

    def loss(self, x: Tensor) -> Tensor:
        return -self.log_prob(x).mean() / self.dim

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        p = next(self.parameters())
        return self.generate(torch.randn(n, self.dim, device=p.device, dtype=p.dtype, generator=generator) * temperature)
