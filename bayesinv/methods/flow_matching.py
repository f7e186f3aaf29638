r"""Flow-matching posterior estimation: ``method="flow_matching"`` (sbi's FMPE, BayesFlow's FlowMatching).

A conditional vector field :math:`v_\phi(x, c, t)` is fitted on simulated pairs :math:`(x_1, c)`
on the straight path from noise :math:`x_0 \sim \mathcal{N}(0, I)` (t = 0) to the normalised target (t = 1),
half of the times uniform, half with a log-uniform noise scale (more weight near the data),

.. math:: \min_\phi \; E_{t, (x_1, c), x_0} \big\| v_\phi(x_t, c, t) - (x_1 - (1 - \sigma_{min}) x_0) \big\|^2,
          \qquad x_t = (1 - (1 - \sigma_{min}) t)\, x_0 + t\, x_1 .

Draws solve :math:`dx/dt = v_\phi` from 0 to 1 by adaptive RK5(4); ``log_prob`` is their density by
the instantaneous change of variables (exact divergence up to 32 dimensions, else Hutchinson's),
so the posterior is a valid importance ``proposal=``. The network is
:class:`~bayesinv.nets.score.CondScoreNet` as a velocity field (a residual MLP with the log noise scale
in every block, or a U-Net for one 2-D field).

Example:
    >>> post = bayesinv.fit(model, method="flow_matching", num_simulations=5000)
    >>> post.log_prob(post.sample(y_obs, 10), y_obs).shape
    torch.Size([10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.method import (
    EXACT_MAX_DIM, AmortizedMethod, ODEOptions, ScoreNetOptions, check_choice, check_float, check_int, embedded_conditions, map_log_prob, map_rows, register_amortized,
    train_options, to_json,
)  # fmt: skip
from bayesinv.diffusion.loss import flow_matching_loss
from bayesinv.diffusion.samplers import flow_matching_log_prob, flow_matching_ode
from bayesinv.nets.score import CondScoreNet, build_score_net, chunk_rows

__all__ = ["FlowMatchingConfig", "FlowMatchingSampler", "FLOW_MATCHING", "EXACT_MAX_DIM"]

#: Training defaults of ``method="flow_matching"`` (they replace TrainOptions' class defaults; the user's options override them).
TRAIN_DEFAULTS = dict(
    max_epochs=100,
    max_steps=None,
    batch_size=256,
    lr=1e-3,
    lr_schedule="cosine",
    patience=None,
    ema_decay=0.999,
    val_fraction=0.1,
    grad_clip=None,
    weight_decay=0.0,
    normalization="standard",
    precision="float32",
)


@dataclass(frozen=True)
class FlowMatchingConfig(ScoreNetOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="flow_matching"``: the network fields of
    :class:`~bayesinv.amortized.method.ScoreNetOptions` (as cond_score), the training fields of
    :class:`~bayesinv.amortized.method.TrainOptions`, and

    Arguments:
        sigma_min: Width of the path at the data end.
        time_input: What the network sees of the time: ``"log_sigma"`` (default), the log of the path's noise
            scale :math:`1 - (1 - \sigma_{min}) t`, which resolves the data end where the field is sharpest, or ``"t"``.
        log_fraction: Share of the training times whose noise scale is log-uniform on :math:`[\sigma_{min}, 1]`
            (default 0.5; the rest uniform in t); see :func:`~bayesinv.diffusion.loss.flow_matching_loss`.
        hidden: Block widths of the network; for vector targets ``network="auto"`` is a
            :class:`~bayesinv.nets.ResidualScoreMLP` of ``len(hidden)`` blocks (default three of 128).
        normalization: ``"standard"`` (default), ``"minmax"`` or ``"none"``.
    """

    hidden: tuple[int, ...] = (128, 128, 128)
    sigma_min: float = 1e-4
    time_input: str = "log_sigma"
    log_fraction: float = 0.5

    def __post_init__(self):
        self.check_training()
        self.check_network()
        check_float(self, "sigma_min", low=0.0, high=0.5)
        check_choice(self, "time_input", ("log_sigma", "t"))
        check_float(self, "log_fraction", low=0.0, high=1.0)


@dataclass(frozen=True)
class FlowMatchingSampler(ODEOptions):
    r"""Sampling (and density) options of ``method="flow_matching"`` (``None``: the default): the fields of
    :class:`~bayesinv.amortized.method.ODEOptions` (``rtol``, ``atol``, ``chunk_size``, ``exact``, ``num_probes``) and

    Arguments:
        max_steps: Steps before the integrator gives up (10,000).
    """

    max_steps: int | None = None

    def __post_init__(self):
        self.check_ode()
        check_int(self, "max_steps", none=True)


def build(cfg: FlowMatchingConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The velocity network of ``cfg`` with its input preconditioning set from the pairs, and the saved settings."""
    proc = {"kind": "flow_matching", "sigma_min": float(cfg.sigma_min), "time_input": cfg.time_input}
    net, spec = build_score_net(cfg, pairs.target, pairs.condition, proc, pairs.x, pairs.c, vector_network="resmlp")
    return net, {**to_json(cfg), "net": spec}


def loss(cfg: FlowMatchingConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the flow-matching loss on the straight path."""
    return lambda module, x1, c: flow_matching_loss(module, x1, c, sigma_min=cfg.sigma_min, log_fraction=cfg.log_fraction)


def _tolerances(scfg: FlowMatchingSampler) -> dict:
    return dict(rtol=scfg.rtol or 1e-5, atol=scfg.atol or 1e-5, max_steps=scfg.max_steps or 10_000)


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: FlowMatchingSampler) -> tuple[Tensor, dict]:
    r"""The ODE from noise to the target for every (observation, draw) pair, in chunks: ``(B, n, D)`` and stats."""
    B, D, dev = c.shape[0], post.target.dim, post.device
    x = torch.randn((B * n, D), generator=generator, device=dev)
    owner = torch.arange(B, device=dev).repeat_interleave(n)
    c, flag = embedded_conditions(post.net, c)

    def run(x_chunk: Tensor, c_chunk: Tensor) -> tuple[Tensor, int]:
        return flow_matching_ode(lambda v, t: post.net(v, c_chunk, t, **flag), x_chunk, **_tolerances(scfg))

    out, nfe = map_rows(run, x, c, owner, chunk_rows(post.config["net"], scfg.chunk_size))
    return torch.cat(out).reshape(B, n, D), {"sampler": "ode", "nfe": nfe, "num_chunks": len(out)}


def log_prob(post: Any, x: Tensor, c: Tensor, scfg: FlowMatchingSampler, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""The density of :func:`sample`'s law at normalised ``x`` ``(N, D)`` (rows of ``c``) and its standard error."""

    def fn(x_chunk: Tensor, c_rows: Tensor, exact: bool, probes: int):
        return flow_matching_log_prob(lambda v, t: post.net(v, c_rows, t), x_chunk, exact=exact, num_probes=probes,
                                      generator=generator, **_tolerances(scfg))  # fmt: skip

    return map_log_prob(fn, x, c, scfg, chunk_rows(post.config["net"], scfg.chunk_size))


FLOW_MATCHING = register_amortized(AmortizedMethod(
    name="flow_matching", config=FlowMatchingConfig, sampler_config=FlowMatchingSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, log_prob=log_prob,
    density=lambda settings: {}, saved_keys=("sigma_min", "net"),
))  # fmt: skip
