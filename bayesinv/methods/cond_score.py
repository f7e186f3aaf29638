r"""Conditional score-based diffusion posteriors: ``method="cond_score"``.

A network :math:`s_\phi(x, c, t)` learns the score of the noised conditional
:math:`\nabla_x \log p_t(x \mid c)` from simulated pairs (target x, condition c = the
observation y and, optionally, a measurement-operator mask) by conditional denoising
score matching,

.. math:: \mathcal{L}(\phi) = E_{t \sim U(t_{min}, 1),\, (x_0, c),\, z}
          \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, c, t) + z \big\|^2

(NCSN: σ drawn from geometric levels σ_1 > … > σ_L instead). Only forward simulation is
needed. Sampling integrates the reverse process for every (observation, draw) pair in one
batch: the probability-flow ODE (``"ode"``), the reverse SDE (``"sde"``), predictor–corrector
(``"pc"``) or annealed Langevin dynamics (``"langevin"``, NCSN). With the ODE (VE/VP,
``denoise=False``) ``post.log_prob`` is the density of the sampler's draws by the
instantaneous change of variables, so the posterior can be an importance ``proposal=``.
The network is :class:`~bayesinv.nets.score.CondScoreNet` (an MLP for vectors, a U-Net for
one 2-D field target).

Options: the fields of :class:`CondScoreConfig` (fit) and :class:`CondScoreSampler`
(sampling), as keywords of ``fit``/``infer``/``post.sample`` or ``config=``.

Example:
    >>> post = bayesinv.fit(model, method="cond_score", num_simulations=10_000, base_channels=16)
    >>> draws = post.sample(y_batch, 1000)          # (*B, 1000, *shape), one call
    >>> idata = post.infer(y_obs, num_samples=1000, sampler="sde")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.method import (
    AmortizedMethod, NCSNOptions, ProcessOptions, ReverseOptions, ScoreNetOptions, check_choice, embedded_conditions, map_log_prob, map_rows,
    register_amortized, train_options,
)  # fmt: skip
from bayesinv.diffusion import initial_draws, ncsn_loss, reverse_sample, score_loss, score_objective, thresholded_score
from bayesinv.diffusion.samplers import probability_flow_log_prob
from bayesinv.errors import OptionError, ProblemError
from bayesinv.nets.score import CondScoreNet, build_score_net, chunk_rows, make_process

__all__ = ["CondScoreConfig", "CondScoreSampler", "CondScoreNet", "COND_SCORE", "score_loss", "PROCESSES", "SAMPLERS"]

PROCESSES = ("ve", "vp", "ncsn")
SAMPLERS = {"ve": ("ode", "sde", "pc"), "vp": ("ode", "sde", "pc"), "ncsn": ("langevin",)}
DEFAULT_SAMPLER = {"ve": "ode", "vp": "ode", "ncsn": "langevin"}
#: The options each sampler reads (besides ``sampler``, ``denoise`` and ``chunk_size``).
SAMPLER_OPTIONS = {
    "ode": {"rtol", "atol", "power", "t_min", "exact", "num_probes"},
    "sde": {"steps", "t_min"},
    "pc": {"steps", "corrector_steps", "snr", "t_min"},
    "langevin": {"steps_per_level", "eps"},
}

#: Training defaults of ``method="cond_score"`` (they replace TrainOptions' class defaults; the user's options override them).
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
    normalization="minmax",
    precision="float32",
)


@dataclass(frozen=True)
class CondScoreConfig(ScoreNetOptions, ProcessOptions, NCSNOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="cond_score"``: the fields of :class:`~bayesinv.amortized.method.ScoreNetOptions`
    (the network), :class:`~bayesinv.amortized.method.ProcessOptions` (``process``: ``"ve"``, ``"vp"``
    or ``"ncsn"``), :class:`~bayesinv.amortized.method.NCSNOptions` (NCSN's levels) and
    :class:`~bayesinv.amortized.method.TrainOptions` (training; defaults :data:`TRAIN_DEFAULTS`), and

    Arguments:
        sampler: The default sampler: ``"ode"``, ``"sde"``, ``"pc"`` (VE/VP) or
            ``"langevin"`` (NCSN); ``None``: ``"ode"`` for VE/VP, ``"langevin"`` for NCSN.
        hidden: Block widths; for vector targets ``network="auto"`` is a
            :class:`~bayesinv.nets.ResidualScoreMLP` of ``len(hidden)`` blocks (default three of 128).
    """

    hidden: tuple[int, ...] = (128, 128, 128)
    sampler: str | None = None

    def __post_init__(self):
        self.check_training()
        self.check_process(PROCESSES)
        if self.sampler is not None and self.sampler not in SAMPLERS[self.process]:
            raise OptionError(f"sampler {self.sampler!r} does not fit process {self.process!r}; use one of {SAMPLERS[self.process]}")
        self.check_network()
        self.check_ncsn()


@dataclass(frozen=True)
class CondScoreSampler(ReverseOptions):
    r"""Sampling options of ``method="cond_score"`` (``None``: the posterior's default): the fields of
    :class:`~bayesinv.amortized.method.ReverseOptions` (``steps``, ``rtol``, ``atol``, ``power``, ``t_min``,
    ``denoise``, ``corrector_steps``, ``snr``, ``steps_per_level``, ``eps``, ``chunk_size``, ``exact``,
    ``num_probes``) and

    Arguments:
        sampler: ``"ode"``, ``"sde"``, ``"pc"`` or ``"langevin"`` (default: the fit's).
        clip: Clip Tweedie's denoised estimate :math:`\hat x_0` to the range of the training targets
            (per target site) at every step (VE/VP: :func:`~bayesinv.diffusion.thresholded_score`).
            An under-trained network's draws can then not leave the range the prior put the data in
            (a field learnt in log units, mapped back through ``10**x``, otherwise lets a few far-out
            draws dominate the posterior mean). Default ``False``; the ODE's ``log_prob`` is that of
            the unclipped sampler.
    """

    sampler: str | None = None
    clip: bool | None = None

    def __post_init__(self):
        self.check_reverse()
        check_choice(self, "sampler", (None, "ode", "sde", "pc", "langevin"))
        check_choice(self, "clip", (None, True, False))


def check_sample(settings: Mapping[str, Any], scfg: CondScoreSampler, given: set) -> str:
    r"""Refuses a sampler that does not fit the process, or options the chosen sampler does not read; returns the sampler."""
    kind = settings["process"]
    sampler = scfg.sampler or settings.get("sampler") or DEFAULT_SAMPLER[kind]
    if sampler not in SAMPLERS[kind]:
        raise OptionError(f"sampler {sampler!r} does not fit process {kind!r}; use one of {SAMPLERS[kind]}")
    used = SAMPLER_OPTIONS[sampler] | {"denoise", "chunk_size", "sampler"} | ({"clip"} if kind != "ncsn" else set())
    ignored = sorted(set(given) - used)
    if ignored:
        raise OptionError(f"sampler {sampler!r} does not use option(s) {ignored}; its options are {sorted(used - {'sampler'})}")
    return sampler


def build(cfg: CondScoreConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The score network of ``cfg`` with its input preconditioning set from the pairs, and the saved settings."""
    proc = cfg.ncsn_spec(pairs.x, seed) if cfg.process == "ncsn" else cfg.process_spec()
    net, spec = build_score_net(cfg, pairs.target, pairs.condition, proc, pairs.x, pairs.c, vector_network="resmlp")
    return net, {**cfg.to_json(), "sampler": cfg.sampler or DEFAULT_SAMPLER[cfg.process], "net": spec,
                 "x_range": target_range(pairs.x, pairs.target.sizes)}  # fmt: skip


def target_range(x: Tensor, sizes) -> list[list[float]]:
    r"""``[low, high]`` of each target site's normalised training values ``x`` ``(N, D)`` (sites of ``sizes``)."""
    out, start = [], 0
    for size in sizes:
        block = x[:, start : start + size]
        out.append([float(block.min()), float(block.max())])
        start += size
    return out


def _clip_bounds(post: Any) -> tuple[Tensor, Tensor]:
    if "x_range" not in post.config:
        raise ProblemError("clip=True needs the training targets' range, which this posterior's file (saved before"
                           " bayesinv recorded it) lacks: refit it to sample with clip=True")  # fmt: skip
    per_dim = torch.tensor(post.config["x_range"]).repeat_interleave(torch.tensor(post.target.sizes), dim=0)  # (D, 2)
    return per_dim[:, 0].to(post.device), per_dim[:, 1].to(post.device)


def loss(cfg: CondScoreConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: NCSN's multi-level loss or the conditional DSM loss."""
    spec = settings["net"]["process"]
    if cfg.process == "ncsn":
        sigmas = torch.tensor(spec["sigmas"], dtype=torch.float32, device=next(net.parameters()).device)
        return lambda module, x0, c0: ncsn_loss(module, x0, c0, sigmas)
    return score_objective(spec, cfg.t_min, cfg.time_sampling)


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: CondScoreSampler) -> tuple[Tensor, dict]:
    r"""Reverse diffusion for every (observation, draw) pair, in chunks: ``(B, n, D)`` and the sampler's stats."""
    settings, spec = post.config, post.config["net"]["process"]
    kind, sampler = settings["process"], check_sample(settings, scfg, set())
    B, D, dev = c.shape[0], post.target.dim, post.device
    x = initial_draws(spec, (B * n, D), mean=getattr(post.net, "x_mean", 0.0), generator=generator, device=dev)
    bounds = _clip_bounds(post) if scfg.clip else None
    process = make_process(spec) if bounds is not None else None

    c, flag = embedded_conditions(post.net, c)

    def run(x_chunk: Tensor, c_chunk: Tensor) -> tuple[Tensor, int]:
        score = lambda x_, level: post.net(x_, c_chunk, level, **flag)  # noqa: E731
        if bounds is not None:
            score = thresholded_score(score, process, *bounds)
        return reverse_sample(sampler, score, x_chunk, spec, scfg, t_min=settings["t_min"], generator=generator)

    owner = torch.arange(B, device=dev).repeat_interleave(n)
    out, nfe = map_rows(run, x, c, owner, chunk_rows(settings["net"], scfg.chunk_size))
    stats = {"sampler": sampler, "process": kind, "nfe": nfe, "num_chunks": len(out), "clip": bool(scfg.clip)}
    if kind == "ncsn":
        stats.update(sigma_max=max(spec["sigmas"]), sigma_min=min(spec["sigmas"]), num_levels=len(spec["sigmas"]))
    else:
        process, t_min = make_process(spec), float(settings["t_min"] if scfg.t_min is None else scfg.t_min)
        stats.update(sigma_max=float(process.sigma(1.0)), sigma_min=float(process.sigma(t_min)), t_min=t_min)
    return torch.cat(out).reshape(B, n, D), stats


def density(settings: Mapping[str, Any]) -> dict:
    r"""The sampler options whose draws have a density: the probability-flow ODE without the final denoising step."""
    if settings["process"] == "ncsn":
        raise ProblemError(
            "a cond_score posterior with process='ncsn' samples by annealed Langevin dynamics, which has no"
            " tractable density; fit with process='ve' or 'vp' (sampler='ode') for log_prob and importance proposals"
        )
    return {"sampler": "ode", "denoise": False}


def log_prob(post: Any, x: Tensor, c: Tensor, scfg: CondScoreSampler, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""The density of the probability-flow ODE sampler's draws (same process, t_min, power and start
    :math:`\mathcal{N}(m(1)\mu, \sigma(1)^2 I)`, μ the mean of the training targets) at normalised ``x``."""
    if (scfg.sampler or "ode") != "ode":
        raise ProblemError(f"log_prob is the density of the probability-flow ODE sampler; sampler={scfg.sampler!r} is stochastic"
                           " and has none: pass sampler='ode' (and denoise=False)")  # fmt: skip
    if scfg.clip:
        raise ProblemError("log_prob is the density of the unclipped probability-flow ODE; clip=True has none: drop it")
    if scfg.denoise:
        raise ProblemError("log_prob is the density of the ODE sampler without the final denoising step; denoise=True"
                           " (Tweedie's step) has no tractable density: pass denoise=False")  # fmt: skip
    settings = post.config
    process = make_process(settings["net"]["process"])
    mu = getattr(post.net, "x_mean", torch.zeros(x.shape[-1], device=x.device))
    t_min = float(settings["t_min"] if scfg.t_min is None else scfg.t_min)
    ode = dict(t_min=t_min, power=float(scfg.power or 2.0), rtol=scfg.rtol or 1e-5, atol=scfg.atol or 1e-5, mean=mu)

    def fn(x_chunk: Tensor, c_rows: Tensor, exact: bool, probes: int):
        score = lambda v, t: post.net(v, c_rows, t)  # noqa: E731
        return probability_flow_log_prob(score, x_chunk, process, exact=exact, num_probes=probes, generator=generator, **ode)

    return map_log_prob(fn, x, c, scfg, chunk_rows(settings["net"], scfg.chunk_size))


COND_SCORE = register_amortized(AmortizedMethod(
    name="cond_score", config=CondScoreConfig, sampler_config=CondScoreSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, check_sample=check_sample,
    log_prob=log_prob, density=density,
    saved_keys=("process", "sampler", "t_min", "net"),
))  # fmt: skip
