r"""Observation distributions for inverse problems that Pyro does not ship.

:class:`WrappedPhase` is the noise law of phase-sensitive optical coherence
elastography: the phase of a phasor of amplitude :math:`k` (the signal-to-noise
amplitude ratio) plus unit complex Gaussian noise, :math:`\varphi =
\operatorname{atan2}(n_{im}, k + n_{re})` with :math:`n_{re}, n_{im} \sim
\mathcal{N}(0, 1)`. On :math:`(-\pi, \pi]` it has the density

.. math:: p(\varphi) = \frac{1}{2\pi} e^{-k^2/2}
    + \sqrt{\frac{1}{8\pi}}\, k\, e^{-\frac{k^2}{2}\sin^2\varphi} \cos\varphi
    \left[1 + \operatorname{erf}\left(\frac{k\cos\varphi}{\sqrt{2}}\right)\right]

and the measurement is :math:`\arg e^{i(\text{phase} + \varphi)}`. Writing
:math:`a = k\cos\varphi` the density is :math:`p(\varphi) = (2\pi)^{-1/2}
e^{-k^2 \sin^2\varphi / 2}\, g(a)` with :math:`g(a) = \phi(a) + a\Phi(a)`, which is
how :meth:`WrappedPhase.log_prob` evaluates it without cancellation.

:class:`Implicit` is a likelihood-free observation: a simulator draw that can be
sampled but not scored.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from pyro.distributions import TorchDistribution
from torch import Size, Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

__all__ = ["WrappedPhase", "Implicit", "LikelihoodFreeError", "wrap_phase"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_CF_THRESHOLD = 3.0  # below a = -3 the direct formula for g(a) starts to cancel
_CF_TERMS = 40  # continued-fraction depth: relative error < 1e-13 for a <= -3


def wrap_phase(x: Tensor) -> Tensor:
    r"""Wraps angles into :math:`(-\pi, \pi]`.

    :math:`\pi` maps to :math:`\pi` and :math:`-\pi` maps to :math:`\pi`.

    Arguments:
        x: Angles in radians, any shape. Integer tensors are converted to the
            default floating dtype.

    Returns:
        The angles :math:`x - 2\pi m` in :math:`(-\pi, \pi]`, same shape as `x`.

    Example:
        >>> wrap_phase(torch.tensor([math.pi, -math.pi, 4.0]))
        tensor([ 3.1416,  3.1416, -2.2832])
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    y = math.pi - torch.remainder(math.pi - x, 2 * math.pi)
    # remainder may round up to exactly 2*pi, which would give -pi
    return torch.where(y <= -math.pi, y + 2 * math.pi, y)


def _log_g(a: Tensor) -> Tensor:
    r"""Computes :math:`\log g(a)`, :math:`g(a) = \phi(a) + a\Phi(a) = E[(Z + a)^+]`.

    For :math:`a \geq -3` the sum is evaluated directly (no cancellation). Below,
    with :math:`x = -a`, :math:`g(-x) = \phi(x) / (1 + x T(x))` where
    :math:`T(x) = x + 2/(x + 3/(x + 4/\dots))` follows from the continued fraction
    of the Mills ratio. Both branches see clamped inputs so that gradients through
    :func:`torch.where` stay finite.

    Arguments:
        a: Float64 tensor, any shape.

    Returns:
        :math:`\log g(a)`, same shape as `a`.
    """
    a_dir = a.clamp(min=-_CF_THRESHOLD)
    direct = torch.log(a_dir * torch.special.ndtr(a_dir) + torch.exp(-0.5 * a_dir**2 - _LOG_SQRT_2PI))

    x = (-a).clamp(min=_CF_THRESHOLD)
    t = x
    for j in range(_CF_TERMS, 1, -1):
        t = x + j / t
    tail = -0.5 * x**2 - _LOG_SQRT_2PI - torch.log1p(x * t)

    return torch.where(a >= -_CF_THRESHOLD, direct, tail)


class WrappedPhase(TorchDistribution):
    r"""Creates a wrapped phase-difference noise distribution (phase-sensitive OCE).

    A draw is :math:`\arg e^{i(\text{phase} + \varphi)} \in (-\pi, \pi]` with
    :math:`\varphi = \operatorname{atan2}(n_{im}, k + n_{re})`, :math:`n_{re},
    n_{im} \sim \mathcal{N}(0, 1)` independent. :math:`k = 0` is the uniform law on
    the circle; large :math:`k` concentrates on `phase` with width about
    :math:`1/k`. The log-density is computed in float64 and is finite for every
    :math:`\varphi` up to :math:`k \approx 10^3` and beyond, then cast back to the
    parameters' dtype.

    Arguments:
        phase: The clean phase, shape broadcastable with `k`.
        k: The amplitude-to-noise ratio :math:`k \geq 0`, e.g. one per pixel.
        validate_args: Whether to validate parameters and values.

    Example:
        >>> d = WrappedPhase(torch.zeros(4, 5), torch.full((4, 1), 3.0))
        >>> d.batch_shape, d.sample((3,)).shape
        (torch.Size([4, 5]), torch.Size([3, 4, 5]))
    """

    arg_constraints = {"phase": constraints.real, "k": constraints.nonnegative}
    support = constraints.interval(-math.pi, math.pi)
    has_rsample = False

    def __init__(self, phase: Tensor | float, k: Tensor | float, validate_args: bool | None = None):
        self.phase, self.k = broadcast_all(phase, k)
        validate = self._validate_args if validate_args is None else validate_args
        if validate and bool((self.k < 0).any()):
            raise ValueError(
                f"WrappedPhase: k (amplitude-to-noise ratio) must be nonnegative, "
                f"got k = {self.k.min().item()!r}"
            )
        super().__init__(self.phase.shape, validate_args=validate_args)

    def expand(self, batch_shape: Size, _instance: WrappedPhase | None = None) -> WrappedPhase:
        r"""Returns a view of the distribution with a larger batch shape.

        Arguments:
            batch_shape: The target batch shape.

        Returns:
            A :class:`WrappedPhase` whose parameters are expanded views.
        """
        new = self._get_checked_instance(WrappedPhase, _instance)
        batch_shape = Size(batch_shape)
        new.phase = self.phase.expand(batch_shape)
        new.k = self.k.expand(batch_shape)
        super(WrappedPhase, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(
            "WrappedPhase has no linear mean on the circle; use the circular mean "
            "(the distribution is symmetric about `phase`, so its circular mean is "
            "`phase` for k > 0)"
        )

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError("WrappedPhase is a circular law: its variance is not defined")

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        r"""Draws wrapped noisy phases.

        Arguments:
            sample_shape: The leading sample shape.

        Returns:
            Phases in :math:`(-\pi, \pi]`, shape `(*sample_shape, *batch_shape)`.
        """
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            n_re = torch.randn(shape, dtype=self.k.dtype, device=self.k.device)
            n_im = torch.randn(shape, dtype=self.k.dtype, device=self.k.device)
            noise = torch.atan2(n_im, self.k + n_re)
            return wrap_phase(self.phase + noise)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Evaluates :math:`\log p(\operatorname{wrap}(\text{value} - \text{phase}))`.

        Arguments:
            value: Measured phases, shape broadcastable with the batch shape.

        Returns:
            The log-density, shape `broadcast(value, batch_shape)`.
        """
        if self._validate_args:
            self._validate_sample(value)
        dtype = torch.promote_types(torch.as_tensor(value).dtype, self.k.dtype)
        phi = wrap_phase(torch.as_tensor(value, dtype=torch.float64) - self.phase.double())
        k = self.k.double()
        a = k * torch.cos(phi)
        ks = k * torch.sin(phi)
        out = -_LOG_SQRT_2PI - 0.5 * ks**2 + _log_g(a)
        return out.to(dtype if dtype.is_floating_point else self.k.dtype)


from bayesinv.errors import LikelihoodFreeError  # noqa: E402  (re-exported)


def _callable_name(fn: Callable[..., Any]) -> str:
    while hasattr(fn, "func") and not hasattr(fn, "__name__"):  # functools.partial
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


class Implicit(TorchDistribution):
    r"""Creates a likelihood-free observation distribution from a noisy simulator.

    The distribution can be sampled, never scored: :meth:`log_prob` raises
    :class:`LikelihoodFreeError`. `sim(*args, **kwargs)` is called lazily, the
    first time a draw or a shape is needed, and its value cached; under a Pyro
    plate this happens when the plate reads the batch shape, even with `obs=`.
    Methods detect such sites with `getattr(fn, "is_implicit", False)`.

    Arguments:
        sim: A simulator returning a tensor, e.g. of shape `(*, D)`; a leading batch
            axis is allowed.
        args: Positional arguments of `sim`, e.g. the parameters `theta`.
        event_dim: The number of trailing dimensions of the draw forming one event;
            the leading ones are the batch shape.
        kwargs: Keyword arguments of `sim`.

    Example:
        >>> def sim(theta):
        ...     return theta + torch.randn(theta.shape)
        >>> def model(y=None):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        ...     return pyro.sample("y", Implicit(sim, theta), obs=y)
    """

    arg_constraints: dict = {}
    has_rsample = False
    is_implicit = True

    def __init__(self, sim: Callable[..., Tensor], *args: Any, event_dim: int = 1, **kwargs: Any):
        if not isinstance(event_dim, int) or event_dim < 0:
            raise ValueError(f"Implicit: event_dim must be a nonnegative int, got {event_dim!r}")
        self.sim = sim
        self.args = args
        self.kwargs = kwargs
        self._event_dim = event_dim
        self._value: Tensor | None = None
        self._target_batch_shape: Size | None = None  # set by expand() when broadcasting
        super().__init__(Size(), Size(), validate_args=False)

    @property
    def simulator_name(self) -> str:
        r"""The simulator's name, as used in error messages."""
        return _callable_name(self.sim)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, self._event_dim)

    def _draw(self) -> Tensor:
        value = torch.as_tensor(self.sim(*self.args, **self.kwargs))
        if value.dim() < self._event_dim:
            raise ValueError(
                f"Implicit: simulator '{self.simulator_name}' returned shape {tuple(value.shape)}, "
                f"fewer dimensions than event_dim={self._event_dim}"
            )
        if self._target_batch_shape is not None:
            event_shape = value.shape[value.dim() - self._event_dim :]
            value = value.expand(self._target_batch_shape + event_shape)
        return value

    @property
    def value(self) -> Tensor:
        r"""The cached simulator draw, computed on first access."""
        if self._value is None:
            self._value = self._draw()
        return self._value

    @property
    def batch_shape(self) -> Size:
        return self.value.shape[: self.value.dim() - self._event_dim]

    @property
    def event_shape(self) -> Size:
        return self.value.shape[self.value.dim() - self._event_dim :]

    def expand(self, batch_shape: Size, _instance: Implicit | None = None) -> Implicit:
        r"""Returns the distribution with batch shape `batch_shape`.

        When the draw already has this batch shape (a simulator that returns the
        plate's batch axis itself), the distribution is returned unchanged.
        Otherwise the cached draw is *broadcast* to `batch_shape`: the expanded
        entries repeat one simulator draw rather than being independent draws, and
        later draws of the expanded distribution are broadcast likewise. A simulator
        that should give independent draws per plate entry must return the batch
        axis itself.

        Arguments:
            batch_shape: The target batch shape.

        Returns:
            An :class:`Implicit` with the requested batch shape.
        """
        batch_shape = Size(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        new = self._get_checked_instance(Implicit, _instance)
        new.sim, new.args, new.kwargs, new._event_dim = self.sim, self.args, self.kwargs, self._event_dim
        new._target_batch_shape = batch_shape
        new._value = self.value.expand(batch_shape + self.event_shape)  # raises if not broadcastable
        super(Implicit, new).__init__(Size(), Size(), validate_args=False)
        return new

    def sample(self, sample_shape: Size = Size()) -> Tensor:
        r"""Draws from the simulator.

        Arguments:
            sample_shape: The leading sample shape. Empty returns the cached draw;
                otherwise `sim` is called once per sample and the draws stacked.

        Returns:
            A tensor of shape `(*sample_shape, *batch_shape, *event_shape)`.
        """
        sample_shape = Size(sample_shape)
        if len(sample_shape) == 0:
            return self.value
        draws = [self._draw() for _ in range(sample_shape.numel())]
        return torch.stack(draws).reshape(sample_shape + draws[0].shape)

    def log_prob(self, value: Tensor) -> Tensor:
        raise LikelihoodFreeError(
            f"Implicit distribution of simulator '{self.simulator_name}' has no likelihood: "
            "it can be sampled but not scored. Use an amortized method "
            "(method='cond_score', 'flow' or 'vae') for a model whose observation is Implicit."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(simulator={self.simulator_name!r}, event_dim={self._event_dim})"
