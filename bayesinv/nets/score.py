r"""The score network of the diffusion methods (cond_score, csd_star): :class:`CondScoreNet` and its spec.

The network is built from a JSON-able spec (:func:`net_spec`) so that a saved posterior
rebuilds it exactly: an MLP (:class:`~bayesinv.nets.ScoreMLP`) or a U-Net
(:class:`~bayesinv.nets.ScoreUNet`), with input preconditioning and the output divided by σ.
With the process spec ``{"kind": "flow_matching", "sigma_min": ...}`` the same network is a
flow-matching velocity field :math:`v(x, c, t)` (flow_matching): preconditioned for the
straight path :math:`x_t = t\,x_1 + (1 - (1 - \sigma_{min}) t)\,x_0` and not divided by σ.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout
from bayesinv.diffusion import expand_like, process_from_spec
from bayesinv.diffusion.loss import LOG_SIGMA_FLOOR
from bayesinv.errors import ProblemError
from bayesinv.nets.embedding import CNNEmbedding, MLPEmbedding
from bayesinv.nets.mlp import ResidualScoreMLP, ScoreMLP
from bayesinv.nets.unet import ScoreUNet

__all__ = ["CondScoreNet", "net_spec", "build_score_net", "make_process", "chunk_rows", "ACTIVATIONS"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


#: The process of a JSON-able spec (:func:`~bayesinv.diffusion.sde.process_from_spec`), under its older name.
make_process = process_from_spec


def chunk_rows(spec: Mapping[str, Any], chunk_size: int | None = None) -> int:
    r"""Rows per network batch when sampling a :class:`CondScoreNet` of ``spec``: ``chunk_size``, else 50,000 (MLP) or 512 (U-Net)."""
    return int(chunk_size or (50_000 if spec["network"] in ("mlp", "resmlp") else 512))


def _grid(shape: Sequence[int]) -> tuple[int, int, int] | None:
    r"""``(C, H, W)`` of a 2-D field site of shape ``(H, W)`` or ``(C, H, W)``, else ``None``."""
    shape = tuple(shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape
    return None


class CondScoreNet(nn.Module):
    r"""The score :math:`s(x, c, \ell)` on flat normalised vectors.

    ``x`` has shape ``(*, D)``, ``c`` ``(*, C)`` (or ``(C,)``, broadcast), and the level
    :math:`\ell` is a time (VE/VP) or a noise level σ (NCSN). The inner network's output
    is divided by σ(ℓ). Built from a JSON-able ``spec`` so that a saved posterior
    rebuilds it exactly. A ``"flow_matching"`` process spec makes it a velocity field:
    ℓ is the time t ∈ [0, 1] of the straight path (mean scale t, noise scale
    1 − (1 − σ_min) t for the preconditioning) and the output is not scaled.
    """

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        self.kind, self.x_dim, self.c_dim = spec["network"], int(spec["x_dim"]), int(spec["c_dim"])
        self.process = make_process(spec["process"])
        self.velocity = spec["process"]["kind"] == "flow_matching"
        self.sigma_min = float(spec["process"].get("sigma_min", 0.0))
        levels = spec["process"].get("sigmas")
        sigma_range = None if levels is None else (min(levels), max(levels))
        # a velocity field with time_input "log_sigma" sees the path's noise scale 1 - (1 - sigma_min) t on a log scale,
        # which resolves the data end (t -> 1) where the field changes fastest; files saved before it see t
        self.log_sigma_input = self.velocity and spec["process"].get("time_input") == "log_sigma"
        if self.log_sigma_input:
            sigma_range = (max(self.sigma_min, LOG_SIGMA_FLOOR), 1.0)
        act = ACTIVATIONS[spec["activation"]]
        emb = self._embedding(spec.get("embedding"), act)
        if self.kind == "mlp":
            self.inner = ScoreMLP(self.x_dim, self.c_dim, tuple(spec["hidden"]), act, embedding=emb, sigma_range=sigma_range)
        elif self.kind == "resmlp":
            width, depth = int(spec["hidden"][0]), len(spec["hidden"])
            self.inner = ResidualScoreMLP(self.x_dim, self.c_dim, width, depth, act, embedding=emb, sigma_range=sigma_range)
        else:
            self.x_shape = tuple(spec["x_shape"])
            self.grid_slices = [tuple(s) for s in spec.get("grid_slices", [])]
            y_channels = sum(s[2] for s in self.grid_slices)
            self.inner = ScoreUNet(
                self.x_shape[0], y_channels, spec["base_channels"], tuple(spec["channel_mults"]),
                embedding=emb, sigma_range=sigma_range,
                # files saved before the map existed have no "map_channels": none
                embedding_map=int((spec.get("embedding") or {}).get("map_channels", 0)), grid_size=self.x_shape[1:],
            )  # fmt: skip

        # input preconditioning (set by the fit from the training data, saved with the weights):
        # the inner network sees x_t centred and scaled to unit variance at every level,
        # and the condition standardised, whatever the user's normalisation
        self.register_buffer("x_mean", torch.zeros(self.x_dim))
        self.register_buffer("x_std", torch.ones(self.x_dim))
        self.register_buffer("c_mean", torch.zeros(self.c_dim))
        self.register_buffer("c_std", torch.ones(self.c_dim))

    def set_statistics(self, x: Tensor, c: Tensor) -> None:
        r"""Sets the input preconditioning from training targets ``(N, D)`` and conditions ``(N, C)``."""
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp_min(1e-6))
        if c.shape[-1]:  # an unconditional net (CSD*) has no condition to standardise
            self.c_mean.copy_(c.mean(0))
            self.c_std.copy_(c.std(0).clamp_min(1e-6))

    def _embedding(self, spec: Mapping[str, Any] | None, act) -> nn.Module | None:
        if not spec:
            return None
        if spec["kind"] == "mlp":
            return MLPEmbedding(self.c_dim, spec["dim"], hidden=(max(128, spec["dim"]),), activation=act)
        shape = tuple(spec["in_shape"])
        cnn = CNNEmbedding(shape, spec["dim"], activation=act, pool=spec.get("pool", "mean"))  # files before "pool": mean
        embedding = nn.Sequential(nn.Unflatten(-1, shape), cnn)
        embedding.out_dim = int(spec["dim"])  # what ScoreMLP reads (the Sequential keeps saved files' keys)
        return embedding

    def sigma(self, level: Tensor) -> Tensor:
        return level if self.process is None else self.process.sigma(level)

    def embeds(self) -> bool:
        r"""Whether the condition passes through an embedding that :meth:`features` can compute once
        (an MLP network with an observation embedding)."""
        return self.kind in ("mlp", "resmlp") and getattr(self.inner, "embedding", None) is not None

    def features(self, c: Tensor) -> Tensor:
        r"""The embedded conditions ``(*, F)`` of conditions ``(*, C)``, to pass to :meth:`forward` with
        ``embedded=True``: a sampler embeds each observation once instead of at every step and draw."""
        if not self.embeds():
            raise ValueError("features() needs an MLP network with an observation embedding")
        return self.inner.embedding((c - self.c_mean) / self.c_std)

    def forward(self, x: Tensor, c: Tensor, level: Tensor, embedded: bool = False) -> Tensor:
        r"""
        Arguments:
            x: Noised targets ``(*, D)``.
            c: Conditions ``(*, C)`` (normalised), or with ``embedded=True`` their :meth:`features`.
            level: Time or noise level, 0-dim or ``(*)``.
            embedded: ``c`` holds :meth:`features` (computed once per observation).

        Returns:
            The score ``(*, D)``.
        """
        level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
        if self.velocity:  # the straight path: x_t = t x_1 + (1 - (1 - sigma_min) t) x_0
            m = expand_like(level.expand(x.shape[:-1]), x)
            sigma = 1 - (1 - self.sigma_min) * m
            if self.log_sigma_input:
                level = (1 - (1 - self.sigma_min) * level).clamp_min(max(self.sigma_min, LOG_SIGMA_FLOOR))
        else:
            sigma = expand_like(self.sigma(level).expand(x.shape[:-1]), x)
            m = torch.ones_like(sigma) if self.process is None else expand_like(self.process.mean_scale(level).expand(x.shape[:-1]), x)
        x = (x - m * self.x_mean) / (m.square() * self.x_std.square() + sigma.square()).sqrt()
        if embedded:
            out = self.inner(x, c, level, embedded=True)
        elif self.kind in ("mlp", "resmlp"):
            out = self.inner(x, (c - self.c_mean) / self.c_std, level)
        else:
            batch = x.shape[:-1]
            c = ((c - self.c_mean) / self.c_std).expand(*batch, c.shape[-1])
            if self.grid_slices:
                y = torch.cat([c[..., a:b].reshape(*batch, ch, *self.x_shape[1:]) for a, b, ch in self.grid_slices], -3)
            else:
                y = c
            out = self.inner(x.reshape(*batch, *self.x_shape), y, level).reshape(*batch, self.x_dim)
        return out if self.velocity else out / sigma


def net_spec(cfg: Any, target: Layout, condition: Layout, process: dict, vector_network: str = "mlp") -> dict:
    r"""The JSON-able spec of a :class:`CondScoreNet` for a config (fields ``network``, ``hidden``,
    ``activation``, ``embedding``, ``embed_dim``, ``embed_pool``, ``embed_map_channels``, ``base_channels``,
    ``channel_mults``), the target and condition layouts and a process spec.

    ``network="auto"``: a U-Net for one 2-D field target (at least 4 × 4), else ``vector_network``
    (``"mlp"``: :class:`~bayesinv.nets.ScoreMLP`; ``"resmlp"``: :class:`~bayesinv.nets.ResidualScoreMLP`, of
    ``len(hidden)`` blocks of width ``hidden[0]``).
    U-Net conditions on the target's grid enter as channels; others through an embedding
    (a CNN for one field condition, an MLP otherwise).
    """
    network = cfg.network
    x_grid = _grid(target.shapes[0]) if len(target.names) == 1 else None
    if network == "auto":
        network = "unet" if x_grid is not None and min(x_grid[1:]) >= 4 else vector_network
    if network == "resmlp" and len(set(cfg.hidden)) != 1:
        raise ProblemError(f"network='resmlp' has blocks of one width: hidden must repeat one size, got {tuple(cfg.hidden)}")
    spec: dict[str, Any] = dict(
        network=network, x_dim=target.dim, c_dim=condition.dim, activation=cfg.activation, process=process,
        hidden=list(cfg.hidden), base_channels=cfg.base_channels, channel_mults=list(cfg.channel_mults), embedding=None,
    )  # fmt: skip
    field_cond = len(condition.names) == 1 and _grid(condition.shapes[0]) is not None
    if network in ("mlp", "resmlp"):
        if cfg.embedding in ("mlp", "cnn"):
            if cfg.embedding == "cnn" and not field_cond:
                raise ProblemError(f"embedding='cnn' needs one 2-D field condition; got {dict(zip(condition.names, condition.shapes))}")
            kind = cfg.embedding
            spec["embedding"] = {"kind": kind, "dim": cfg.embed_dim, "in_shape": list(_grid(condition.shapes[0]) or ())}
            if kind == "cnn":
                spec["embedding"]["pool"] = getattr(cfg, "embed_pool", "mean")
        return spec
    if x_grid is None:
        raise ProblemError(
            f"network='unet' needs one target site of shape (H, W) or (C, H, W); got {dict(zip(target.names, target.shapes))}"
        )
    spec["x_shape"] = list(x_grid)
    starts = [0]
    for size in condition.sizes:
        starts.append(starts[-1] + size)
    on_grid = [(g := _grid(s)) is not None and g[1:] == x_grid[1:] for s in condition.shapes]
    if cfg.embedding in ("auto", "none") and all(on_grid):
        spec["grid_slices"] = [[starts[i], starts[i + 1], _grid(s)[0]] for i, s in enumerate(condition.shapes)]
    else:
        if cfg.embedding == "none":
            raise ProblemError(
                f"embedding='none' with a U-Net needs every condition on the target grid {x_grid[1:]};"
                f" got {dict(zip(condition.names, condition.shapes))}"
            )
        kind = cfg.embedding if cfg.embedding in ("mlp", "cnn") else ("cnn" if field_cond else "mlp")
        if kind == "cnn" and not field_cond:
            raise ProblemError(f"embedding='cnn' needs one 2-D field condition; got {dict(zip(condition.names, condition.shapes))}")
        spec["embedding"] = {"kind": kind, "dim": cfg.embed_dim, "in_shape": list(_grid(condition.shapes[0]) or ()),
                             "map_channels": int(cfg.embed_map_channels)}  # fmt: skip
        if kind == "cnn":
            spec["embedding"]["pool"] = getattr(cfg, "embed_pool", "mean")
    return spec


def build_score_net(cfg: Any, target: Layout, condition: Layout, process: dict, x: Tensor, c: Tensor,
                    vector_network: str = "mlp") -> tuple[CondScoreNet, dict]:  # fmt: skip
    r"""The :class:`CondScoreNet` of :func:`net_spec` with its input preconditioning set from training
    targets ``x`` ``(N, D)`` and conditions ``c`` ``(N, C)`` (``C = 0``: unconditional), and its spec."""
    spec = net_spec(cfg, target, condition, process, vector_network)
    net = CondScoreNet(spec)
    net.set_statistics(x, c)
    return net, spec
