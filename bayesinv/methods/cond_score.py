r"""Conditional score-based diffusion posteriors: ``method="cond_score"``.

A network :math:`s_\phi(x, c, t)` learns the score of the noised conditional
:math:`\nabla_x \log p_t(x \mid c)` from simulated pairs (target x, condition c = the
observation y and, optionally, a measurement-operator mask) by conditional denoising
score matching,

.. math:: \mathcal{L}(\phi) = E_{t \sim U(t_{min}, 1),\, (x_0, c),\, z}
          \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, c, t) + z \big\|^2

(the discrete-level NCSN version draws σ from geometric levels σ_1 > … > σ_L instead).
Only forward simulation is needed. Sampling integrates the reverse process for every
(observation, draw) pair in one batch: the probability-flow ODE (``"ode"``), the reverse
SDE (``"sde"``), predictor–corrector (``"pc"``) or annealed Langevin dynamics
(``"langevin"``, NCSN). With the probability-flow ODE (VE/VP, ``denoise=False``) the
posterior has a density — ``post.log_prob`` is the density of that sampler's draws, by the
instantaneous change of variables (:func:`~bayesinv.diffusion.samplers.probability_flow_log_prob`)
— so it can be an importance-sampling ``proposal=``. The network is :class:`~bayesinv.nets.score.CondScoreNet` (an MLP
for vectors, a U-Net for one 2-D field target).

Options: the fields of :class:`CondScoreConfig` (fit) and :class:`CondScoreSampler`
(sampling), as keywords of ``fit``/``infer``/``post.sample`` or ``config=``.

Example:
    >>> post = bayesinv.fit(model, method="cond_score", num_simulations=10_000, base_channels=16)
    >>> draws = post.sample(y_batch, 1000)          # (*B, 1000, *shape), one call
    >>> idata = post.infer(y_obs, num_samples=1000, sampler="sde")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from bayesinv.amortized.method import (
    AmortizedMethod, ScoreNetOptions, check_choice, check_float, check_int, map_rows, register_amortized, train_options, to_json,
)  # fmt: skip
from bayesinv.diffusion import (
    annealed_langevin, choose_num_levels, choose_sigma_1, choose_step_size, dsm_loss, expand_like, geometric_sigmas,
    ncsn_loss, predictor_corrector, probability_flow_ode, reverse_sde,
)  # fmt: skip
from bayesinv.diffusion.samplers import probability_flow_log_prob
from bayesinv.errors import OptionError, ProblemError
from bayesinv.nets.score import CondScoreNet, make_process, net_spec

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
)


@dataclass(frozen=True)
class CondScoreConfig(ScoreNetOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="cond_score"`` (with the training fields of :class:`~bayesinv.amortized.method.TrainOptions`).

    Arguments:
        process: ``"ve"`` (γ(t) = σ_max^{2t}), ``"vp"`` (linear β) or ``"ncsn"`` (discrete
            geometric noise levels, annealed Langevin sampling).
        sampler: The default sampler: ``"ode"``, ``"sde"``, ``"pc"`` (VE/VP) or
            ``"langevin"`` (NCSN); ``None``: ``"ode"`` for VE/VP, ``"langevin"`` for NCSN.
        network: ``"mlp"``, ``"unet"`` or ``"auto"`` (U-Net for one 2-D field target).
        hidden: Hidden layer sizes of the MLP.
        activation: ``"silu"``, ``"relu"``, ``"gelu"`` or ``"tanh"``.
        embedding: Observation embedding: ``"none"``, ``"mlp"``, ``"cnn"`` or ``"auto"``
            (U-Net: channels on the grid, CNN for one field, MLP otherwise; MLP network: raw).
        embed_dim: Size of the observation embedding.
        embed_map_channels: U-Net with an embedded observation: channels of the learned map
            from the embedding onto a coarse copy of the target grid (0 turns it off).
        base_channels, channel_mults: U-Net width and resolution levels.
        sigma_max: σ_max of the VE process.
        beta_min, beta_max: β(0) and β(1) of the VP process.
        sigma_1, sigma_L, num_levels, min_levels: NCSN levels (``None``: Song & Ermon's rules).
        steps_per_level, eps: Annealed Langevin T and ε (``None``: the NCSN v2 rule).
        t_min: Smallest diffusion time (training and sampling).
        time_sampling: ``"uniform"`` on :math:`[t_{min}, 1]` or ``"mixed"`` (half uniform,
            half log-uniform: more training at small noise levels; the same minimiser).
        normalization: ``"minmax"`` (default), ``"standard"`` or ``"none"``.
    """

    process: str = "ve"
    sampler: str | None = None
    sigma_max: float = 5.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_1: float | None = None
    sigma_L: float = 0.01
    num_levels: int | None = None
    min_levels: int = 20
    steps_per_level: int = 5
    eps: float | None = None
    t_min: float = 1e-5
    time_sampling: str = "mixed"

    def __post_init__(self):
        self.check_training()
        check_choice(self, "process", PROCESSES)
        if self.sampler is not None and self.sampler not in SAMPLERS[self.process]:
            raise OptionError(f"sampler {self.sampler!r} does not fit process {self.process!r}; use one of {SAMPLERS[self.process]}")
        self.check_network()
        check_choice(self, "time_sampling", ("uniform", "mixed"))
        for name in ("min_levels", "steps_per_level"):
            check_int(self, name)
        check_int(self, "num_levels", minimum=2, none=True)
        for name in ("sigma_max", "beta_min", "beta_max", "sigma_L"):
            check_float(self, name, low=0.0, open_low=True)
        check_float(self, "sigma_1", low=0.0, open_low=True, none=True)
        check_float(self, "eps", low=0.0, open_low=True, none=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True)

    def to_json(self) -> dict[str, Any]:
        r"""The settings as a JSON-able dict (tuples as lists), as saved with a posterior."""
        return to_json(self)

    def process_spec(self) -> dict[str, Any]:
        r"""The continuous-time process (``"ve"`` or ``"vp"``) as the JSON-able spec of the network."""
        if self.process == "ve":
            return {"kind": "ve", "sigma_max": self.sigma_max}
        if self.process == "vp":
            return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}
        raise OptionError(f"process {self.process!r} has no continuous-time spec; NCSN levels come from the data")


@dataclass(frozen=True)
class CondScoreSampler:
    r"""Sampling options of ``method="cond_score"`` (``None``: the posterior's default).

    Arguments:
        sampler: ``"ode"``, ``"sde"``, ``"pc"`` or ``"langevin"`` (default: the fit's).
        steps: SDE/PC steps (500).
        rtol, atol: ODE tolerances (1e-5).
        power: ODE: integrate in r with t = (1 − r)^power (2).
        t_min: Smallest time (the fit's).
        denoise: Final Tweedie step (``True``).
        corrector_steps, snr: PC corrector (1, 0.16).
        steps_per_level, eps: Annealed Langevin (the fit's).
        chunk_size: Rows of observations × draws per network batch (MLP 50,000, U-Net 512).
        exact: ``log_prob`` (ODE) with the exact divergence (default: target dimension ≤ 32),
            else Hutchinson's estimator.
        num_probes: Hutchinson probes averaged per point (1); their spread is the standard error.
    """

    sampler: str | None = None
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    power: float | None = None
    t_min: float | None = None
    denoise: bool | None = None
    corrector_steps: int | None = None
    snr: float | None = None
    steps_per_level: int | None = None
    eps: float | None = None
    chunk_size: int | None = None
    exact: bool | None = None
    num_probes: int | None = None

    def __post_init__(self):
        check_choice(self, "sampler", (None, "ode", "sde", "pc", "langevin"))
        check_choice(self, "exact", (None, True, False))
        for name in ("steps", "steps_per_level", "chunk_size", "num_probes"):
            check_int(self, name, none=True)
        check_int(self, "corrector_steps", minimum=0, none=True)
        for name in ("rtol", "atol", "power", "snr", "eps"):
            check_float(self, name, low=0.0, open_low=True, none=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True, none=True)
        check_choice(self, "denoise", (None, True, False))


def check_sample(settings: Mapping[str, Any], scfg: CondScoreSampler, given: set) -> str:
    r"""Refuses a sampler that does not fit the process, or options the chosen sampler does not read; returns the sampler."""
    kind = settings["process"]
    sampler = scfg.sampler or settings.get("sampler") or DEFAULT_SAMPLER[kind]
    if sampler not in SAMPLERS[kind]:
        raise OptionError(f"sampler {sampler!r} does not fit process {kind!r}; use one of {SAMPLERS[kind]}")
    used = SAMPLER_OPTIONS[sampler] | {"denoise", "chunk_size", "sampler"}
    ignored = sorted(set(given) - used)
    if ignored:
        raise OptionError(f"sampler {sampler!r} does not use option(s) {ignored}; its options are {sorted(used - {'sampler'})}")
    return sampler


def score_loss(net: nn.Module, x0: Tensor, c: Tensor, process: Any, t_min: float, time_sampling: str) -> Tensor:
    r"""Conditional DSM :math:`\|\sigma(t) s(x_t, c, t) + z\|^2`; with ``"mixed"`` every other
    time is log-uniform on :math:`[t_{min}, 1]` instead of uniform (see :func:`~bayesinv.diffusion.dsm_loss`)."""
    if time_sampling == "uniform":
        return dsm_loss(net, x0, c, process, t_min=t_min)
    u = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    log_t = math.log(t_min) * torch.rand_like(u)
    t = torch.where(torch.arange(len(u), device=u.device) % 2 == 0, t_min + (1 - t_min) * u, log_t.exp())
    z = torch.randn_like(x0)
    s = net(process.perturb(x0, t, z), c, t)
    return (expand_like(process.sigma(t), z) * s + z).pow(2).flatten(1).sum(1).mean()


def _levels(cfg: CondScoreConfig, x: Tensor, seed: int) -> dict:
    r"""NCSN noise levels and step size, chosen by the NCSN rules where not given."""
    sigma_1 = cfg.sigma_1
    if sigma_1 is None:
        sigma_1 = choose_sigma_1(x, generator=torch.Generator().manual_seed(seed))
        sigma_1 = max(1.05 * sigma_1, 2 * cfg.sigma_L)  # the subset slightly underestimates it
    L = cfg.num_levels or max(cfg.min_levels, choose_num_levels(x.shape[-1], sigma_1, cfg.sigma_L))
    eps = cfg.eps if cfg.eps is not None else choose_step_size(sigma_1, cfg.sigma_L, L, cfg.steps_per_level)
    sigmas = geometric_sigmas(sigma_1, cfg.sigma_L, L, dtype=torch.float64).tolist()
    return {"kind": "ncsn", "sigmas": sigmas, "eps": eps, "steps_per_level": cfg.steps_per_level}


def build(cfg: CondScoreConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The score network of ``cfg`` with its input preconditioning set from the pairs, and the saved settings."""
    proc = _levels(cfg, pairs.x, seed) if cfg.process == "ncsn" else cfg.process_spec()
    spec = net_spec(cfg, pairs.target, pairs.condition, proc)
    settings = {**cfg.to_json(), "sampler": cfg.sampler or DEFAULT_SAMPLER[cfg.process], "net": spec}
    net = CondScoreNet(spec)
    net.set_statistics(pairs.x, pairs.c)
    return net, settings


def loss(cfg: CondScoreConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: NCSN's multi-level loss or the conditional DSM loss."""
    if cfg.process == "ncsn":
        sigmas = torch.tensor(settings["net"]["process"]["sigmas"], dtype=torch.float32, device=next(net.parameters()).device)
        return lambda module, x0, c0: ncsn_loss(module, x0, c0, sigmas)
    process = make_process(settings["net"]["process"])
    return lambda module, x0, c0: score_loss(module, x0, c0, process, cfg.t_min, cfg.time_sampling)


def run_sampler(sampler: str, score_fn, x: Tensor, generator, scfg: Any, settings: Mapping[str, Any]):
    r"""One chunk of the reverse process with the chosen sampler (defaults for the options not given)."""
    denoise = True if scfg.denoise is None else bool(scfg.denoise)
    get = lambda name, default: default if getattr(scfg, name) is None else getattr(scfg, name)  # noqa: E731
    proc_spec = settings["net"]["process"]
    if sampler == "langevin":
        sigmas = torch.tensor(proc_spec["sigmas"], device=x.device)
        return annealed_langevin(score_fn, x, sigmas, steps_per_level=int(get("steps_per_level", proc_spec["steps_per_level"])),
                                 eps=float(get("eps", proc_spec["eps"])), denoise=denoise, generator=generator)  # fmt: skip
    process, t_min = make_process(proc_spec), float(get("t_min", settings["t_min"]))
    if sampler == "ode":
        return probability_flow_ode(score_fn, x, process, rtol=get("rtol", 1e-5), atol=get("atol", 1e-5),
                                    power=float(get("power", 2.0)), t_min=t_min, denoise=denoise)  # fmt: skip
    steps = int(get("steps", 500))
    if sampler == "sde":
        return reverse_sde(score_fn, x, process, alpha=1.0, steps=steps, t_min=t_min, denoise=denoise, generator=generator)
    return predictor_corrector(score_fn, x, process, steps=steps, corrector_steps=int(get("corrector_steps", 1)),
                               snr=float(get("snr", 0.16)), t_min=t_min, denoise=denoise, generator=generator)  # fmt: skip


def sample(post: Any, c: Tensor, n: int, generator: torch.Generator, scfg: CondScoreSampler) -> tuple[Tensor, dict]:
    r"""Reverse diffusion for every (observation, draw) pair, in chunks: ``(B, n, D)`` and the sampler's stats."""
    settings = post.config
    kind, sampler = settings["process"], check_sample(settings, scfg, set())
    chunk_size = int(scfg.chunk_size or (50_000 if settings["net"]["network"] == "mlp" else 512))
    B, D, dev = c.shape[0], post.target.dim, post.device
    rows = B * n
    if kind == "ncsn":
        x = torch.rand((rows, D), generator=generator, device=dev)
    else:
        # p_1 ≈ N(m(1) E[x_0], σ(1)² I): centring the start removes most of the ODE's bias
        process = make_process(settings["net"]["process"])
        z = torch.randn((rows, D), generator=generator, device=dev)
        x = process.mean_scale(1.0).item() * getattr(post.net, "x_mean", 0.0) + process.sigma(1.0).item() * z
    owner = torch.arange(B, device=dev).repeat_interleave(n)

    def run(x_chunk: Tensor, c_chunk: Tensor) -> tuple[Tensor, int]:
        return run_sampler(sampler, lambda x_, level: post.net(x_, c_chunk, level), x_chunk, generator, scfg, settings)

    out, nfe = map_rows(run, x, c, owner, chunk_size)
    stats = {"sampler": sampler, "process": kind, "nfe": nfe, "num_chunks": len(out)}
    if kind == "ncsn":
        sigmas = settings["net"]["process"]["sigmas"]
        stats.update(sigma_max=max(sigmas), sigma_min=min(sigmas), num_levels=len(sigmas))
    else:
        t_min = float(settings["t_min"] if scfg.t_min is None else scfg.t_min)
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
    r"""The density of the probability-flow ODE sampler's draws (same process, t_min, power, start) at normalised ``x``.

    The sampler starts from :math:`\mathcal{N}(m(1)\mu, \sigma(1)^2 I)` (μ the mean of the
    training targets); in :math:`	ilde x = x - m(t)\mu` the ODE keeps its form with the score
    :math:`s(	ilde x + m(t)\mu, t)` and starts from :math:`\mathcal{N}(0, \sigma(1)^2 I)`, the base of
    :func:`~bayesinv.diffusion.samplers.probability_flow_log_prob` (exactly for VE; for VP that
    base has variance 1 against :math:`1 - m(1)^2`, a log-density difference of
    :math:`m(1)^2 (D - |z|^2)/2`, about 2e-5 √(2D) with the default β).
    """
    settings = post.config
    sampler = scfg.sampler or "ode"
    if sampler != "ode":
        raise ProblemError(f"log_prob is the density of the probability-flow ODE sampler; sampler={sampler!r} is stochastic and"
                           " has none: pass sampler='ode' (and denoise=False)")  # fmt: skip
    if scfg.denoise:
        raise ProblemError("log_prob is the density of the ODE sampler without the final denoising step; denoise=True"
                           " (Tweedie's step) has no tractable density: pass denoise=False")  # fmt: skip
    process = make_process(settings["net"]["process"])
    mu = getattr(post.net, "x_mean", torch.zeros(x.shape[-1], device=x.device))
    get = lambda name, default: default if getattr(scfg, name) is None else getattr(scfg, name)  # noqa: E731
    t_min = float(get("t_min", settings["t_min"]))
    shift = process.mean_scale(torch.tensor(t_min)).item() * mu
    exact = get("exact", x.shape[-1] <= 32)
    probes = 1 if exact else int(get("num_probes", 1))

    def run(x_chunk: Tensor, c_chunk: Tensor) -> tuple[tuple[Tensor, Tensor], int]:
        c_rows = c_chunk.repeat_interleave(probes, 0)  # log_prob_ode repeats each point once per probe

        def score(v: Tensor, t: Tensor) -> Tensor:
            return post.net(v + process.mean_scale(t) * mu, c_rows, t)

        res = probability_flow_log_prob(score, x_chunk - shift, process, t_min=t_min, power=float(get("power", 2.0)),
                                        exact=exact, num_probes=probes, generator=generator,
                                        rtol=get("rtol", 1e-5), atol=get("atol", 1e-5))  # fmt: skip
        return (res.log_prob, res.std_error), res.nfe

    chunk = int(scfg.chunk_size or (50_000 if settings["net"]["network"] == "mlp" else 512))
    out, _ = map_rows(run, x, c, torch.arange(x.shape[0], device=x.device), chunk)
    return torch.cat([lp for lp, _ in out]), torch.cat([se for _, se in out])


COND_SCORE = register_amortized(AmortizedMethod(
    name="cond_score", config=CondScoreConfig, sampler_config=CondScoreSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, check_sample=check_sample,
    log_prob=log_prob, density=density,
    saved_keys=("process", "sampler", "t_min", "net"),
))  # fmt: skip
