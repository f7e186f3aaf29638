r"""A compact convolutional U-Net score network for field targets ``(*, C, H, W)``.

Residual blocks (GroupNorm, SiLU, 3x3 convolutions) with the time / noise-level
embedding added in every block, a few resolution levels joined by skip connections.
An observation on the same grid enters as extra input channels (the cSDM paper treats
x and y as channels of one image); an observation of another shape goes through an
embedding network (:class:`~bayesinv.nets.embedding.CNNEmbedding`, ...) whose output is
added to the time embedding and, with ``embedding_map`` channels, also mapped linearly
onto a coarse copy of the grid (upsampled, extra input channels): a feature vector
added to every pixel alike says *what* the observation is but not *where* its
structure lies, which an image posterior (EIT: voltages → conductivity) needs. Sizes
that are not multiples of :math:`2^{levels-1}` are padded and cropped back.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bayesinv.nets.embedding import NoiseEmbedding

__all__ = ["ScoreUNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, groups), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(F.silu(self.norm2(r)))


class ScoreUNet(nn.Module):
    r"""Conditional score U-Net :math:`s(x, y, t)` for targets with shape ``(*, C, H, W)``.

    The third input is a time :math:`t \in [0, 1]`, or a noise level σ when
    ``sigma_range`` is given (embedded through :math:`\log \sigma`, see
    :class:`~bayesinv.nets.embedding.NoiseEmbedding`); ``scale_by_sigma=True`` divides
    the output by σ, as in NCSN / the cSDM paper.

    Arguments:
        x_channels: Channels of the target.
        y_channels: Channels of an observation on the target's grid (0 for none).
        base_channels: Channels of the first level.
        channel_mults: Channel multipliers, one per resolution level.
        mask_channels: Channels of a measurement-operator mask on the grid (0 for none).
        embedding: A module mapping ``y`` to ``(*, embedding.out_dim)`` features, for an
            observation not on the grid (then ``y_channels`` must be 0).
        embedding_map: Channels of the learned map from the embedding onto the grid
            (0: none). The map is made at ``grid_size`` / 2^(levels − 1) and upsampled
            bilinearly.
        grid_size: ``(H, W)`` of the target, needed for ``embedding_map``.
        sigma_range: ``(sigma_min, sigma_max)`` for a noise-level input; ``None`` for time.
        scale_by_sigma: Whether to divide the output by σ (needs ``sigma_range``).
        groups: GroupNorm groups (reduced to a divisor of the channels).

    Example:
        >>> net = ScoreUNet(1, y_channels=1, base_channels=16)
        >>> net(torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.rand(4)).shape
        torch.Size([4, 1, 28, 28])
    """

    def __init__(
        self,
        x_channels: int = 1,
        y_channels: int = 0,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        *,
        mask_channels: int = 0,
        embedding: nn.Module | None = None,
        embedding_map: int = 0,
        grid_size: tuple[int, int] | None = None,
        sigma_range: tuple[float, float] | None = None,
        scale_by_sigma: bool = False,
        groups: int = 8,
    ):
        super().__init__()
        if scale_by_sigma and sigma_range is None:
            raise ValueError("scale_by_sigma needs a noise-level input: give sigma_range")
        if embedding is not None and y_channels:
            raise ValueError("give either y_channels (y on the grid) or embedding (y of another shape)")
        if embedding_map and (embedding is None or grid_size is None):
            raise ValueError("embedding_map needs an embedding and the grid_size (H, W) of the target")
        self.x_channels, self.y_channels, self.mask_channels = x_channels, y_channels, mask_channels
        self.scale_by_sigma, self.embedding = scale_by_sigma, embedding
        chs = [base_channels * m for m in channel_mults]
        emb_dim = 4 * base_channels
        self.noise = NoiseEmbedding(sigma_range)
        self.emb = nn.Sequential(nn.Linear(self.noise.out_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.y_emb = nn.Linear(embedding.out_dim, emb_dim) if embedding is not None else None
        self._factor = 2 ** (len(chs) - 1)
        self.embedding_map, self.y_map = int(embedding_map), None
        if self.embedding_map:
            self.grid_size = tuple(int(v) for v in grid_size)
            self.map_size = tuple(-(-v // self._factor) for v in self.grid_size)
            self.y_map = nn.Linear(embedding.out_dim, self.embedding_map * self.map_size[0] * self.map_size[1])
        self.inp = nn.Conv2d(x_channels + y_channels + mask_channels + self.embedding_map, chs[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = chs[0]
        for i, c_out in enumerate(chs):
            self.down.append(_ResBlock(c, c_out, emb_dim, groups))
            c = c_out
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([_ResBlock(c, c, emb_dim, groups), _ResBlock(c, c, emb_dim, groups)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chs))):
            self.up.append(_ResBlock(c + chs[i], chs[i], emb_dim, groups))
            c = chs[i]
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out = nn.Sequential(_norm(c, groups), nn.SiLU(), nn.Conv2d(c, x_channels, 3, padding=1))

    def _grid_input(self, c: Tensor, batch: torch.Size, name: str) -> Tensor:
        if c is None:
            raise ValueError(f"ScoreUNet was built with {name} channels: pass {name}")
        return c.to(dtype=self.inp.weight.dtype).expand(*batch, *c.shape[-3:]).reshape(-1, *c.shape[-3:])

    def forward(self, x: Tensor, y: Tensor | None, t: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""
        Arguments:
            x: Noised targets, with shape ``(*, C, H, W)``.
            y: Observations, with shape ``(*, C_y, H, W)`` (or the embedding's input
                shape); a single observation broadcasts over the batch.
            t: Times or noise levels, with a shape broadcastable to ``(*)``.
            mask: The measurement-operator mask, with shape ``(*, C_m, H, W)``.

        Returns:
            The score, with shape ``(*, C, H, W)``.
        """
        batch, (H, W) = x.shape[:-3], x.shape[-2:]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch).reshape(-1)
        h = [x.reshape(-1, *x.shape[-3:])]
        if self.y_channels:
            h.append(self._grid_input(y, batch, "y"))
        if self.mask_channels:
            h.append(self._grid_input(mask, batch, "mask"))
        emb = self.emb(self.noise(t))
        if self.embedding is not None:
            e = self.embedding(y)
            e = e.expand(*batch, e.shape[-1]).reshape(-1, e.shape[-1])
            emb = emb + self.y_emb(e)
            if self.y_map is not None:
                if (H, W) != self.grid_size:
                    raise ValueError(f"ScoreUNet was built for a {self.grid_size} grid (embedding_map); got x of {(H, W)}")
                grid = self.y_map(e).reshape(-1, self.embedding_map, *self.map_size)
                h.append(F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False))
        h = torch.cat(h, dim=1)
        emb = F.silu(emb)

        pad_h, pad_w = -H % self._factor, -W % self._factor
        h = self.inp(F.pad(h, (0, pad_w, 0, pad_h)))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        out = self.out(h)[..., :H, :W].reshape(x.shape)
        if self.scale_by_sigma:
            out = out / t.reshape(*batch, 1, 1, 1)
        return out
