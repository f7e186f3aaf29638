r"""A learned score prior guided by the model's likelihood: ``method="score_prior"``.

An *unconditional* score network :math:`s_\phi(x, t) \approx \nabla_x \log p_t(x)` learns the
prior of the target from target draws alone (:mod:`bayesinv.amortized.prior_only`: the model
run only up to its target sites, or ``data=``), by denoising score matching,

.. math:: \mathcal{L}(\phi) = E_{t,\, x_0 \sim p(x),\, z} \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, t) + z \big\|^2 ,

and the observation enters only when sampling, so one trained prior serves every
measurement operator and noise level. The reverse process (reverse-diffusion predictor,
optional Langevin corrector, VE or VP) is guided by one of:

- ``guidance="dps"`` — diffusion posterior sampling (Chung et al. 2023): the score is
  :math:`s_\phi(x_t, t) + \zeta\, \nabla_{x_t} \log p(y \mid \hat x_0(x_t))` with Tweedie's
  denoiser :math:`\hat x_0 = (x_t + \sigma^2(t) s_\phi) / m(t)`. The log-likelihood is the
  model's own: the model is run with its target sites set to :math:`\hat x_0` and
  conditioned on y, and the log-densities of its observation sites are differentiated by
  autograd — any noise law the model states (Gaussian, Poisson, ``WrappedPhase``,
  truncated) through any differentiable torch forward map. ζ is ``step_size`` (1: the DPS
  approximation :math:`p(y \mid x_t) \approx p(y \mid \hat x_0(x_t))` as it stands). DPS is
  approximate by construction (it ignores the spread of :math:`x_0` given :math:`x_t`).
- ``guidance="consistency"`` — the data-consistency step of eqs. 43–45 of the
  generative-models overview (Song et al. 2022) for a linear measurement
  :math:`y = P(\Lambda) M x + \varepsilon`, given as a :class:`LinearOperator`
  ``(forward M, adjoint M^\dagger, mask \Lambda)``: before every step
  :math:`\tilde y(t) = m(t) y + \sigma(t) P(\Lambda) M z` (45a) and
  :math:`x' = M^\dagger[\lambda P^\dagger \tilde y + (1 - \lambda) \Lambda M x + (I - \Lambda) M x]`
  (45b), then the predictor step (45c). λ (``lam``) is chosen on validation pairs by
  :func:`choose_lambda`. It does not use the model's likelihood.
- ``guidance="none"`` — draws of the learned prior (a check of the network).

DPS needs gradients through the model: a model that calls a black-box
:func:`bayesinv.simulator` is refused (use ``method="cond_score"`` — simulations only — or
``"csd_star"``). Options: the fields of :class:`ScorePriorConfig` (fit) and
:class:`ScorePriorSampler` (sampling).

Example:
    >>> ct = bayesinv.models.imaging.SparseViewCT(size=32, views=16)
    >>> post = bayesinv.fit(ct.model, method="score_prior", target="x", num_simulations=20_000)
    >>> draws = post.sample(y, 16, guidance="dps")["x"]                        # (16, 32, 32)
    >>> draws = post.sample(y, 16, guidance="consistency", operator=ct.operator, lam=0.9)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout, apply_transforms
from bayesinv.amortized.likelihood import check_likelihood as _check_likelihood
from bayesinv.amortized.likelihood import model_log_likelihood
from bayesinv.amortized.method import (
    AmortizedMethod, ScoreNetOptions, TrainOptions, check_choice, check_float, check_int, register_amortized, to_json,
)  # fmt: skip
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.amortized.prior_only import prepare_prior_pairs
from bayesinv.diffusion import tweedie_denoise
from bayesinv.diffusion.samplers import _randn_like, _reverse_step, _times
from bayesinv.errors import OptionError, ProblemError
from bayesinv.methods.cond_score import score_loss
from bayesinv.nets.score import CondScoreNet, make_process, net_spec
from bayesinv.problem import Problem

__all__ = [
    "ScorePriorConfig", "ScorePriorSampler", "ScorePriorPosterior", "LinearOperator", "SCORE_PRIOR", "GUIDANCES",
    "model_log_likelihood", "guided_reverse", "choose_lambda",
]  # fmt: skip

GUIDANCES = ("dps", "consistency", "none")


class LinearOperator(NamedTuple):
    r"""A linear measurement :math:`y = P(\Lambda) M x` as eq. 42 writes it.

    Attributes:
        forward: :math:`M`: target values ``(*, *target shape)`` → the full measurement
            ``(*, *full shape)`` (every view's sinogram, the whole k-space as real and
            imaginary parts), a differentiable torch function.
        adjoint: :math:`M^\dagger`: ``(*, *full shape)`` → ``(*, *target shape)``, a left
            inverse of ``forward`` (:math:`M^\dagger M = I`: the adjoint of a unitary M such as
            the orthonormal FFT, the pseudo-inverse of the full-view Radon transform). With the
            plain adjoint of a non-unitary M the step is a Landweber step of length λ.
        mask: :math:`\Lambda`: a boolean tensor of the full shape; the observation is
            ``forward(x)[..., mask]`` (the measured entries in row-major order).
    """

    forward: Callable[[Tensor], Tensor]
    adjoint: Callable[[Tensor], Tensor]
    mask: Tensor

    def measure(self, x: Tensor, full_ndim: int | None = None) -> Tensor:
        r""":math:`P(\Lambda) M x`: ``(*, *target shape)`` → ``(*, m)`` (m = the mask's count)."""
        full = self.forward(x)
        nd = self.mask.dim() if full_ndim is None else full_ndim
        return full[..., self.mask.to(full.device)] if nd else full

    def zero_fill(self, y: Tensor) -> Tensor:
        r""":math:`P^\dagger(\Lambda) y`: ``(*, m)`` → ``(*, *full shape)``, zeros where not measured."""
        mask = self.mask.to(y.device)
        out = y.new_zeros(*y.shape[:-1], *mask.shape)
        out[..., mask] = y
        return out


@dataclass(frozen=True)
class ScorePriorConfig(ScoreNetOptions, TrainOptions):
    r"""Fit options of ``method="score_prior"`` (with the fields of
    :class:`~bayesinv.amortized.method.TrainOptions` and :class:`~bayesinv.amortized.method.ScoreNetOptions`).

    Arguments:
        process: ``"ve"`` (γ(t) = σ_max^{2t}) or ``"vp"`` (linear β).
        sigma_max: σ_max of the VE process.
        beta_min, beta_max: β(0) and β(1) of the VP process.
        network: ``"auto"`` (a U-Net for one 2-D field target, else an MLP), ``"mlp"`` or ``"unet"``.
        t_min: Smallest diffusion time (training and the default of sampling).
        time_sampling: ``"uniform"`` or ``"mixed"`` (half log-uniform) training times.
        normalization: ``"standard"`` (default: the likelihood's curvature in normalised units stays
            moderate, see ``step_rule``), ``"minmax"`` or ``"none"`` of the target.
        steps, corrector_steps, snr, step_size, step_rule, lam: Sampling defaults saved with the prior
            (see :class:`ScorePriorSampler`).
    """

    process: str = "ve"
    sigma_max: float = 5.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    time_sampling: str = "mixed"
    normalization: str = "standard"
    steps: int = 500
    corrector_steps: int | None = None
    snr: float = 0.16
    step_size: float = 1.0
    step_rule: str = "plain"
    lam: float = 1.0

    def __post_init__(self):
        self.check_training()
        self.check_network()
        check_choice(self, "process", ("ve", "vp"))
        check_choice(self, "time_sampling", ("uniform", "mixed"))
        for name in ("sigma_max", "beta_min", "beta_max", "snr"):
            check_float(self, name, low=0.0, open_low=True)
        if self.process == "ve" and not self.sigma_max > 1:
            raise OptionError(f"ScorePriorConfig: option sigma_max={self.sigma_max!r} is not allowed; the VE process needs sigma_max > 1")
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True)
        check_int(self, "steps")
        check_int(self, "corrector_steps", minimum=0, none=True)
        check_float(self, "step_size", low=0.0)
        check_choice(self, "step_rule", ("plain", "normalized"))
        check_float(self, "lam", low=0.0, high=1.0)

    def process_spec(self) -> dict[str, Any]:
        r"""The forward process as the JSON-able spec of the network."""
        if self.process == "ve":
            return {"kind": "ve", "sigma_max": self.sigma_max}
        return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class ScorePriorSampler:
    r"""Sampling options of ``method="score_prior"`` (``None``: the fitted default).

    Arguments:
        guidance: ``"dps"`` (default), ``"consistency"`` or ``"none"`` (prior draws).
        step_size: DPS: ζ (the fit's ``step_size``): the weight of the likelihood gradient in the
            score (``step_rule="plain"``) or the length of the scale-free step (``"normalized"``).
        step_rule: DPS: ``"plain"`` — the score :math:`s + \zeta \nabla_{x_t} \log p(y \mid \hat x_0)`
            in every predictor step (stable while :math:`g\,\Delta t` times the likelihood's
            curvature stays below 2: precise likelihoods need many steps); ``"normalized"`` —
            Chung et al.'s scale-free step added after each predictor step,
            :math:`\zeta \nabla_{x_t} \log p / \|\nabla_{\hat x_0} \log p\|` (for a Gaussian law
            their :math:`-\zeta \nabla \|y - A \hat x_0\|` up to the factor
            :math:`\|y - A\hat x_0\| / \|A^T(y - A\hat x_0)\|`). Default: the fit's.
        operator: Consistency: the :class:`LinearOperator` ``(forward, adjoint, mask)``.
        lam: Consistency: λ ∈ [0, 1] of eq. 44 (the posterior's ``lam``, see :func:`choose_lambda`).
        steps: Predictor steps from t = 1 to ``t_min`` (500).
        corrector_steps, snr: Langevin corrector steps per predictor step and its r (0.16); default
            0 for DPS, 1 for the consistency step (which needs them: without a corrector eq. 45's
            replacement leaves the unmeasured part of x biased, see docs/score_prior.md).
        t_min: The final time (the fit's).
        denoise: Final Tweedie step with the (guided) score (``True``).
        chunk_size: Draws per network batch (MLP 4,096, U-Net 256).
    """

    guidance: str | None = None
    step_size: float | None = None
    step_rule: str | None = None
    operator: Any = None
    lam: float | None = None
    steps: int | None = None
    corrector_steps: int | None = None
    snr: float | None = None
    t_min: float | None = None
    denoise: bool | None = None
    chunk_size: int | None = None

    def __post_init__(self):
        check_choice(self, "guidance", (None, *GUIDANCES))
        check_float(self, "step_size", low=0.0, none=True)
        check_choice(self, "step_rule", (None, "plain", "normalized"))
        check_float(self, "lam", low=0.0, high=1.0, none=True)
        for name in ("steps", "chunk_size"):
            check_int(self, name, none=True)
        check_int(self, "corrector_steps", minimum=0, none=True)
        check_float(self, "snr", low=0.0, open_low=True, none=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True, none=True)
        check_choice(self, "denoise", (None, True, False))
        guidance = self.guidance or "dps"
        if guidance == "consistency":
            op = self.operator
            if not (isinstance(op, tuple) and len(op) == 3 and callable(op[0]) and callable(op[1]) and isinstance(op[2], Tensor)
                    and op[2].dtype == torch.bool):  # fmt: skip
                raise OptionError(
                    "guidance='consistency' needs operator=LinearOperator(forward, adjoint, mask): two callables and a"
                    f" boolean torch mask of the full measurement's shape; got {op!r:.120}"
                )
        elif self.operator is not None or self.lam is not None:
            raise OptionError(f"options operator= and lam= belong to guidance='consistency', not guidance={guidance!r}")
        if guidance != "dps" and (self.step_size is not None or self.step_rule is not None):
            raise OptionError(f"options step_size= and step_rule= belong to guidance='dps', not guidance={guidance!r}")


def _corrector_steps(settings: Mapping[str, Any], scfg: ScorePriorSampler, guidance: str) -> int:
    if scfg.corrector_steps is not None:
        return int(scfg.corrector_steps)
    if settings.get("corrector_steps") is not None:
        return int(settings["corrector_steps"])
    return 1 if guidance == "consistency" else 0


def check_sample(settings: Mapping[str, Any], scfg: ScorePriorSampler, given: set) -> None:
    r"""Refuses a corrector's ``snr`` without corrector steps."""
    if "snr" in given and _corrector_steps(settings, scfg, scfg.guidance or "dps") == 0:
        raise OptionError("option snr= is the Langevin corrector's; give corrector_steps >= 1 with it")


# -- the model's log-likelihood --------------------------------------------------------------
def check_likelihood(problem: Problem, target: Sequence[str], what: str = "guidance='dps'") -> None:
    r"""Refuses a model whose likelihood cannot be differentiated with the target set: a black-box
    simulator, an implicit observation, a NumPyro model, or a latent site after the target."""
    _check_likelihood(problem, target, f"score_prior with {what}", "method='cond_score' (trained on simulations only) or"
                      " 'csd_star' (a prior started from a classical reconstruction), or guidance='consistency' with a"
                      " linear operator")


# -- the sampler ----------------------------------------------------------------------------
def guided_reverse(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    process: Any,
    *,
    steps: int = 500,
    t_min: float = 1e-3,
    corrector_steps: int = 0,
    snr: float = 0.16,
    project: Callable[[Tensor, Tensor], Tensor] | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    r"""The reverse-diffusion predictor (with an optional Langevin corrector) from t = 1 to ``t_min``,
    with ``project(x, t)`` (a data-consistency step, eq. 45b) before every predictor and corrector step.

    Arguments:
        score_fn: The (guided) score :math:`s(x, t)`, or ``(s, shift)`` where ``shift`` is added to
            ``x`` after the predictor step (the scale-free DPS step).
        x: Samples of :math:`p_1` ``(*, *event)``.
        process: The forward process (VE or VP).
        steps: Predictor steps (on the grid uniform in :math:`\sqrt{t - t_{min}}`).
        t_min: The final time.
        corrector_steps, snr: Langevin corrector steps per predictor step and their r.
        project: ``project(x, t) -> x`` or ``None``.
        denoise: Finish with Tweedie's step (after a last projection).
        generator: The random generator.

    Returns:
        The samples and the number of score evaluations.
    """
    def split(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        out = score_fn(x, t)
        return out if isinstance(out, tuple) else (out, None)

    ts = _times(x, steps, t_min)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        b_dt = process.integral_b(t) - process.integral_b(t_next)
        g_dt = process.integral_g(t) - process.integral_g(t_next)
        for _ in range(corrector_steps):
            x = x if project is None else project(x, t)
            s, z = split(x, t)[0], _randn_like(x, generator)
            delta = 2 * torch.exp(-b_dt) * (snr * z.norm() / s.norm().clamp_min(1e-30)) ** 2
            x = x + delta * s + (2 * delta).sqrt() * z
        x = x if project is None else project(x, t)
        s, shift = split(x, t)
        x = _reverse_step(x, s, b_dt, g_dt, 1.0, generator)
        if shift is not None:
            x = x + shift
    nfe = steps * (corrector_steps + 1)
    if project is not None:
        x = project(x, ts[-1])
    if denoise:
        x = tweedie_denoise(lambda x_, t_: split(x_, t_)[0], x, ts[-1], process)
        nfe += 1
    return x, nfe


class ScorePriorPosterior(AmortizedPosterior):
    r"""A learned score prior with guided sampling; ``lam`` is the default λ of the consistency step."""

    @property
    def process(self):
        return make_process(self.config["net"]["process"])

    @property
    def lam(self) -> float:
        r"""The default λ of ``guidance="consistency"`` (set by :func:`choose_lambda`)."""
        return float(self.config["lam"])

    @lam.setter
    def lam(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise OptionError(f"lam must lie in [0, 1], got {value!r}")
        self.config["lam"] = float(value)

    def attach(self, model: Any, *, observed: Sequence[str] | None = None) -> "ScorePriorPosterior":
        r"""Keeps ``model`` for its likelihood (DPS) and deterministic sites; its observed sites become
        this prior's observation layout, so a model with another operator or noise level — the same
        target sites — reuses the prior without retraining.

        Arguments:
            model: A Pyro model (or traced problem) with the prior's target sites.
            observed: Its observed site names, where they cannot be found automatically.

        Returns:
            The posterior itself.
        """
        super().attach(model, observed=observed)
        problem = self.problem
        obs = tuple(n for n in problem.observed if n not in problem.fixed_observed)
        if not obs:
            raise ProblemError("the model has no observed site: a prior is guided by the observation of the model")
        self.condition = Layout(obs, tuple(problem.sites[n].shape for n in obs))
        self.c_norm = type(self.c_norm)(torch.zeros(self.condition.dim), torch.ones(self.condition.dim)).to(self.device)
        self.observed, self.obs_keys = obs, {k: problem.obs_keys.get(k) for k in obs}
        return self

    def to_site(self, u: Tensor) -> dict[str, Tensor]:
        r"""Normalised flat rows ``(R, D)`` → target site values in model units (differentiable)."""
        return apply_transforms(self.target.unflatten(self.x_norm.inverse(u)), self.transforms, inverse=True)

    def _dps_score(self, y: Mapping[str, Tensor], zeta: float, rule: str) -> Callable[[Tensor, Tensor], Any]:
        problem, process, empty = self.problem, self.process, torch.zeros(0, device=self.device)

        def score(x: Tensor, t: Tensor) -> Any:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                s = self.net(x, empty, t)
                x0 = (x + process.sigma_sq(t) * s) / process.mean_scale(t)
                ll = model_log_likelihood(problem, self.to_site(x0), y)
                grad, grad_x0 = torch.autograd.grad(ll.sum(), (x, x0))
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # rows outside the law's support: no guidance
            if rule == "plain":
                return s.detach() + zeta * grad
            norm = torch.nan_to_num(grad_x0, nan=0.0, posinf=0.0, neginf=0.0).flatten(1).norm(dim=1, keepdim=True)
            return s.detach(), zeta * grad / norm.clamp_min(1e-12)

        return score

    def _projection(self, y_flat: Tensor, op: LinearOperator, lam: float, generator) -> Callable[[Tensor, Tensor], Tensor]:
        r"""Eqs. 45a–b on normalised rows, in centred site units :math:`w = x - \text{shift}` (M is linear)."""
        (shape,), process = self.target.shapes, self.process
        scale, shift = self.x_norm.scale, self.x_norm.shift
        full_nd = op.mask.dim()
        y_c = y_flat - op.measure(shift.reshape(shape), full_nd)  # the measurement of w = x - shift
        if y_c.shape[-1] != y_flat.shape[-1]:
            raise ProblemError(f"operator measures {y_c.shape[-1]} values, the observation holds {y_flat.shape[-1]}")

        def project(x: Tensor, t: Tensor) -> Tensor:
            rows = x.shape[0]
            z = _randn_like(x, generator)
            y_t = process.mean_scale(t) * y_c + process.sigma(t) * op.measure((scale * z).reshape(rows, *shape), full_nd)
            w = (scale * x).reshape(rows, *shape)
            mask = op.mask.to(x.device)
            resid = op.zero_fill(y_t) - mask * op.forward(w)
            w = w + lam * op.adjoint(resid).real.reshape(rows, *shape)
            return w.reshape(rows, -1) / scale

        return project


def build(cfg: ScorePriorConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The unconditional score network (MLP for vectors, U-Net for one field) and its saved settings."""
    spec = net_spec(cfg, pairs.target, Layout((), ()), cfg.process_spec())
    net = CondScoreNet(spec)
    net.set_statistics(pairs.x, pairs.x.new_zeros(len(pairs.x), 0))  # input preconditioning; no condition
    return net, {**to_json(cfg), "net": spec}


def loss(cfg: ScorePriorConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the unconditional DSM loss (``c`` is empty)."""
    process, empty = make_process(settings["net"]["process"]), torch.zeros(0, device=next(net.parameters()).device)
    return lambda module, x0, c0: score_loss(module, x0, empty, process, cfg.t_min, cfg.time_sampling)


def sample(post: ScorePriorPosterior, c: Tensor, n: int, generator: torch.Generator, scfg: ScorePriorSampler) -> tuple[Tensor, dict]:
    r"""Guided reverse diffusion, observation by observation: ``(B, n, D)`` and the sampler's stats."""
    cfg = post.config
    guidance = scfg.guidance or "dps"
    get = lambda name: cfg[name] if getattr(scfg, name) is None else getattr(scfg, name)  # noqa: E731
    steps, t_min, snr = int(get("steps")), float(get("t_min")), float(get("snr"))
    corrector = _corrector_steps(cfg, scfg, guidance)
    denoise = True if scfg.denoise is None else bool(scfg.denoise)
    chunk = int(scfg.chunk_size or (4096 if cfg["net"]["network"] == "mlp" else 256))
    if guidance == "dps":
        if post.problem is None:
            raise ProblemError("guidance='dps' needs the model's likelihood: call post.attach(model) after bayesinv.load")
        check_likelihood(post.problem, post.target.names)
    if guidance == "consistency":
        if len(post.target.names) != 1 or post.transforms:
            raise ProblemError("guidance='consistency' needs one target site without transforms (the operator acts on it linearly)")
        if len(post.condition.names) != 1:
            raise ProblemError(f"guidance='consistency' needs one observed site; this prior has {list(post.condition.names)}")
    process, empty = post.process, torch.zeros(0, device=post.device)
    B, D = c.shape[0], post.target.dim
    out, nfe = [], 0
    for b in range(B):
        project, score_fn = None, lambda x_, t_: post.net(x_, empty, t_)  # noqa: E731
        if guidance == "dps":
            y = {k: v.to(post.device) for k, v in post.condition.unflatten(c[b]).items()}
            score_fn = post._dps_score(y, float(get("step_size")), str(get("step_rule")))
        elif guidance == "consistency":
            lam = post.lam if scfg.lam is None else float(scfg.lam)
            project = post._projection(c[b], scfg.operator, lam, generator)
        rows = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = torch.randn((m, D), generator=generator, device=post.device)
            x = process.mean_scale(1.0).item() * post.net.x_mean + process.sigma(1.0).item() * z
            x, k = guided_reverse(score_fn, x, process, steps=steps, t_min=t_min, corrector_steps=corrector, snr=snr,
                                  project=project, denoise=denoise, generator=generator)  # fmt: skip
            if not torch.isfinite(x).all() or x.abs().max() > 1e4:  # normalised targets are of order 1
                raise ProblemError(
                    f"guided sampling diverged (non-finite draws) with guidance={guidance!r}, {steps} steps"
                    + (f", step_rule={get('step_rule')!r}, step_size={get('step_size')}: use more steps, a smaller step_size or"
                       " step_rule='normalized'" if guidance == "dps" else "")
                )
            rows.append(x.detach())
            nfe = max(nfe, k)
        out.append(torch.cat(rows))
    stats = {"sampler": "guided_reverse", "guidance": guidance, "steps": steps, "corrector_steps": corrector, "nfe": nfe,
             "t_min": t_min, "sigma_max": float(process.sigma(1.0)), "sigma_min": float(process.sigma(t_min))}  # fmt: skip
    if guidance == "dps":
        stats.update(step_size=float(get("step_size")), step_rule=str(get("step_rule")))
    if guidance == "consistency":
        stats["lam"] = post.lam if scfg.lam is None else float(scfg.lam)
    return torch.stack(out), stats


def choose_lambda(
    post: ScorePriorPosterior,
    y: Any,
    truth: Any,
    operator: LinearOperator,
    candidates: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
    *,
    num_samples: int = 4,
    seed: int = 0,
    update: bool = True,
    **options: Any,
) -> tuple[float, dict[float, float]]:
    r"""Chooses eq. 44's λ on validation pairs: the λ whose posterior mean (of ``num_samples`` draws
    per observation) has the smallest mean squared error against the truth — a grid search where
    the overview tunes λ by Bayesian optimisation.

    Arguments:
        post: The fitted prior.
        y: Validation observations ``(B, *obs shape)``.
        truth: Their targets ``(B, *target shape)``.
        operator: The :class:`LinearOperator` of these observations.
        candidates: The λ values to try (each in [0, 1]).
        num_samples: Draws per observation whose mean is scored.
        seed: Seed of the draws (the same for every candidate).
        update: Set ``post.lam`` to the best λ.
        options: Further sampling options (``steps``, ...).

    Returns:
        The best λ and the mean squared error of each candidate.
    """
    name = post.target.names[0]
    truth = torch.as_tensor(np.asarray(truth)).float()
    table = {}
    for lam in candidates:
        draws = post.sample(y, num_samples, seed=seed, guidance="consistency", operator=operator, lam=float(lam), **options)[name]
        table[float(lam)] = float((draws.mean(-1 - len(post.target.shapes[0])) - truth).pow(2).mean())
    best = min(table, key=table.get)
    if update:
        post.lam = best
    return best, table


SCORE_PRIOR = register_amortized(AmortizedMethod(
    name="score_prior", config=ScorePriorConfig, sampler_config=ScorePriorSampler, build=build,
    rebuild=lambda settings: CondScoreNet(settings["net"]), loss=loss, sample=sample, check_sample=check_sample,
    conditional=False, posterior=ScorePriorPosterior, pairs=prepare_prior_pairs,
    no_density="a score_prior posterior has no density; sample it with post.sample / post.infer",
    saved_keys=("process", "t_min", "steps", "corrector_steps", "snr", "step_size", "step_rule", "lam", "net"),
))  # fmt: skip
