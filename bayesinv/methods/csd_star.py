r"""CSD*: an unconditional score prior started from a classical reconstruction, ``method="csd_star"``.

The EIT comparison's CSD* (papers/eit-comparison-cvae-cnf-csd.md, Algorithm 5): a score
network :math:`s_\phi(x, t)` learns the *unconditional* law of the target (images only, no
observations) by denoising score matching,

.. math:: \mathcal{L}(\phi) = E_{t,\, x_0,\, z} \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, t) + z \big\|^2 ,

and the observation enters only through a reconstruction :math:`x_{GN}(y)` (regularised
Gauss–Newton): of a K-step reverse process from t = 1, :math:`x_{GN}` is diffused to the time
t′ of step K′, :math:`x_{t'} = m(t') x_{GN} + \sigma(t') z`, and the last K′
predictor–corrector steps pull it onto the learned image law. K′ trades fidelity to
:math:`x_{GN}` (small) against the prior's freedom (large); :func:`choose_insert_step` picks
it on validation pairs by MSE (the paper found K′ ≈ 500–650 of 1000).

The reconstruction comes from ``solver=``, an object with ``gauss_newton(y, **options)``
(the EIT problem of :mod:`bayesinv.models.eit`). It is not saved: set ``post.solver = eit``
after :func:`bayesinv.load`, or pass ``solver=`` (or reconstructions ``start=``) to ``sample``.

Example:
    >>> eit = bayesinv.models.eit.make_model(2, 40, image_size=32)
    >>> post = bayesinv.fit(eit.model, method="csd_star", target="sigma", data=train, solver=eit)
    >>> best, table = choose_insert_step(post, y_val, sigma_val, candidates=(400, 500, 600, 700))
    >>> draws = post.sample(y_test, 1)["sigma"]          # (B, 1, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import choose_sample_option
from bayesinv.amortized.layout import Layout, from_normalised, to_normalised
from bayesinv.amortized.method import (
    AmortizedMethod, PCOptions, ProcessOptions, UNetOptions, check_float, check_int, register_amortized, train_options,
    to_json,
)  # fmt: skip
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.diffusion import reverse_from, score_objective, step_time
from bayesinv.errors import OptionError, ProblemError
from bayesinv.nets.score import CondScoreNet, build_score_net, make_process

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
)


def _check_gn_options(cfg: Any, none: bool = False) -> None:
    if not (none and cfg.gn_options is None) and not isinstance(cfg.gn_options, Mapping):
        raise OptionError(f"{type(cfg).__name__}: gn_options must be a dict, got {cfg.gn_options!r}")


@dataclass(frozen=True)
class CSDStarConfig(UNetOptions, ProcessOptions, train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="csd_star"``: the fields of :class:`~bayesinv.amortized.method.UNetOptions`
    (the U-Net), :class:`~bayesinv.amortized.method.ProcessOptions` (``"ve"`` or ``"vp"``) and
    :class:`~bayesinv.amortized.method.TrainOptions` (defaults :data:`TRAIN_DEFAULTS`), and

    Arguments:
        insert_step: K′, the step of K at which the reconstruction is inserted.
        steps: K, the steps of the full reverse process.
        corrector_steps, snr: Langevin corrector steps per predictor step and its r.
        gn_options: Options of ``solver.gauss_newton`` (JSON-able; saved).
    """

    insert_step: int = 600
    steps: int = 1000
    corrector_steps: int = 1
    snr: float = 0.16
    gn_options: dict = field(default_factory=dict)
    network = "unet"  # not fields: CSD* always uses a U-Net without an observation embedding
    embedding = "auto"
    hidden = (256, 256, 256)

    def __post_init__(self):
        self.check_training()
        self.check_process()
        self.check_unet()
        check_int(self, "steps")
        check_int(self, "corrector_steps", minimum=0)
        if not isinstance(self.insert_step, int) or not 0 < self.insert_step <= self.steps:
            raise OptionError(f"CSDStarConfig: insert_step K' must lie in 1..steps = {self.steps}, got {self.insert_step!r}")
        check_float(self, "snr", low=0.0, open_low=True)
        _check_gn_options(self)


@dataclass(frozen=True)
class CSDStarSampler(PCOptions):
    r"""Sampling options of ``method="csd_star"`` (``None``: the fit's): the fields of
    :class:`~bayesinv.amortized.method.PCOptions` (``steps`` K, ``corrector_steps``, ``snr``, ``t_min``,
    ``denoise``, ``chunk_size``), and

    Arguments:
        insert_step: K′.
        solver: Overrides ``post.solver``; gn_options: passed to ``solver.gauss_newton``.
        start: Precomputed reconstructions ``(*B, *target shape)`` instead of the solver.
    """

    insert_step: int | None = None
    solver: Any = None
    gn_options: dict | None = None
    start: Any = None

    def __post_init__(self):
        self.check_pc()
        check_int(self, "insert_step", none=True)
        _check_gn_options(self, none=True)


class CSDStarPosterior(AmortizedPosterior):
    r"""CSD*: an unconditional score prior's reverse process started from a reconstruction.

    Attributes:
        solver: The object whose ``gauss_newton(y, **options)`` gives the starting
            reconstruction (not saved; set it again after loading).
    """

    def __init__(self, method: Any, net: nn.Module, *, solver: Any = None, **kw: Any):
        super().__init__(method, net, **kw)
        self.solver = solver

    @property
    def process(self):
        return make_process(self.config["net"]["process"])

    @property
    def insert_step(self) -> int:
        r"""The default K′ (set by :func:`choose_insert_step`)."""
        return int(self.config["insert_step"])

    @insert_step.setter
    def insert_step(self, value: int) -> None:
        self.config["insert_step"] = int(value)

    def insert_time(self, insert_step: int | None = None, steps: int | None = None, t_min: float | None = None) -> float:
        r"""The diffusion time t′ of step K′ of K (:func:`~bayesinv.diffusion.samplers.step_time`)."""
        k = int(self.config["steps"] if steps is None else steps)
        kp = int(self.insert_step if insert_step is None else insert_step)
        if not 0 < kp <= k:
            raise ProblemError(f"insert_step K' must lie in 1..K = {k}, got {kp}")
        return step_time(kp, k, float(self.config["t_min"] if t_min is None else t_min))

    def reconstruct(self, y: Any, solver: Any = None, **gn_options: Any) -> Tensor:
        r"""The solver's reconstruction(s) of ``y`` ``(*B, 208)`` → normalised flat ``(B, D)``."""
        solver = solver if solver is not None else self.solver
        if solver is None or not callable(getattr(solver, "gauss_newton", None)):
            raise ProblemError(
                "csd_star needs the starting reconstruction: set post.solver (an object with gauss_newton(y)),"
                " or pass solver= or start= to sample()"
            )
        opts = {**self.config.get("gn_options", {}), **gn_options}
        rec = np.asarray(solver.gauss_newton(np.asarray(y, dtype=np.float64).reshape(-1, y.shape[-1]), **opts))
        return self._normalise_start(rec)

    def _normalise_start(self, start: Any) -> Tensor:
        return to_normalised({self.target.names[0]: start}, self.target, self.transforms, self.x_norm, self.device)


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
    r"""K′ predictor–corrector steps from the diffused reconstruction (:func:`~bayesinv.diffusion.samplers.reverse_from`): ``(B, n, D)``."""
    cfg = post.config
    get = lambda name: cfg[name] if getattr(scfg, name) is None else getattr(scfg, name)  # noqa: E731
    steps, insert_step, t_min = int(get("steps")), int(scfg.insert_step or post.insert_step), float(get("t_min"))
    t_start = post.insert_time(insert_step, steps, t_min)  # refuses a K′ outside 1..K
    if scfg.start is not None:
        x_gn = post._normalise_start(scfg.start)
    else:  # c is the raw observation (the condition normaliser is the identity)
        x_gn = post.reconstruct(c.cpu().numpy(), scfg.solver, **dict(scfg.gn_options or {}))
    B, D = c.shape[0], post.target.dim
    if x_gn.shape[0] != B:
        raise ProblemError(f"start= holds {x_gn.shape[0]} reconstructions for {B} observations")
    empty, proc = torch.zeros(0, device=post.device), post.process
    res = reverse_from(lambda x_, level: post.net(x_, empty, level), x_gn.repeat_interleave(n, 0), proc, insert_step=insert_step,
                       steps=steps, t_min=t_min, corrector_steps=int(get("corrector_steps")), snr=float(get("snr")),
                       denoise=True if scfg.denoise is None else bool(scfg.denoise), generator=generator,
                       chunk_size=int(scfg.chunk_size or 512))  # fmt: skip
    stats = {"sampler": "pc", "insert_step": insert_step, "steps": steps, "t_insert": t_start, "nfe": res.nfe,
             "sigma_insert": float(proc.sigma(torch.tensor(t_start)))}  # fmt: skip
    return res.x.reshape(B, n, D), stats


def choose_insert_step(
    post: CSDStarPosterior,
    y: Any,
    truth: Any,
    candidates: Sequence[int] = (300, 400, 500, 600, 650, 700, 800),
    *,
    start: Any = None,
    seed: int = 0,
    update: bool = True,
    **options: Any,
) -> tuple[int, dict[int, float]]:
    r"""Chooses K′ by the mean squared error of one draw per validation pair
    (:func:`~bayesinv.amortized.fit.choose_sample_option`).

    Arguments:
        post: The fitted posterior.
        y: Validation observations ``(B, *obs shape)``.
        truth: Their true targets ``(B, *target shape)``.
        candidates: The K′ to try (each in 1..K).
        start: Precomputed reconstructions of ``y`` (else the posterior's solver is used once).
        seed: Seed of the draws (the same for every candidate).
        update: Set ``post.insert_step`` to the best K′ (and ``steps`` to the K used, if given).
        options: Further sampler options (``steps``, ``snr``, ...).

    Returns:
        The best K′ and the mean MSE of every candidate.
    """
    if start is None:
        start = from_normalised(post.reconstruct(np.asarray(y)), post.target, post.transforms, post.x_norm)[post.target.names[0]]
    ks = [int(k) for k in candidates]
    best, table = choose_sample_option(post, "insert_step", ks, y, truth, seed=seed, start=start, **options)
    if update:
        post.insert_step = best
        if options.get("steps") is not None:
            post.config["steps"] = int(options["steps"])  # K′ is a step of this K
    return best, table


CSD_STAR = register_amortized(AmortizedMethod(
    name="csd_star", config=CSDStarConfig, sampler_config=CSDStarSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, conditional=False,
    posterior=CSDStarPosterior, fit_extras=("solver",),
    no_density="a csd_star posterior has no density; sample it with post.sample / post.infer",
    saved_keys=("insert_step", "steps", "corrector_steps", "snr", "t_min", "net"),
))  # fmt: skip
