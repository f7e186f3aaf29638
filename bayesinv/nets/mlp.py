r"""Fully connected conditional score (or velocity) networks for vector targets.

:class:`ScoreMLP`: :math:`s(x, y, t) = \text{MLP}([x, e(y), f(t), m])`: the target, the observation
(raw or through an embedding network), the time features of eq. A.1 and, optionally, a
measurement-operator mask (sensor on/off, missing measurements set to -1 by the caller),
concatenated before the first hidden layer (Appendix A of "Unifying and extending
diffusion models through PDEs").

:class:`ResidualScoreMLP`: residual blocks (layer norm, two linear layers) with multi-frequency
features of the time added in every block, so the output can change quickly with the time where the
field is sharp (near the data); the default velocity network of flow_matching.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from bayesinv.nets.embedding import NoiseEmbedding, _mlp

__all__ = ["ScoreMLP", "ResidualScoreMLP"]


def _features(c: Tensor, batch: torch.Size) -> Tensor:
    return c.expand(*batch, c.shape[-1])


class ScoreMLP(nn.Module):
    r"""Conditional score MLP :math:`s(x, y, t)` for targets with shape ``(*, x_dim)``.

    The third input is a time :math:`t \in [0, 1]` (continuous VE/VP processes), or a
    noise level σ when ``sigma_range`` is given (NCSN): σ is then embedded through
    :math:`\log \sigma` (see :class:`~bayesinv.nets.embedding.NoiseEmbedding`), and with
    ``scale_by_sigma=True`` the output is divided by σ (Song & Ermon), so the network
    predicts :math:`\sigma s`, which is of order one at every level.

    Arguments:
        x_dim: The target size.
        y_dim: The observation size (0 for an unconditional network); ignored when
            ``embedding`` is given.
        hidden: Hidden layer sizes.
        activation: The activation class.
        mask_dim: The size of a measurement-operator mask input (0 for none).
        embedding: A module mapping ``y`` to ``(*, embedding.out_dim)`` features.
        sigma_range: ``(sigma_min, sigma_max)`` for a noise-level input; ``None`` for time.
        scale_by_sigma: Whether to divide the output by σ (needs ``sigma_range``).

    Example:
        >>> net = ScoreMLP(3, 5)
        >>> net(torch.randn(10, 3), torch.randn(10, 5), torch.rand(10)).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int = 0,
        hidden: Sequence[int] = (256, 256, 256),
        activation: type[nn.Module] = nn.SiLU,
        *,
        mask_dim: int = 0,
        embedding: nn.Module | None = None,
        sigma_range: tuple[float, float] | None = None,
        scale_by_sigma: bool = False,
    ):
        super().__init__()
        if scale_by_sigma and sigma_range is None:
            raise ValueError("scale_by_sigma needs a noise-level input: give sigma_range")
        self.x_dim, self.mask_dim, self.scale_by_sigma = x_dim, mask_dim, scale_by_sigma
        self.embedding = embedding
        self.y_dim = int(embedding.out_dim) if embedding is not None else y_dim
        self.noise = NoiseEmbedding(sigma_range)
        in_dim = x_dim + self.y_dim + self.noise.out_dim + mask_dim
        self.net = _mlp([in_dim, *hidden, x_dim], activation)

    def forward(self, x: Tensor, y: Tensor | None, t: Tensor, mask: Tensor | None = None, embedded: bool = False) -> Tensor:
        r"""
        Arguments:
            x: Noised targets, with shape ``(*, x_dim)``.
            y: Observations, with shape ``(*, y_dim)`` (or the embedding's input
                shape); a single observation broadcasts over the batch.
            t: Times or noise levels, with a shape broadcastable to ``(*)``.
            mask: The measurement-operator mask, with shape ``(*, mask_dim)``.

        Returns:
            The score, with shape ``(*, x_dim)``.
        """
        batch = x.shape[:-1]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)
        parts = [x]
        if self.y_dim:
            if y is None:
                raise ValueError("ScoreMLP is conditional: pass y")
            parts.append(_features(self.embedding(y) if self.embedding is not None and not embedded else y, batch))
        parts.append(self.noise(t))
        if self.mask_dim:
            if mask is None:
                raise ValueError("ScoreMLP was built with mask_dim > 0: pass mask")
            parts.append(_features(mask.to(x.dtype), batch))
        out = self.net(torch.cat(parts, dim=-1))
        return out / t.unsqueeze(-1) if self.scale_by_sigma else out


class ResidualScoreMLP(nn.Module):
    r"""Residual conditional score / velocity MLP :math:`s(x, y, t)` for targets ``(*, x_dim)``.

    :math:`h_0 = W_{in} [x, e(y)]`, then ``depth`` blocks
    :math:`h_{k+1} = h_k + \text{Lin}(\text{act}(\text{Lin}(\text{LN}(h_k + P_k\, g(u)))))`, and a linear
    output. :math:`u \in [0, 1]` is the time, or the log noise level mapped onto [0, 1] when
    ``sigma_range`` is given (:meth:`~bayesinv.nets.embedding.NoiseEmbedding.unit`);
    :math:`g(u)` is an MLP of :math:`[u, \sin 2^k \pi u, \cos 2^k \pi u]_{k < K}`.

    Arguments:
        x_dim: The target size.
        y_dim: The observation size (ignored when ``embedding`` is given).
        width: Width of the blocks.
        depth: Number of residual blocks.
        activation: The activation class.
        embedding: A module mapping ``y`` to ``(*, embedding.out_dim)`` features.
        sigma_range: ``(sigma_min, sigma_max)`` for a noise-level input; ``None`` for time.
        num_frequencies: K, the octaves of the time features.

    Example:
        >>> net = ResidualScoreMLP(2, 3)
        >>> net(torch.randn(10, 2), torch.randn(10, 3), torch.rand(10)).shape
        torch.Size([10, 2])
    """

    def __init__(
        self,
        x_dim: int,
        y_dim: int = 0,
        width: int = 128,
        depth: int = 3,
        activation: type[nn.Module] = nn.SiLU,
        *,
        embedding: nn.Module | None = None,
        sigma_range: tuple[float, float] | None = None,
        num_frequencies: int = 6,
    ):
        super().__init__()
        self.x_dim, self.embedding = x_dim, embedding
        self.y_dim = int(embedding.out_dim) if embedding is not None else y_dim
        self.noise = NoiseEmbedding(sigma_range)
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32))
        self.inp = nn.Linear(x_dim + self.y_dim, width)
        self.time = nn.Sequential(nn.Linear(2 * num_frequencies + 1, width), activation(), nn.Linear(width, width))
        self.proj = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), activation(), nn.Linear(width, width)) for _ in range(depth)
        )  # fmt: skip
        self.out = nn.Linear(width, x_dim)

    def forward(self, x: Tensor, y: Tensor | None, t: Tensor, embedded: bool = False) -> Tensor:
        r"""
        Arguments:
            x: Noised targets, with shape ``(*, x_dim)``.
            y: Observations, with shape ``(*, y_dim)`` (or the embedding's input shape); a
                single observation broadcasts over the batch.
            t: Times or noise levels, with a shape broadcastable to ``(*)``.

        Returns:
            The output, with shape ``(*, x_dim)``.
        """
        batch = x.shape[:-1]
        u = self.noise.unit(torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)).unsqueeze(-1)
        e = self.time(torch.cat([u, torch.sin(u * self.freqs), torch.cos(u * self.freqs)], dim=-1))
        parts = [x]
        if self.y_dim:
            if y is None:
                raise ValueError("ResidualScoreMLP is conditional: pass y")
            parts.append(_features(self.embedding(y) if self.embedding is not None and not embedded else y, batch))
        h = self.inp(torch.cat(parts, dim=-1))
        for proj, block in zip(self.proj, self.blocks):
            h = h + block(h + proj(e))
        return self.out(h)
