r"""Learned score posteriors whose reverse diffusion starts from a classical reconstruction of y (CSD*, SDEdit).

Of a K-step reverse process, the reconstruction is diffused to the time t′ of step K′ and the last
K′ predictor–corrector steps run from there (:func:`~bayesinv.diffusion.from_start.sample_from_start`).
The reconstruction comes from ``solver=``, an object with ``gauss_newton(y, **options)`` (the EIT
problem of :mod:`bayesinv.models.eit`), a fit option that is not saved: set ``post.solver`` again
after :func:`bayesinv.load`, or pass ``solver=`` (or precomputed reconstructions ``start=``) when
sampling. The option groups are :class:`StartOptions` (fit) and :class:`StartSampleOptions`
(sampling), the posterior is :class:`StartPosterior`, and :func:`choose_insert_step` picks K′.

Example:
    >>> post = bayesinv.fit(eit.model, method="csd_star", target="sigma", data=train, solver=eit)
    >>> best, table = choose_insert_step(post, y_val, sigma_val, candidates=(400, 500, 600, 700))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bayesinv.amortized.fit import choose_default_option
from bayesinv.amortized.layout import from_normalised, to_normalised
from bayesinv.amortized.method import PCOptions, check_float, check_int
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.diffusion.from_start import insert_time, sample_from_start
from bayesinv.diffusion.sde import process_from_spec
from bayesinv.errors import OptionError, ProblemError

__all__ = ["StartOptions", "StartSampleOptions", "StartPosterior", "choose_insert_step"]


def _check_gn_options(cfg: Any, none: bool = False) -> None:
    if not (none and cfg.gn_options is None) and not isinstance(cfg.gn_options, Mapping):
        raise OptionError(f"{type(cfg).__name__}: gn_options must be a dict, got {cfg.gn_options!r}")


@dataclass(frozen=True)
class StartOptions:
    r"""The fit options of a reverse process started from a reconstruction (saved: the sampler's defaults).

    Arguments:
        insert_step: K′, the step of K at which the reconstruction is inserted.
        steps: K, the steps of the full reverse process.
        corrector_steps, snr: Langevin corrector steps per predictor step and its r.
        gn_options: Options of ``solver.gauss_newton`` (JSON-able).
    """

    insert_step: int = 600
    steps: int = 1000
    corrector_steps: int = 1
    snr: float = 0.16
    gn_options: dict = field(default_factory=dict)

    def check_start(self) -> None:
        r"""Validates the fields (called by each config's ``__post_init__``)."""
        check_int(self, "steps")
        check_int(self, "corrector_steps", minimum=0)
        if not isinstance(self.insert_step, int) or not 0 < self.insert_step <= self.steps:
            raise OptionError(f"{type(self).__name__}: insert_step K' must lie in 1..steps = {self.steps}, got {self.insert_step!r}")
        check_float(self, "snr", low=0.0, open_low=True)
        _check_gn_options(self)


@dataclass(frozen=True)
class StartSampleOptions(PCOptions):
    r"""The sampling options of a reverse process started from a reconstruction (``None``: the fit's): the fields
    of :class:`~bayesinv.amortized.method.PCOptions` (``steps`` K, ``corrector_steps``, ``snr``, ``t_min``,
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

    def check_start_sample(self) -> None:
        r"""Validates the fields (called by each sampler config's ``__post_init__``)."""
        self.check_pc()
        check_int(self, "insert_step", none=True)
        _check_gn_options(self, none=True)


class StartPosterior(AmortizedPosterior):
    r"""A posterior of one target site whose score network's reverse process starts from a reconstruction.

    Attributes:
        solver: The object whose ``gauss_newton(y, **options)`` gives the starting
            reconstruction (not saved; set it again after loading).
    """

    def __init__(self, method: Any, net: nn.Module, *, solver: Any = None, **kw: Any):
        super().__init__(method, net, **kw)
        self.solver = solver

    @property
    def process(self):
        r"""The forward process of the network (:func:`~bayesinv.diffusion.sde.process_from_spec`)."""
        return process_from_spec(self.config["net"]["process"])

    @property
    def insert_step(self) -> int:
        r"""The default K′ (set by :func:`choose_insert_step`)."""
        return int(self.config["insert_step"])

    @insert_step.setter
    def insert_step(self, value: int) -> None:
        self.config["insert_step"] = int(value)

    def insert_time(self, insert_step: int | None = None, steps: int | None = None, t_min: float | None = None) -> float:
        r"""The diffusion time t′ of step K′ of K (``None``: the fit's; :func:`~bayesinv.diffusion.from_start.insert_time`)."""
        k, kp = (self.config["steps"] if steps is None else steps), (self.insert_step if insert_step is None else insert_step)
        return insert_time(int(kp), int(k), float(self.config["t_min"] if t_min is None else t_min))

    def reconstruct(self, y: Any, solver: Any = None, **gn_options: Any) -> Tensor:
        r"""The solver's reconstruction(s) of ``y`` ``(*B, *obs shape)`` → normalised flat ``(B, D)``
        (``solver.gauss_newton`` options: the fit's ``gn_options``, then ``gn_options``)."""
        solver = solver if solver is not None else self.solver
        if solver is None or not callable(getattr(solver, "gauss_newton", None)):
            raise ProblemError(
                f"{self.method} needs the starting reconstruction: set post.solver (an object with gauss_newton(y)),"
                " or pass solver= or start= to sample()"
            )
        opts = {**self.config.get("gn_options", {}), **gn_options}
        rec = np.asarray(solver.gauss_newton(np.asarray(y, dtype=np.float64).reshape(-1, y.shape[-1]), **opts))
        return self.normalise_start(rec)

    def normalise_start(self, start: Any) -> Tensor:
        r"""Reconstructions ``(*B, *target shape)`` in site units → normalised flat ``(B, D)``."""
        return to_normalised({self.target.names[0]: start}, self.target, self.transforms, self.x_norm, self.device)

    def sample_start(self, score_fn: Callable, c: Tensor, n: int, generator: torch.Generator,
                     scfg: StartSampleOptions) -> tuple[Tensor, dict]:  # fmt: skip
        r"""``n`` draws for each raw observation of ``c`` ``(B, C)`` (the condition normaliser of an unconditional
        method is the identity): the last K′ of K predictor–corrector steps of ``score_fn(x, t)`` from its start
        (``scfg.start``, else the solver's reconstruction): ``(B, n, D)`` and the stats."""
        names = ("steps", "t_min", "corrector_steps", "snr")
        get = {k: self.config[k] if getattr(scfg, k) is None else getattr(scfg, k) for k in names}
        insert_step = int(scfg.insert_step or self.insert_step)
        self.insert_time(insert_step, get["steps"], get["t_min"])  # refuses a K′ outside 1..K before the solver runs
        if scfg.start is not None:
            x = self.normalise_start(scfg.start)
        else:
            x = self.reconstruct(c.cpu().numpy(), scfg.solver, **dict(scfg.gn_options or {}))
        if x.shape[0] != c.shape[0]:
            raise ProblemError(f"start= holds {x.shape[0]} reconstructions for {c.shape[0]} observations")
        denoise = True if scfg.denoise is None else scfg.denoise
        return sample_from_start(score_fn, x, self.process, n, insert_step=insert_step, denoise=denoise, generator=generator,
                                 chunk_size=int(scfg.chunk_size or 512), **get)  # fmt: skip


def choose_insert_step(
    post: StartPosterior,
    y: Any,
    truth: Any,
    candidates: Sequence[int] = (300, 400, 500, 600, 650, 700, 800),
    *,
    start: Any = None,
    seed: int = 0,
    update: bool = True,
    **options: Any,
) -> tuple[int, dict[int, float]]:
    r"""Chooses K′ by the mean squared error of one draw per validation pair (:func:`~bayesinv.amortized.fit.choose_default_option`).

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
    if options.get("steps") is not None:
        options["steps"] = int(options["steps"])  # K′ is a step of this K, saved with it
    return choose_default_option(post, "insert_step", [int(k) for k in candidates], y, truth, seed=seed, update=update,
                                 saved=("steps",), start=start, **options)  # fmt: skip
