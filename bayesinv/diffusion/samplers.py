r"""Samplers for score-based diffusion models, as pure functions over tensors.

Every sampler takes ``score_fn(x, t_or_sigma) -> score`` (conditioning on an observation
is closed over by the caller), an initial ``x`` with any shape ``(*, *event)``, a noise
schedule, and ``generator=None, callback=None``; it returns a :class:`SampleResult`
``(x, nfe)``, ``nfe`` being the number of score evaluations. The time or noise level is
passed to ``score_fn`` as a 0-dim tensor of ``x``'s dtype; networks broadcast it.
Samplers run under :func:`torch.no_grad`; a ``score_fn`` that differentiates (a
likelihood gradient, say) wraps its body in :func:`torch.enable_grad`.

Continuous-time samplers follow "Unifying and extending diffusion models through PDEs":
forward time :math:`t \in [0, 1]`, data at :math:`t = 0`; the reverse process runs in
:math:`\tau = 1 - t` from ``x`` :math:`\sim p_1` (for instance
:meth:`~bayesinv.diffusion.sde.Process.prior_sample`) down to :math:`t_{min}`, with the
α-family of eq. 41,

.. math:: dx_\tau = \Big(\frac{b(t)}{2} x + \frac{(1+\alpha) g(t)}{2} s(x, t)\Big) d\tau
          + \sqrt{\alpha g(t)}\, dw_\tau ,

α = 1 the reverse SDE, α = 0 the probability-flow ODE (eq. 44).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import Tensor

from bayesinv.diffusion.ode import LogProbResult, dopri5, log_prob_ode
from bayesinv.diffusion.sde import Process, process_from_spec

__all__ = [
    "SampleResult",
    "annealed_langevin",
    "reverse_sde",
    "probability_flow_ode",
    "predictor_corrector",
    "tweedie_denoise",
    "probability_flow_log_prob",
    "flow_matching_ode",
    "flow_matching_log_prob",
    "reverse_sample",
    "initial_draws",
    "step_time",
    "reverse_from",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]


class SampleResult(NamedTuple):
    r"""A sampler's output: the samples ``x`` and the number ``nfe`` of score evaluations."""

    x: Tensor
    nfe: int


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _langevin_step(score_fn: ScoreFn, x: Tensor, level: Tensor, alpha: Tensor, generator) -> Tensor:
    r"""One Langevin step :math:`x + \tfrac{\alpha}{2} s(x, \cdot) + \sqrt{\alpha} z`."""
    s = score_fn(x, level)
    return x + 0.5 * alpha * s + alpha.sqrt() * _randn_like(x, generator)


def _reverse_step(x: Tensor, s: Tensor, b_dt: Tensor, g_dt: Tensor, alpha: float, generator) -> Tensor:
    r"""One step of eq. 42: :math:`x + (\tfrac{b}{2} x + \tfrac{(1+\alpha) g}{2} s)\Delta\tau
    + \sqrt{\alpha g \Delta\tau} z`, with ``b_dt``, ``g_dt`` the increments :math:`b\Delta\tau`,
    :math:`g\Delta\tau`."""
    x = x + 0.5 * b_dt * x + 0.5 * (1 + alpha) * g_dt * s
    if alpha > 0:
        x = x + (alpha * g_dt).sqrt() * _randn_like(x, generator)
    return x


def _velocity(score_fn: ScoreFn, x: Tensor, t: Tensor, process: Process) -> Tensor:
    r"""The probability-flow velocity :math:`\tfrac{b}{2} x + \tfrac{g}{2} s(x, t)` (eq. 44)."""
    return 0.5 * process.drift_coef(t) * x + 0.5 * process.diffusion_sq(t) * score_fn(x, t)


def _times(x: Tensor, steps: int, t_min: float, t_start: float = 1.0) -> Tensor:
    r"""``steps + 1`` times from ``t_start`` down to ``t_min``, uniform in :math:`\sqrt{t - t_{min}}`.

    Near t = 0 both VE and VP have σ(t)² ∝ t, so the grid is about uniform in σ: the last
    Euler–Maruyama steps, whose injected noise is g √Δt, stay below the noise level they
    leave (a uniform grid in t jumps from σ ≈ √Δt straight to σ(t_min) in one step).
    """
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=x.dtype, device=x.device)
    return t_min + (t_start - t_min) * u.square()


def step_time(step: int, steps: int, t_min: float) -> float:
    r"""The time :math:`t' = t_{min} + (1 - t_{min}) (k/K)^2` of step :math:`k` of the :math:`K`-step grid of
    :func:`reverse_sde` and :func:`predictor_corrector` (uniform in :math:`\sqrt{t - t_{min}}`): the
    :math:`k` steps from :math:`t'` (``t_start``) are exactly the last :math:`k` of the :math:`K`-step process."""
    return t_min + (1.0 - t_min) * (step / steps) ** 2


def _finish(score_fn: ScoreFn, x: Tensor, t: Tensor, process: Process, nfe: int, denoise: bool) -> SampleResult:
    r"""A sampler's result after its last step at time ``t``: with :func:`tweedie_denoise` when ``denoise`` (one more evaluation)."""
    if denoise:
        return SampleResult(tweedie_denoise(score_fn, x, t, process), nfe + 1)
    return SampleResult(x, nfe)


def tweedie_denoise(score_fn: ScoreFn, x: Tensor, t: Tensor | float, process: Process) -> Tensor:
    r"""Tweedie's posterior mean :math:`E[x_0 | x_t] = (x + \sigma^2(t) s(x, t)) / m(t)`.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x: Samples at time ``t``, with shape ``(*, *event)``.
        t: The time.
        process: The forward process.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return (x + process.sigma_sq(t) * score_fn(x, t)) / process.mean_scale(t)


def thresholded_score(score_fn: ScoreFn, process: Process, low: Tensor, high: Tensor) -> ScoreFn:
    r"""The score whose Tweedie denoiser is clipped to ``[low, high]`` ("static thresholding").

    :math:`\tilde s(x, t) = (m(t)\, \mathrm{clip}(\hat x_0(x, t), l, h) - x) / \sigma^2(t)` with
    :math:`\hat x_0 = (x + \sigma^2 s) / m`: where the network's denoised estimate stays inside the
    range the score is unchanged; where it leaves it (an under-trained network far from the data)
    the sampler is pulled back to the nearest point of the range instead of following it out
    (Saharia et al. 2022 clip :math:`\hat x_0` to the data range of images, [−1, 1], the same way).
    The draws then lie in the range up to the last step's noise.

    Arguments:
        score_fn: The score :math:`s(x, t)` of a VE or VP process.
        process: That process.
        low, high: Bounds broadcastable to ``x`` (the training targets' range, normalised units).

    Returns:
        The clipped score, with the signature of ``score_fn``.
    """

    def score(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        var, m = process.sigma_sq(t), process.mean_scale(t)
        x0 = (x + var * score_fn(x, t)) / m
        return (m * torch.minimum(torch.maximum(x0, low), high) - x) / var

    return score


@torch.no_grad()
def annealed_langevin(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    steps_per_level: int = 5,
    eps: float,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SampleResult:
    r"""Annealed Langevin dynamics (Song & Ermon; Algorithm 1 of the cSDM paper).

    For each level :math:`\sigma_i`, :math:`\alpha_i = \epsilon \sigma_i^2 / \sigma_L^2`
    and ``steps_per_level`` times :math:`x \leftarrow x + \tfrac{\alpha_i}{2}
    s(x, \sigma_i) + \sqrt{\alpha_i} z`; then, if ``denoise``,
    :math:`x \leftarrow x + \sigma_L^2 s(x, \sigma_L)`.

    Arguments:
        score_fn: The score :math:`s(x, \sigma)` of the data smoothed at level σ.
        x: Initial samples, with shape ``(*, *event)`` (the paper uses :math:`U(0, 1)`).
        sigmas: Decreasing noise levels, with shape ``(L,)``.
        steps_per_level: :math:`T`, the Langevin steps per level.
        eps: The step size :math:`\epsilon` (see
            :func:`~bayesinv.diffusion.schedules.choose_step_size`).
        denoise: Whether to apply the final denoising step.
        generator: The random generator.
        callback: Called after each level with ``{"i", "sigma", "x"}``.

    Returns:
        The samples, with the shape of ``x``, and the number of score evaluations.

    Example:
        >>> score = lambda x, sigma: -x / (1 + sigma**2)          # N(0, I) data
        >>> x, nfe = annealed_langevin(score, torch.rand(100, 2), geometric_sigmas(5, 0.01, 50), eps=1e-5)
    """
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    sigma_L = sigmas[-1]
    for i, sigma in enumerate(sigmas):
        alpha = eps * (sigma / sigma_L) ** 2
        for _ in range(steps_per_level):
            x = _langevin_step(score_fn, x, sigma, alpha, generator)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "x": x})
    nfe = len(sigmas) * steps_per_level
    if denoise:
        x = x + sigma_L**2 * score_fn(x, sigma_L)
        nfe += 1
    return SampleResult(x, nfe)


@torch.no_grad()
def reverse_sde(
    score_fn: ScoreFn,
    x: Tensor,
    process: Process,
    *,
    alpha: float = 1.0,
    steps: int = 500,
    t_min: float = 1e-3,
    denoise: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SampleResult:
    r"""The α-family of reverse processes, integrated by Euler–Maruyama (eq. 42).

    .. math:: x_{\tau+\Delta\tau} = x_\tau + \Big(\frac{b(t)}{2} x_\tau
              + \frac{(1+\alpha) g(t)}{2} s(x_\tau, t)\Big) \Delta\tau
              + \sqrt{\alpha g(t) \Delta\tau}\, z, \quad t = 1 - \tau,

    on ``steps`` uniform steps from :math:`t = 1` to :math:`t_{min}` (the paper uses
    α = 1 and :math:`\Delta\tau = 0.002`, i.e. 500 steps).

    Arguments:
        score_fn: The score :math:`s(x, t)` of the noised marginal at forward time t.
        x: Samples of :math:`p_1`, with shape ``(*, *event)``.
        process: The forward process (:class:`~bayesinv.diffusion.sde.VE` or ``VP``).
        alpha: :math:`\alpha \ge 0`; 1 is the reverse SDE, 0 the probability flow.
        steps: The number of steps.
        t_min: The final time (the score is singular at 0).
        denoise: Whether to finish with :func:`tweedie_denoise` at :math:`t_{min}`.
        generator: The random generator.
        callback: Called after each step with ``{"i", "t", "x"}``.

    Returns:
        The samples and the number of score evaluations.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    ts = _times(x, steps, t_min)
    for i in range(steps):
        t, dt = ts[i], ts[i] - ts[i + 1]
        s = score_fn(x, t)
        x = _reverse_step(x, s, process.drift_coef(t) * dt, process.diffusion_sq(t) * dt, alpha, generator)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "x": x})
    return _finish(score_fn, x, ts[-1], process, steps, denoise)


@torch.no_grad()
def predictor_corrector(
    score_fn: ScoreFn,
    x: Tensor,
    process: Process,
    *,
    steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
    t_min: float = 1e-3,
    t_start: float = 1.0,
    denoise: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> SampleResult:
    r"""Predictor–corrector sampling (Song et al. 2021): Langevin corrector, then a
    reverse-diffusion predictor, at each of ``steps`` times from ``t_start`` (1) to :math:`t_{min}`.

    The corrector makes ``corrector_steps`` Langevin steps :math:`x + \delta s + \sqrt{2
    \delta} z` with :math:`\delta = 2 a_t (r \|z\| / \|s\|)^2`, :math:`r` = ``snr`` and
    :math:`a_t = e^{-\int b}` over the step (1 for VE, :math:`\approx 1 - \beta \Delta t`
    for VP); the norms are taken over the whole batch (Song et al. average per-sample
    norms; both agree for exchangeable samples, and this needs no event shape).
    The predictor is eq. 42 with α = 1 and the increments :math:`b\Delta\tau`,
    :math:`g\Delta\tau` replaced by their exact integrals over the step: for VE this is
    Song et al.'s reverse-diffusion predictor with :math:`G^2 = \sigma_t^2 -
    \sigma_{t-\Delta t}^2`, for VP it agrees with theirs to first order.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x: Samples of :math:`p_1`, with shape ``(*, *event)``.
        process: The forward process.
        steps: The number of predictor steps.
        corrector_steps: Langevin corrector steps per predictor step.
        snr: The corrector's signal-to-noise ratio :math:`r`.
        t_min: The final time.
        t_start: The first time; ``x`` are samples of :math:`p_{t_{start}}` (below 1: a
            reverse process entered part-way, as in CSD*).
        denoise: Whether to finish with :func:`tweedie_denoise` at :math:`t_{min}`.
        generator: The random generator.
        callback: Called after each predictor step with ``{"i", "t", "x"}``.

    Returns:
        The samples and the number of score evaluations.
    """
    ts = _times(x, steps, t_min, t_start)
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        b_dt = process.integral_b(t) - process.integral_b(t_next)
        g_dt = process.integral_g(t) - process.integral_g(t_next)
        for _ in range(corrector_steps):
            s, z = score_fn(x, t), _randn_like(x, generator)
            delta = 2 * torch.exp(-b_dt) * (snr * z.norm() / s.norm().clamp_min(1e-30)) ** 2
            x = x + delta * s + (2 * delta).sqrt() * z
        x = _reverse_step(x, score_fn(x, t), b_dt, g_dt, 1.0, generator)
        if callback is not None:
            callback({"i": i, "t": t_next, "x": x})
    return _finish(score_fn, x, ts[-1], process, steps * (corrector_steps + 1), denoise)


@torch.no_grad()
def reverse_from(
    score_fn: ScoreFn,
    x0: Tensor,
    process: Process,
    *,
    insert_step: int,
    steps: int,
    t_min: float,
    corrector_steps: int = 1,
    snr: float = 0.16,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> SampleResult:
    r"""A reverse process entered part-way from given points (CSD*, SDEdit): ``x0`` is diffused to the
    time :math:`t'` of step K′ (``insert_step``) of a K-step grid (:func:`step_time`),
    :math:`x_{t'} = m(t') x_0 + \sigma(t') z`, and the last K′ :func:`predictor_corrector` steps run from there.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x0: The starting points ``(B, *event)``.
        process: The forward process.
        insert_step, steps: K′ and K (1 ≤ K′ ≤ K).
        t_min: The final time.
        corrector_steps, snr, denoise, generator: As for :func:`predictor_corrector`.
        chunk_size: Points per :func:`predictor_corrector` call (``None``: all); the noise z is drawn
            for all points first.

    Returns:
        The samples and the largest number of score evaluations of a chunk.
    """
    t_start = step_time(insert_step, steps, t_min)
    x = process.perturb(x0, torch.tensor(t_start), torch.randn(x0.shape, generator=generator, device=x0.device))
    out, nfe, chunk = [], 0, chunk_size or len(x)
    for a in range(0, len(x), chunk):
        res = predictor_corrector(score_fn, x[a : a + chunk], process, steps=insert_step, t_start=t_start, corrector_steps=corrector_steps,
                                  snr=snr, t_min=t_min, denoise=denoise, generator=generator)  # fmt: skip
        out.append(res.x)
        nfe = max(nfe, res.nfe)
    return SampleResult(torch.cat(out), nfe)


def _flow_field(score_fn: ScoreFn, process: Process, power: float) -> Callable[[float, Tensor], Tensor]:
    r"""The probability-flow velocity in :math:`r`, :math:`t = (1 - r)^p`: :math:`p (1 - r)^{p-1} dx/d\tau`."""

    def f(r: float, x: Tensor) -> Tensor:
        t = torch.tensor((1.0 - r) ** power, dtype=x.dtype, device=x.device)
        return power * (1.0 - r) ** (power - 1.0) * _velocity(score_fn, x, t, process)

    return f


def _time_field(velocity_fn: ScoreFn) -> Callable[[float, Tensor], Tensor]:
    r"""``velocity_fn(x, t)`` as a field ``f(t, x)`` with ``t`` a 0-dim tensor of ``x``'s dtype."""
    return lambda t, x: velocity_fn(x, torch.tensor(t, dtype=x.dtype, device=x.device))


@torch.no_grad()
def probability_flow_ode(
    score_fn: ScoreFn,
    x: Tensor,
    process: Process,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-3,
    power: float = 2.0,
    first_step: float | None = None,
    max_steps: int = 10_000,
    denoise: bool = False,
    callback: Callback | None = None,
) -> SampleResult:
    r"""The probability-flow ODE (α = 0, eq. 44) by adaptive Dormand–Prince RK5(4).

    Integrates :math:`dx/d\tau = \tfrac{b(t)}{2} x + \tfrac{g(t)}{2} s(x, t)`,
    :math:`t = 1 - \tau`, from :math:`t = 1` to :math:`t_{min}`, in the variable
    :math:`r` with :math:`t = (1 - r)^p` (``power``):
    :math:`dx/dr = p (1 - r)^{p-1}\, dx/d\tau`. With :math:`p = 1`, :math:`r = \tau`.
    Near :math:`t = 0` both VE and VP have :math:`\sigma^2(t) \propto t` and the score
    of concentrated data grows like :math:`1/\sigma`, so :math:`dx/d\tau \sim 1/\sqrt{t}`
    grows without bound; the default :math:`p = 2` integrates in :math:`r = 1 - \sqrt t`,
    an affine function of σ near :math:`t = 0` (EDM's samplers also step in σ), where
    the velocity stays bounded, and needs far fewer steps to a small ``t_min`` (2.3×
    fewer on sbibm's two_moons at ``t_min`` = 1e-5). The whole batch shares
    one step size, controlled like ``scipy.integrate.solve_ivp(method="RK45")`` on the
    flattened batch (the paper's choice): the error is the RMS over all components of
    :math:`\text{err} / (\text{atol} + \text{rtol} \max(|x|, |x_{new}|))`. Written in
    torch, it stays on the accelerator and evaluates the network on whole batches.
    The map from ``x`` to the result is deterministic.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x: Samples of :math:`p_1`, with shape ``(*, *event)``.
        process: The forward process.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        t_min: The final time.
        power: The exponent :math:`p \geq 1` of the change of variable :math:`t = (1 - r)^p`.
        first_step: The initial step in r; by default chosen as solve_ivp does.
        max_steps: Raise an error after this many attempted steps.
        denoise: Whether to finish with :func:`tweedie_denoise` at :math:`t_{min}`.
        callback: Called after each accepted step with ``{"i", "t", "x"}``.

    Returns:
        The samples and the number of score evaluations.
    """
    if not power >= 1.0:
        raise ValueError(f"probability_flow_ode: power must be >= 1, got {power}")
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"probability_flow_ode: t_min must lie in (0, 1), got {t_min}")

    f = _flow_field(score_fn, process, power)
    step = None if callback is None else (lambda i, r, x: callback({"i": i, "t": (1.0 - r) ** power, "x": x}))
    r_end = 1.0 - t_min ** (1.0 / power)
    x, nfe = dopri5(f, x, 0.0, r_end, rtol=rtol, atol=atol, first_step=first_step, max_steps=max_steps,
                    callback=step, name="probability_flow_ode")  # fmt: skip
    if denoise:
        x = tweedie_denoise(score_fn, x, t_min, process)
        nfe += 1
    return SampleResult(x, nfe)


def _normal_log_prob(std: float) -> Callable[[Tensor], Tensor]:
    def log_prob(z: Tensor) -> Tensor:
        d = z[0].numel()
        return -0.5 * (z / std).pow(2).flatten(1).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

    return log_prob


def probability_flow_log_prob(
    score_fn: ScoreFn,
    x: Tensor,
    process: Process,
    *,
    t_min: float = 1e-3,
    power: float = 2.0,
    exact: bool = True,
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    mean: Tensor | None = None,
) -> LogProbResult:
    r"""The exact log-density of :func:`probability_flow_ode`'s output (without ``denoise``).

    The sampler pushes :math:`\mathcal{N}(0, \sigma_T^2 I)` through the ODE from
    :math:`t = 1` to ``t_min``; this integrates the same field back from ``x`` with the
    instantaneous change of variables (:func:`~bayesinv.diffusion.ode.log_prob_ode`),
    so ``log_prob`` is the density of the distribution the sampler draws from (up to
    the integration tolerances), whatever the accuracy of the score.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x: Points, ``(B, *event)``.
        process: The forward process.
        t_min, power: As given to :func:`probability_flow_ode`.
        exact: Exact divergence (small targets), else Hutchinson's estimator.
        num_probes: Hutchinson probes averaged per point.
        generator: Random generator of the probes.
        rtol, atol, max_steps: Integration tolerances.
        mean: For a sampler started from :math:`\mathcal{N}(m(1)\mu, \sigma(1)^2 I)` (``mean`` = μ,
            ``(D,)``): in :math:`\tilde x = x - m(t)\mu` the ODE keeps its form with the score
            :math:`s(\tilde x + m(t)\mu, t)` and starts from :math:`\mathcal{N}(0, \sigma(1)^2 I)`,
            exactly for VE; for VP that base has variance 1 against :math:`1 - m(1)^2`, a
            log-density difference of :math:`m(1)^2 (D - |z|^2)/2` (about 2e-5 √(2D) with β_max = 20).

    Returns:
        A :class:`~bayesinv.diffusion.ode.LogProbResult` ``(log_prob (B,), std_error (B,), nfe)``.
    """
    if mean is not None:
        inner, x = score_fn, x - process.mean_scale(torch.tensor(t_min)).item() * mean

        def score_fn(v: Tensor, t: Tensor) -> Tensor:
            return inner(v + process.mean_scale(t) * mean, t)

    r_end = 1.0 - t_min ** (1.0 / power)
    return log_prob_ode(_flow_field(score_fn, process, power), x, r_end, 0.0, _normal_log_prob(process.prior_std()), exact=exact, num_probes=num_probes,
                        generator=generator, rtol=rtol, atol=atol, max_steps=max_steps)  # fmt: skip


@torch.no_grad()
def flow_matching_ode(
    velocity_fn: ScoreFn,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    callback: Callback | None = None,
) -> SampleResult:
    r"""Integrates a flow-matching vector field :math:`dx/dt = v(x, t)` from noise
    (:math:`t = 0`, ``x`` :math:`\sim \mathcal{N}(0, I)`) to data (:math:`t = 1`).

    Arguments:
        velocity_fn: The field :math:`v(x, t)`, ``t`` a 0-dim tensor.
        x: Standard normal draws ``(*, *event)``.
        rtol, atol, max_steps: Of the adaptive RK5(4) integrator.
        callback: Called after each accepted step with ``{"i", "t", "x"}``.

    Returns:
        The samples and the number of field evaluations.
    """

    f = _time_field(velocity_fn)
    step = None if callback is None else (lambda i, t, x: callback({"i": i, "t": t, "x": x}))
    x, nfe = dopri5(f, x, 0.0, 1.0, rtol=rtol, atol=atol, max_steps=max_steps, callback=step, name="flow_matching_ode")
    return SampleResult(x, nfe)


def flow_matching_log_prob(
    velocity_fn: ScoreFn,
    x: Tensor,
    *,
    exact: bool = True,
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> LogProbResult:
    r"""The exact log-density of :func:`flow_matching_ode`'s output at ``x`` ``(B, *event)``
    (instantaneous change of variables back to the standard normal at :math:`t = 0`)."""

    return log_prob_ode(_time_field(velocity_fn), x, 1.0, 0.0, _normal_log_prob(1.0), exact=exact, num_probes=num_probes,
                        generator=generator, rtol=rtol, atol=atol, max_steps=max_steps)  # fmt: skip


def reverse_sample(sampler: str, score_fn: ScoreFn, x: Tensor, spec: Mapping[str, Any], options: Any, *, t_min: float,
                   generator: torch.Generator | None = None) -> SampleResult:  # fmt: skip
    r"""One run of a reverse sampler chosen by name, for a JSON-able process spec.

    Arguments:
        sampler: ``"ode"`` (:func:`probability_flow_ode`), ``"sde"`` (:func:`reverse_sde`, α = 1),
            ``"pc"`` (:func:`predictor_corrector`) or ``"langevin"`` (:func:`annealed_langevin`, NCSN spec).
        score_fn: The score.
        x: Draws of the initial law.
        spec: ``{"kind": "ve" | "vp" | "ncsn", ...}`` (:func:`~bayesinv.diffusion.sde.process_from_spec`).
        options: An object with the attributes ``steps`` (500), ``rtol``, ``atol`` (1e-5), ``power`` (2),
            ``t_min``, ``corrector_steps`` (1), ``snr`` (0.16), ``steps_per_level``, ``eps`` (the
            NCSN spec's) and ``denoise`` (``True``); ``None`` takes the default in brackets.
        t_min: The final time when ``options.t_min`` is ``None``.
        generator: The random generator.
    """
    denoise = True if options.denoise is None else bool(options.denoise)
    get = lambda name, default: default if getattr(options, name) is None else getattr(options, name)  # noqa: E731
    if sampler == "langevin":
        sigmas = torch.tensor(spec["sigmas"], device=x.device)
        return annealed_langevin(score_fn, x, sigmas, steps_per_level=int(get("steps_per_level", spec["steps_per_level"])),
                                 eps=float(get("eps", spec["eps"])), denoise=denoise, generator=generator)  # fmt: skip
    process, t_min = process_from_spec(spec), float(get("t_min", t_min))
    if sampler == "ode":
        return probability_flow_ode(score_fn, x, process, rtol=get("rtol", 1e-5), atol=get("atol", 1e-5),
                                    power=float(get("power", 2.0)), t_min=t_min, denoise=denoise)  # fmt: skip
    steps = int(get("steps", 500))
    if sampler == "sde":
        return reverse_sde(score_fn, x, process, alpha=1.0, steps=steps, t_min=t_min, denoise=denoise, generator=generator)
    return predictor_corrector(score_fn, x, process, steps=steps, corrector_steps=int(get("corrector_steps", 1)),
                               snr=float(get("snr", 0.16)), t_min=t_min, denoise=denoise, generator=generator)  # fmt: skip


def initial_draws(spec: Mapping[str, Any], shape: tuple[int, ...], *, mean: Tensor | float = 0.0,
                  generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:  # fmt: skip
    r"""Draws of the initial law of a reverse process of a JSON-able spec: :math:`U(0, 1)` for NCSN
    levels, else :math:`\mathcal{N}(m(1)\mu, \sigma(1)^2 I)` with μ = ``mean`` (centring the start on
    the data mean removes most of the probability-flow ODE's bias; see :func:`probability_flow_log_prob`)."""
    if spec["kind"] == "ncsn":
        return torch.rand(shape, generator=generator, device=device)
    process = process_from_spec(spec)
    z = torch.randn(shape, generator=generator, device=device)
    return process.mean_scale(1.0).item() * mean + process.sigma(1.0).item() * z
