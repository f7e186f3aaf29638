r"""Boundary flux of a transported species from sparse concentration measurements.

The advection-diffusion problem of the drift-diffusion paper (Section 5.2):

- **PDE** on the 16 × 4 rectangle (x along the channel, s = y across it):
  ∇·(a u) − κ∇²u = 0 with a = (a_x(s), 0), a_x = 0.1·4·s(4 − s)/16 (parabolic,
  maximum 0.1 at mid-height, zero at the walls; ∇·a = 0) and κ = 0.07.
  u = 0 on the inflow edge x = 0; zero diffusive flux κ ∂u/∂n = 0 on the outflow edge
  x = 16; on the walls s = 0 (bottom) and s = 4 (top) the prescribed influx
  κ ∂u/∂n = q (n the outward normal, so q > 0 emits the species into the channel),
  piecewise constant over 15 segments [0.47 k, 0.47 (k+1)], k = 0..14, starting at
  the left edge, and zero beyond x = 7.05.
- **Target** ``flux`` (30,): ``flux[0:15]`` the bottom-wall segments left to right,
  ``flux[15:30]`` the top-wall segments left to right.
- **Prior**: a Gaussian process over the 30 segment midpoints (0.47 (k + ½), 0) and
  (0.47 (k + ½), 4), RBF kernel σ_f² exp(−d²/(2ℓ²)) with ℓ = 2 on the Euclidean
  distance d (so the walls are weakly correlated, e^{−2} at the same x), variance
  σ_f² = 1 (the paper gives no variance: with mean 2 about 2% of the values are clipped)
  plus a nugget of 1e−4 for a well-conditioned covariance; mean +2. The latent site is
  ``flux_raw`` (the GP draw) and ``flux = clip(flux_raw, 0)`` is deterministic.
- **Sensors** ``y`` (30,): concentration at x_j = (j + ½)·16/15, j = 0..14 (0.533,
  1.6, ..., 15.467), at s = 0.5 (``y[0:15]``, bottom) and s = 3.5 (``y[15:30]``, top),
  plus independent Gaussian noise σ_ε (``noise``). The deterministic site
  ``concentration`` (30,) is the noise-free reading.
- **Forward map**: the problem is linear, u(sensors) = G q with G (30 × 30) computed
  once from 30 finite-element solves (P2 triangles, scikit-fem; the cell Péclet number
  \|a\| h/2κ ≤ 0.04 needs no stabilisation) and shipped in ``data/advection_forward.npy``;
  :func:`compute_forward` recomputes it, ``benchmarks/fem_convergence.py`` shows its
  mesh convergence. Simulation is a differentiable matrix product, so NUTS works.
- **Family of measurement operators** (``masked=True``): a latent ``mask`` (30,),
  each sensor on with probability 0.7; off sensors read exactly −1. The mask is a
  function of the observation (:func:`mask_from_y`: m = [y ≠ −1]), so an amortized
  method conditioned on y has it; to follow the paper, concatenate ``mask_from_y(y)``
  to the conditioning input, and learn ``target="flux"`` (not the default "every
  latent site", which would include ``mask``).
- **Reference posterior**: :meth:`AdvectionDiffusion.posterior_gaussian` is the exact
  Gaussian posterior of ``flux_raw`` for the unclipped model; :meth:`~AdvectionDiffusion.reference`
  corrects it for clipping by importance sampling with that Gaussian as ``proposal=``
  (the clipped model has the same latent ``flux_raw``, so the weights are the
  likelihood ratio of clipped to unclipped means). When segments are clipped the
  unclipped posterior alone leaves the negative values of their ``flux_raw`` uncovered
  (ESS ≈ 1), so the proposal becomes a Gaussian mixture that adds, for the candidate
  clipped sets, the posterior with those fluxes set to zero (:meth:`~AdvectionDiffusion.gaussian_guide`).

Example:
    >>> problem = make_problem(noise=0.02)
    >>> flux, y = problem.draw(seed=0)
    >>> mean, cov = problem.posterior_gaussian(y)
    >>> idata = problem.reference(y, num_samples=2000)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

import bayesinv

__all__ = [
    "LENGTH",
    "HEIGHT",
    "KAPPA",
    "VELOCITY_MAX",
    "SEGMENT",
    "NUM_SEGMENTS",
    "segment_midpoints",
    "sensor_positions",
    "prior_covariance",
    "compute_forward",
    "load_forward",
    "mask_from_y",
    "MaskedNormal",
    "ClippedGaussianProposal",
    "AdvectionDiffusion",
    "make_problem",
]

LENGTH, HEIGHT = 16.0, 4.0
KAPPA = 0.07
VELOCITY_MAX = 0.1
SEGMENT = 0.47
NUM_SEGMENTS = 15
SENSOR_OFFSET = 0.5
PRIOR_MEAN = 2.0
PRIOR_VARIANCE = 1.0
LENGTH_SCALE = 2.0
NUGGET = 1e-4
SENSOR_ON = 0.7
OFF_READING = -1.0
FORWARD_FILE = Path(__file__).with_name("data") / "advection_forward.npy"
#: Mesh options of the shipped forward matrix (see benchmarks/fem_convergence.py).
FORWARD_OPTIONS = {"h": 0.05, "degree": 2}


def segment_midpoints() -> np.ndarray:
    r"""The 30 segment midpoints ``(30, 2)``: bottom wall left to right, then top wall."""
    x = SEGMENT * (np.arange(NUM_SEGMENTS) + 0.5)
    return np.concatenate([np.stack([x, np.zeros_like(x)], 1), np.stack([x, np.full_like(x, HEIGHT)], 1)])


def sensor_positions() -> np.ndarray:
    r"""The 30 sensor positions ``(30, 2)``: 15 at s = 0.5 left to right, then 15 at s = 3.5."""
    x = (np.arange(15) + 0.5) * LENGTH / 15
    return np.concatenate(
        [np.stack([x, np.full_like(x, SENSOR_OFFSET)], 1), np.stack([x, np.full_like(x, HEIGHT - SENSOR_OFFSET)], 1)]
    )


def prior_covariance() -> np.ndarray:
    r"""The prior covariance ``(30, 30)`` of ``flux_raw`` (RBF kernel, ℓ = 2, σ_f² = 1, nugget 1e−4)."""
    p = segment_midpoints()
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return PRIOR_VARIANCE * np.exp(-d2 / (2 * LENGTH_SCALE**2)) + NUGGET * np.eye(len(p))


# -------------------------------------------------------------------------- forward map


def _axis(breaks: np.ndarray, h: float) -> np.ndarray:
    r"""Mesh lines through every break point, spacing at most ``h`` in between."""
    pieces = [np.linspace(a, b, max(1, math.ceil((b - a) / h - 1e-9)) + 1)[:-1] for a, b in zip(breaks[:-1], breaks[1:])]
    return np.concatenate(pieces + [breaks[-1:]])


def fem_setup(h: float = 0.05, degree: int = 2) -> dict[str, Any]:
    r"""Mesh, basis, matrix, wall-flux load vectors and sensor probes of the FE model.

    Returns:
        A dict with ``mesh``, ``basis``, ``K`` (the matrix), ``loads`` (ndofs, 30),
        ``probes`` (30, ndofs), ``inflow`` (Dirichlet DOFs) and ``peclet`` (max cell Péclet).
    """
    from bayesinv.models.fem import require_skfem, tensor_mesh

    skfem = require_skfem()
    from skfem.helpers import dot, grad

    edges = SEGMENT * np.arange(NUM_SEGMENTS + 1)
    xs = _axis(np.concatenate([edges, [LENGTH]]), h)
    ys = _axis(np.array([0.0, HEIGHT]), h)
    mesh = tensor_mesh(xs, ys)
    element = skfem.ElementTriP2() if degree == 2 else skfem.ElementTriP1()
    basis = skfem.Basis(mesh, element)

    @skfem.BilinearForm
    def operator(u, v, w):
        s = w.x[1]
        ax = VELOCITY_MAX * 4 * s * (HEIGHT - s) / HEIGHT**2
        return KAPPA * dot(grad(u), grad(v)) + ax * grad(u)[0] * v

    K = operator.assemble(basis)

    @skfem.LinearForm
    def unit(v, w):
        return v

    tol = 1e-9
    loads = []
    for wall in (0.0, HEIGHT):
        for k in range(NUM_SEGMENTS):
            lo, hi = edges[k], edges[k + 1]
            facets = mesh.facets_satisfying(
                lambda x, lo=lo, hi=hi, wall=wall: (np.abs(x[1] - wall) < tol) & (x[0] > lo - tol) & (x[0] < hi + tol)
            )
            fb = skfem.FacetBasis(mesh, element, facets=facets)
            loads.append(unit.assemble(fb))
    loads = np.stack(loads, axis=1)
    inflow = basis.get_dofs(lambda x: np.abs(x[0]) < tol).all()
    hmax = max(np.diff(xs).max(), np.diff(ys).max())
    return {
        "mesh": mesh,
        "basis": basis,
        "K": K,
        "loads": loads,
        "probes": basis.probes(sensor_positions().T),
        "inflow": inflow,
        "peclet": VELOCITY_MAX * hmax / (2 * KAPPA),
    }


def solve_fields(setup: dict[str, Any], flux: np.ndarray) -> np.ndarray:
    r"""FE solutions ``(ndofs, m)`` for wall fluxes ``(30, m)`` (one direct solve, m right-hand sides)."""
    import scipy.sparse.linalg as spla

    K, inflow = setup["K"], setup["inflow"]
    n = K.shape[0]
    free = np.setdiff1d(np.arange(n), inflow)
    rhs = setup["loads"] @ np.asarray(flux, dtype=np.float64).reshape(30, -1)
    lu = spla.splu(K[free][:, free].tocsc())
    u = np.zeros((n, rhs.shape[1]))
    u[free] = lu.solve(rhs[free])
    return u


def compute_forward(h: float = FORWARD_OPTIONS["h"], degree: int = FORWARD_OPTIONS["degree"]) -> np.ndarray:
    r"""The flux → sensor matrix G ``(30, 30)`` from 30 FE solves (mesh size ``h``, P1/P2).

    ``G[i, k]`` is the concentration at sensor ``i`` for unit flux on segment ``k`` and
    zero elsewhere (orders as in the module docstring). Needs scikit-fem.
    """
    setup = fem_setup(h, degree)
    return np.asarray(setup["probes"] @ solve_fields(setup, np.eye(30)))


def load_forward() -> np.ndarray:
    r"""The shipped forward matrix ``(30, 30)`` (float64), computed by :func:`compute_forward`."""
    return np.load(FORWARD_FILE)


# ---------------------------------------------------------------------------- masking


def mask_from_y(y: Any) -> Any:
    r"""The sensor mask ``(*, 30)`` (1.0 on, 0.0 off) of masked readings: off sensors read exactly −1."""
    if isinstance(y, torch.Tensor):
        return (y != OFF_READING).to(y.dtype)
    y = np.asarray(y)
    return (y != OFF_READING).astype(y.dtype if y.dtype.kind == "f" else np.float32)


class MaskedNormal(TorchDistribution):
    r"""Readings of sensors that are on (``mask`` = 1): Normal(loc, scale); off sensors read −1.

    One event is the vector of readings (event dim 1). The log-density sums the normal
    log-densities of the sensors that are on; a reading of an off sensor other than −1
    has density zero (log-density −inf).

    Arguments:
        loc: Noise-free readings ``(*, S)``.
        scale: The noise standard deviation (broadcastable).
        mask: ``(*, S)``, 1 where the sensor is on.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(self, loc: torch.Tensor, scale: Any, mask: torch.Tensor, validate_args: bool | None = None):
        loc, mask = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(mask, dtype=torch.as_tensor(loc).dtype))
        self.loc, self.mask = loc, mask
        self.scale = torch.as_tensor(scale, dtype=loc.dtype).expand_as(loc)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MaskedNormal, _instance)
        shape = torch.Size(batch_shape) + self.event_shape
        new.loc, new.mask, new.scale = self.loc.expand(shape), self.mask.expand(shape), self.scale.expand(shape)
        super(MaskedNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            readings = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(shape, dtype=self.loc.dtype)
            return torch.where(self.mask.expand(shape) > 0, readings, torch.full_like(readings, OFF_READING))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        on = self.mask > 0
        z = (value - self.loc) / self.scale
        lp = -0.5 * z**2 - torch.log(self.scale) - 0.5 * math.log(2 * math.pi)
        off = torch.where(value == OFF_READING, torch.zeros_like(lp), torch.full_like(lp, -math.inf))
        return torch.where(on, lp, off).sum(-1)


# ------------------------------------------------------------------------- proposal


class ClippedGaussianProposal(TorchDistribution):
    r"""An equal mixture of Gaussians, some with an upper bound on chosen coordinates.

    Component ``k`` is N(mean_k, cov_k), with the coordinates in ``bounded_k`` drawn last
    and each truncated above at ``upper`` given the ones before (the GHK construction:
    with f = m + L e in the order [free, bounded], each bounded e_j is a standard normal
    truncated so that f_j ≤ upper_j). Its density is exact:
    log q(f) = Σ_j [log φ(e_j) − log L_jj] − Σ_{bounded j} log Φ(ub_j). Computed in float64.

    Arguments:
        means: ``(K, D)``.
        covs: ``(K, D, D)``.
        bounded: ``(K, D)`` booleans (a row of False: a plain Gaussian).
        upper: ``(D,)`` upper bounds of the bounded coordinates.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, means, covs, bounded, upper, validate_args=None):
        means, covs = np.asarray(means, dtype=np.float64), np.asarray(covs, dtype=np.float64)
        self.bounded = np.asarray(bounded, dtype=bool)
        K, D = means.shape
        self.order = [np.concatenate([np.flatnonzero(~b), np.flatnonzero(b)]) for b in self.bounded]
        self.means = [torch.as_tensor(m[o]) for m, o in zip(means, self.order)]
        self.trils = [torch.as_tensor(np.linalg.cholesky(c[np.ix_(o, o)])) for c, o in zip(covs, self.order)]
        self.upper = [torch.as_tensor(np.asarray(upper, dtype=np.float64)[o]) for o in self.order]
        self.nfree = [int((~b).sum()) for b in self.bounded]
        super().__init__(torch.Size(), torch.Size([D]), validate_args=False)

    def _component_sample(self, k: int, n: int) -> torch.Tensor:
        m, L, ub, nfree = self.means[k], self.trils[k], self.upper[k], self.nfree[k]
        D = m.numel()
        e = torch.empty(n, D, dtype=torch.float64)
        e[:, :nfree] = torch.randn(n, nfree, dtype=torch.float64)
        for j in range(nfree, D):
            partial = m[j] + e[:, :j] @ L[j, :j]
            top = (ub[j] - partial) / L[j, j]
            u = torch.rand(n, dtype=torch.float64).clamp(1e-300, 1.0)
            e[:, j] = torch.special.ndtri((torch.log(u) + torch.special.log_ndtr(top)).exp().clamp(1e-300, 1 - 1e-16))
            e[:, j] = torch.minimum(e[:, j], top)
        f = m + e @ L.T
        out = torch.empty_like(f)
        out[:, torch.as_tensor(self.order[k])] = f
        return out

    def _component_log_prob(self, k: int, value: torch.Tensor) -> torch.Tensor:
        m, L, ub, nfree = self.means[k], self.trils[k], self.upper[k], self.nfree[k]
        f = value.double()[..., torch.as_tensor(self.order[k])]
        e = torch.linalg.solve_triangular(L, (f - m).unsqueeze(-1), upper=False).squeeze(-1)
        lp = (-0.5 * e**2 - 0.5 * math.log(2 * math.pi)).sum(-1) - torch.log(torch.diagonal(L)).sum()
        if nfree < m.numel():
            diag = torch.diagonal(L)[nfree:]
            top = e[..., nfree:] + (ub[nfree:] - f[..., nfree:]) / diag
            lp = lp - torch.special.log_ndtr(top).sum(-1)
            lp = torch.where((f[..., nfree:] <= ub[nfree:] + 1e-12).all(-1), lp, torch.full_like(lp, -math.inf))
        return lp

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        n = int(np.prod(sample_shape)) if len(sample_shape) else 1
        with torch.no_grad():
            which = torch.randint(len(self.means), (n,))
            out = torch.empty(n, self.event_shape[0], dtype=torch.float64)
            for k in range(len(self.means)):
                idx = (which == k).nonzero().squeeze(-1)
                if idx.numel():
                    out[idx] = self._component_sample(k, idx.numel())
        return out.float().reshape(tuple(sample_shape) + tuple(self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        parts = torch.stack([self._component_log_prob(k, value) for k in range(len(self.means))], -1)
        return torch.logsumexp(parts, -1) - math.log(len(self.means))


# ------------------------------------------------------------------------------ model


class AdvectionDiffusion:
    r"""The boundary-flux inverse problem at one noise level.

    Arguments:
        noise: σ_ε, the standard deviation of the sensor noise.
        masked: Whether sensors are on at random (p = 0.7) with off readings −1.
        clip: Whether ``flux = clip(flux_raw, 0)`` (the paper's prior); ``False`` gives
            the linear-Gaussian model whose posterior is :meth:`posterior_gaussian`.
        forward: The forward matrix ``(30, 30)`` (default: the shipped one).

    Attributes:
        model: The Pyro model: latent ``flux_raw`` (30,) [and ``mask`` (30,)],
            deterministic ``flux`` (30,) and ``concentration`` (30,), observed ``y`` (30,).
        forward: G ``(30, 30)`` float64 NumPy array.
        prior_mean, prior_cov: The prior of ``flux_raw`` (float64).
    """

    def __init__(self, noise: float = 0.02, *, masked: bool = False, clip: bool = True, forward: np.ndarray | None = None):
        self.noise = float(noise)
        self.masked = bool(masked)
        self.clip = bool(clip)
        self.forward = np.asarray(load_forward() if forward is None else forward, dtype=np.float64)
        self.prior_mean = np.full(30, PRIOR_MEAN)
        self.prior_cov = prior_covariance()
        self._G = torch.as_tensor(self.forward, dtype=torch.float32)
        self._mean = torch.as_tensor(self.prior_mean, dtype=torch.float32)
        self._scale_tril = torch.as_tensor(np.linalg.cholesky(self.prior_cov), dtype=torch.float32)
        self.dims = {k: ["segment"] for k in ("flux_raw", "flux")} | {k: ["sensor"] for k in ("y", "concentration", "mask")}

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        flux_raw = pyro.sample("flux_raw", dist.MultivariateNormal(self._mean, scale_tril=self._scale_tril))
        flux = pyro.deterministic("flux", flux_raw.clamp(min=0.0) if self.clip else flux_raw)
        c = pyro.deterministic("concentration", flux @ self._G.T)
        if self.masked:
            mask = pyro.sample("mask", dist.Bernoulli(torch.full((30,), SENSOR_ON)).to_event(1))
            return pyro.sample("y", MaskedNormal(c, self.noise, mask), obs=y)
        return pyro.sample("y", dist.Normal(c, self.noise).to_event(1), obs=y)

    __call__ = model

    def numpyro_model(self, y=None):
        r"""The same model written in NumPyro (needs the ``jax`` extra; unmasked sensors only)."""
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as nd

        if self.masked:
            raise NotImplementedError("the NumPyro twin covers the unmasked sensors (masked=False)")
        G = jnp.asarray(self.forward, jnp.float32)
        mean = jnp.asarray(self.prior_mean, jnp.float32)
        tril = jnp.asarray(self._scale_tril.numpy())
        flux_raw = numpyro.sample("flux_raw", nd.MultivariateNormal(mean, scale_tril=tril))
        flux = numpyro.deterministic("flux", jnp.clip(flux_raw, 0.0) if self.clip else flux_raw)
        c = numpyro.deterministic("concentration", flux @ G.T)
        return numpyro.sample("y", nd.Normal(c, self.noise).to_event(1), obs=y)

    def draw(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth ``flux`` (30,) from the prior and its observation ``y`` (30,) (float32)."""
        rng = np.random.default_rng(seed)
        raw = rng.multivariate_normal(self.prior_mean, self.prior_cov)
        flux = np.maximum(raw, 0.0) if self.clip else raw
        y = self.forward @ flux + self.noise * rng.standard_normal(30)
        if self.masked:
            y = np.where(rng.random(30) < SENSOR_ON, y, OFF_READING)
        return flux.astype(np.float32), y.astype(np.float32)

    def posterior_gaussian(self, y: Any, *, zero: Any = None) -> tuple[np.ndarray, np.ndarray]:
        r"""The exact posterior mean ``(30,)`` and covariance ``(30, 30)`` of ``flux_raw`` in the
        unclipped model (sensors reading −1 are ignored when ``masked``).

        Arguments:
            y: The observation (30,).
            zero: Segments (indices or a boolean mask) whose flux is taken to be zero in
                the forward model (their columns of G removed): their posterior is then
                their prior given the other segments. This is the posterior of the
                clipped model if exactly these segments were clipped.
        """
        y = np.asarray(y, dtype=np.float64).reshape(30)
        on = mask_from_y(y) > 0 if self.masked else np.ones(30, dtype=bool)
        G, S = self.forward[on].copy(), self.prior_cov
        if zero is not None:
            G[:, np.asarray(zero)] = 0.0
        gain = np.linalg.solve(G @ S @ G.T + self.noise**2 * np.eye(int(on.sum())), G @ S).T  # S Gᵀ (G S Gᵀ + σ² I)⁻¹
        mean = self.prior_mean + gain @ (y[on] - G @ self.prior_mean)
        cov = S - gain @ G @ S
        return mean, 0.5 * (cov + cov.T)

    def proposal_components(self, y: Any) -> list[np.ndarray]:
        r"""The candidate sets of clipped segments used by :meth:`gaussian_guide`.

        With m the mode of the nonnegative model (the posterior of ``flux`` under
        ``flux ≥ 0``: a bound-constrained least-squares problem, data misfit plus the
        Gaussian prior penalty), μ and s the mean and standard deviation of the unclipped
        Gaussian posterior, the candidates are {m = 0}, {m < t s} for t ∈ {0.5, 1, 2}
        and {μ < t s} for t ∈ {0, 1, 2, 3}. Returns the distinct non-empty sets, with the
        empty set (the unclipped posterior) first.
        """
        from scipy.optimize import lsq_linear

        y = np.asarray(y, dtype=np.float64).reshape(30)
        on = mask_from_y(y) > 0 if self.masked else np.ones(30, dtype=bool)
        prior_root = np.linalg.cholesky(np.linalg.inv(self.prior_cov)).T  # Σ⁻¹ = Rᵀ R
        design = np.concatenate([self.forward[on] / self.noise, prior_root])
        target = np.concatenate([y[on] / self.noise, prior_root @ self.prior_mean])
        mode = lsq_linear(design, target, bounds=(0.0, np.inf), method="bvls").x
        mean, cov = self.posterior_gaussian(y)
        sd = np.sqrt(np.diag(cov))
        candidates = [mode <= 1e-9] + [mode < t * sd for t in (0.5, 1.0, 2.0)] + [mean < t * sd for t in (0.0, 1.0, 2.0, 3.0)]
        sets = [np.zeros(30, dtype=bool)]
        for z in candidates:
            if z.any() and not any((z == other).all() for other in sets):
                sets.append(z)
        return sets

    def gaussian_guide(self, y: Any, *, scale: float = 1.0, clipped: bool | None = None):
        r"""A Pyro guide for ``flux_raw`` (and, when ``masked``, the mask read off ``y``):
        the importance-sampling proposal of :meth:`reference`.

        Without clipping (or when no segment looks clipped) it is the exact Gaussian
        posterior of the unclipped model. When some segments may be clipped, the
        unclipped posterior puts their ``flux_raw`` near 0, while the clipped posterior
        spreads it over the negative values the prior allows; the proposal is then an
        equal mixture (:class:`ClippedGaussianProposal`) of the unclipped posterior and,
        for each candidate set Z of :meth:`proposal_components`, the Gaussian posterior
        with the fluxes of Z set to zero (``posterior_gaussian(y, zero=Z)``), whose
        ``flux_raw`` on Z (drawn given the rest from the prior) is truncated above at
        3 posterior standard deviations of the unclipped model.

        Arguments:
            y: The observation.
            scale: Widens every component (standard deviations × ``scale``).
            clipped: Whether to add the clipped components (default: when the model clips).
        """
        clipped = self.clip if clipped is None else clipped
        sets = self.proposal_components(y) if clipped else [np.zeros(30, dtype=bool)]
        moments = [self.posterior_gaussian(y, zero=z if z.any() else None) for z in sets]
        if len(sets) == 1:
            mean, cov = moments[0]
            loc = torch.as_tensor(mean, dtype=torch.float32)
            proposal = dist.MultivariateNormal(loc, scale_tril=torch.as_tensor(scale * np.linalg.cholesky(cov), dtype=torch.float32))
        else:
            _, cov0 = moments[0]
            upper = 3.0 * np.sqrt(np.diag(cov0))  # clipped fluxes may still be slightly positive
            proposal = ClippedGaussianProposal(
                [m for m, _ in moments], [scale**2 * c for _, c in moments], np.stack(sets), upper
            )
        mask = torch.as_tensor(mask_from_y(np.asarray(y, dtype=np.float32)))

        def guide(y_obs=None):
            pyro.sample("flux_raw", proposal)
            if self.masked:
                pyro.sample("mask", dist.Delta(mask, event_dim=1))

        guide.num_components = len(sets)
        return guide

    def reference(self, y: Any, num_samples: int = 2000, *, num_proposals: int | None = None, scale: float = 1.0,
                  seed: int = 0, progress: bool | None = None, **options: Any):
        r"""The reference posterior: importance sampling with :meth:`gaussian_guide` as proposal.

        Arguments:
            y: The observation (30,).
            num_samples: Resampled posterior draws.
            num_proposals: Proposals (default ``max(20 · num_samples, 10_000)``).
            scale: Widens the proposal (standard deviations × ``scale``).
            options: Further options of the importance method.

        Returns:
            An :class:`arviz.InferenceData` with ``flux_raw``, ``flux`` and
            ``concentration`` (and ``mask``); ``sample_stats["ess"]`` is the effective
            sample size (the number of proposals when nothing is clipped).
        """
        target = ["flux_raw", "flux", "concentration"] + (["mask"] if self.masked else [])
        return bayesinv.infer(
            self.model, np.asarray(y, dtype=np.float32), method="importance", proposal=self.gaussian_guide(y, scale=scale),
            num_samples=num_samples, num_proposals=num_proposals, seed=seed, progress=progress, target=target,
            dims=self.dims, **options,
        )


def make_problem(noise: float = 0.02, masked: bool = False, **kw: Any) -> AdvectionDiffusion:
    r"""The advection-diffusion problem (see :class:`AdvectionDiffusion`)."""
    return AdvectionDiffusion(noise, masked=masked, **kw)
