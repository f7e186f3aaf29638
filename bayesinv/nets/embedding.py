r"""Embeddings of the diffusion time (or noise level) and of observations.

* :func:`time_embedding` — eq. A.1 of "Unifying and extending diffusion models through
  PDEs": :math:`f(t) = [t - 0.5, \cos 2\pi t, \sin 2\pi t, -\cos 4\pi t]`.
* :class:`NoiseEmbedding` — the same features of :math:`t`, or, for discrete noise
  levels (NCSN), of :math:`u = \log(\sigma / \sigma_{min}) / \log(\sigma_{max} /
  \sigma_{min}) \in [0, 1]`, the position of σ on a geometric schedule.
* :class:`MLPEmbedding`, :class:`CNNEmbedding` — observation encoders for a ``y`` whose
  shape differs from the target's (the conditioning network of conditional flows and
  score models).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["time_embedding", "NoiseEmbedding", "MLPEmbedding", "CNNEmbedding", "mlp", "observation_embedding"]


def time_embedding(t: Tensor) -> Tensor:
    r"""Fourier features of the time, eq. A.1.

    Arguments:
        t: Times, with shape ``(*)``.

    Returns:
        :math:`[t - 0.5, \cos 2\pi t, \sin 2\pi t, -\cos 4\pi t]`, with shape ``(*, 4)``.

    Example:
        >>> time_embedding(torch.tensor(0.0))
        tensor([-0.5000,  1.0000,  0.0000, -1.0000])
    """
    w = 2 * math.pi * t
    return torch.stack([t - 0.5, torch.cos(w), torch.sin(w), -torch.cos(2 * w)], dim=-1)


class NoiseEmbedding(nn.Module):
    r"""Embeds a time :math:`t \in [0, 1]` or a noise level σ with :func:`time_embedding`.

    With ``sigma_range=(sigma_min, sigma_max)`` the input is a noise level and is first
    mapped to :math:`u = \log(\sigma/\sigma_{min}) / \log(\sigma_{max}/\sigma_{min})`
    (0 at the smallest level, 1 at the largest, like the time of a VE process).

    Arguments:
        sigma_range: The smallest and largest noise levels, or ``None`` for a time input.
    """

    out_dim = 4

    def __init__(self, sigma_range: tuple[float, float] | None = None):
        super().__init__()
        self.sigma_range = None if sigma_range is None else (float(sigma_range[0]), float(sigma_range[1]))
        if self.sigma_range is not None and not 0 < self.sigma_range[0] < self.sigma_range[1]:
            raise ValueError(f"sigma_range must be (sigma_min, sigma_max) with 0 < min < max, got {sigma_range}")

    def forward(self, level: Tensor) -> Tensor:
        r"""
        Arguments:
            level: Times or noise levels, with shape ``(*)``.

        Returns:
            The features, with shape ``(*, 4)``.
        """
        return time_embedding(self.unit(level))

    def unit(self, level: Tensor) -> Tensor:
        r"""The level on [0, 1]: the time itself, or :math:`\log(\sigma/\sigma_{min}) / \log(\sigma_{max}/\sigma_{min})`."""
        if self.sigma_range is None:
            return level
        lo, hi = self.sigma_range
        return torch.log(level / lo) / math.log(hi / lo)

    def extra_repr(self) -> str:
        return f"sigma_range={self.sigma_range}" if self.sigma_range else "time"


def _mlp(dims: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLPEmbedding(nn.Module):
    r"""An MLP encoder of vector observations.

    Arguments:
        in_dim: The observation size.
        out_dim: The embedding size.
        hidden: Hidden layer sizes.
        activation: The activation class.

    Example:
        >>> MLPEmbedding(10, 8)(torch.randn(5, 10)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (128,),
        activation: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.net = _mlp([in_dim, *hidden, out_dim], activation)

    def forward(self, y: Tensor) -> Tensor:
        r"""
        Arguments:
            y: Observations, with shape ``(*, in_dim)``.

        Returns:
            Embeddings, with shape ``(*, out_dim)``.
        """
        return self.net(y)


class CNNEmbedding(nn.Module):
    r"""A convolutional encoder of field observations: strided convolutions, global
    average pooling (or, with ``pool="flatten"``, the whole last feature map), then a
    linear layer.

    Global average pooling makes the features (almost) translation invariant: right for
    a field target, whose position the decoder keeps, but it throws away *where* things
    are, which a vector target such as a source or inclusion position needs. With
    ``pool="flatten"`` the head sees every position of the last map
    (``channels[-1] · ⌈H/2^k⌉ · ⌈W/2^k⌉`` features for ``k`` convolutions).

    Arguments:
        in_shape: The observation shape ``(C, H, W)``.
        out_dim: The embedding size.
        channels: Channels of the stride-2 convolutions.
        activation: The activation class.
        pool: ``"mean"`` (global average pooling) or ``"flatten"`` (position-aware).

    Example:
        >>> CNNEmbedding((2, 32, 32), 16)(torch.randn(5, 2, 32, 32)).shape
        torch.Size([5, 16])
        >>> CNNEmbedding((1, 56, 56), 16, pool="flatten").head.in_features   # 64 · 7 · 7
        3136
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_dim: int,
        channels: Sequence[int] = (16, 32, 64),
        activation: type[nn.Module] = nn.SiLU,
        pool: str = "mean",
    ):
        super().__init__()
        if pool not in ("mean", "flatten"):
            from bayesinv.errors import OptionError

            raise OptionError(f"CNNEmbedding: pool must be 'mean' or 'flatten', got {pool!r}")
        self.in_shape, self.out_dim, self.pool = tuple(in_shape), out_dim, pool
        layers: list[nn.Module] = []
        c_in = in_shape[0]
        height, width = in_shape[1], in_shape[2]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), activation()]
            c_in = c
            height, width = (height + 1) // 2, (width + 1) // 2
        if pool == "mean":
            self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(c_in, out_dim)
        else:
            self.conv = nn.Sequential(*layers, nn.Flatten())
            self.head = nn.Linear(c_in * height * width, out_dim)

    def forward(self, y: Tensor) -> Tensor:
        r"""
        Arguments:
            y: Observations, with shape ``(*, C, H, W)``.

        Returns:
            Embeddings, with shape ``(*, out_dim)``.
        """
        batch = y.shape[:-3]
        h = self.head(self.conv(y.reshape(-1, *y.shape[-3:])))
        return h.reshape(*batch, self.out_dim)


def mlp(dims: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    r"""A plain MLP through the sizes ``dims`` (``activation`` between layers, none after the last)."""
    return _mlp(dims, activation)


def observation_embedding(kind: str | None, condition, dim: int, hidden: Sequence[int], pool: str = "mean") -> nn.Module | None:
    r"""The observation embedding of the flow and the VAE.

    Arguments:
        kind: ``None``/``"none"``, ``"mlp"``, ``"cnn"`` (one site of shape ``(H, W)`` or
            ``(C, H, W)``) or ``"auto"`` (``"cnn"`` for one such site, else none).
        condition: The condition :class:`~bayesinv.amortized.layout.Layout`.
        dim: The embedding size.
        hidden: Hidden sizes of the MLP embedding.
        pool: The CNN's pooling (:class:`CNNEmbedding`): ``"mean"`` or ``"flatten"``.

    Returns:
        The module, or ``None`` for no embedding.
    """
    from bayesinv.errors import ProblemError

    image = len(condition.names) == 1 and len(condition.shapes[0]) in (2, 3)
    if kind == "auto":
        kind = "cnn" if image else None
    if kind in (None, "none"):
        return None
    if kind == "mlp":
        return MLPEmbedding(condition.dim, dim, hidden=tuple(hidden))
    if kind == "cnn":
        if not image:
            raise ProblemError(
                f"embedding='cnn' needs one observed site of shape (H, W) or (C, H, W); got"
                f" {dict(zip(condition.names, condition.shapes))}"
            )
        shape = condition.shapes[0]
        shape = (1, *shape) if len(shape) == 2 else shape
        return nn.Sequential(nn.Unflatten(-1, shape), CNNEmbedding(shape, dim, pool=pool))
    raise ProblemError(f"embedding must be None, 'auto', 'mlp' or 'cnn', got {kind!r}")
