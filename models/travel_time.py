r"""Eikonal travel-time tomography: a velocity field from first-arrival times between boundary sources and receivers.

The forward model of the eikonal tomography task of the Gaussianization-layers paper
(`../shared/papers/gaussianization-layers.md`, App. A; the paper gives no grid, so the set-up
below is ours): on the unit square (side ``extent`` km) the first-arrival time T of a point
source at :math:`x_s` solves the eikonal equation

.. math:: |\nabla T(x)| = 1 / v(x), \qquad T(x_s) = 0,

and the data are the times at receivers on the boundary plus Gaussian noise,
:math:`y_{sr} = T_s(x_r) + \varepsilon`. Sources sit on the left edge, receivers on the
right, top and bottom edges (a cross-well and surface layout).

- **Solver** (:func:`eikonal`): the first-order Godunov upwind discretisation on the grid
  nodes, solved by Jacobi iterations of the local update (every node at once, batched over
  sources and draws) until no time changes by more than ``tol``. Each update is a few
  differentiable torch operations, so autograd gives :math:`\partial y / \partial v` through
  the converged iterations — the likelihood gradient that ``score_prior``'s DPS and
  ``latent_prior`` need. It is the scheme scikit-fmm's fast marching solves (order 1); the
  tests compare the two and both with the exact times of homogeneous and linear-gradient
  media.
- **Prior** (:meth:`TravelTimeTomography.model`): a background velocity ``v0`` ~ U(2, 3)
  km/s increasing with depth at ``gradient`` ~ U(0, 1.5) km/s per km, plus ``num_anomalies``
  smooth Gaussian anomalies (centres uniform inside the square, radii U(0.08, 0.2) km,
  amplitudes N(0, 0.5²) km/s), floored at 1 km/s; the field is the deterministic site
  ``v`` (size × size, km/s).

Example:
    >>> tt = TravelTimeTomography(size=32, num_sources=8, num_receivers=24)
    >>> v, y = tt.draw(seed=0)                        # (32, 32) km/s, (8, 24) s
    >>> post = bayesinv.fit(tt.model, method="score_prior", target="v", num_simulations=10_000)
    >>> draws = post.sample(y, 16, guidance="dps")["v"]
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch

__all__ = ["eikonal", "TravelTimeTomography"]


def _check(name: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def eikonal(slowness: torch.Tensor, sources: torch.Tensor, h: float, *, tol: float = 1e-7, max_iters: int | None = None) -> torch.Tensor:
    r"""First-arrival times of point sources on a grid: the Godunov upwind scheme of :math:`|\nabla T| = s`.

    At every node, with :math:`a` and :math:`b` the smaller of the two neighbours' times along
    rows and along columns, the update is :math:`\min(a, b) + s h` where
    :math:`|a - b| \ge s h`, else :math:`\tfrac12 (a + b + \sqrt{2 s^2 h^2 - (a - b)^2})`;
    Jacobi sweeps of it over all nodes (times only decrease) converge to the scheme's
    solution. Differentiable in ``slowness`` (autograd through the iterations).

    Arguments:
        slowness: :math:`s = 1 / v` at the nodes, ``(*, n, m)``, positive.
        sources: Node indices ``(S, 2)`` (row, column) of the point sources (T = 0 there).
        h: Grid spacing.
        tol: Stop when no time changes by more than ``tol`` times the largest finite time.
        max_iters: Upper bound of the sweeps (default ``4 (n + m)``; a ``RuntimeError`` if not converged).

    Returns:
        Times ``(*, S, n, m)``.
    """
    if slowness.dim() < 2:
        raise ValueError(f"slowness must have shape (*, n, m), got {tuple(slowness.shape)}")
    n, m = slowness.shape[-2:]
    sources = torch.as_tensor(sources, dtype=torch.long).reshape(-1, 2)
    if ((sources < 0) | (sources >= torch.tensor([n, m]))).any():
        raise ValueError(f"sources {sources.tolist()} must be node indices of the {n} x {m} grid")
    s = slowness.unsqueeze(-3)  # (*, 1, n, m)
    is_src = torch.zeros(len(sources), n, m, dtype=torch.bool)
    is_src[torch.arange(len(sources)), sources[:, 0], sources[:, 1]] = True
    big = float(4 * (n + m) * h * float(slowness.detach().max()))  # larger than any arrival time; finite for autograd
    shape = (*slowness.shape[:-2], len(sources), n, m)
    T = torch.where(is_src, torch.zeros((), dtype=slowness.dtype), torch.full((), big, dtype=slowness.dtype)).expand(shape)
    sh = s * h
    iters = max_iters or 4 * (n + m)
    for _ in range(iters):
        P = torch.nn.functional.pad(T, (1, 1, 1, 1), value=big)
        a = torch.minimum(P[..., :-2, 1:-1], P[..., 2:, 1:-1])
        b = torch.minimum(P[..., 1:-1, :-2], P[..., 1:-1, 2:])
        d = a - b
        two = 0.5 * (a + b + torch.sqrt(torch.clamp(2 * sh * sh - d * d, min=1e-20)))
        new = torch.where(d.abs() >= sh, torch.minimum(a, b) + sh, two)
        T_new = torch.where(is_src, T, torch.minimum(T, new))
        change = float((T_new - T).detach().abs().max())
        T = T_new
        if change <= tol * float(T.detach().max()):
            return T
    raise RuntimeError(f"eikonal: not converged after {iters} sweeps (last change {change:.3g}); raise max_iters")


class TravelTimeTomography:
    r"""Travel-time tomography of a velocity field on a square (see the module).

    Arguments:
        size: Grid nodes per side (the field ``v`` is size × size).
        num_sources: Sources, evenly spaced on the left edge.
        num_receivers: Receivers, evenly spaced along the right, top and bottom edges.
        noise: Standard deviation of the time noise (s).
        extent: Side of the square (km).
        num_anomalies: Gaussian anomalies of the prior.

    Attributes:
        sources, receivers: Node indices ``(S, 2)`` and ``(R, 2)``.
        h: Node spacing (km).
    """

    def __init__(self, size: int = 32, num_sources: int = 8, num_receivers: int = 24, *, noise: float = 0.005,
                 extent: float = 1.0, num_anomalies: int = 3):  # fmt: skip
        _check("size", size, isinstance(size, int) and 8 <= size <= 256, "an integer in [8, 256]")
        _check("num_sources", num_sources, isinstance(num_sources, int) and 1 <= num_sources <= size, f"an integer in [1, size={size}]")
        _check("num_receivers", num_receivers, isinstance(num_receivers, int) and 1 <= num_receivers <= 3 * size - 2,
               f"an integer in [1, 3 * size - 2 = {3 * size - 2}]")  # fmt: skip
        _check("noise", noise, float(noise) > 0, "positive")
        _check("extent", extent, float(extent) > 0, "positive")
        _check("num_anomalies", num_anomalies, isinstance(num_anomalies, int) and num_anomalies >= 0, "an integer >= 0")
        self.size, self.noise, self.extent, self.num_anomalies = size, float(noise), float(extent), num_anomalies
        self.h = self.extent / (size - 1)
        rows = np.linspace(0, size - 1, num_sources + 2)[1:-1].round().astype(int)
        self.sources = np.stack([rows, np.zeros_like(rows)], 1)
        # the boundary path: down the right edge, then the top and bottom edges (without the left column)
        right = [(r, size - 1) for r in range(size)]
        top = [(0, c) for c in range(1, size - 1)]
        bottom = [(size - 1, c) for c in range(1, size - 1)]
        path = np.asarray(right + top + bottom)
        self.receivers = path[np.linspace(0, len(path) - 1, num_receivers).round().astype(int)]
        self.y_shape = (num_sources, num_receivers)
        self.dims = {"v": ["row", "col"], "y": ["source", "receiver"]}

    def velocity(self) -> torch.Tensor:
        r"""Draws (inside a Pyro model) the velocity field, recorded as the deterministic site ``v`` (km/s)."""
        K, n = self.num_anomalies, self.size
        v0 = pyro.sample("v0", dist.Uniform(2.0, 3.0))
        gradient = pyro.sample("gradient", dist.Uniform(0.0, 1.5))
        depth = torch.linspace(0.0, self.extent, n)[:, None].expand(n, n)  # row 0 at the top
        field = v0[..., None, None] + gradient[..., None, None] * depth
        if K:
            centers = pyro.sample("centers", dist.Uniform(0.0, self.extent).expand([K, 2]).to_event(2))
            radii = pyro.sample("radii", dist.Uniform(0.08, 0.2).expand([K]).to_event(1))
            amps = pyro.sample("amplitudes", dist.Normal(0.0, 0.5).expand([K]).to_event(1))
            u = torch.linspace(0.0, self.extent, n)
            d2 = (u[:, None] - centers[..., 1, None, None]) ** 2 + (u[None, :] - centers[..., 0, None, None]) ** 2
            field = field + (amps[..., None, None] * torch.exp(-d2 / (2 * radii[..., None, None] ** 2))).sum(-3)
        return pyro.deterministic("v", torch.clamp(field, min=1.0), event_dim=2)

    def times(self, v: torch.Tensor) -> torch.Tensor:
        r"""Noise-free first-arrival times ``(*, S, R)`` of velocity fields ``(*, size, size)`` (differentiable)."""
        v = torch.as_tensor(v)
        if tuple(v.shape[-2:]) != (self.size, self.size):
            raise ValueError(f"v must have shape (*, {self.size}, {self.size}), got {tuple(v.shape)}")
        if not bool((v > 0).all()):
            raise ValueError("v must be positive everywhere (km/s)")
        T = eikonal(1.0 / v, torch.as_tensor(self.sources), self.h)
        return T[..., torch.as_tensor(self.receivers[:, 0]), torch.as_tensor(self.receivers[:, 1])]

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: the velocity prior and ``y = T(v) + ε`` at the receivers."""
        v = self.velocity()
        return pyro.sample("y", dist.Normal(self.times(v), self.noise).to_event(2), obs=y)

    __call__ = model

    def draw(self, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""Ground-truth field(s) and their observation(s) (float32): one, or ``n`` stacked."""
        with pyro.poutine.trace() as tr, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with pyro.plate("draws", n or 1, dim=-1):
                self.velocity()
        v = tr.trace.nodes["v"]["value"].detach()
        rng = np.random.default_rng(seed)
        y = self.times(v).numpy() + self.noise * rng.standard_normal((n or 1, *self.y_shape))
        v, y = v.numpy().astype(np.float32), y.astype(np.float32)
        return (v, y) if n else (v[0], y[0])

    def straight_ray_baseline(self, y: np.ndarray, *, damping: float = 1.0) -> np.ndarray:
        r"""The classical linearised reconstruction: damped least squares on straight rays.

        Slowness perturbations about the best homogeneous slowness are solved from the time
        residuals with a straight-ray path-length matrix (rays sampled at 4 points per node
        spacing), :math:`\min \|L \delta s - r\|^2 + \text{damping}\, \|\nabla \delta s\|^2`.

        Arguments:
            y: Observation(s) ``(*, S, R)``.
            damping: Weight of the smoothing term (in units of km² of path length).

        Returns:
            Velocity field(s) ``(*, size, size)`` (float32).
        """
        y = np.asarray(y, np.float64)
        if tuple(y.shape[-2:]) != self.y_shape:
            raise ValueError(f"y must have trailing shape {self.y_shape}, got {y.shape}")
        L = self._ray_matrix()
        n = self.size
        D = np.zeros((2 * n * (n - 1), n * n))  # first differences along rows and columns
        k = 0
        for i in range(n):
            for j in range(n - 1):
                D[k, i * n + j], D[k, i * n + j + 1] = -1, 1
                k += 1
        for i in range(n - 1):
            for j in range(n):
                D[k, i * n + j], D[k, (i + 1) * n + j] = -1, 1
                k += 1
        lengths = L.sum(1)
        flat = y.reshape(-1, int(np.prod(self.y_shape)))
        out = []
        normal = L.T @ L + damping * D.T @ D
        for obs in flat:
            s0 = float(obs @ lengths / (lengths @ lengths))  # the best homogeneous slowness
            ds = np.linalg.solve(normal + 1e-9 * np.eye(n * n), L.T @ (obs - s0 * lengths))
            out.append(1.0 / np.clip(s0 + ds, 1.0 / 10.0, 1.0 / 0.5))
        return np.stack(out).reshape(*y.shape[:-2], n, n).astype(np.float32)

    def _ray_matrix(self) -> np.ndarray:
        if getattr(self, "_L", None) is None:
            n, h = self.size, self.h
            L = np.zeros((len(self.sources) * len(self.receivers), n * n))
            for a, src in enumerate(self.sources):
                for b, rec in enumerate(self.receivers):
                    length = h * float(np.hypot(*(rec - src)))
                    k = max(2, int(4 * length / h))
                    t = (np.arange(k) + 0.5) / k
                    pts = src[None, :] + t[:, None] * (rec - src)[None, :]
                    idx = np.clip(pts.round().astype(int), 0, n - 1)
                    np.add.at(L[a * len(self.receivers) + b], idx[:, 0] * n + idx[:, 1], length / k)
            self._L = L
        return self._L
