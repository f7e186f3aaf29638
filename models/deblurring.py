r"""Deblurring a Gaussian-process image: a linear-Gaussian field problem with an exact posterior.

- **Prior**: the image ``x`` (size × size) is a Gaussian process on the pixel grid with a
  separable squared-exponential kernel :math:`\sigma_f^2 \exp(-d^2 / 2\ell^2)` (``length_scale``
  ℓ in pixels) plus a nugget; it is written through a whitened latent ``z`` ~ N(0, I) of
  size² entries, ``x = L z`` with :math:`L = L_1 \otimes L_1` the Kronecker product of the
  1-D Cholesky factors (a deterministic site), so samplers move in a well-conditioned space.
- **Forward map**: a separable Gaussian blur of width ``blur`` pixels (zero outside the
  image, rows normalised), ``K = B ⊗ B``; the deterministic site ``blurred`` is ``K x``.
- **Observation** ``y`` (size × size): ``blurred`` plus Gaussian noise σ (``noise``).
- **Exact posterior** (:meth:`Deblurring.posterior`): Gaussian, from dense linear algebra
  (size² ≤ 4,096).

The model is written twice, once in each language: :meth:`Deblurring.model` (Pyro) and
:meth:`Deblurring.numpyro_model` (NumPyro, needs the ``jax`` extra); they have the same
sites, shapes and densities.

Example:
    >>> problem = Deblurring(size=32)
    >>> x, y = problem.draw(seed=0)
    >>> mean, sd = problem.posterior(y)
    >>> idata = bayesinv.infer(problem.numpyro_model, y, method="nuts", target="x")
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = ["Deblurring", "blur_matrix", "rbf_cholesky"]


def blur_matrix(size: int, width: float) -> np.ndarray:
    r"""The 1-D Gaussian blur ``(size, size)`` of standard deviation ``width`` pixels, rows summing to 1."""
    i = np.arange(size)
    B = np.exp(-0.5 * ((i[:, None] - i[None, :]) / width) ** 2)
    return B / B.sum(1, keepdims=True)


def rbf_cholesky(size: int, length_scale: float, variance: float = 1.0, nugget: float = 1e-4) -> np.ndarray:
    r"""The Cholesky factor of the 1-D squared-exponential covariance on ``size`` pixels."""
    i = np.arange(size)
    C = variance * np.exp(-0.5 * ((i[:, None] - i[None, :]) / length_scale) ** 2) + nugget * np.eye(size)
    return np.linalg.cholesky(C)


class Deblurring:
    r"""y = K x + ε on a ``size`` × ``size`` image with a Gaussian-process prior on x.

    Arguments:
        size: Image side in pixels (the field has size² entries; at most 64).
        length_scale: Prior correlation length ℓ in pixels.
        blur: Width (standard deviation) of the Gaussian blur in pixels.
        noise: Noise standard deviation σ.
        variance: Prior marginal variance per axis factor (the field's variance is its square).

    Attributes:
        L1: The 1-D Cholesky factor ``(size, size)``; the prior covariance is ``(L1 L1ᵀ) ⊗ (L1 L1ᵀ)``.
        B: The 1-D blur ``(size, size)``; ``K = B ⊗ B``.
        dims: ArviZ dims of the sites.
    """

    def __init__(self, size: int = 32, *, length_scale: float = 3.0, blur: float = 1.5, noise: float = 0.05, variance: float = 1.0):
        if not isinstance(size, int) or not 2 <= size <= 64:
            raise ValueError(f"Deblurring: size must be an integer in [2, 64], got {size!r}")
        for name, value in (("length_scale", length_scale), ("blur", blur), ("noise", noise), ("variance", variance)):
            if not float(value) > 0:
                raise ValueError(f"Deblurring: {name} must be positive, got {value!r}")
        self.size, self.noise = size, float(noise)
        self.L1 = rbf_cholesky(size, float(length_scale), float(variance))
        self.B = blur_matrix(size, float(blur))
        self._L1 = torch.as_tensor(self.L1, dtype=torch.float32)
        self._B = torch.as_tensor(self.B, dtype=torch.float32)
        self.dims = {"z": ["row", "col"], "x": ["row", "col"], "blurred": ["row", "col"], "y": ["row", "col"]}

    # L = L1 ⊗ L1 acts on an image Z as L1 Z L1ᵀ, K = B ⊗ B as B X Bᵀ: no size⁴ matrix is formed.
    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: latent ``z`` (size, size), deterministic ``x`` and ``blurred``, observed ``y``."""
        n = self.size
        z = pyro.sample("z", dist.Normal(torch.zeros(n, n), 1.0).to_event(2))
        x = pyro.deterministic("x", self._L1 @ z @ self._L1.T)
        blurred = pyro.deterministic("blurred", self._B @ x @ self._B.T)
        return pyro.sample("y", dist.Normal(blurred, self.noise).to_event(2), obs=y)

    __call__ = model

    def numpyro_model(self, y=None):
        r"""The same model in NumPyro (needs the ``jax`` extra)."""
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        n = self.size
        L1, B = jnp.asarray(self.L1, jnp.float32), jnp.asarray(self.B, jnp.float32)
        z = numpyro.sample("z", nd.Normal(jnp.zeros((n, n)), 1.0).to_event(2))
        x = numpyro.deterministic("x", L1 @ z @ L1.T)
        blurred = numpyro.deterministic("blurred", B @ x @ B.T)
        return numpyro.sample("y", nd.Normal(blurred, self.noise).to_event(2), obs=y)

    def draw(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth image ``x`` and its observation ``y`` (float32, size × size)."""
        rng = np.random.default_rng(seed)
        x = self.L1 @ rng.standard_normal((self.size, self.size)) @ self.L1.T
        y = self.B @ x @ self.B.T + self.noise * rng.standard_normal((self.size, self.size))
        return x.astype(np.float32), y.astype(np.float32)

    def posterior(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r"""The exact posterior mean and pixel-wise standard deviation of ``x`` (size × size each)."""
        L = np.kron(self.L1, self.L1)
        K = np.kron(self.B, self.B)
        A = K @ L / self.noise  # whitened: z | y ~ N(m, P^-1), P = I + AᵀA
        P = np.eye(L.shape[0]) + A.T @ A
        chol = np.linalg.cholesky(P)
        m = np.linalg.solve(P, A.T @ (np.asarray(y, np.float64).reshape(-1) / self.noise))
        W = np.linalg.solve(chol, L.T)  # cov_x = L P^-1 Lᵀ = Wᵀ W
        sd = np.sqrt((W**2).sum(0))
        return (L @ m).reshape(self.size, self.size), sd.reshape(self.size, self.size)
