r"""Adaptive ODE integration and exact densities of ODE-defined posteriors, as pure functions.

:func:`dopri5` integrates :math:`dx/dr = f(r, x)` from ``r0`` to ``r1`` (either direction)
with the Dormand–Prince RK5(4) pair and the step-size control of
``scipy.integrate.solve_ivp(method="RK45")``, on the accelerator, for a whole batch with
one shared step size. The samplers of :mod:`bayesinv.diffusion.samplers` use it.

:func:`log_prob_ode` gives the exact log-density of the push-forward of a base law through
an ODE flow by the instantaneous change of variables (FFJORD; Chen et al. 2018),

.. math:: \log p_{r_1}(x(r_1)) = \log p_{r_0}(x(r_0)) - \int_{r_0}^{r_1} \nabla\!\cdot f(r, x(r))\, dr ,

integrating the augmented state :math:`(x, \int \nabla\cdot f)` backwards from the point
to score. The divergence is exact (one reverse-mode pass per dimension; fine for small
targets) or Hutchinson's estimate :math:`\varepsilon^\top J \varepsilon` with Rademacher
probes :math:`\varepsilon` held fixed along the path (one pass). That estimate is
unbiased; with :math:`S = \int (J + J^\top)/2\, dr` along the path, one probe gives the
log-density with variance :math:`2 \sum_{i \neq j} S_{ij}^2`, and ``num_probes`` = K
independent probes averaged divide it by K; :func:`log_prob_ode` returns the standard
error estimated from the K probes.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = ["dopri5", "divergence", "log_prob_ode", "LogProbResult"]

# Dormand–Prince 5(4) tableau (as in scipy.integrate.RK45)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)  # b5 - b4

Field = Callable[[float, Tensor], Tensor]


def _rms(x: Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def _step(f: Field, r: float, x: Tensor, k1: Tensor, h: float) -> tuple[Tensor, list[Tensor]]:
    r"""One Dormand–Prince step; returns the 5th-order solution and the 7 stages (FSAL)."""
    k = [k1]
    for c, a in zip(_C[1:], _A[1:]):
        k.append(f(r + c * h, x + h * sum(ai * ki for ai, ki in zip(a, k))))
    x_new = x + h * sum(bi * ki for bi, ki in zip(_B, k))
    k.append(f(r + h, x_new))
    return x_new, k


def _initial_step(f: Field, r: float, x: Tensor, k1: Tensor, rtol: float, atol: float) -> float:
    r"""Hairer–Wanner's starting step size, as in ``scipy.integrate.solve_ivp``."""
    scale = atol + x.abs() * rtol
    d0, d1 = _rms(x / scale), _rms(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = _rms((f(r + h0, x + h0 * k1) - k1) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
    return min(100 * h0, h1)


def dopri5(
    f: Field,
    x: Tensor,
    r0: float,
    r1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    callback: Callable[[int, float, Tensor], None] | None = None,
    name: str = "dopri5",
) -> tuple[Tensor, int]:
    r"""Integrates :math:`dx/dr = f(r, x)` from ``r0`` to ``r1`` by adaptive RK5(4).

    The whole batch shares one step size; the error is the RMS over all components of
    :math:`\text{err} / (\text{atol} + \text{rtol} \max(|x|, |x_{new}|))`, accepted when
    at most 1, as ``scipy.integrate.solve_ivp(method="RK45")`` does on the flattened state.

    Arguments:
        f: The field ``f(r, x) -> dx/dr`` (``r`` a float, ``x`` with the shape of ``x``).
        x: The state at ``r0``, any shape.
        r0, r1: Start and end of the integration (``r1 < r0`` integrates backwards).
        rtol, atol: Tolerances.
        first_step: The initial step size :math:`|h|`; by default chosen as solve_ivp does.
        max_steps: Raise :class:`RuntimeError` after this many attempted steps.
        callback: Called after each accepted step as ``callback(i, r, x)``.
        name: The caller's name, for error messages.

    Returns:
        The state at ``r1`` and the number of evaluations of ``f``.

    Example:
        >>> x1, nfe = dopri5(lambda r, x: -x, torch.ones(3), 0.0, 1.0)  # e^{-1}
    """
    sign = 1.0 if r1 >= r0 else -1.0
    nfe = 0

    def g(u: float, x: Tensor) -> Tensor:  # in u = |r - r0|, increasing from 0 to length
        nonlocal nfe
        nfe += 1
        return f(r0 + sign * u, x) if sign > 0 else -f(r0 + sign * u, x)

    u, length = 0.0, abs(r1 - r0)
    if length == 0.0:
        return x, 0
    k1 = g(u, x)
    h = first_step if first_step is not None else _initial_step(g, u, x, k1, rtol, atol)
    accepted = attempts = 0
    while u < length:
        if attempts == max_steps:
            raise RuntimeError(f"{name}: not finished after {max_steps} steps (r = {r0 + sign * u:.3g} of {r1:.3g})")
        attempts += 1
        h = min(h, length - u)
        x_new, k = _step(g, u, x, k1, h)
        err = h * sum(ei * ki for ei, ki in zip(_E, k))
        err = _rms(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if not math.isfinite(err):
            raise FloatingPointError(f"{name}: non-finite error estimate")
        if err <= 1.0:
            u = length if length - u - h < 1e-12 else u + h
            x, k1 = x_new, k[-1]
            accepted += 1
            if callback is not None:
                callback(accepted - 1, r0 + sign * u, x)
            h *= 10.0 if err == 0 else min(10.0, 0.9 * err**-0.2)
        else:
            h *= max(0.2, 0.9 * err**-0.2)
    return x, nfe


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""``fn(x)`` and its divergence :math:`\sum_i \partial f_i / \partial x_i` per batch row.

    Arguments:
        fn: A map ``(B, *event) -> (B, *event)`` acting row by row.
        x: Points, with shape ``(B, *event)``.
        probes: ``None`` for the exact divergence (one reverse pass per event entry), or
            Hutchinson probes with the shape of ``x``: the estimate
            :math:`\varepsilon^\top J \varepsilon` (one reverse pass).

    Returns:
        ``fn(x)`` (detached) and the divergence, shape ``(B,)``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        if probes is not None:
            (vjp,) = torch.autograd.grad(out, x, probes)
            div = (vjp * probes).flatten(1).sum(1)
        else:
            flat = out.flatten(1)
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                (gi,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
                div = div + gi.flatten(1)[:, i]
    return out.detach(), div.detach()


class LogProbResult(NamedTuple):
    r"""What :func:`log_prob_ode` returns.

    Attributes:
        log_prob: The log-density of each point, shape ``(B,)``.
        std_error: Standard error of ``log_prob`` from the Hutchinson probes (zeros when exact).
        nfe: Evaluations of the field (each with its divergence).
    """

    log_prob: Tensor
    std_error: Tensor
    nfe: int


def log_prob_ode(
    f: Field,
    x: Tensor,
    r_point: float,
    r_base: float,
    base_log_prob: Callable[[Tensor], Tensor],
    *,
    exact: bool = True,
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> LogProbResult:
    r"""Log-density of points ``x`` at ``r_point`` under the flow :math:`dx/dr = f(r, x)`
    whose state at ``r_base`` has the law ``base_log_prob``.

    Integrates :math:`(x, \ell)` with :math:`d\ell/dr = -\nabla\cdot f` from ``r_point``
    to ``r_base``; then :math:`\log p(x) = \log p_{base}(x(r_{base})) - \ell(r_{base})`,
    :math:`\ell(r_{point}) = 0`.

    Arguments:
        f: The field ``f(r, x)`` on batches ``(B, *event)``.
        x: The points to score, ``(B, *event)``.
        r_point: Where the points live (a sampler's end).
        r_base: Where the base law is known (a sampler's start).
        base_log_prob: ``(B, *event) -> (B,)``, the base log-density.
        exact: Exact divergence; ``False`` uses Hutchinson's estimator.
        num_probes: Rademacher probes per point averaged (Hutchinson only); their spread
            gives ``std_error``.
        generator: Random generator of the probes.
        rtol, atol, max_steps: Of :func:`dopri5` (the error control covers ℓ too).

    Returns:
        A :class:`LogProbResult`.
    """
    if not exact and num_probes < 1:
        raise ValueError(f"log_prob_ode: num_probes must be >= 1, got {num_probes}")
    k = 1 if exact else int(num_probes)
    batch, event = x.shape[0], x.shape[1:]
    xs = x.repeat_interleave(k, 0) if k > 1 else x
    probes = None
    if not exact:
        probes = torch.randint(0, 2, xs.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    size = int(math.prod(event))

    def aug(r: float, state: Tensor) -> Tensor:
        z = state[:, :size].reshape(-1, *event)
        dz, div = divergence(lambda v: f(r, v), z, probes)
        return torch.cat([dz.flatten(1), -div[:, None]], 1)

    state0 = torch.cat([xs.flatten(1), torch.zeros(xs.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
    state, nfe = dopri5(aug, state0, r_point, r_base, rtol=rtol, atol=atol, max_steps=max_steps, name="log_prob_ode")
    z = state[:, :size].reshape(-1, *event)
    lp = (base_log_prob(z) - state[:, size]).reshape(batch, k)
    se = lp.std(1) / math.sqrt(k) if k > 1 else torch.zeros(batch, dtype=x.dtype, device=x.device)
    return LogProbResult(lp.mean(1), se, nfe)
