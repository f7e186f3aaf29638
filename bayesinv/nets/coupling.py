r"""A multi-scale conditional coupling flow for field targets on a grid.

The conditional normalizing flow of the EIT comparison (after Denker et al., 2021, in
the RealNVP / Glow family): a conditioning network :math:`H` maps the observation to an
initial reconstruction :math:`H(y)` of the field, a small CNN turns it into feature maps
at every resolution, and each scale of the flow is

    coupling (checkerboard masks) → squeeze (2×2 space-to-depth) → coupling (channel
    masks) → split (half the channels leave as latent variables),

the last scale keeping all its channels. Each coupling is affine,
:math:`x_{I_2} \mapsto x_{I_2} \odot e^{s} + t` with :math:`(s, t) = M(x_{I_1}, h)`,
where :math:`M` is a CNN fed with the unchanged half and the features :math:`h` of y at
that resolution (eq. 19). Training minimises the negative log-likelihood plus
:math:`\alpha \lVert H(y) - x \rVert^2` (eq. 20, summed over pixels), which makes
:math:`H(y)` an initial reconstruction; ``alpha=0`` trains H through the NLL only.

:class:`MultiscaleConditionalFlow` works on flat normalised vectors like
:class:`bayesinv.methods.flow.ConditionalFlow`: ``forward(c)`` returns a
:class:`torch.distributions.Distribution` over flat fields ``(*, C·H·W)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from bayesinv.nets.embedding import CNNEmbedding

__all__ = ["AffineCoupling", "MultiscaleConditionalFlow", "field_shape"]


def field_shape(layout) -> list[int]:
    r"""``[C, H, W]`` of a layout holding one field site of shape ``(H, W)`` or ``(C, H, W)``."""
    from bayesinv.problem import ProblemError

    if len(layout.names) != 1 or len(layout.shapes[0]) not in (2, 3):
        raise ProblemError(
            "flow='multiscale' needs one target site of shape (H, W) or (C, H, W); got"
            f" {dict(zip(layout.names, layout.shapes))} (use a vector flow such as 'nsf')"
        )
    shape = list(layout.shapes[0])
    return [1, *shape] if len(shape) == 2 else shape


def _checkerboard(h: int, w: int, parity: int, device) -> Tensor:
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return (((i + j) % 2) == parity).float().view(1, 1, h, w)



def multiscale_latent_shapes(x_shape: Sequence[int], scales: int) -> list[tuple[int, int, int]]:
    r"""The latent shapes of a multi-scale flow on ``x_shape`` ``(C, H, W)``: at each of ``scales``
    squeezes (2 × 2 → channels) half the channels are factored out, the last scale keeps all."""
    c, h, w = x_shape
    shapes = []
    for i in range(scales):
        c, h, w = c * 4, h // 2, w // 2
        if i < scales - 1:
            shapes.append((c // 2, h, w))
            c //= 2
    shapes.append((c, h, w))
    return shapes

class AffineCoupling(nn.Module):
    r"""A conditional affine coupling of images with a checkerboard or channel mask.

    Arguments:
        channels: Channels of the input.
        cond_channels: Channels of the condition features (same resolution).
        hidden: Channels of the coupling CNN.
        mask: ``"checker0"``, ``"checker1"`` (pixels of one parity stay) or
            ``"channel0"``, ``"channel1"`` (the first / second half of the channels stays).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int, mask: str):
        super().__init__()
        if mask not in ("checker0", "checker1", "channel0", "channel1"):
            raise ValueError(f"unknown mask {mask!r}")
        if mask.startswith("channel") and channels < 2:
            raise ValueError("a channel mask needs 2 or more channels")
        self.channels, self.mask_kind = channels, mask
        self.net = nn.Sequential(
            nn.Conv2d(channels + cond_channels, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )  # fmt: skip
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _mask(self, h: Tensor) -> Tensor:
        if self.mask_kind.startswith("checker"):
            return _checkerboard(h.shape[-2], h.shape[-1], int(self.mask_kind[-1]), h.device)
        m = torch.zeros(1, self.channels, 1, 1, device=h.device)
        half = self.channels // 2
        if self.mask_kind == "channel0":
            m[:, :half] = 1.0
        else:
            m[:, half:] = 1.0
        return m

    def _st(self, kept: Tensor, feat: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(torch.cat([kept, feat], 1)).chunk(2, 1)
        return torch.tanh(s) * (1 - m), t * (1 - m)

    def forward(self, h: Tensor, feat: Tensor) -> tuple[Tensor, Tensor]:
        r"""Field → latent direction: returns the output and log|det J| ``(B,)``."""
        m = self._mask(h)
        s, t = self._st(h * m, feat, m)
        return h * m + (1 - m) * (h * torch.exp(s) + t), s.flatten(1).sum(-1)

    def inverse(self, u: Tensor, feat: Tensor) -> Tensor:
        m = self._mask(u)
        s, t = self._st(u * m, feat, m)
        return u * m + (1 - m) * ((u - t) * torch.exp(-s))


class _Conditioner(nn.Module):
    r"""H: flat condition → reconstruction ``(C, H, W)`` → feature maps at every resolution."""

    def __init__(self, c_dim, x_shape, scales, cond_channels, embedding, embedding_dim, c_shape):
        super().__init__()
        self.x_shape = tuple(x_shape)
        size = math.prod(x_shape)
        if embedding == "auto":
            embedding = "cnn" if c_shape is not None and len(c_shape) in (2, 3) else None
        if embedding == "cnn":
            if c_shape is None or len(c_shape) not in (2, 3):
                raise ValueError("embedding='cnn' needs one observed site of shape (H, W) or (C, H, W)")
            shape = (1, *c_shape) if len(c_shape) == 2 else tuple(c_shape)
            encoder: nn.Module = nn.Sequential(nn.Unflatten(-1, shape), CNNEmbedding(shape, embedding_dim), nn.SiLU())
            width = embedding_dim
        else:
            width = max(embedding_dim, 128)
            encoder = nn.Sequential(nn.Linear(c_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.reconstruct = nn.Sequential(encoder, nn.Linear(width, size), nn.Unflatten(-1, self.x_shape))
        c = x_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, cond_channels, 3, padding=1), nn.SiLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cond_channels, cond_channels, 3, stride=2, padding=1), nn.SiLU()) for _ in range(scales)
        )

    def forward(self, c: Tensor) -> tuple[Tensor, list[Tensor]]:
        recon = self.reconstruct(c)
        feats = [self.stem(recon)]
        for down in self.down:
            feats.append(down(feats[-1]))
        return recon, feats


class MultiscaleConditionalFlow(nn.Module):
    r"""A multi-scale conditional coupling flow q(x | y) for fields ``(C, H, W)``.

    Arguments:
        x_shape: ``[C, H, W]``; H and W must be divisible by ``2**scales``.
        c_dim: The flat condition size.
        scales: The number of scales L.
        blocks: Couplings before and after each squeeze.
        channels: Channels of the coupling CNNs.
        cond_channels: Channels of the condition feature maps.
        embedding: ``None`` (an MLP maps flat y to the reconstruction), ``"cnn"``, or
            ``"auto"`` (``"cnn"`` for an image observation).
        embedding_dim: Width of the condition encoder.
        c_shape: Shape of the observed site (for ``"cnn"``).

    Example:
        >>> net = MultiscaleConditionalFlow([1, 8, 8], 5)
        >>> q = net(torch.randn(3, 5))
        >>> q.sample((2,)).shape, q.log_prob(torch.randn(3, 64)).shape
        (torch.Size([2, 3, 64]), torch.Size([3]))
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        c_dim: int,
        scales: int = 2,
        blocks: int = 2,
        channels: int = 32,
        cond_channels: int = 16,
        embedding: str | None = None,
        embedding_dim: int = 128,
        c_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        c, h, w = (int(v) for v in x_shape)
        if scales < 1 or h % 2**scales or w % 2**scales:
            raise ValueError(f"field of size {h}×{w} cannot be squeezed {scales} times (H, W divisible by {2**scales})")
        self.x_shape, self.scales = (c, h, w), scales
        self.conditioner = _Conditioner(c_dim, self.x_shape, scales, cond_channels, embedding, embedding_dim, c_shape)
        self.before, self.after = nn.ModuleList(), nn.ModuleList()
        ch = c
        for i in range(scales):
            self.before.append(
                nn.ModuleList(AffineCoupling(ch, cond_channels, channels, f"checker{k % 2}") for k in range(blocks))
            )
            ch *= 4
            self.after.append(
                nn.ModuleList(AffineCoupling(ch, cond_channels, channels, f"channel{k % 2}") for k in range(blocks))
            )
            if i < scales - 1:
                ch //= 2  # split: half the channels leave

    # -- the bijection on images, given the features ------------------------------------
    def _to_latent(self, x: Tensor, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        zs, logdet, h = [], x.new_zeros(x.shape[0]), x
        for i in range(self.scales):
            for layer in self.before[i]:
                h, ld = layer(h, feats[i])
                logdet = logdet + ld
            h = F.pixel_unshuffle(h, 2)
            for layer in self.after[i]:
                h, ld = layer(h, feats[i + 1])
                logdet = logdet + ld
            if i < self.scales - 1:
                z, h = h.chunk(2, 1)
                zs.append(z)
        zs.append(h)
        return zs, logdet

    def _from_latent(self, zs: list[Tensor], feats: list[Tensor]) -> Tensor:
        h = zs[-1]
        for i in reversed(range(self.scales)):
            if i < self.scales - 1:
                h = torch.cat([zs[i], h], 1)
            for layer in reversed(self.after[i]):
                h = layer.inverse(h, feats[i + 1])
            h = F.pixel_shuffle(h, 2)
            for layer in reversed(self.before[i]):
                h = layer.inverse(h, feats[i])
        return h

    def _latent_shapes(self) -> list[tuple[int, int, int]]:
        return multiscale_latent_shapes(self.x_shape, self.scales)

    # -- the distribution interface -----------------------------------------------------
    def forward(self, c: Tensor) -> "MultiscaleDistribution":
        r"""q(x | c) for conditions ``(*, c_dim)``: batch shape ``(*)``, event shape ``(C·H·W,)``."""
        return MultiscaleDistribution(self, c)

    def log_prob(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        r"""log q(x | c) ``(B,)`` and the reconstruction H(y) ``(B, C, H, W)`` for flat ``x``, ``c``."""
        recon, feats = self.conditioner(c)
        zs, logdet = self._to_latent(x.reshape(-1, *self.x_shape), feats)
        base = sum(-0.5 * (z.square() + math.log(2 * math.pi)).flatten(1).sum(-1) for z in zs)
        return base + logdet, recon

    def loss(self, x: Tensor, c: Tensor, alpha: float = 0.0) -> Tensor:
        r"""Negative log-likelihood + α ‖H(y) − x‖² (summed over pixels), batch mean."""
        lp, recon = self.log_prob(x, c)
        loss = -lp.mean()
        if alpha:
            loss = loss + alpha * (recon.flatten(1) - x).square().sum(-1).mean()
        return loss

    def sample(self, c: Tensor, n: int) -> Tensor:
        r"""``n`` draws for each condition ``(B, c_dim)``: ``(n, B, C·H·W)``."""
        _, feats = self.conditioner(c)
        b = c.shape[0]
        feats = [f.repeat(n, 1, 1, 1) for f in feats]  # (n·B, ...), condition index fastest
        zs = [torch.randn(n * b, *s, device=c.device) for s in self._latent_shapes()]
        return self._from_latent(zs, feats).reshape(n, b, -1)


class MultiscaleDistribution(Distribution):
    r"""q(x | c) of a :class:`MultiscaleConditionalFlow` for a batch of conditions ``(B, c_dim)``."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, flow: MultiscaleConditionalFlow, c: Tensor):
        self.flow, self.c = flow, c.reshape(-1, c.shape[-1])
        super().__init__(c.shape[:-1], torch.Size([math.prod(flow.x_shape)]), validate_args=False)

    def log_prob(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        c = self.c if self.c.shape[0] == flat.shape[0] else self.c.repeat(flat.shape[0] // self.c.shape[0], 1)
        lp, _ = self.flow.log_prob(flat, c)
        return lp.reshape(x.shape[:-1])

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        n = math.prod(sample_shape)
        with torch.no_grad():
            x = self.flow.sample(self.c, max(n, 1))
        return x.reshape(*sample_shape, *self.batch_shape, -1)
