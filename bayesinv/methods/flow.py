r"""Conditional normalizing flow: ``method="flow"``.

A flow :math:`q_\phi(x \mid y)` with a tractable density is fitted by maximum likelihood
on simulated pairs :math:`(x_i, y_i)` from the joint,

.. math:: \min_\phi \; -\frac{1}{N} \sum_i \log q_\phi(x_i \mid h(y_i)),

:math:`x` the normalised flat target and :math:`h` an optional embedding of the
normalised observation (an MLP for vectors, a CNN for images), trained jointly. Vector
targets use zuko's flows (``"nsf"`` by default, ``"maf"``, ``"realnvp"``,
``"nsf_coupling"``); one field target can use the multi-scale conditional coupling flow
of :mod:`bayesinv.nets.coupling` (``flow="multiscale"``), whose conditioning network may
also be trained to reconstruct the target (loss :math:`\alpha \lVert H(y) - x \rVert^2`).
The posterior has a density, so it is a valid ``proposal=`` for ``method="importance"``.

Options: the fields of :class:`FlowConfig` (no sampling options).

Example:
    >>> post = bayesinv.fit(model, method="flow", num_simulations=5000, hidden=(64, 64))
    >>> post.log_prob(post.sample(y_obs, 10), y_obs).shape
    torch.Size([10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import seeded_from
from bayesinv.amortized.layout import saved_layout
from bayesinv.amortized.method import AmortizedMethod, check_choice, check_float, check_int, check_sizes, register_amortized, train_options
from bayesinv.errors import OptionError
from bayesinv.nets.flow import ConditionalFlow, build_flow, flow_architecture

__all__ = ["FlowConfig", "FlowSampler", "ConditionalFlow", "FLOW", "FLOWS"]

FLOWS = ("nsf", "maf", "realnvp", "nsf_coupling", "multiscale")

#: Training defaults of ``method="flow"`` (they replace TrainOptions' class defaults; the user's options override them).
TRAIN_DEFAULTS = dict(
    max_epochs=40,
    max_steps=None,
    batch_size=512,
    lr=2e-3,
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
class FlowConfig(train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="flow"`` (with the training fields of :class:`~bayesinv.amortized.method.TrainOptions`,
    defaults :data:`TRAIN_DEFAULTS`).

    Arguments:
        flow: ``"nsf"``, ``"maf"``, ``"realnvp"``, ``"nsf_coupling"`` or ``"multiscale"`` (one field target).
        num_transforms: Flow transformations (vector flows) or coupling blocks per scale (multiscale).
        hidden: Hidden sizes of the hyper-networks; the first is the coupling width (multiscale).
        bins: Spline bins (NSF).
        embedding: ``None`` (the normalised y is the context), ``"mlp"``, ``"cnn"`` or ``"auto"``.
        embed_dim: The embedding size.
        embed_pool: How the CNN embedding summarises its last feature map: ``"mean"`` (global
            average pooling, shift invariant) or ``"flatten"`` (every position: for targets that
            locate something, such as a geometry's parameters).
        alpha: Weight of the conditioning-network loss ‖H(y) − x‖² (multiscale only).
        scales: Number of scales (multiscale only).
    """

    flow: str = "nsf"
    num_transforms: int = 3
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    embedding: str | None = None
    embed_dim: int = 32
    embed_pool: str = "mean"
    alpha: float = 0.0
    scales: int = 2

    def __post_init__(self):
        self.check_training()
        if self.flow not in FLOWS:
            raise OptionError(f"FlowConfig: unknown flow {self.flow!r}; use one of {list(FLOWS)}")
        check_choice(self, "embedding", (None, "none", "auto", "mlp", "cnn"))
        check_choice(self, "embed_pool", ("mean", "flatten"))
        if self.embed_pool != "mean" and self.embedding not in ("cnn", "auto"):
            raise OptionError(f"FlowConfig: embed_pool={self.embed_pool!r} needs embedding='cnn' (or 'auto'), got embedding={self.embedding!r}")
        if self.embed_pool != "mean" and self.flow == "multiscale":
            raise OptionError("FlowConfig: embed_pool applies to the CNN embedding of the vector flows, not flow='multiscale'")
        check_sizes(self, "hidden", empty=False)
        for name in ("num_transforms", "bins", "embed_dim", "scales"):
            check_int(self, name)
        check_float(self, "alpha", low=0.0)
        if self.alpha and self.flow != "multiscale":
            raise OptionError("FlowConfig: alpha (the conditioning-network loss) needs flow='multiscale'")


@dataclass(frozen=True)
class FlowSampler:
    r"""``method="flow"`` has no sampling options: draws are exact samples of the flow."""


def rebuild(settings: Mapping[str, Any]) -> nn.Module:
    r"""The flow of saved settings (``architecture``, ``condition_layout``)."""
    return build_flow(settings["architecture"], saved_layout(settings))


def build(cfg: FlowConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The flow of ``cfg`` for the pairs' layouts (:func:`~bayesinv.nets.flow.flow_architecture`), and its saved settings."""
    settings = {"architecture": flow_architecture(cfg, pairs.target, pairs.condition), "condition_layout": pairs.condition.to_json(),
                "alpha": float(cfg.alpha), "normalization": cfg.normalization}  # fmt: skip
    return rebuild(settings), settings


def loss(cfg: FlowConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the NLL (plus α‖H(y) − x‖² for the multi-scale flow)."""
    if cfg.flow == "multiscale":
        return lambda module, x, c: module.loss(x, c, alpha=cfg.alpha)
    return lambda module, x, c: module.loss(x, c)


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: FlowSampler) -> tuple[Tensor, dict]:
    r"""``n`` exact draws of the flow for each condition: ``(B, n, D)``."""
    with seeded_from(generator):
        x = post.net(c).sample((n,))  # (n, B, D)
    return x.movedim(0, -2), {"sampler": "exact"}


FLOW = register_amortized(AmortizedMethod(
    name="flow", config=FlowConfig, sampler_config=FlowSampler, build=build, rebuild=rebuild, loss=loss, sample=sample,
    log_prob=lambda post, x, c: post.net(c).log_prob(x),
    saved_keys=("architecture", "condition_layout"),
))  # fmt: skip
