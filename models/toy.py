r"""Toy problems with known answers.

- :class:`LinearGaussian`: y = A θ + ε with a Gaussian prior; the posterior is Gaussian
  and known in closed form (:meth:`LinearGaussian.posterior`).
- The conditional-density benchmarks of the drift-diffusion paper, each a model whose
  target is ``x`` and whose observation is ``y``:

  * :func:`tanh`: X = tanh(Y) + C1, Y ~ U(−3, 3), C1 ~ Gamma(shape 1, scale 0.3);
  * :func:`bimodal`: X = (Y + C2)^{1/3} (real cube root), Y, C2 ~ N(0, 1);
  * :func:`spiral`: X = 0.1 (W sin W + C3), Y = 0.1 (W cos W + C4),
    W = 3π (1 + 2H) / 2, H ~ U(0, 1), C3, C4 ~ N(0, 1).

- :class:`HeavyTailed`: y = θ + Student-t noise (ν = 2), θ ~ N(0, 3² I): a heavy-tailed
  posterior, sampled exactly by self-normalised importance sampling (:meth:`HeavyTailed.reference`).
- :class:`SignFlip`: y = \|θ\| + ε, θ ~ N(0, I): a posterior with 2^dim mirror-image modes,
  sampled exactly (:meth:`SignFlip.reference`).

  For Tanh and Bimodal, X given Y is drawn directly, so importance sampling with the
  prior proposal is exact; their reference posteriors are also available by rejection
  from the joint (:func:`joint_reference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform, Transform

__all__ = ["LinearGaussian", "HeavyTailed", "SignFlip", "tanh", "bimodal", "spiral", "CONDITIONAL_DENSITIES", "joint_reference"]


class LinearGaussian:
    r"""y = A θ + ε, θ ~ N(μ₀, Σ₀), ε ~ N(0, σ² I), with its analytic posterior.

    Arguments:
        dim: Dimension of θ.
        num_obs: Dimension of y (default ``dim``).
        noise: Observation noise standard deviation σ.
        prior_scale: Prior standard deviation (Σ₀ = prior_scale² I); μ₀ = 0.
        seed: Seed of the random forward matrix A.

    Example:
        >>> problem = LinearGaussian(dim=10)
        >>> theta, y = problem.draw(seed=1)
        >>> mean, cov = problem.posterior(y)
        >>> idata = bayesinv.infer(problem.model, y, method="nuts")
    """

    def __init__(self, dim: int = 10, num_obs: int | None = None, noise: float = 0.5, prior_scale: float = 1.0, seed: int = 0):
        self.dim = int(dim)
        self.num_obs = int(num_obs or dim)
        self.noise = float(noise)
        self.prior_scale = float(prior_scale)
        gen = torch.Generator().manual_seed(seed)
        self.A = torch.randn(self.num_obs, self.dim, generator=gen, dtype=torch.float64) / math.sqrt(self.dim)
        self.prior_mean = torch.zeros(self.dim, dtype=torch.float64)

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: latent ``theta`` (dim,), observed ``y`` (num_obs,)."""
        A = self.A.float()
        theta = pyro.sample(
            "theta", dist.Normal(self.prior_mean.float(), self.prior_scale).to_event(1)
        )
        mean = pyro.deterministic("mean_y", theta @ A.T)
        return pyro.sample("y", dist.Normal(mean, self.noise).to_event(1), obs=y)

    __call__ = model

    def numpyro_model(self, y=None):
        r"""The same model written in NumPyro (needs the ``jax`` extra): sites ``theta``, ``mean_y``, ``y``."""
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        A = jnp.asarray(self.A.numpy(), dtype=jnp.float32)
        theta = numpyro.sample("theta", nd.Normal(jnp.asarray(self.prior_mean.numpy(), jnp.float32), self.prior_scale).to_event(1))
        mean = numpyro.deterministic("mean_y", theta @ A.T)
        return numpyro.sample("y", nd.Normal(mean, self.noise).to_event(1), obs=y)

    def posterior(self, y: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r"""The exact posterior mean ``(dim,)`` and covariance ``(dim, dim)`` given ``y``."""
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        precision = torch.eye(self.dim, dtype=torch.float64) / self.prior_scale**2 + self.A.T @ self.A / self.noise**2
        cov = torch.linalg.inv(precision)
        mean = cov @ (self.A.T @ y / self.noise**2 + self.prior_mean / self.prior_scale**2)
        return mean.numpy(), cov.numpy()

    def draw(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth θ and an observation y drawn from the model."""
        gen = torch.Generator().manual_seed(seed)
        theta = self.prior_mean + self.prior_scale * torch.randn(self.dim, generator=gen, dtype=torch.float64)
        y = self.A @ theta + self.noise * torch.randn(self.num_obs, generator=gen, dtype=torch.float64)
        return theta.float().numpy(), y.float().numpy()


class HeavyTailed:
    r"""y = θ + ε with Student-t noise: θ ~ N(0, s₀² I), ε_i ~ t_ν(0, s) independently; a heavy-tailed posterior.

    The posterior :math:`p(θ \mid y) \propto N(θ; 0, s_0^2 I) \prod_i t_ν(y_i - θ_i; s)` has the
    likelihood's polynomial tails out to the prior's scale. :meth:`reference` samples it by
    self-normalised importance sampling with the likelihood as proposal (θ = y + s t_ν draws,
    weights ∝ the prior density, which is bounded), then resampling.

    Arguments:
        dim: Dimension of θ and y.
        nu: Degrees of freedom ν of the noise.
        scale: Noise scale s.
        prior_scale: Prior standard deviation s₀.

    Example:
        >>> problem = HeavyTailed(dim=3)
        >>> theta, y = problem.draw(seed=1)
        >>> ref, ess = problem.reference(y, 10_000)
    """

    def __init__(self, dim: int = 3, nu: float = 2.0, scale: float = 0.5, prior_scale: float = 3.0):
        self.dim, self.nu, self.scale, self.prior_scale = int(dim), float(nu), float(scale), float(prior_scale)

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: latent ``theta`` (dim,), observed ``y`` (dim,)."""
        theta = pyro.sample("theta", dist.Normal(torch.zeros(self.dim), self.prior_scale).to_event(1))
        return pyro.sample("y", dist.StudentT(self.nu, theta, self.scale).to_event(1), obs=y)

    __call__ = model

    def draw(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth θ and an observation y drawn from the model."""
        gen = torch.Generator().manual_seed(seed)
        theta = self.prior_scale * torch.randn(self.dim, generator=gen, dtype=torch.float64)
        y = theta + self.scale * _student_t(self.nu, (self.dim,), gen)
        return theta.float().numpy(), y.float().numpy()

    def reference(self, y, num_samples: int, *, num_proposals: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, float]:
        r"""``num_samples`` posterior draws ``(num_samples, dim)`` given ``y`` and the importance sampler's ESS."""
        gen = torch.Generator().manual_seed(seed)
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        theta = y + self.scale * _student_t(self.nu, (num_proposals, self.dim), gen)
        log_w = -0.5 * (theta / self.prior_scale).pow(2).sum(-1)  # prior / proposal: the likelihood cancels
        w = torch.softmax(log_w, 0)
        ess = float(1.0 / w.pow(2).sum())
        idx = torch.multinomial(w, num_samples, replacement=True, generator=gen)
        return theta[idx].float().numpy(), ess


def _student_t(nu: float, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    r"""Standard Student-t draws reproducible from ``gen``: z / sqrt(χ²_ν / ν), χ²_ν ~ Gamma(ν/2, rate ½)."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng():  # torch's Gamma sampler draws from the global RNG
        torch.manual_seed(seed)
        chi2 = torch.distributions.Gamma(torch.tensor(nu / 2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)).sample(shape)
    return z / torch.sqrt(chi2 / nu)


class SignFlip:
    r"""y = \|θ\| + ε, θ ~ N(0, I), ε ~ N(0, σ² I): a posterior with 2^dim modes, θ_i ≈ ±y_i.

    Given y the coordinates are independent; each \|θ_i\| has the Gaussian posterior
    N(y_i / (1 + σ²), σ² / (1 + σ²)) truncated to (0, ∞) and its sign is + or − with
    probability ½ (the prior is symmetric). :meth:`reference` samples this exactly.

    Arguments:
        dim: Dimension of θ and y.
        noise: The noise standard deviation σ.

    Example:
        >>> problem = SignFlip(dim=2)
        >>> theta, y = problem.draw(seed=1)
        >>> ref = problem.reference(y, 10_000)
    """

    def __init__(self, dim: int = 2, noise: float = 0.2):
        self.dim, self.noise = int(dim), float(noise)

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: latent ``theta`` (dim,), observed ``y`` (dim,)."""
        theta = pyro.sample("theta", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
        return pyro.sample("y", dist.Normal(theta.abs(), self.noise).to_event(1), obs=y)

    __call__ = model

    def draw(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth θ and an observation y drawn from the model."""
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(self.dim, generator=gen, dtype=torch.float64)
        y = theta.abs() + self.noise * torch.randn(self.dim, generator=gen, dtype=torch.float64)
        return theta.float().numpy(), y.float().numpy()

    def reference(self, y, num_samples: int, *, seed: int = 0) -> np.ndarray:
        r"""``num_samples`` exact posterior draws ``(num_samples, dim)`` given ``y`` (inverse-CDF truncated normal, random signs)."""
        gen = torch.Generator().manual_seed(seed)
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        s2 = self.noise**2
        mean, sd = y / (1 + s2), math.sqrt(s2 / (1 + s2))
        normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), 1.0)
        lo = normal.cdf(-mean / sd)  # P(|θ_i| <= 0) under the untruncated Gaussian
        u = lo + (1 - lo) * torch.rand((num_samples, self.dim), generator=gen, dtype=torch.float64)
        a = mean + sd * normal.icdf(u.clamp(max=1 - 1e-16))
        sign = torch.where(torch.rand((num_samples, self.dim), generator=gen) < 0.5, -1.0, 1.0).double()
        return (sign * a.clamp(min=0.0)).float().numpy()


class _CubeRoot(Transform):
    r"""The real cube root x ↦ sign(x)|x|^{1/3}."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __eq__(self, other):
        return isinstance(other, _CubeRoot)

    def _call(self, x):
        return torch.sign(x) * torch.abs(x).pow(1.0 / 3.0)

    def _inverse(self, y):
        return y.pow(3)

    def log_abs_det_jacobian(self, x, y):
        # dy/dx = 1 / (3 y²)
        return -math.log(3.0) - 2.0 * torch.log(torch.abs(y))


def tanh(y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Tanh: X = tanh(Y) + C1, Y ~ U(−3, 3), C1 ~ Gamma(1, scale 0.3). Target ``x``, observation ``y``."""
    yv = pyro.sample("y", dist.Uniform(-3.0, 3.0), obs=y)
    base = dist.Gamma(torch.ones_like(torch.as_tensor(yv, dtype=torch.float32)), 1.0 / 0.3)
    return pyro.sample("x", dist.TransformedDistribution(base, [AffineTransform(torch.tanh(yv), 1.0)]))


def bimodal(y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Bimodal: X = (Y + C2)^{1/3}, Y, C2 ~ N(0, 1). Target ``x``, observation ``y``."""
    yv = pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
    return pyro.sample("x", dist.TransformedDistribution(dist.Normal(yv, 1.0), [_CubeRoot()]))


def spiral(y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Spiral: X = 0.1 (W sin W + C3), Y = 0.1 (W cos W + C4), W = 3π(1 + 2H)/2, H ~ U(0, 1)."""
    h = pyro.sample("h", dist.Uniform(0.0, 1.0))
    w = 1.5 * math.pi * (1.0 + 2.0 * h)
    x = pyro.sample("x", dist.Normal(0.1 * w * torch.sin(w), 0.1))
    return pyro.sample("y", dist.Normal(0.1 * w * torch.cos(w), 0.1), obs=y)


CONDITIONAL_DENSITIES = {"tanh": tanh, "bimodal": bimodal, "spiral": spiral}


def joint_reference(model, y: float, *, num_joint: int = 100_000, width: float = 0.05, seed: int = 0) -> np.ndarray:
    r"""Reference draws of ``x`` given ``y``: the x of joint draws whose y lies within ±``width``.

    This is the reference of the conditional-density benchmark (100,000 fresh joint draws).
    """
    from bayesinv.data import simulate

    ds = simulate(model, num_joint, seed=seed, chunk_size=num_joint, progress=False)
    yy = np.asarray(ds["y"].values).reshape(num_joint)
    x = np.asarray(ds["x"].values).reshape(num_joint)
    return x[np.abs(yy - y) <= width]
