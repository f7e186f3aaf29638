r"""CSD*: an unconditional score prior started from a classical reconstruction, ``method="csd_star"``.

The EIT comparison's CSD* (papers/eit-comparison-cvae-cnf-csd.md, Algorithm 5): a score
network :math:`s_\phi(x, t)` learns the *unconditional* distribution of the target
(conductivity images only, no observations) by denoising score matching,

.. math:: \mathcal{L}(\phi) = E_{t,\, x_0,\, z} \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, t) + z \big\|^2 ,

and the observation enters only through a classical reconstruction :math:`x_{GN}(y)`
(regularised Gauss–Newton). Of a reverse process of K steps from t = 1 to
:math:`t_{min}`, the first K − K′ are skipped: :math:`x_{GN}` is diffused to the time
of step K′, :math:`x_{t'} = m(t') x_{GN} + \sigma(t') z`, and the remaining K′
predictor–corrector steps (reverse-diffusion predictor, Langevin corrector) pull it
onto the learned image distribution. K′ trades fidelity to :math:`x_{GN}` (small K′)
against the prior's freedom (large K′); :func:`choose_insert_step` picks it on
validation pairs by MSE (the paper found K′ ≈ 500–650 of 1000).

The network, the forward processes, the DSM loss, the sampler and the training loop are
those of ``method="cond_score"``: the score network is a
:class:`~bayesinv.nets.score.CondScoreNet` with an empty condition. Options: the fields of
:class:`CSDStarConfig` (fit) and :class:`CSDStarSampler` (sampling).

The reconstruction comes from ``solver=``, an object with ``gauss_newton(y, **options)``
returning the target image(s) — the EIT problem of :mod:`bayesinv.models.eit` (as for
``method="gauss_newton"``). A saved posterior does not store the solver: set
``post.solver = eit`` after :func:`bayesinv.load`, or pass ``solver=`` (or precomputed
reconstructions ``start=``) to :meth:`~CSDStarPosterior.sample`.

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

from bayesinv.amortized.layout import Layout, apply_transforms
from bayesinv.amortized.method import AmortizedMethod, check_choice, check_float, check_int, register_amortized, train_options, to_json
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.diffusion import predictor_corrector
from bayesinv.errors import OptionError, ProblemError
from bayesinv.methods.cond_score import score_loss
from bayesinv.nets.score import CondScoreNet, make_process, net_spec

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


@dataclass(frozen=True)
class CSDStarConfig(train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="csd_star"`` (with the training fields of :class:`~bayesinv.amortized.method.TrainOptions`).

    Arguments:
        insert_step: K′, the step of K at which the reconstruction is inserted.
        steps: K, the steps of the full reverse process.
        corrector_steps, snr: Langevin corrector steps per predictor step and its r.
        gn_options: Options of ``solver.gauss_newton`` (JSON-able; saved).
        process: ``"ve"`` or ``"vp"``; sigma_max, beta_min, beta_max: its parameters.
        base_channels, channel_mults, activation, embed_dim, embed_map_channels: The U-Net.
        t_min, time_sampling: As for :class:`~bayesinv.methods.cond_score.CondScoreConfig`.
        normalization: ``"minmax"`` (default), ``"standard"`` or ``"none"``.
    """

    insert_step: int = 600
    steps: int = 1000
    corrector_steps: int = 1
    snr: float = 0.16
    gn_options: dict = field(default_factory=dict)
    process: str = "ve"
    sigma_max: float = 5.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    activation: str = "silu"
    embed_dim: int = 64
    embed_map_channels: int = 8
    t_min: float = 1e-5
    time_sampling: str = "mixed"
    network = "unet"  # not fields: CSD* always uses a U-Net without an observation embedding
    embedding = "auto"
    hidden = (256, 256, 256)

    def __post_init__(self):
        self.check_training()
        check_choice(self, "process", ("ve", "vp"))
        check_choice(self, "activation", ("silu", "relu", "gelu", "tanh"))
        check_choice(self, "time_sampling", ("uniform", "mixed"))
        for name in ("steps", "base_channels", "embed_dim"):
            check_int(self, name)
        check_int(self, "corrector_steps", minimum=0)
        check_int(self, "embed_map_channels", minimum=0)
        if not isinstance(self.insert_step, int) or not 0 < self.insert_step <= self.steps:
            raise OptionError(f"CSDStarConfig: insert_step K' must lie in 1..steps = {self.steps}, got {self.insert_step!r}")
        for name in ("snr", "sigma_max", "beta_min", "beta_max"):
            check_float(self, name, low=0.0, open_low=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True)
        if not isinstance(self.gn_options, Mapping):
            raise OptionError(f"CSDStarConfig: gn_options must be a dict, got {self.gn_options!r}")

    def process_spec(self) -> dict[str, Any]:
        return {"kind": "ve", "sigma_max": self.sigma_max} if self.process == "ve" else \
            {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class CSDStarSampler:
    r"""Sampling options of ``method="csd_star"`` (``None``: the posterior's default).

    Arguments:
        insert_step: K′; steps: K; corrector_steps, snr: the corrector; t_min.
        denoise: Final Tweedie step (``True``).
        solver: Overrides ``post.solver``; gn_options: passed to ``solver.gauss_newton``.
        start: Precomputed reconstructions ``(*B, *target shape)`` instead of the solver.
        chunk_size: Draws per network batch (512).
    """

    insert_step: int | None = None
    steps: int | None = None
    corrector_steps: int | None = None
    snr: float | None = None
    t_min: float | None = None
    denoise: bool | None = None
    solver: Any = None
    gn_options: dict | None = None
    start: Any = None
    chunk_size: int | None = None

    def __post_init__(self):
        for name in ("insert_step", "steps", "chunk_size"):
            check_int(self, name, none=True)
        check_int(self, "corrector_steps", minimum=0, none=True)
        check_float(self, "snr", low=0.0, open_low=True, none=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True, none=True)
        check_choice(self, "denoise", (None, True, False))
        if self.gn_options is not None and not isinstance(self.gn_options, Mapping):
            raise OptionError(f"CSDStarSampler: gn_options must be a dict, got {self.gn_options!r}")


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
        r"""The diffusion time :math:`t' = t_{min} + (1 - t_{min}) (K'/K)^2` of step K′ of K.

        The samplers' K-step grid is uniform in :math:`\sqrt{t - t_{min}}`, so the K′ steps
        from t′ are exactly the last K′ steps of the full K-step reverse process.
        """
        k = int(self.config["steps"] if steps is None else steps)
        kp = int(self.insert_step if insert_step is None else insert_step)
        if not 0 < kp <= k:
            raise ProblemError(f"insert_step K' must lie in 1..K = {k}, got {kp}")
        t_min = float(self.config["t_min"] if t_min is None else t_min)
        return t_min + (1.0 - t_min) * (kp / k) ** 2

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
        return self._normalise_start(torch.as_tensor(rec))

    def _normalise_start(self, start: Any) -> Tensor:
        (name,), (shape,) = self.target.names, self.target.shapes
        v = torch.as_tensor(np.asarray(start)).float().reshape(-1, *shape)
        v = apply_transforms({name: v}, self.transforms)[name]
        return self.x_norm(self.target.flatten({name: v}).to(self.device))



def build(cfg: CSDStarConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The unconditional score U-Net (input preconditioning from the target draws) and its settings."""
    target, observed = pairs.target, pairs.observed
    if len(observed) != 1 or len(target.names) != 1 or len(target.shapes[0]) not in (2, 3):
        raise ProblemError(
            f"csd_star takes one observed site and one 2-D field target; got observed {list(observed)}, target {list(target.names)}"
        )
    spec = net_spec(cfg, target, Layout((), ()), cfg.process_spec())
    settings = {**to_json(cfg), "net": spec}
    net = CondScoreNet(spec)
    net.set_statistics(pairs.x, pairs.x.new_zeros(len(pairs.x), 0))  # input preconditioning; no condition
    return net, settings


def loss(cfg: CSDStarConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the unconditional DSM loss (``c`` is empty and ignored)."""
    process, empty = make_process(settings["net"]["process"]), torch.zeros(0, device=next(net.parameters()).device)
    return lambda module, x0, c0: score_loss(module, x0, empty, process, cfg.t_min, cfg.time_sampling)


def sample(post: CSDStarPosterior, c: Tensor, n: int, generator: torch.Generator, scfg: CSDStarSampler) -> tuple[Tensor, dict]:
    r"""K′ predictor–corrector steps from the diffused reconstruction: ``(B, n, D)``."""
    cfg = post.config
    steps = int(scfg.steps or cfg["steps"])
    insert_step = int(scfg.insert_step or post.insert_step)
    t_min = float(scfg.t_min or cfg["t_min"])
    t_start = post.insert_time(insert_step, steps, t_min)
    if scfg.start is not None:
        x_gn = post._normalise_start(scfg.start)
    else:  # c is the raw observation (the condition normaliser is the identity)
        x_gn = post.reconstruct(c.cpu().numpy(), scfg.solver, **dict(scfg.gn_options or {}))
    B, D = c.shape[0], post.target.dim
    if x_gn.shape[0] != B:
        raise ProblemError(f"start= holds {x_gn.shape[0]} reconstructions for {B} observations")
    x0 = x_gn.repeat_interleave(n, 0)
    proc, t = post.process, torch.tensor(t_start)
    z = torch.randn(x0.shape, generator=generator, device=post.device)
    x = proc.mean_scale(t).item() * x0 + proc.sigma(t).item() * z
    empty = torch.zeros(0, device=post.device)
    score_fn = lambda x_, level: post.net(x_, empty, level)  # noqa: E731
    chunk = int(scfg.chunk_size or 512)
    corrector = int(cfg["corrector_steps"] if scfg.corrector_steps is None else scfg.corrector_steps)
    snr = float(cfg["snr"] if scfg.snr is None else scfg.snr)
    out, nfe = [], 0
    for a in range(0, len(x), chunk):
        res = predictor_corrector(score_fn, x[a : a + chunk], proc, steps=insert_step, t_start=t_start,
                                  corrector_steps=corrector, snr=snr, t_min=t_min,
                                  denoise=True if scfg.denoise is None else bool(scfg.denoise), generator=generator)  # fmt: skip
        out.append(res.x)
        nfe = max(nfe, res.nfe)
    stats = {"sampler": "pc", "insert_step": insert_step, "steps": steps, "t_insert": t_start, "nfe": nfe,
             "sigma_insert": float(proc.sigma(t))}  # fmt: skip
    return torch.cat(out).reshape(B, n, D), stats


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
    r"""Chooses K′ by the mean squared error of one draw per validation pair.

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
    truth = torch.as_tensor(np.asarray(truth)).float()
    if start is None:
        start = post.x_norm.inverse(post.reconstruct(np.asarray(y))).reshape(truth.shape)
        start = apply_transforms({post.target.names[0]: start}, post.transforms, inverse=True)[post.target.names[0]]
    table = {}
    for k in candidates:
        draws = post.sample(y, 1, seed=seed, insert_step=int(k), start=start, **options)[post.target.names[0]][:, 0]
        table[int(k)] = float((draws - truth).pow(2).flatten(1).mean(1).mean())
    best = min(table, key=table.get)
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
