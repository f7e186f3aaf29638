r"""Conditional denoising score matching losses.

Continuous time (eq. 48 of "Unifying and extending diffusion models through PDEs"):

.. math:: \mathcal{L} = E_{t \sim U(t_{min}, 1),\, (x_0, y),\, z}
          \big\| \sigma(t)\, s(x_t, y, t) + z \big\|^2, \qquad x_t = m(t) x_0 + \sigma(t) z.

Discrete noise levels (NCSN; eq. 15 of the cSDM paper, weighting :math:`\lambda = \sigma^2`):

.. math:: \mathcal{L} = E_{\sigma \sim U\{\sigma_1..\sigma_L\},\, (x_0, y),\, z}
          \big\| \sigma\, s(x_0 + \sigma z, y, \sigma) + z \big\|^2 .

Both sum the squared error over the event dimensions and average over the batch (the
cSDM paper's factor ½ is dropped). The minimiser is the score of the noised
conditional :math:`\nabla_x \log p_t(x | y)`. A score network is called as
``score_net(x_t, y, t_or_sigma)``, with ``mask=mask`` added when a measurement-operator
mask is given; ``y`` may be ``None`` for an unconditional model.

Flow matching (Lipman et al. 2023, the optimal-transport path; sbi's FMPE):

.. math:: \mathcal{L} = E_{t \sim U(0, 1),\, (x_1, y),\, x_0 \sim \mathcal{N}(0, I)}
          \big\| v(x_t, y, t) - (x_1 - (1 - \sigma_{min}) x_0) \big\|^2,
          \qquad x_t = (1 - (1 - \sigma_{min}) t)\, x_0 + t\, x_1 ,

noise at :math:`t = 0`, data at :math:`t = 1`; its minimiser is the marginal vector field
whose flow carries :math:`\mathcal{N}(0, I)` to :math:`p(x | y)` (blurred by
:math:`\sigma_{min}`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from bayesinv.diffusion.sde import Process, expand_like, process_from_spec

__all__ = ["dsm_loss", "ncsn_loss", "flow_matching_loss", "flow_matching_times", "score_loss", "score_objective"]


def _call(score_net: Callable, x: Tensor, y: Any, level: Tensor, mask: Tensor | None) -> Tensor:
    return score_net(x, y, level) if mask is None else score_net(x, y, level, mask=mask)


def _squared_error(sigma: Tensor, s: Tensor, z: Tensor) -> Tensor:
    return (expand_like(sigma, z) * s + z).pow(2).flatten(1).sum(1).mean()


def dsm_loss(
    score_net: Callable,
    x0: Tensor,
    y: Tensor | None,
    process: Process,
    *,
    t_min: float = 1e-3,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Continuous-time conditional DSM loss :math:`\|\sigma(t) s(x_t, y, t) + z\|^2`.

    Arguments:
        score_net: The network ``score_net(x_t, y, t)``, with ``t`` of shape ``(B,)``.
        x0: Clean targets, with shape ``(B, *event)``.
        y: Observations paired with ``x0``, with shape ``(B, *)``, or ``None``.
        process: The forward process.
        t_min: Times are drawn from :math:`U(t_{min}, 1)`.
        mask: An optional measurement-operator mask, passed as ``mask=``.
        generator: The random generator for ``t`` and ``z``.

    Returns:
        The loss, a scalar.

    Example:
        >>> loss = dsm_loss(net, theta, y, VE(sigma_max=5.0))
    """
    t = t_min + (1 - t_min) * torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = process.perturb(x0, t, z)
    return _squared_error(process.sigma(t), _call(score_net, x_t, y, t, mask), z)


def ncsn_loss(
    score_net: Callable,
    x0: Tensor,
    y: Tensor | None,
    sigmas: Tensor,
    *,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Discrete-level conditional DSM loss :math:`\|\sigma s(x_0 + \sigma z, y, \sigma) + z\|^2`.

    Arguments:
        score_net: The network ``score_net(x_noisy, y, sigma)``, with ``sigma`` of shape ``(B,)``.
        x0: Clean targets, with shape ``(B, *event)``.
        y: Observations paired with ``x0``, with shape ``(B, *)``, or ``None``.
        sigmas: The noise levels, with shape ``(L,)``; one is drawn per sample.
        mask: An optional measurement-operator mask, passed as ``mask=``.
        generator: The random generator for the levels and ``z``.

    Returns:
        The loss, a scalar.
    """
    sigmas = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device)
    idx = torch.randint(len(sigmas), (x0.shape[0],), generator=generator, device=x0.device)
    sigma = sigmas[idx]
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_noisy = x0 + expand_like(sigma, x0) * z
    return _squared_error(sigma, _call(score_net, x_noisy, y, sigma, mask), z)


#: The smallest noise scale of the straight path that the log-uniform times (and a ``"log_sigma"`` time input) resolve.
LOG_SIGMA_FLOOR = 1e-5


def flow_matching_times(
    n: int,
    *,
    sigma_min: float = 1e-4,
    log_fraction: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tensor:
    r"""``n`` training times of the straight path: uniform on [0, 1], except a share ``log_fraction``
    whose noise scale :math:`\sigma_t = 1 - (1 - \sigma_{min}) t` is log-uniform on
    :math:`[\max(\sigma_{min}, 10^{-5}), 1]` (:data:`LOG_SIGMA_FLOOR`).

    Example:
        >>> t = flow_matching_times(4, log_fraction=0.5, generator=torch.Generator().manual_seed(0))
    """
    t = torch.rand(n, generator=generator, dtype=dtype, device=device)
    if log_fraction > 0:
        u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        floor = max(sigma_min, LOG_SIGMA_FLOOR)
        t_log = (1 - floor**u) / (1 - sigma_min)  # sigma_t = floor^u
        t = torch.where(torch.rand(n, generator=generator, dtype=dtype, device=device) < log_fraction, t_log, t)
    return t


def flow_matching_loss(
    velocity_net: Callable,
    x1: Tensor,
    y: Tensor | None,
    *,
    sigma_min: float = 1e-4,
    log_fraction: float = 0.0,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Conditional flow-matching loss on the straight (optimal-transport) path.

    The times are uniform on [0, 1], except a share ``log_fraction`` of them whose noise scale
    :math:`\sigma_t = 1 - (1 - \sigma_{min}) t` is log-uniform on :math:`[\sigma_{min}, 1]`: the same
    minimiser (any time law with full support has it), with more weight where the field is sharpest,
    near the data.

    Arguments:
        velocity_net: The network ``velocity_net(x_t, y, t)``, ``t`` of shape ``(B,)``.
        x1: Targets (data), ``(B, *event)``.
        y: Observations paired with ``x1``, or ``None``.
        sigma_min: Width of the path at the data end.
        log_fraction: Share of the times drawn with a log-uniform noise scale (0: all uniform).
        mask: An optional measurement-operator mask, passed as ``mask=``.
        generator: The random generator for ``t`` and :math:`x_0`.

    Returns:
        The loss, a scalar (squared error summed over the event, averaged over the batch).

    Example:
        >>> loss = flow_matching_loss(net, theta, y)
    """
    t = flow_matching_times(x1.shape[0], sigma_min=sigma_min, log_fraction=log_fraction, generator=generator,
                            dtype=x1.dtype, device=x1.device)  # fmt: skip
    x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=x1.device)
    tt = expand_like(t, x1)
    x_t = (1 - (1 - sigma_min) * tt) * x0 + tt * x1
    u = x1 - (1 - sigma_min) * x0
    return (_call(velocity_net, x_t, y, t, mask) - u).pow(2).flatten(1).sum(1).mean()


def score_loss(net: Callable, x0: Tensor, c: Tensor, process: Process, t_min: float, time_sampling: str) -> Tensor:
    r"""Conditional DSM :math:`\|\sigma(t) s(x_t, c, t) + z\|^2`; with ``"mixed"`` every other
    time is log-uniform on :math:`[t_{min}, 1]` instead of uniform (see :func:`dsm_loss`)."""
    if time_sampling == "uniform":
        return dsm_loss(net, x0, c, process, t_min=t_min)
    u = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    log_t = math.log(t_min) * torch.rand_like(u)
    t = torch.where(torch.arange(len(u), device=u.device) % 2 == 0, t_min + (1 - t_min) * u, log_t.exp())
    z = torch.randn_like(x0)
    s = net(process.perturb(x0, t, z), c, t)
    return (expand_like(process.sigma(t), z) * s + z).pow(2).flatten(1).sum(1).mean()


def score_objective(process: Mapping[str, Any], t_min: float, time_sampling: str, *, empty_on: Any = None) -> Callable:
    r"""``loss_fn(module, x0, c)``: :func:`score_loss` for the process spec ``process``.

    Arguments:
        process: A VE/VP process spec (:func:`~bayesinv.diffusion.sde.process_from_spec`).
        t_min, time_sampling: As for :func:`score_loss`.
        empty_on: For an unconditional score network, the device of the empty condition that
            replaces ``c``; ``None``: conditional (``c`` is passed on).
    """
    proc = process_from_spec(process)
    if empty_on is None:
        return lambda module, x0, c0: score_loss(module, x0, c0, proc, t_min, time_sampling)
    empty = torch.zeros(0, device=empty_on)
    return lambda module, x0, c0: score_loss(module, x0, empty, proc, t_min, time_sampling)
