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
:class:`~bayesinv.methods.cond_score.CondScoreNet` with an empty condition.

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

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bayesinv.diffusion import predictor_corrector
from bayesinv.methods.cond_score import CondScoreConfig, CondScoreNet, _dsm_loss, _net_spec
from bayesinv.posterior import AmortizedPosterior, Layout, Normalizer, _apply_transforms, resolve_device, training_data
from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import register_method
from bayesinv.training import train

__all__ = ["CSDStarPosterior", "csd_star", "choose_insert_step"]

_SAMPLE_OPTIONS = {"insert_step", "steps", "corrector_steps", "snr", "t_min", "denoise", "solver", "start", "chunk_size", "gn_options"}


class CSDStarPosterior(AmortizedPosterior):
    r"""CSD*: an unconditional score prior's reverse process started from a reconstruction.

    Sampler options of :meth:`sample` / :meth:`infer`: ``insert_step`` (K′), ``steps``
    (K, default 1000), ``corrector_steps`` (default 1), ``snr`` (default 0.16),
    ``t_min``, ``denoise`` (final Tweedie step, default ``True``), ``solver`` (overrides
    :attr:`solver`), ``gn_options`` (passed to ``solver.gauss_newton``), ``start``
    (precomputed reconstructions ``(*B, *target shape)`` instead of the solver) and
    ``chunk_size``.

    Attributes:
        solver: The object whose ``gauss_newton(y, **options)`` gives the starting
            reconstruction (not saved; set it again after loading).
    """

    method = "csd_star"

    def __init__(self, net: nn.Module, *, solver: Any = None, **kw: Any):
        super().__init__(net, **kw)
        self.solver = solver

    @classmethod
    def build_net(cls, config: Mapping[str, Any]) -> nn.Module:
        return CondScoreNet(config["net"])

    @property
    def process(self):
        return self.net.process

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
        v = _apply_transforms({name: v}, self.transforms)[name]
        return self.x_norm(self.target.flatten({name: v}).to(self.device))

    def _sample(self, c: Tensor, n: int, generator: torch.Generator | None, **options) -> tuple[Tensor, dict]:
        unknown = sorted(set(options) - _SAMPLE_OPTIONS)
        if unknown:
            raise ProblemError(f"csd_star has no sampler option(s) {unknown}; its options are {sorted(_SAMPLE_OPTIONS)}")
        steps = int(options.get("steps") or self.config["steps"])
        insert_step = int(options.get("insert_step") or self.insert_step)
        t_min = float(options.get("t_min") or self.config["t_min"])
        t_start = self.insert_time(insert_step, steps, t_min)
        if options.get("start") is not None:
            x_gn = self._normalise_start(options["start"])
        else:
            # c is the raw observation (the condition normaliser is the identity)
            x_gn = self.reconstruct(c.cpu().numpy(), options.get("solver"), **dict(options.get("gn_options") or {}))
        B, D = c.shape[0], self.target.dim
        if x_gn.shape[0] != B:
            raise ProblemError(f"start= holds {x_gn.shape[0]} reconstructions for {B} observations")
        x0 = x_gn.repeat_interleave(n, 0)
        proc = self.process
        t = torch.tensor(t_start)
        z = torch.randn(x0.shape, generator=generator, device=self.device)
        x = proc.mean_scale(t).item() * x0 + proc.sigma(t).item() * z
        empty = torch.zeros(0, device=self.device)
        score_fn = lambda x_, level: self.net(x_, empty, level)  # noqa: E731
        chunk = int(options.get("chunk_size") or 512)
        out, nfe = [], 0
        for a in range(0, len(x), chunk):
            res = predictor_corrector(
                score_fn, x[a : a + chunk], proc, steps=insert_step, t_start=t_start,
                corrector_steps=int(options.get("corrector_steps", self.config["corrector_steps"])),
                snr=float(options.get("snr", self.config["snr"])), t_min=t_min,
                denoise=bool(options.get("denoise", True)), generator=generator,
            )  # fmt: skip
            out.append(res.x)
            nfe = max(nfe, res.nfe)
        stats = {"sampler": "pc", "insert_step": insert_step, "steps": steps, "t_insert": t_start, "nfe": nfe,
                 "sigma_insert": float(proc.sigma(t))}  # fmt: skip
        return torch.cat(out).reshape(B, n, D), stats

    def sample_and_log_prob(self, y: Any, n: int):
        raise ProblemError("a csd_star posterior has no density; sample it with post.sample / post.infer")


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
        start = _apply_transforms({post.target.names[0]: start}, post.transforms, inverse=True)[post.target.names[0]]
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


@register_method("csd_star", amortized=True, loader=CSDStarPosterior.from_saved)
def csd_star(
    problem: Problem,
    *,
    target: tuple[str, ...],
    seed: int | None = 0,
    progress: bool | None = None,
    num_simulations: int | None = None,
    data: Any = None,
    solver: Any = None,
    insert_step: int = 600,
    steps: int = 1000,
    corrector_steps: int = 1,
    snr: float = 0.16,
    gn_options: Mapping[str, Any] | None = None,
    transforms: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    device: str | torch.device | None = "auto",
    config: CondScoreConfig | None = None,
    **overrides: Any,
) -> CSDStarPosterior:
    r"""Fits the unconditional score prior of CSD* on target images only.

    Arguments:
        problem: The traced problem (one observed site, one 2-D field target).
        target: The target site (one field, e.g. ``"sigma"``).
        seed: Seed of the simulations, the initial weights and the training noise.
        progress: Show progress bars.
        num_simulations: Prior draws to simulate now, or the most of ``data`` to use.
        data: A dataset from :func:`bayesinv.simulate` (only the target is read).
        solver: Object with ``gauss_newton(y, **options)`` (kept on the posterior, not saved).
        insert_step: K′, the step of K at which the reconstruction is inserted.
        steps: K, the steps of the full reverse process.
        corrector_steps, snr: Langevin corrector steps per predictor step and its r.
        gn_options: Options of ``solver.gauss_newton`` (JSON-able; saved).
        transforms: Site → ``"log"``/``"log10"`` applied to the target before normalisation.
        checkpoint, resume: Training checkpoint (see :func:`bayesinv.training.train`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        config: Network, process and training settings (:class:`CondScoreConfig`;
            ``process`` ``"ve"`` or ``"vp"``).
        overrides: Fields of ``config`` (``max_epochs=``, ``base_channels=``, ...).

    Returns:
        A :class:`CSDStarPosterior`.
    """
    t0 = time.perf_counter()
    cfg = dataclasses.replace(config or CondScoreConfig(), **overrides)
    if cfg.process not in ("ve", "vp"):
        raise ProblemError(f"csd_star needs a continuous-time process ('ve' or 'vp'), got {cfg.process!r}")
    seed = 0 if seed is None else int(seed)
    dev = resolve_device(device)
    observed = tuple(n for n in problem.observed if n not in problem.fixed_observed)
    target = tuple(n for n in target if n not in observed)
    if len(observed) != 1 or len(target) != 1 or len(problem.sites[target[0]].shape) not in (2, 3):
        raise ProblemError(
            f"csd_star takes one observed site and one 2-D field target; got observed {list(observed)}, target {list(target)}"
        )
    if not 0 < int(insert_step) <= int(steps):
        raise ProblemError(f"insert_step K' must lie in 1..steps = {steps}, got {insert_step}")
    arrays, n = training_data(problem, target, (), num_simulations=num_simulations, data=data, seed=seed, progress=progress)
    arrays = _apply_transforms({k: v.float() for k, v in arrays.items()}, dict(transforms or {}))
    t_layout = Layout(target, (problem.sites[target[0]].shape,))
    c_layout = Layout(observed, (problem.sites[observed[0]].shape,))
    x = t_layout.flatten(arrays)
    x = x[torch.isfinite(x).all(-1)]
    x_norm = Normalizer.fit(x, kind=cfg.normalization, groups=t_layout.groups())
    c_norm = Normalizer(torch.zeros(c_layout.dim), torch.ones(c_layout.dim))  # raw y goes to the solver
    x = x_norm(x)
    proc = cfg.process_spec()
    spec = _net_spec(dataclasses.replace(cfg, network="unet", embedding="auto"), t_layout, Layout((), ()), proc)
    settings = cfg.to_json()
    settings.update(net=spec, insert_step=int(insert_step), steps=int(steps), corrector_steps=int(corrector_steps),
                    snr=float(snr), gn_options=dict(gn_options or {}))  # fmt: skip

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = CondScoreNet(spec)
        net.set_statistics(x, x.new_zeros(len(x), 0))  # input preconditioning; no condition
        net = net.to(dev)
        process_ = net.process
        empty = torch.zeros(0, device=dev)
        loss_fn = lambda module, x0: _dsm_loss(module, x0, empty, process_, cfg.t_min, cfg.time_sampling)  # noqa: E731
        result = train(loss_fn, net, (x,), config=cfg.train_config(seed=seed, device=dev, progress=progress),
                       checkpoint_path=checkpoint, resume=resume)  # fmt: skip
    trained = result.ema_model if result.ema_model is not None else result.model
    info = {
        "num_simulations": n,
        "num_train_images": int(len(x)),
        "fit_time_s": time.perf_counter() - t0,
        "train_time_s": result.wall_time,
        "train_steps": result.steps,
        "best_val_loss": None if math.isnan(result.best_val) else result.best_val,
        "stopped_early": bool(result.stopped_early),
    }
    return CSDStarPosterior(
        trained, solver=solver, target=t_layout, condition=c_layout, x_norm=x_norm, c_norm=c_norm, transforms=transforms,
        observed=observed, obs_keys={k: problem.obs_keys.get(k) for k in observed}, config=settings, info=info, device=dev,
    )  # fmt: skip
