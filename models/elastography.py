r"""Quasi-static elastography: a stiff circular inclusion seen through vertical displacements.

The synthetic problem of the conditional score-based diffusion paper for mechanics
(Section 4.1.1, Tables 3–5):

- **Specimen**: 1 × 1 cm, plane stress, incompressible linear elasticity (ν = 0.5:
  σ = 2μ ε + 2μ tr(ε) I, which plane stress keeps well-posed in displacements).
  Bottom edge fixed vertically and free horizontally, bottom-left corner pinned,
  top edge displaced 0.01 cm downward, sides traction-free.
- **Prior** (latent ``center``, shape (2,)): the inclusion centre (x, y) is uniform in
  [0.2, 0.8]² cm; radius 0.12 cm, shear modulus 1.5 kPa inside and 0.1 kPa outside.
  The deterministic site ``mu`` (56, 56) is the modulus on the 56 × 56 pixel grid:
  ``mu[i, j]`` is the value at the pixel centre x = (j + ½)/56, y = (i + ½)/56 cm,
  row 0 at the **bottom** (plot with ``origin="lower"``).
- **Forward model** (:data:`displacement`, a :func:`bayesinv.simulator`): mu (n, 56, 56)
  → vertical displacement u_y (n, 56, 56) in cm at the pixel centres (negative:
  downward). Linear triangles on a "crossed" mesh: every pixel is one square cut into
  4 triangles, so mu is exactly piecewise constant and the pixel centres are mesh
  nodes. Because the modulus is constant on each pixel, the pixel-centre node is
  condensed out exactly (the condensed pixel matrix is μ times a fixed matrix), which
  halves the unknowns. The pattern is fixed, so CHOLMOD's symbolic analysis (geometric
  nested-dissection order) is done once and each draw is one numeric sparse Cholesky
  (``solver="banded"``: LAPACK banded Cholesky, without CVXOPT). The displacement does
  not depend on the modulus scale (displacement-controlled loading).
- **Observation** ``y`` (56, 56): u_y plus noise σ_η·u_max truncated at ±3σ_η·u_max
  (:class:`TruncatedNormal`), σ_η ∈ {0.025, 0.05, 0.10}; u_max = :data:`U_MAX`, the
  largest \|u_y\| over 500 prior draws (computed by :func:`compute_u_max`, stored).
- **Ranges for min-max normalisation** (done by the learned methods): ``mu`` ∈ [0.1, 1.5]
  kPa; u_y ∈ [−U_MAX, 0] cm; ``y`` ∈ [−(1 + 3σ_η) U_MAX, 3σ_η U_MAX] cm.
- **Reference posterior**: self-normalised importance sampling with the prior as
  proposal, reusing one simulated set of noise-free displacements for every noise
  level (:meth:`Elastography.reference`); the paper used 500,000 prior samples, the
  default here is 20,000 (about 5 minutes on 2 cores). The posterior of the centre is
  so narrow that prior proposals leave a tiny ESS; ``refine=`` adds zoom-in stages.
- **Second backend**: ``backend="dolfinx"`` runs ``elastography_dolfinx.py`` (same mesh,
  same boundary conditions) with ``/usr/bin/python3`` through :func:`bayesinv.python_script`.

Example:
    >>> problem = make_problem(noise=0.05)
    >>> center, y = problem.draw(seed=1)
    >>> idata = problem.reference(y, num_simulations=20_000, path="out/elasto_ref.zarr")
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

import bayesinv

__all__ = [
    "GRID",
    "RADIUS",
    "MU_INCLUSION",
    "MU_BACKGROUND",
    "TOP_DISPLACEMENT",
    "CENTER_RANGE",
    "NOISE_LEVELS",
    "U_MAX",
    "TruncatedNormal",
    "ElasticitySolver",
    "solve_displacement",
    "displacement",
    "inclusion_field",
    "compute_u_max",
    "Elastography",
    "make_problem",
]

GRID = 56  # pixels per side
SIZE = 1.0  # cm
RADIUS = 0.12  # cm
MU_INCLUSION = 1.5  # kPa
MU_BACKGROUND = 0.1  # kPa
TOP_DISPLACEMENT = -0.01  # cm (downward)
CENTER_RANGE = (0.2, 0.8)  # cm, for both coordinates
NOISE_LEVELS = (0.025, 0.05, 0.10)
# Largest |u_y| (cm) over 500 prior draws (seed 0) of the scikit-fem solver at one cell
# per pixel; recompute with compute_u_max(). It is just below 0.01 cm because the top
# row of pixel centres lies half a pixel below the displaced top edge.
U_MAX = 0.0099539
DOLFINX_SCRIPT = Path(__file__).with_name("elastography_dolfinx.py")


# ----------------------------------------------------------------------------- noise


class TruncatedNormal(TorchDistribution):
    r"""A normal distribution truncated to ``[low, high]``, correctly normalised.

    Arguments:
        loc: The mean of the untruncated normal.
        scale: Its standard deviation (> 0).
        low: The lower bound (broadcastable).
        high: The upper bound (> low).

    Example:
        >>> u = torch.zeros(3)
        >>> d = TruncatedNormal(u, 0.1, u - 0.3, u + 0.3)   # ±3σ
        >>> d.log_prob(torch.tensor([0.0, 0.2, 0.4]))        # the last is -inf
    """

    arg_constraints = {
        "loc": constraints.real,
        "scale": constraints.positive,
        "low": constraints.real,
        "high": constraints.real,
    }
    has_rsample = True

    def __init__(self, loc, scale, low, high, validate_args: bool | None = None):
        self.loc, self.scale, self.low, self.high = broadcast_all(loc, scale, low, high)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(self.low, self.high)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high"):
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _standard_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.low - self.loc) / self.scale, (self.high - self.loc) / self.scale

    def _log_z(self) -> torch.Tensor:
        # log(Φ(β) − Φ(α)), computed on the side of the mean where it does not cancel
        alpha, beta = self._standard_bounds()
        flip = alpha > 0
        a = torch.where(flip, -beta, alpha)
        b = torch.where(flip, -alpha, beta)
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        return log_b + torch.log1p(-torch.exp(log_a - log_b))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # values outside [low, high] have density zero: -inf, not a validation error
        z = (value - self.loc) / self.scale
        lp = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - torch.log(self.scale) - self._log_z()
        inside = (value >= self.low) & (value <= self.high)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        alpha, beta = self._standard_bounds()
        cdf_a, cdf_b = torch.special.ndtr(alpha), torch.special.ndtr(beta)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        p = (cdf_a + u * (cdf_b - cdf_a)).clamp(torch.finfo(self.loc.dtype).tiny, 1 - torch.finfo(self.loc.dtype).eps)
        x = self.loc + self.scale * torch.special.ndtri(p)
        return torch.maximum(torch.minimum(x, self.high), self.low)

    @property
    def mean(self) -> torch.Tensor:
        alpha, beta = self._standard_bounds()
        phi = lambda t: torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)  # noqa: E731
        return self.loc + self.scale * (phi(alpha) - phi(beta)) / torch.exp(self._log_z())

    @property
    def variance(self) -> torch.Tensor:
        alpha, beta = self._standard_bounds()
        phi = lambda t: torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)  # noqa: E731
        z = torch.exp(self._log_z())
        ratio = (phi(alpha) - phi(beta)) / z
        # α φ(α) with α = ±inf is 0
        ap = torch.nan_to_num(alpha * phi(alpha))
        bp = torch.nan_to_num(beta * phi(beta))
        return self.scale**2 * (1 + (ap - bp) / z - ratio**2)


# ---------------------------------------------------------------------------- solver


class ElasticitySolver:
    r"""Plane-stress incompressible elasticity on the unit square, modulus per pixel.

    Arguments:
        grid: Pixels per side of the modulus and displacement arrays.
        cells_per_pixel: Mesh cells per pixel side (1: 4 triangles per pixel; 2, 3, ...
            refine for convergence checks).
        top_displacement: The prescribed vertical displacement of the top edge (cm).
        solver: The sparse solver of :class:`bayesinv.models.fem.ScaledStiffness`:
            ``"cholmod"`` (CHOLMOD through CVXOPT, symbolic analysis once, geometric
            nested-dissection order; about 2× the banded solver's speed), ``"banded"``
            (LAPACK banded Cholesky in the mesh numbering, no extra dependency) or
            ``"auto"``: ``"cholmod"`` when CVXOPT is installed, else ``"banded"``. The
            solutions agree to rounding (about 1e−13 relative).

    Example:
        >>> solver = ElasticitySolver()
        >>> u_y = solver.vertical(np.full((56, 56), 0.1))   # (56, 56), linear in height
        >>> u_y = solver.vertical_many(mu)                  # (B, 56, 56) for mu (B, 56, 56)
    """

    def __init__(self, grid: int = GRID, cells_per_pixel: int = 1, top_displacement: float = TOP_DISPLACEMENT,
                 solver: str = "auto"):
        from skfem import Basis, BilinearForm, ElementTriP1, ElementVector
        from skfem.helpers import ddot, sym_grad, trace

        from bayesinv.errors import OptionError
        from bayesinv.models.fem import ScaledStiffness, cholmod_available, crossed_mesh

        if solver not in ("auto", "cholmod", "banded"):
            raise OptionError(f"unknown solver {solver!r}: use 'auto', 'cholmod' or 'banded'")
        if solver == "auto":
            solver = "cholmod" if cholmod_available() else "banded"
        self.solver = solver
        self.grid = int(grid)
        self.cells_per_pixel = k = int(cells_per_pixel)
        n = self.grid * k
        self.mesh = mesh = crossed_mesh(n, n, SIZE, SIZE)
        basis = Basis(mesh, ElementVector(ElementTriP1()))

        @BilinearForm
        def unit_stiffness(u, v, w):  # σ(u) : ε(v) for μ = 1, plane stress, ν = 1/2
            eu, ev = sym_grad(u), sym_grad(v)
            return 2.0 * ddot(eu, ev) + 2.0 * trace(eu) * trace(ev)

        local = unit_stiffness.coo_data(basis).tolocal()  # (ntri, 6, 6)
        ncorner = (n + 1) ** 2
        ncell = n * n
        nodal = basis.nodal_dofs  # (2, nverts): x and y DOF of every vertex
        node_of = np.empty(basis.N, dtype=np.int64)
        comp_of = np.empty(basis.N, dtype=np.int64)
        node_of[nodal[0]], node_of[nodal[1]] = np.arange(mesh.nvertices), np.arange(mesh.nvertices)
        comp_of[nodal[0]], comp_of[nodal[1]] = 0, 1

        # the 10x10 matrix of each cell (local nodes: 4 corners sw, se, ne, nw, then the centre)
        i, j = np.divmod(np.arange(ncell), n)  # cell row (y) and column (x); see crossed_mesh
        sw = i * (n + 1) + j
        cell_nodes = np.stack([sw, sw + 1, sw + n + 2, sw + n + 1, ncorner + np.arange(ncell)], axis=1)
        edofs = basis.element_dofs.reshape(6, ncell, 4)
        cell_k = np.zeros((ncell, 10, 10))
        local = local.reshape(ncell, 4, 6, 6)
        for q in range(4):
            nodes = node_of[edofs[:, :, q]].T  # (ncell, 6)
            comps = comp_of[edofs[:, :, q]].T
            pos = (nodes[:, :, None] == cell_nodes[:, None, :]).argmax(-1)  # local node 0..4
            ldof = 2 * pos + comps  # (ncell, 6)
            rows = np.broadcast_to(ldof[:, :, None], (ncell, 6, 6))
            cols = np.broadcast_to(ldof[:, None, :], (ncell, 6, 6))
            np.add.at(cell_k, (np.arange(ncell)[:, None, None], rows, cols), local[:, q])
        kbb, kbc = cell_k[:, :8, :8], cell_k[:, :8, 8:]
        kcb, kcc = cell_k[:, 8:, :8], cell_k[:, 8:, 8:]
        # centre displacement from the corners (independent of μ): u_c = T u_b
        self._recover = -np.linalg.solve(kcc, kcb)  # (ncell, 2, 8)
        condensed = kbb + kbc @ self._recover  # (ncell, 8, 8), Schur complement

        corner = cell_nodes[:, :4]
        self._cell_dofs = (2 * corner[:, :, None] + np.arange(2)).reshape(ncell, 8)  # (ux, uy) per corner
        data = np.ascontiguousarray(np.moveaxis(condensed, 0, -1))  # (8, 8, ncell)
        rows = np.broadcast_to(self._cell_dofs.T[:, None, :], (8, 8, ncell))
        cols = np.broadcast_to(self._cell_dofs.T[None, :, :], (8, 8, ncell))

        class _COO:  # what ScaledStiffness reads from skfem's COOData
            indices = np.stack([rows.ravel(), cols.ravel()])
            shape = (2 * ncorner, 2 * ncorner)
            local_shape = (8, 8)

        _COO.data = data.ravel()
        xs, ys = mesh.p[0, :ncorner], mesh.p[1, :ncorner]
        bottom = np.flatnonzero(np.isclose(ys, 0.0))
        top = np.flatnonzero(np.isclose(ys, SIZE))
        pin = np.flatnonzero(np.isclose(xs, 0.0) & np.isclose(ys, 0.0))
        dirichlet = np.concatenate([2 * bottom + 1, 2 * top + 1, 2 * pin])
        values = np.concatenate([np.zeros(bottom.size), np.full(top.size, float(top_displacement)), np.zeros(pin.size)])
        dof_points = mesh.p[:, np.arange(2 * ncorner) // 2].T  # DOF 2·corner + component
        self.system = ScaledStiffness(_COO, dirichlet, values, solver=solver, points=dof_points)

        # modulus of each cell: the pixel its centre lies in
        centre = mesh.p[:, cell_nodes[:, 4]]
        col = np.minimum((centre[0] / SIZE * self.grid).astype(np.int64), self.grid - 1)
        row = np.minimum((centre[1] / SIZE * self.grid).astype(np.int64), self.grid - 1)
        self._cell_pixel = row * self.grid + col
        # pixel centres are mesh nodes: cell centres for odd k, cell corners for even k
        a = np.arange(self.grid) * k + k // 2
        if k % 2:
            self._pixel_nodes = (ncorner + a[:, None] * n + a[None, :]).ravel()
        else:
            self._pixel_nodes = (a[:, None] * (n + 1) + a[None, :]).ravel()
        self.num_dofs = 2 * ncorner  # unknowns actually solved for (before Dirichlet)

    def nodal(self, mu: np.ndarray) -> np.ndarray:
        r"""Nodal displacements ``(2, nvertices)`` (u_x, u_y) for one modulus field ``(grid, grid)``."""
        mu = np.asarray(mu, dtype=np.float64).reshape(-1)
        if mu.size != self.grid**2:
            raise ValueError(f"modulus field has {mu.size} values, expected {self.grid}x{self.grid}")
        return self.nodal_many(mu[None])[0]

    def nodal_many(self, mu: np.ndarray) -> np.ndarray:
        r"""Nodal displacements ``(B, 2, nvertices)`` for a batch of modulus fields ``(B, grid, grid)``."""
        mu = np.asarray(mu, dtype=np.float64)
        if mu.ndim < 2 or mu.size != mu.shape[0] * self.grid**2:
            raise ValueError(f"modulus fields must have shape (B, {self.grid}, {self.grid}), got {mu.shape}")
        mu = mu.reshape(mu.shape[0], -1)
        if not np.all(np.isfinite(mu)) or np.any(mu <= 0):
            raise ValueError("the shear modulus must be positive and finite everywhere")
        corners = self.system.solve_many(mu[:, self._cell_pixel])  # (B, 2 ncorner)
        cells = corners[:, self._cell_dofs]  # (B, ncell, 8)
        centres = np.einsum("cij,bcj->bci", self._recover, cells)  # (B, ncell, 2)
        return np.concatenate([corners.reshape(mu.shape[0], -1, 2), centres], axis=1).transpose(0, 2, 1)

    def vertical(self, mu: np.ndarray) -> np.ndarray:
        r"""The vertical displacement ``(grid, grid)`` (cm) at the pixel centres."""
        return self.nodal(mu)[1, self._pixel_nodes].reshape(self.grid, self.grid)

    def vertical_many(self, mu: np.ndarray) -> np.ndarray:
        r"""Vertical displacements ``(B, grid, grid)`` (cm) at the pixel centres for ``mu`` ``(B, grid, grid)``."""
        return self.nodal_many(mu)[:, 1, self._pixel_nodes].reshape(-1, self.grid, self.grid)


_SOLVERS: dict[int, ElasticitySolver] = {}


def _solver(cells_per_pixel: int = 1) -> ElasticitySolver:
    if cells_per_pixel not in _SOLVERS:
        _SOLVERS[cells_per_pixel] = ElasticitySolver(cells_per_pixel=cells_per_pixel)
    return _SOLVERS[cells_per_pixel]


def solve_displacement(mu: np.ndarray, cells_per_pixel: int = 1, chunk_size: int = 256) -> np.ndarray:
    r"""The NumPy forward model: modulus ``(n, 56, 56)`` (kPa) → u_y ``(n, 56, 56)`` (cm).

    Draws are assembled ``chunk_size`` at a time (one sparse matrix product per chunk)
    and factorised one by one with the solver of :class:`ElasticitySolver` (``"auto"``).
    """
    mu = np.asarray(mu, dtype=np.float64)
    solver = _solver(int(cells_per_pixel))
    flat = mu.reshape(-1, GRID, GRID)
    out = [solver.vertical_many(flat[k:k + chunk_size]) for k in range(0, flat.shape[0], int(chunk_size))]
    return (np.concatenate(out) if out else np.empty((0, GRID, GRID))).reshape(mu.shape)


#: The scikit-fem forward model as a :func:`bayesinv.simulator` (one process; for more,
#: ``bayesinv.simulator(solve_displacement, name="displacement", workers=k)``).
displacement = bayesinv.simulator(solve_displacement, name="displacement", event_ndim=2)


def dolfinx_simulator(python: str = "/usr/bin/python3", workers: int = 1, **kw: Any) -> bayesinv.Simulator:
    r"""The dolfinx forward model (``elastography_dolfinx.py``), run by ``python`` out of process."""
    return bayesinv.python_script(DOLFINX_SCRIPT, python=python, name="displacement", workers=workers, **kw)


# ----------------------------------------------------------------------------- model


def inclusion_field(center: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    r"""The modulus field ``(*, grid, grid)`` (kPa) of an inclusion centred at ``center`` ``(*, 2)``."""
    pc = (torch.arange(grid, dtype=center.dtype, device=center.device) + 0.5) * SIZE / grid
    dx = pc - center[..., 0:1]  # (*, grid) along x (columns)
    dy = pc - center[..., 1:2]  # (*, grid) along y (rows)
    inside = dy[..., :, None] ** 2 + dx[..., None, :] ** 2 <= RADIUS**2
    return torch.where(inside, torch.tensor(MU_INCLUSION, dtype=center.dtype), torch.tensor(MU_BACKGROUND, dtype=center.dtype))


class Elastography:
    r"""The elastography inverse problem at one noise level.

    Arguments:
        noise: σ_η, the noise standard deviation as a fraction of :data:`U_MAX`.
        backend: ``"skfem"`` (in process) or ``"dolfinx"`` (``/usr/bin/python3``).
        workers: Worker processes of the simulator.
        simulator: A simulator to use instead (mu (n, 56, 56) → u_y (n, 56, 56)).
        center_box: ``[[x_lo, y_lo], [x_hi, y_hi]]``: draw the centre uniformly from this
            box instead of the prior square (a proposal for :meth:`reference`, whose
            weights need no correction because the prior is uniform).
        truncated: The noise law: truncated at ±3σ (the problem's; default) or, with
            ``False``, an untruncated Gaussian of the same σ — what :meth:`reference`
            uses to locate the posterior, where the truncated law can give every
            coarse proposal zero likelihood.

    Attributes:
        model: The Pyro model: latent ``center`` (2,), deterministic ``mu`` (56, 56),
            observed ``y`` (56, 56).
        sigma: The noise standard deviation in cm, σ_η·U_MAX.
    """

    def __init__(self, noise: float = 0.05, *, backend: str = "skfem", workers: int = 1, simulator: Any = None,
                 center_box: Any = None, truncated: bool = True):
        self.noise = float(noise)
        self.truncated = bool(truncated)
        lo, hi = CENTER_RANGE
        box = np.asarray(center_box if center_box is not None else [[lo, lo], [hi, hi]], dtype=np.float64)
        if box.shape != (2, 2) or (box[0] < lo - 1e-9).any() or (box[1] > hi + 1e-9).any() or (box[0] >= box[1]).any():
            raise ValueError(f"center_box must be [[x_lo, y_lo], [x_hi, y_hi]] inside the prior square [{lo}, {hi}]^2, got {box.tolist()}")
        self.center_box = box
        self.sigma = self.noise * U_MAX
        if simulator is not None:
            self.simulator = simulator
        elif backend == "skfem":
            self.simulator = (
                displacement if workers == 1 else bayesinv.simulator(solve_displacement, name="displacement", workers=workers)
            )
        elif backend == "dolfinx":
            self.simulator = dolfinx_simulator(workers=workers)
        else:
            raise ValueError(f"unknown backend {backend!r}: use 'skfem' or 'dolfinx'")
        self.backend = backend
        self.dims = {"center": ["coord"], "mu": ["row", "col"], "y": ["row", "col"]}
        pc = (np.arange(GRID) + 0.5) * SIZE / GRID
        self.coords = {"coord": ["x", "y"], "row": pc, "col": pc}

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = (torch.as_tensor(b, dtype=torch.float32) for b in self.center_box)
        center = pyro.sample("center", dist.Uniform(lo, hi).to_event(1))
        mu = pyro.deterministic("mu", inclusion_field(center))
        u = self.simulator(mu)
        s = torch.full_like(u, self.sigma)
        noise = TruncatedNormal(u, s, u - 3 * s, u + 3 * s) if self.truncated else dist.Normal(u, s)
        return pyro.sample("y", noise.to_event(2), obs=y)

    __call__ = model

    def draw(self, seed: int = 0, center: Any = None) -> tuple[np.ndarray, np.ndarray]:
        r"""A ground-truth ``center`` (2,) (drawn from the prior unless given) and its observation ``y`` (56, 56)."""
        gen = torch.Generator().manual_seed(seed)
        lo, hi = CENTER_RANGE
        c = torch.as_tensor(center, dtype=torch.float32) if center is not None else lo + (hi - lo) * torch.rand(2, generator=gen)
        u = torch.as_tensor(np.asarray(self.simulator(inclusion_field(c)[None].numpy()))[0], dtype=torch.float32)
        s = torch.full_like(u, self.sigma)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            y = TruncatedNormal(u, s, u - 3 * s, u + 3 * s).sample()
        return c.numpy(), y.numpy()

    def simulate_reference_set(self, num_simulations: int = 20_000, *, path: str | os.PathLike | None = None,
                               seed: int = 0, chunk_size: int = 1000, progress: bool | None = None):
        r"""The prior draws and noise-free displacements that :meth:`reference` reweights.

        The set does not depend on the noise level, so one set (stored at ``path``,
        a zarr store; resumable) serves every σ_η.
        """
        # simulate() always runs whole chunks: keep a chunk no larger than the set
        chunk_size = min(int(chunk_size), int(num_simulations))
        return bayesinv.simulate(self.model, num_simulations, seed=seed, path=path, chunk_size=chunk_size,
                                 progress=progress, dims=self.dims)

    def reference(self, y: Any, *, num_samples: int = 2000, num_simulations: int = 20_000, data: Any = None,
                  path: str | os.PathLike | None = None, seed: int = 0, progress: bool | None = None,
                  refine: int = 0, num_local: int = 2000, **options: Any):
        r"""The importance-sampling reference posterior of ``center`` and ``mu`` given ``y``.

        The prior draws of one simulated set (``data``, or ``num_simulations`` new ones)
        are reweighted by the likelihood. The posterior of the centre is very narrow
        (standard deviation about 0.0005, 0.001 and 0.004 cm at σ_η = 2.5, 5 and 10%),
        so prior proposals give an ESS of only about 5e−6, 3e−5 and 1.3e−4 times their
        number. ``refine=k`` then zooms in k times: a new set of ``num_local`` centres
        uniform in a box around the current posterior (:class:`Elastography` with
        ``center_box``) is simulated and reweighted; because the prior is uniform the
        weights are again the likelihood alone, and the answer is exact as long as the
        box holds the posterior (a warning says when draws come near its edge). The
        stages before the last only place the next box, so they weigh by the
        untruncated Gaussian of the same σ: under the ±3σ truncated law a proposal
        whose displacement misses the data by more than 3σ at a single pixel has zero
        likelihood, and at σ_η = 2.5% that can be all of a 4,000-draw prior set. The
        last stage uses the exact truncated likelihood.

        Arguments:
            y: The observation (56, 56).
            num_samples: Resampled posterior draws.
            num_simulations: Prior draws simulated when ``data`` is not given.
            data: A set from :meth:`simulate_reference_set` (or ``bayesinv.simulate``) or its path.
            path: Where to store the simulated set (zarr) when ``data`` is not given;
                without it the set is kept in memory (about 37 kB per draw).
            refine: Zoom-in stages after the prior set (each simulates ``num_local`` draws).
            num_local: Draws per zoom-in stage.
            options: Further options of the importance method.

        Returns:
            An :class:`arviz.InferenceData`; ``sample_stats["ess"]`` is the effective
            sample size; ``posterior.attrs["center_box"]`` the box of the last stage.
        """
        import warnings

        if data is None:
            data = self.simulate_reference_set(num_simulations, path=path, seed=seed, progress=progress)
        run = dict(method="importance", num_samples=num_samples, seed=seed, progress=progress, dims=self.dims,
                   coords=self.coords, **options)
        # with zoom-in stages to come, the first only locates the posterior: untruncated noise, no low-ESS warning
        first = Elastography(self.noise, simulator=self.simulator, center_box=self.center_box, truncated=False) if refine else self
        with warnings.catch_warnings():
            if refine:
                warnings.simplefilter("ignore")
            idata = bayesinv.infer(first.model, y, data=data, **run)
        box, count = self.center_box, int(idata.sample_stats["num_proposals"])
        for stage in range(refine):
            box = _zoom_box(idata.posterior["center"].values.reshape(-1, 2), box, count)
            last = stage == refine - 1
            local = Elastography(self.noise, simulator=self.simulator, center_box=box, truncated=last and self.truncated)
            ds = local.simulate_reference_set(num_local, seed=seed + stage + 1, progress=progress)
            with warnings.catch_warnings():
                if not last:
                    warnings.simplefilter("ignore")
                idata = bayesinv.infer(local.model, y, data=ds, **run)
            count = num_local
        if refine:
            draws = idata.posterior["center"].values.reshape(-1, 2)
            lo, hi = CENTER_RANGE
            width = box[1] - box[0]
            near = ((draws - box[0] < 0.05 * width) & (box[0] > lo + 1e-9)) | ((box[1] - draws < 0.05 * width) & (box[1] < hi - 1e-9))
            if near.any():
                warnings.warn("reference posterior draws lie near the edge of the zoom-in box: the box may cut the"
                              " posterior; use more num_simulations or num_local", RuntimeWarning, stacklevel=2)
            for group in ("posterior", "sample_stats"):
                idata[group].attrs["center_box"] = box.ravel().tolist()
        return idata


def _zoom_box(draws: np.ndarray, box: np.ndarray, count: int) -> np.ndarray:
    r"""A box around resampled posterior draws of the centre: ±max(6 sd, 2 spacing of the last set)."""
    spacing = math.sqrt(float(np.prod(box[1] - box[0])) / max(count, 1))
    half = np.maximum(6 * draws.std(0), 2 * spacing)
    centre = draws.mean(0)
    lo, hi = CENTER_RANGE
    return np.stack([np.maximum(centre - half, lo), np.minimum(centre + half, hi)])


def make_problem(noise: float = 0.05, **kw: Any) -> Elastography:
    r"""The elastography problem at noise level σ_η (see :class:`Elastography`)."""
    return Elastography(noise, **kw)


def compute_u_max(num_draws: int = 500, seed: int = 0) -> float:
    r"""The largest \|u_y\| (cm) over ``num_draws`` prior draws: how :data:`U_MAX` was computed."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = CENTER_RANGE
    centers = lo + (hi - lo) * torch.rand(num_draws, 2, generator=gen)
    u = solve_displacement(inclusion_field(centers).numpy())
    return float(np.abs(u).max())
