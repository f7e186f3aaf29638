r"""Forward diffusion processes in the drift-diffusion notation of Hoang et al.

Every process is the Fokker-Planck equation (eq. 20 of "Unifying and extending diffusion
models through PDEs")

.. math:: \partial_t p_t = \nabla \cdot (\tfrac{b(t)}{2} x\, p_t) + \tfrac{g(t)}{2} \Delta p_t ,

i.e. the Itô SDE :math:`dx = -\tfrac{b}{2} x\, dt + \sqrt{g}\, dw` on forward time
:math:`t \in [0, T]`, :math:`T = 1`, with data at :math:`t = 0`. Its Gaussian kernel
:math:`p_t(x | x') = \mathcal{N}(m(t) x', \sigma^2(t) I)` gives
:math:`x_t = m(t) x_0 + \sigma(t) z` (eq. 23).

* :class:`VE` — variance exploding: :math:`b = 0`, :math:`g(t) = \gamma(t) =
  \sigma_{max}^{2t}`, :math:`m = 1`, :math:`\sigma^2(t) = \int_0^t \gamma =
  (\sigma_{max}^{2t} - 1) / \log \sigma_{max}^2` (Appendix A). This is the paper's
  convention, not Song et al.'s :math:`\sigma_{min} (\sigma_{max}/\sigma_{min})^t`:
  here :math:`\sigma(0) = 0` and :math:`\sigma^2(t) \approx t` near 0.
* :class:`VP` — variance preserving: :math:`b = g = \beta(t) = \beta_{min} +
  t (\beta_{max} - \beta_{min})`, :math:`m(t) = e^{-\frac12 \int_0^t \beta}`,
  :math:`\sigma^2 = 1 - m^2`.

Times are tensors of any shape (a 0-dim tensor for the whole batch, or one per sample);
use :func:`expand_like` to broadcast them against a sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["Process", "VE", "VP", "expand_like", "process_from_spec"]


def expand_like(t: Tensor | float, x: Tensor) -> Tensor:
    r"""Reshapes a per-sample quantity so that it broadcasts against ``x``.

    Arguments:
        t: A scalar or a tensor with shape ``(*)``, the leading (batch) shape of ``x``.
        x: A tensor with shape ``(*, *event)``.

    Returns:
        ``t`` as a tensor of ``x``'s dtype and device, with shape ``(*, 1, ..., 1)``.

    Example:
        >>> expand_like(torch.rand(8), torch.zeros(8, 3, 16, 16)).shape
        torch.Size([8, 1, 1, 1])
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.get_default_dtype())


class Process:
    r"""Shared part of a forward process; subclasses define :meth:`mean_scale`,
    :meth:`sigma_sq`, :meth:`drift_coef`, :meth:`diffusion_sq`, :meth:`integral_b`,
    :meth:`integral_g` and :meth:`prior_std`."""

    T: float = 1.0

    def sigma(self, t: Tensor | float) -> Tensor:
        r"""The kernel standard deviation :math:`\sigma(t)`."""
        return self.sigma_sq(t).sqrt()

    def perturb(self, x0: Tensor, t: Tensor | float, z: Tensor) -> Tensor:
        r"""Noises data: :math:`x_t = m(t) x_0 + \sigma(t) z` (eq. 23).

        Arguments:
            x0: Clean samples, with shape ``(*, *event)``.
            t: Times, a scalar or with shape ``(*)``.
            z: Standard normal noise, with the shape of ``x0``.
        """
        t = _as_tensor(t)
        return expand_like(self.mean_scale(t), x0) * x0 + expand_like(self.sigma(t), x0) * z

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        r"""Draws from the reverse process's initial law :math:`\mathcal{N}(0, \sigma_T^2 I)`.

        Arguments:
            shape: The sample shape, batch included.
            generator: The random generator.

        Returns:
            A tensor with shape ``shape``.
        """
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_std() * z


@dataclass(frozen=True)
class VE(Process):
    r"""Variance exploding process: :math:`\gamma(t) = \sigma_{max}^{2t}`,
    :math:`\sigma^2(t) = (\sigma_{max}^{2t} - 1) / \log \sigma_{max}^2`, :math:`m = 1`.

    The reverse process starts from :math:`\mathcal{N}(0, \sigma^2(1) I)`, so
    :math:`\sigma(1)` should exceed the spread of the (normalised) data.

    Arguments:
        sigma_max: :math:`\sigma_{max} > 1`; the paper uses 5.

    Example:
        >>> VE(sigma_max=5.0).sigma(torch.tensor(1.0))
        tensor(2.7306)
    """

    sigma_max: float = 5.0

    def __post_init__(self):
        if not self.sigma_max > 1:
            raise ValueError(f"VE needs sigma_max > 1, got {self.sigma_max}")

    @property
    def _log_s2(self) -> float:
        return 2.0 * math.log(self.sigma_max)

    def gamma(self, t: Tensor | float) -> Tensor:
        r""":math:`\gamma(t) = \sigma_{max}^{2t}`."""
        return torch.exp(self._log_s2 * _as_tensor(t))

    def mean_scale(self, t: Tensor | float) -> Tensor:
        r""":math:`m(t) = 1`."""
        return torch.ones_like(_as_tensor(t))

    def sigma_sq(self, t: Tensor | float) -> Tensor:
        r""":math:`\sigma^2(t) = (\sigma_{max}^{2t} - 1) / \log \sigma_{max}^2`."""
        return torch.expm1(self._log_s2 * _as_tensor(t)) / self._log_s2

    def drift_coef(self, t: Tensor | float) -> Tensor:
        r""":math:`b(t) = 0`."""
        return torch.zeros_like(_as_tensor(t))

    def diffusion_sq(self, t: Tensor | float) -> Tensor:
        r""":math:`g(t) = \gamma(t)`."""
        return self.gamma(t)

    def integral_b(self, t: Tensor | float) -> Tensor:
        r""":math:`\int_0^t b = 0`."""
        return self.drift_coef(t)

    def integral_g(self, t: Tensor | float) -> Tensor:
        r""":math:`\int_0^t g = \sigma^2(t)`."""
        return self.sigma_sq(t)

    def prior_std(self) -> float:
        r""":math:`\sigma(1)`."""
        return math.sqrt(math.expm1(self._log_s2) / self._log_s2)


@dataclass(frozen=True)
class VP(Process):
    r"""Variance preserving process: :math:`\beta(t) = \beta_{min} + t (\beta_{max} -
    \beta_{min})`, :math:`m(t) = e^{-\frac12 \int_0^t \beta}`, :math:`\sigma^2 = 1 - m^2`.

    The reverse process starts from :math:`\mathcal{N}(0, I)`. With the paper's
    :math:`\beta_{max} = 5`, :math:`m(1) \approx 0.29`; Song et al. use 20
    (:math:`m(1) \approx 0.007`).

    Arguments:
        beta_min: :math:`\beta(0)`.
        beta_max: :math:`\beta(1)`.

    Example:
        >>> VP(beta_min=0.1, beta_max=20.0).mean_scale(torch.tensor(1.0))
        tensor(0.0066)
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not (self.beta_min >= 0 and self.beta_max > 0):
            raise ValueError(f"VP needs beta_min >= 0 and beta_max > 0, got {self.beta_min}, {self.beta_max}")

    def beta(self, t: Tensor | float) -> Tensor:
        r""":math:`\beta(t) = \beta_{min} + t (\beta_{max} - \beta_{min})`."""
        return self.beta_min + _as_tensor(t) * (self.beta_max - self.beta_min)

    def integral_b(self, t: Tensor | float) -> Tensor:
        r""":math:`\int_0^t \beta = \beta_{min} t + \tfrac12 t^2 (\beta_{max} - \beta_{min})`."""
        t = _as_tensor(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def integral_g(self, t: Tensor | float) -> Tensor:
        r""":math:`\int_0^t g = \int_0^t \beta`."""
        return self.integral_b(t)

    def mean_scale(self, t: Tensor | float) -> Tensor:
        r""":math:`m(t) = e^{-\frac12 \int_0^t \beta}`."""
        return torch.exp(-0.5 * self.integral_b(t))

    def sigma_sq(self, t: Tensor | float) -> Tensor:
        r""":math:`\sigma^2(t) = 1 - m^2(t)`."""
        return -torch.expm1(-self.integral_b(t))

    def drift_coef(self, t: Tensor | float) -> Tensor:
        r""":math:`b(t) = \beta(t)`."""
        return self.beta(t)

    def diffusion_sq(self, t: Tensor | float) -> Tensor:
        r""":math:`g(t) = \beta(t)`."""
        return self.beta(t)

    def prior_std(self) -> float:
        r"""1, the paper's :math:`\mathcal{N}(0, I)` initial law."""
        return 1.0


def process_from_spec(spec: Mapping[str, Any]) -> Process | None:
    r"""The process of a JSON-able spec ``{"kind": "ve", "sigma_max": ...}`` or ``{"kind": "vp", "beta_min": ..., "beta_max": ...}``
    (``None`` for other kinds: NCSN levels, flow matching)."""
    if spec["kind"] == "ve":
        return VE(sigma_max=spec["sigma_max"])
    if spec["kind"] == "vp":
        return VP(beta_min=spec["beta_min"], beta_max=spec["beta_max"])
    return None
