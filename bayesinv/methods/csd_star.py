r"""CSD*: an unconditional score prior started from a classical reconstruction, ``method="csd_star"``.

The EIT comparison's CSD* (papers/eit-comparison-cvae-cnf-csd.md, Algorithm 5): a score U-Net
:math:`s_\phi(x, t)` learns the *unconditional* law of the target (images only) by denoising score matching,

.. math:: \mathcal{L}(\phi) = E_{t,\, x_0,\, z} \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, t) + z \big\|^2 ,

and y enters only through a reconstruction :math:`x_{GN}(y)` (regularised Gauss–Newton by ``solver=``,
not saved: set ``post.solver`` after :func:`bayesinv.load`): of a K-step reverse process, :math:`x_{GN}`
is diffused to the time t′ of step K′, :math:`x_{t'} = m(t') x_{GN} + \sigma(t') z`, and the last K′
predictor–corrector steps pull it onto the learned law (:mod:`bayesinv.amortized.start`). K′ trades
fidelity to :math:`x_{GN}` (small) against the prior's freedom (large); :func:`choose_insert_step`
picks it on validation pairs (the paper: K′ ≈ 500–650 of 1000).

Example:
    >>> eit = bayesinv.models.eit.make_model(2, 40, image_size=32)
    >>> post = bayesinv.fit(eit.model, method="csd_star", target="sigma", data=train, solver=eit)
    >>> best, table = choose_insert_step(post, y_val, sigma_val, candidates=(400, 500, 600, 700))
    >>> draws = post.sample(y_test, 1)["sigma"]          # (B, 1, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout
from bayesinv.amortized.method import AmortizedMethod, ProcessOptions, UNetOptions, register_amortized, to_json, train_options
from bayesinv.amortized.start import StartOptions, StartPosterior, StartSampleOptions, choose_insert_step
from bayesinv.diffusion import score_objective
from bayesinv.errors import ProblemError
from bayesinv.nets.score import CondScoreNet, build_score_net

__all__ = ["CSDStarConfig", "CSDStarSampler", "CSDStarPosterior", "CSD_STAR", "choose_insert_step"]

#: Training defaults of ``method="csd_star"`` (they replace TrainOptions' class defaults; the user's options override them).
TRAIN_DEFAULTS = dict(
    max_epochs=200,
    max_steps=None,
    batch_size=256,
    lr=1e-3,
    lr_schedule=None,
    patience=20,
    ema_decay=0.999,
    val_fraction=0.1,
    grad_clip=None,
    weight_decay=0.0,
    normalization="minmax",
    precision="float32",
)


@dataclass(frozen=True)
class CSDStarConfig(StartOptions, UNetOptions, ProcessOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="csd_star"``: the fields of :class:`~bayesinv.amortized.start.StartOptions` (K′, K,
    the corrector, ``gn_options``), :class:`~bayesinv.amortized.method.UNetOptions`, :class:`~bayesinv.amortized.method.ProcessOptions`
    (``"ve"`` or ``"vp"``) and :class:`~bayesinv.amortized.method.TrainOptions` (defaults :data:`TRAIN_DEFAULTS`)."""

    network, embedding, hidden = "unet", "auto", (256, 256, 256)  # not fields: a U-Net without an observation embedding

    def __post_init__(self):
        self.check_training()
        self.check_process()
        self.check_unet()
        self.check_start()


@dataclass(frozen=True)
class CSDStarSampler(StartSampleOptions):
    r"""Sampling options of ``method="csd_star"`` (``None``: the fit's): the fields of
    :class:`~bayesinv.amortized.start.StartSampleOptions` (K′, the predictor–corrector options, ``solver``, ``start``)."""

    def __post_init__(self):
        self.check_start_sample()


class CSDStarPosterior(StartPosterior):
    r"""CSD*'s posterior: ``solver``, ``insert_step``, ``insert_time`` and ``reconstruct``
    of :class:`~bayesinv.amortized.start.StartPosterior`."""


def build(cfg: CSDStarConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The unconditional score U-Net (input preconditioning from the target draws) and its settings."""
    target, observed = pairs.target, pairs.observed
    if len(observed) != 1 or len(target.names) != 1 or len(target.shapes[0]) not in (2, 3):
        raise ProblemError(
            f"csd_star takes one observed site and one 2-D field target; got observed {list(observed)}, target {list(target.names)}"
        )
    net, spec = build_score_net(cfg, target, Layout((), ()), cfg.process_spec(), pairs.x, pairs.x.new_zeros(len(pairs.x), 0))
    return net, {**to_json(cfg), "net": spec}


def loss(cfg: CSDStarConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the unconditional DSM loss (``c`` is ignored)."""
    return score_objective(settings["net"]["process"], cfg.t_min, cfg.time_sampling, empty_on=next(net.parameters()).device)


def sample(post: CSDStarPosterior, c: Tensor, n: int, generator: torch.Generator, scfg: CSDStarSampler) -> tuple[Tensor, dict]:
    r"""The last K′ steps from each diffused reconstruction (:meth:`~bayesinv.amortized.start.StartPosterior.sample_start`)."""
    empty = torch.zeros(0, device=post.device)  # no observation
    return post.sample_start(lambda x_, level: post.net(x_, empty, level), c, n, generator, scfg)


CSD_STAR = register_amortized(AmortizedMethod(
    name="csd_star", config=CSDStarConfig, sampler_config=CSDStarSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, conditional=False,
    posterior=CSDStarPosterior, fit_extras=("solver",),
    no_density="a csd_star posterior has no density; sample it with post.sample / post.infer",
    saved_keys=("insert_step", "steps", "corrector_steps", "snr", "t_min", "net"),
))  # fmt: skip
