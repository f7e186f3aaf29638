r"""Time-dependent elastography of a dual-layer tissue-mimicking phantom: axisymmetric elastodynamics.

The problem of Section 4.2.2 of the conditional score-based diffusion paper for mechanics
(eqs. 20, 21, 24; Tables 9–10; Figs. 10–11), after Lu et al.:

- **Physics** (eqs. 20–21): :math:`\nabla\cdot\sigma + \rho b = \rho\,\ddot u`,
  :math:`\sigma = 2\mu\nabla^s u + \lambda(\nabla\cdot u)I`, linear isotropic elasticity of a
  cylinder (10 mm diameter) excited through its axis by an acoustic radiation force,
  axisymmetric: the unknowns are :math:`u_r(r, z), u_z(r, z)` on a half cross-section, the
  strains :math:`\varepsilon_{rr} = \partial_r u_r`, :math:`\varepsilon_{zz} = \partial_z u_z`,
  :math:`\varepsilon_{\theta\theta} = u_r / r`, :math:`\varepsilon_{rz}`, and every integral
  weighted by r (the quadrature points' r; the common factor 2π cancels).
- **Material**: Young's modulus E per layer, Poisson ratio :data:`POISSON` = 0.49 (the paper
  does not state it for this problem; gelatin is nearly incompressible, and 0.49 is what it
  uses for its hydrogels in Section 4.2.3), ρ = 1000 kg/m³. Nearly incompressible, hence
  quadratic (P2) triangles. μ = E / (2(1 + ν)).
- **Force** (eq. 24): :math:`b = -F\exp\{-r^2/(2l_1^2) - (z - \bar s_2)^2/(2 l_2^2)\}e_z` with
  F = −5·10⁵, :math:`\bar s_2` = 2.6 mm, l₁ = 0.2 mm, l₂ = 0.6 mm (so b points up, +e_z, as
  written). The paper calls F a factor "to achieve the desired magnitude of displacement"
  without units; we read :math:`\rho b` as a force density in N/m³ (0.5 kPa/mm at the
  centre), which gives peak displacements of about 1–20 µm, the range of ARF experiments,
  against the 0.05 µm noise. It acts for :data:`PUSH` = 0.2 ms (on for t < 0.2 ms, half its
  value at t = 0.2 ms, the mid-value of the jump, so the trapezoidal impulse is exact).
- **Domain and boundary conditions** (the paper is silent beyond axisymmetry; our choices):
  r ∈ [0, 5] mm (the cylinder's radius), z ∈ [0, 3.9] mm, the top surface z = 3.9 mm the top
  of the observed window. Axis r = 0: :math:`u_r = 0` (symmetry); bottom z = 0: u = 0
  (the phantom bonded to its container's base); top z = 3.9 mm and the outer surface
  r = 5 mm: traction free. At rest at t = 0.
- **Time**: Newmark-β average acceleration (β = 1/4, γ = 1/2: unconditionally stable, no
  numerical damping, conserves the energy of the unloaded system exactly) with step
  :data:`DT` = 10 µs (2nd order: 0.1 % from the 2.5 µs solution, ``benchmarks/dual_layer_phantom.py convergence``); the effective matrix :math:`K(E) + M/(\beta\Delta t^2)` is assembled from
  per-element coefficients (:class:`bayesinv.models.fem.ScaledStiffness`: element matrices and
  sparsity pattern once per mesh) and factorised once per draw (CHOLMOD through CVXOPT, its
  symbolic analysis once per mesh; SuperLU without CVXOPT); the time loop reuses the factor.
- **Snapshots**: ten of :math:`u_z` at t = 0.2, 0.3, …, 1.1 ms (10 kHz, from the end of the
  push through the 0.9 ms of free propagation), at the centres of the 64 × 64 pixels of the
  3.9 × 3.9 mm window r ∈ [0, 3.9], z ∈ [0, 3.9]: ``y[k, i, j]`` at r = (j + ½)h,
  z = 3.9 − (i + ½)h, h = 3.9/64 mm (row 0 at the top, column 0 at the axis).
- **Mesh**: a tensor triangle mesh whose window cells are ``cells_per_pixel`` per pixel side
  (0.5 by default: 0.12 mm cells, P2), the same cell width continued to r = 5 mm. A triangle
  cut by the interface takes the area-weighted mean of the two moduli (exact area fraction
  above the horizontal interface), so the response is continuous in the interface height.
- **Prior** (Table 9): E_top, E_bottom ~ U(1, 25) kPa, interface height ~ U(2.0, 3.6) mm
  above the bottom. Fields: ``E`` (the paper's X) and ``mu`` = E/(2(1 + ν)) (64, 64) kPa at
  the pixel centres, deterministic sites (a pixel is top layer when its centre is above the
  interface).
- **Modelling error** (as the paper does): the displacement is computed for a perturbed
  specimen, each layer's modulus scaled by U(0.8, 1.2) (sites ``scale_top``,
  ``scale_bottom``) and the interface moved by U(−0.2, 0.2) mm (site ``shift``), and
  assigned to the labelled one.
- **Measurement** ``y`` (10, 64, 64) mm: each snapshot blurred by a Gaussian kernel of
  width 6 pixels (we read width as the full width at half maximum: standard deviation
  6/2.355 pixels; reflecting edges), plus Gaussian noise of standard deviation 5·10⁻⁵ mm.

Example:
    >>> phantom = DualLayerPhantom()
    >>> params, E, y = phantom.draw(seed=0)   # (E_top, E_bottom, interface), E (64, 64), y (10, 64, 64)
    >>> idata = bayesinv.infer(phantom.model, y, method="cond_score", target="E", num_simulations=3000)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import bayesinv
from bayesinv.errors import ProblemError

__all__ = [
    "GRID",
    "WINDOW",
    "RADIUS",
    "POISSON",
    "RHO",
    "FORCE",
    "PUSH",
    "SNAPSHOTS",
    "DT",
    "NOISE_SD",
    "BLUR_FWHM",
    "PRIOR",
    "MODEL_ERROR",
    "PARAMETERS",
    "youngs_field",
    "ElastodynamicsSolver",
    "solve_snapshots",
    "snapshots",
    "blur",
    "blur_matrix",
    "SIMULATED_SUPPORT",
    "simulated_log_prior",
    "labelled_given_simulated",
    "DualLayerPhantom",
]

GRID = 64  # pixels per side of the window
WINDOW = 3.9  # mm, the observed half cross-section (r and z)
RADIUS = 5.0  # mm, the cylinder's radius (10 mm diameter)
POISSON = 0.49
RHO = 1.0  # mg/mm^3 (= 1000 kg/m^3); units mm, ms, mg: stresses in kPa, wave speeds in mm/ms = m/s
FORCE = 5e5 * 1e-6  # -F of eq. 24 as a force density: 5e5 N/m^3 = 0.5 kPa/mm, along +e_z
S2_BAR, L1, L2 = 2.6, 0.2, 0.6  # mm (eq. 24)
PUSH = 0.2  # ms
SNAPSHOTS = tuple(round(PUSH + 0.1 * k, 10) for k in range(10))  # ms: 10 kHz over the 0.9 ms that follow
DT = 0.01  # ms
NOISE_SD = 5e-5  # mm
BLUR_FWHM = 6.0  # pixels
BETA, GAMMA = 0.25, 0.5  # Newmark average acceleration

#: Table 9 (kPa, kPa, mm).
PRIOR = {"E_top": (1.0, 25.0), "E_bottom": (1.0, 25.0), "interface": (2.0, 3.6)}
#: The modelling error: each layer's modulus scaled, the interface moved (mm).
MODEL_ERROR = {"scale_top": (0.8, 1.2), "scale_bottom": (0.8, 1.2), "shift": (-0.2, 0.2)}
#: The simulator's parameters, in order: the simulated specimen's moduli (kPa) and interface (mm).
PARAMETERS = tuple(PRIOR)


def pixel_heights(grid: int = GRID) -> np.ndarray:
    r"""z (mm) of the pixel centres of each row, row 0 at the top."""
    h = WINDOW / grid
    return WINDOW - (np.arange(grid) + 0.5) * h


def youngs_field(params: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    r"""The Young's modulus field (kPa) ``(..., grid, grid)`` of parameters ``(..., 3)`` (E_top, E_bottom, interface)."""
    params = torch.as_tensor(params)
    z = torch.as_tensor(pixel_heights(grid), dtype=params.dtype)
    top = z > params[..., 2, None]  # (..., grid)
    rows = torch.where(top, params[..., 0, None], params[..., 1, None])
    return rows[..., :, None].expand(*rows.shape, grid)


def _area_above(p: np.ndarray, t: np.ndarray, height: float) -> np.ndarray:
    r"""Fraction of each triangle of a tensor mesh lying above ``z = height`` (exact for horizontal-edged triangles)."""
    z = p[1, t]  # (3, ntri)
    z0, z1 = z.min(0), z.max(0)
    lower_base = (np.isclose(z, z0[None])).sum(0) == 2  # two vertices at the bottom: apex on top
    s = np.clip((height - z0) / (z1 - z0), 0.0, 1.0)
    return np.where(lower_base, (1.0 - s) ** 2, 1.0 - s**2)


class ElastodynamicsSolver:
    r"""Axisymmetric linear elastodynamics of the dual-layer phantom, P2 triangles, Newmark average acceleration.

    Arguments:
        grid: Pixels per side of the observed window.
        cells_per_pixel: Mesh cells per pixel side (0.5, 1, 2, ...; ``grid * cells_per_pixel``
            must be a whole number).
        dt: Time step (ms); 0.1 ms and the push (0.2 ms) must be whole multiples of it.
        poisson: Poisson ratio.

    Example:
        >>> solver = ElastodynamicsSolver()
        >>> u = solver.solve(np.array([14.7, 6.7, 2.5]))   # (10, 64, 64) u_z (mm)
    """

    def __init__(self, grid: int = GRID, cells_per_pixel: float = 0.5, dt: float = DT, poisson: float = POISSON):
        if not (isinstance(grid, int) and grid >= 2):
            raise ProblemError(f"grid must be an integer >= 2, got {grid!r}")
        cells = grid * float(cells_per_pixel)
        if not (cells_per_pixel > 0 and abs(cells - round(cells)) < 1e-9 and round(cells) >= 1):
            raise ProblemError(f"grid * cells_per_pixel must be a positive whole number, got {grid} * {cells_per_pixel!r}")
        steps_per_snapshot = 0.1 / float(dt) if dt > 0 else float("nan")
        if not (math.isfinite(steps_per_snapshot) and abs(steps_per_snapshot - round(steps_per_snapshot)) < 1e-6):
            raise ProblemError(f"dt must divide 0.1 ms into whole steps, got dt={dt!r} ms")
        if not (0.0 <= poisson < 0.5):
            raise ProblemError(f"poisson must be in [0, 0.5), got {poisson!r}")
        from skfem import Basis, BilinearForm, ElementTriP2, ElementVector, LinearForm

        from bayesinv.models.fem import ScaledStiffness, require_skfem

        skfem = require_skfem()
        self.grid, self.cells_per_pixel, self.dt, self.poisson = grid, float(cells_per_pixel), float(dt), float(poisson)
        n = int(round(cells))
        h = WINDOW / n
        rs = np.concatenate([np.linspace(0.0, WINDOW, n + 1), WINDOW + np.linspace(0.0, RADIUS - WINDOW, int(math.ceil((RADIUS - WINDOW) / h)) + 1)[1:]])
        zs = np.linspace(0.0, WINDOW, n + 1)
        self.mesh = mesh = skfem.MeshTri.init_tensor(rs, zs)
        self.basis = basis = Basis(mesh, ElementVector(ElementTriP2()))
        nu = self.poisson
        mu1, lam1 = 1.0 / (2 * (1 + nu)), nu / ((1 + nu) * (1 - 2 * nu))  # Lamé parameters for E = 1

        @BilinearForm
        def stiffness(u, v, w):
            r = w.x[0]
            e = (u.grad[0][0], u.grad[1][1], u[0] / r, 0.5 * (u.grad[0][1] + u.grad[1][0]))
            f = (v.grad[0][0], v.grad[1][1], v[0] / r, 0.5 * (v.grad[0][1] + v.grad[1][0]))
            double = e[0] * f[0] + e[1] * f[1] + e[2] * f[2] + 2 * e[3] * f[3]
            return (2 * mu1 * double + lam1 * (e[0] + e[1] + e[2]) * (f[0] + f[1] + f[2])) * r

        @BilinearForm
        def mass(u, v, w):
            return RHO * (u[0] * v[0] + u[1] * v[1]) * w.x[0]

        @LinearForm
        def load(v, w):
            r, z = w.x
            return FORCE * np.exp(-(r**2) / (2 * L1**2) - (z - S2_BAR) ** 2 / (2 * L2**2)) * v[1] * r

        k, m = stiffness.coo_data(basis), mass.coo_data(basis)
        ntri = mesh.t.shape[1]
        nloc = k.local_shape[0]

        class _Both:  # K_e of every triangle, then M_e: coefficients (E_e..., 1/(beta dt^2)...)
            indices = np.concatenate([k.indices.reshape(2, nloc, nloc, ntri), m.indices.reshape(2, nloc, nloc, ntri)], -1).reshape(2, -1)
            data = np.concatenate([k.data.reshape(nloc, nloc, ntri), m.data.reshape(nloc, nloc, ntri)], -1).ravel()
            shape = k.shape
            local_shape = (nloc, nloc)

        axis = basis.get_dofs(lambda x: np.isclose(x[0], 0.0)).all(["u^1"])
        bottom = basis.get_dofs(lambda x: np.isclose(x[1], 0.0)).all()
        dirichlet = np.unique(np.concatenate([axis, bottom]))
        self.axis_dofs = axis
        self.system = ScaledStiffness(_Both, dirichlet, np.zeros(dirichlet.size), solver="lu")
        self.free = self.system.free
        self.num_dofs, self.num_triangles = basis.N, ntri
        self._steps_per_snapshot = int(round(steps_per_snapshot))
        self._push_steps = int(round(PUSH / self.dt))
        self.mass = m.tocsr()[self.free][:, self.free].tocsc()
        self.load = load.assemble(basis)[self.free]
        self._mass_lu = None
        zb, zdofs = basis.split_bases()[1], basis.split_indices()[1]
        r_c = (np.arange(grid) + 0.5) * (WINDOW / grid)
        R, Z = np.meshgrid(r_c, pixel_heights(grid))
        self._probe = zb.probes(np.stack([R.ravel(), Z.ravel()])).tocsr()  # (grid², scalar DOFs)
        self._zdofs = zdofs
        self._pattern = self._symbolic = None

    # ------------------------------------------------------------------ assembly
    def element_moduli(self, params: np.ndarray) -> np.ndarray:
        r"""Young's modulus (kPa) of every triangle for (E_top, E_bottom, interface): the
        area-weighted mean of the two layers' moduli over the triangle."""
        e_top, e_bottom, height = (float(v) for v in params)
        frac = _area_above(self.mesh.p, self.mesh.t, height)
        return frac * e_top + (1.0 - frac) * e_bottom

    def coefficients(self, params: np.ndarray, mass_factor: float) -> np.ndarray:
        r"""The per-element coefficients of ``K(E) + mass_factor · M``."""
        return np.concatenate([self.element_moduli(params), np.full(self.num_triangles, float(mass_factor))])

    def stiffness(self, params: np.ndarray):
        r"""``K(E)`` on the free DOFs (CSC)."""
        return self.system.matrix(self.coefficients(params, 0.0))

    def _factorise(self, matrix):
        r"""A solve function for the SPD ``matrix`` (CSC): CHOLMOD, its symbolic analysis once per mesh; else SuperLU."""
        import scipy.sparse.linalg as spla

        try:
            import cvxopt
            from cvxopt import cholmod
        except ImportError:  # pragma: no cover - cvxopt is in the fem extra
            return spla.splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}).solve
        matrix.sort_indices()
        if self._pattern is None:
            cols = np.repeat(np.arange(matrix.shape[1]), np.diff(matrix.indptr))
            lower = matrix.indices >= cols
            self._lower = np.flatnonzero(lower)
            self._pattern = (cvxopt.matrix(matrix.indices[lower].astype(np.int64)), cvxopt.matrix(cols[lower].astype(np.int64)))
        a = cvxopt.spmatrix(cvxopt.matrix(np.ascontiguousarray(matrix.data[self._lower])), *self._pattern, matrix.shape)
        if self._symbolic is None:
            self._symbolic = cholmod.symbolic(a, uplo="L")
        factor = self._symbolic
        try:
            cholmod.numeric(a, factor)
        except ArithmeticError as error:
            raise ProblemError("the effective matrix K + M/(beta dt^2) is not positive definite") from error

        def solve(rhs: np.ndarray) -> np.ndarray:
            b = cvxopt.matrix(np.ascontiguousarray(rhs, dtype=np.float64))
            cholmod.solve(factor, b)
            return np.asarray(b).ravel()

        return solve

    # ------------------------------------------------------------------ time stepping
    def _force(self, step: int) -> float:
        return 1.0 if step < self._push_steps else (0.5 if step == self._push_steps else 0.0)

    def integrate(self, params: np.ndarray, *, record: Any = None) -> np.ndarray:
        r"""Newmark average acceleration from rest; returns the free-DOF displacements ``(10, n_free)`` at :data:`SNAPSHOTS`.

        ``record(step, u, v)``, when given, is called after every step (for checks).
        """
        dt = self.dt
        c0 = 1.0 / (BETA * dt**2)
        solve = self._factorise(self.system.matrix(self.coefficients(params, c0)))
        if self._mass_lu is None:
            import scipy.sparse.linalg as spla

            self._mass_lu = spla.splu(self.mass)
        M = self.mass
        u = np.zeros(self.free.size)
        v = np.zeros_like(u)
        a = self._mass_lu.solve(self._force(0) * self.load)  # M a0 = f0 (K u0 = 0)
        out = []
        last = self._push_steps + 9 * self._steps_per_snapshot
        for step in range(1, last + 1):
            rhs = self._force(step) * self.load + M @ (c0 * u + (1.0 / (BETA * dt)) * v + (0.5 / BETA - 1.0) * a)
            u_new = solve(rhs)
            a_new = c0 * (u_new - u) - (1.0 / (BETA * dt)) * v - (0.5 / BETA - 1.0) * a
            v = v + dt * ((1.0 - GAMMA) * a + GAMMA * a_new)
            u, a = u_new, a_new
            if record is not None:
                record(step, u, v)
            if step >= self._push_steps and (step - self._push_steps) % self._steps_per_snapshot == 0:
                out.append(u.copy())
        return np.stack(out)

    def full(self, free_values: np.ndarray) -> np.ndarray:
        r"""Free-DOF values ``(..., n_free)`` → all DOFs ``(..., num_dofs)`` (zeros on the Dirichlet DOFs)."""
        out = np.zeros((*free_values.shape[:-1], self.num_dofs))
        out[..., self.free] = free_values
        return out

    def solve(self, params: np.ndarray) -> np.ndarray:
        r"""``(10, grid, grid)``: :math:`u_z` (mm) at the pixel centres at :data:`SNAPSHOTS`, for (E_top, E_bottom, interface)."""
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (3,):
            raise ProblemError(f"the dual-layer phantom simulator takes 3 parameters {PARAMETERS}, got shape {params.shape}")
        if not np.all(np.isfinite(params)) or params[0] <= 0 or params[1] <= 0:
            raise ProblemError(f"the moduli must be positive and finite: {dict(zip(PARAMETERS, params.tolist()))}")
        uz = self.full(self.integrate(params))[:, self._zdofs]
        return (self._probe @ uz.T).T.reshape(len(SNAPSHOTS), self.grid, self.grid)


_SOLVERS: dict[tuple, ElastodynamicsSolver] = {}


def _solver(cells_per_pixel: float = 0.5, dt: float = DT) -> ElastodynamicsSolver:
    key = (float(cells_per_pixel), float(dt))
    if key not in _SOLVERS:
        _SOLVERS[key] = ElastodynamicsSolver(cells_per_pixel=cells_per_pixel, dt=dt)
    return _SOLVERS[key]


def solve_snapshots(params: np.ndarray) -> np.ndarray:
    r"""Batched solver: simulated-specimen parameters ``(n, 3)`` → :math:`u_z` snapshots ``(n, 10, 64, 64)`` (mm)."""
    from bayesinv.models.fem import single_threaded_blas

    params = np.asarray(params, dtype=np.float64)
    if params.ndim == 0 or params.shape[-1] != 3:
        raise ProblemError(f"the dual-layer phantom simulator takes parameters (..., 3) {PARAMETERS}, got shape {params.shape}")
    solver = _solver()
    with single_threaded_blas():
        out = [solver.solve(p) for p in params.reshape(-1, 3)]
    return np.stack(out).reshape(*params.shape[:-1], len(SNAPSHOTS), GRID, GRID).astype(np.float32)


#: The in-process simulator (one worker); ``DualLayerPhantom(workers=k)`` runs k processes.
snapshots = bayesinv.simulator(solve_snapshots, name="snapshots")


def blur_matrix(n: int = GRID, fwhm: float = BLUR_FWHM) -> np.ndarray:
    r"""The ``(n, n)`` matrix of the 1-D Gaussian blur (full width at half maximum ``fwhm`` pixels, reflecting edges)."""
    sd = fwhm / (2 * math.sqrt(2 * math.log(2)))
    half = min(int(math.ceil(3 * sd)), n - 1)
    x = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (x / sd) ** 2)
    kernel /= kernel.sum()
    B = np.zeros((n, n))
    for i in range(n):
        for k, w in zip(x, kernel):
            j = i + k
            j = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)  # reflect about the edge pixels
            B[i, j] += w
    return B


_BLUR: dict[tuple, np.ndarray] = {}


def blur(u: torch.Tensor, fwhm: float = BLUR_FWHM) -> torch.Tensor:
    r"""Separable Gaussian blur of each image over the last two axes: ``B u Bᵀ`` with :func:`blur_matrix`."""
    n, m = u.shape[-2], u.shape[-1]
    for k in (n, m):
        if (k, fwhm) not in _BLUR:
            _BLUR[(k, fwhm)] = blur_matrix(k, fwhm)
    rows = torch.as_tensor(_BLUR[(n, fwhm)], dtype=u.dtype, device=u.device)
    cols = torch.as_tensor(_BLUR[(m, fwhm)], dtype=u.dtype, device=u.device)
    return rows @ u @ cols.T


#: Support of the simulated specimen's parameters (E_top, E_bottom kPa; interface mm) under the modelling error.
SIMULATED_SUPPORT = ((PRIOR["E_top"][0] * MODEL_ERROR["scale_top"][0], PRIOR["E_top"][1] * MODEL_ERROR["scale_top"][1]),
                     (PRIOR["E_bottom"][0] * MODEL_ERROR["scale_bottom"][0], PRIOR["E_bottom"][1] * MODEL_ERROR["scale_bottom"][1]),
                     (PRIOR["interface"][0] + MODEL_ERROR["shift"][0], PRIOR["interface"][1] + MODEL_ERROR["shift"][1]))


def _labelled_interval(simulated: np.ndarray, model_error: bool) -> tuple[np.ndarray, np.ndarray]:
    r"""For simulated-specimen parameters ``(n, 3)``, the interval ``[lo, hi]`` ``(n, 3)`` of the labelled
    parameters compatible with them: E ∈ [E'/1.2, E'/0.8] ∩ prior, interface ∈ [h' − 0.2, h' + 0.2] ∩ prior."""
    lo_p = np.array([PRIOR[k][0] for k in PARAMETERS])
    hi_p = np.array([PRIOR[k][1] for k in PARAMETERS])
    if not model_error:
        return np.maximum(simulated, lo_p), np.minimum(simulated, hi_p)
    (s_lo, s_hi), (b_lo, b_hi), (d_lo, d_hi) = (MODEL_ERROR[k] for k in MODEL_ERROR)
    lo = np.stack([simulated[:, 0] / s_hi, simulated[:, 1] / b_hi, simulated[:, 2] - d_hi], -1)
    hi = np.stack([simulated[:, 0] / s_lo, simulated[:, 1] / b_lo, simulated[:, 2] - d_lo], -1)
    return np.maximum(lo, lo_p), np.minimum(hi, hi_p)


def simulated_log_prior(simulated: np.ndarray, model_error: bool = True) -> np.ndarray:
    r"""Log density ``(n,)`` of the simulated specimen's parameters ``(n, 3)`` under the prior and the
    modelling error (their marginal): for a modulus E' = sE with E ~ U(1, 25), s ~ U(0.8, 1.2),
    p(E') = ∫ p(E) p(E' | E) dE = ln(b/a) / (24 · 0.4) over [a, b] = [E'/1.2, E'/0.8] ∩ [1, 25]; for the
    interface h' = h + d, p(h') = (b − a) / (1.6 · 0.4) over [a, b] = [h' − 0.2, h' + 0.2] ∩ [2, 3.6]."""
    simulated = np.asarray(simulated, dtype=np.float64).reshape(-1, 3)
    width = np.array([PRIOR[k][1] - PRIOR[k][0] for k in PARAMETERS])
    lo, hi = _labelled_interval(simulated, model_error)
    with np.errstate(divide="ignore", invalid="ignore"):
        if not model_error:
            inside = np.all(lo <= hi, axis=1)
            return np.where(inside, -np.log(width).sum(), -np.inf)
        spread = np.array([MODEL_ERROR[k][1] - MODEL_ERROR[k][0] for k in MODEL_ERROR])
        mass = np.stack([np.log(hi[:, 0] / lo[:, 0]), np.log(hi[:, 1] / lo[:, 1]), hi[:, 2] - lo[:, 2]], -1)
        ok = np.all(hi > lo, axis=1)
        return np.where(ok, np.log(np.where(ok[:, None], mass, 1.0)).sum(1) - np.log(width * spread).sum(), -np.inf)


def labelled_given_simulated(simulated: np.ndarray, rng: np.random.Generator, model_error: bool = True) -> np.ndarray:
    r"""Draws of the labelled parameters ``(n, 3)`` given the simulated specimen's ``(n, 3)``, from
    p(θ | θ') ∝ p(θ) p(θ' | θ): each modulus with density ∝ 1/E on its interval (log-uniform), the
    interface uniform on its interval (:func:`simulated_log_prior` gives the intervals)."""
    simulated = np.asarray(simulated, dtype=np.float64).reshape(-1, 3)
    if not model_error:
        return simulated.copy()
    lo, hi = _labelled_interval(simulated, model_error)
    u = rng.random(simulated.shape)
    moduli = lo[:, :2] * (hi[:, :2] / lo[:, :2]) ** u[:, :2]
    interface = lo[:, 2] + (hi[:, 2] - lo[:, 2]) * u[:, 2]
    return np.concatenate([moduli, interface[:, None]], -1)


class DualLayerPhantom:
    r"""The dual-layer phantom time-dependent elastography problem.

    Arguments:
        noise_sd: Noise standard deviation (mm; the paper: 5·10⁻⁵).
        model_error: Whether the simulated specimen is the perturbed one (the paper: yes).
        workers: Worker processes of the simulator.
        simulator: A simulator to use instead (parameters (n, 3) → (n, 10, 64, 64)).

    Attributes:
        model: The Pyro model: latent ``E_top``, ``E_bottom``, ``interface`` and the modelling
            errors ``scale_top``, ``scale_bottom``, ``shift``; deterministic ``E`` and ``mu``
            (64, 64) kPa; observed ``y`` (10, 64, 64) mm.
    """

    def __init__(self, noise_sd: float = NOISE_SD, *, model_error: bool = True, workers: int = 1, simulator: Any = None):
        if not (isinstance(noise_sd, (int, float)) and not isinstance(noise_sd, bool) and noise_sd > 0 and math.isfinite(noise_sd)):
            raise ProblemError(f"noise_sd must be a positive number of mm, got {noise_sd!r}")
        if not isinstance(model_error, bool):
            raise ProblemError(f"model_error must be True or False, got {model_error!r}")
        if not (isinstance(workers, int) and workers >= 1):
            raise ProblemError(f"workers must be a positive integer, got {workers!r}")
        self.noise_sd, self.model_error = float(noise_sd), model_error
        if simulator is not None:
            self.simulator = simulator
        elif workers == 1:
            self.simulator = snapshots
        else:
            self.simulator = bayesinv.simulator(solve_snapshots, name="snapshots", workers=workers)
        self.dims = {"E": ["row", "col"], "mu": ["row", "col"], "y": ["time", "row", "col"]}
        self.coords = {"row": pixel_heights(), "col": (np.arange(GRID) + 0.5) * WINDOW / GRID, "time": list(SNAPSHOTS)}

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        values = [pyro.sample(name, dist.Uniform(torch.tensor(lo), torch.tensor(hi))) for name, (lo, hi) in PRIOR.items()]
        params = torch.stack(torch.broadcast_tensors(*values), dim=-1)
        E = pyro.deterministic("E", youngs_field(params))
        pyro.deterministic("mu", E / (2 * (1 + POISSON)))
        if self.model_error:
            err = [pyro.sample(name, dist.Uniform(torch.tensor(lo), torch.tensor(hi))) for name, (lo, hi) in MODEL_ERROR.items()]
            simulated = torch.stack(torch.broadcast_tensors(values[0] * err[0], values[1] * err[1], values[2] + err[2]), dim=-1)
        else:
            simulated = params
        u = blur(self.simulator(simulated))
        return pyro.sample("y", dist.Normal(u, self.noise_sd).to_event(3), obs=y)

    __call__ = model

    def reference(self, y: Any, *, num_proposals: int = 200, num_samples: int = 2000, search: int = 64, restarts: int = 2,
                  inflate: float = 1.5, seed: int = 0, forward: Any = None, progress: bool = False):
        r"""The posterior of every latent site (and the fields ``E``, ``mu``) by importance sampling with the exact likelihood.

        The noise (5·10⁻⁵ mm against displacements of 1–20 µm on 40,960 pixels) pins the
        *simulated* specimen θ' = (E'_top, E'_bottom, h') far more tightly than the modelling error
        spreads the labelled one, so the posterior factorises as
        p(θ, θ' | y) ∝ [p(θ') p(y | θ')] · p(θ | θ'), the second factor in closed form
        (:func:`labelled_given_simulated`, :func:`simulated_log_prior`). The first is sampled exactly:

        1. **Locate**: ``search`` scrambled Sobol points over θ''s support (moduli log-uniform),
           then a bounded least-squares fit (SciPy's ``least_squares``, finite-difference Jacobian)
           of the blurred response to ``y`` from the ``restarts`` best, in φ = (log E'_top,
           log E'_bottom, h'); the lowest misfit wins.
        2. **Propose**: the Laplace approximation :math:`N(\varphi^*, (J^T J)^{-1})` of the likelihood at the fit,
           its covariance × ``inflate``²; ``num_proposals`` draws.
        3. **Weight**: :math:`w = p(y \mid \theta')\, p(\theta')\, \lvert \partial\theta'/\partial\varphi \rvert / q(\varphi)`, the exact Gaussian likelihood of the
           blurred simulation (one solve per proposal); ``sample_stats["ess"]`` is their ESS.
        4. **Resample** ``num_samples`` θ' by the weights and draw θ | θ' for each.

        Arguments:
            y: The observation ``(10, 64, 64)`` mm.
            num_proposals: Proposals weighted with the exact likelihood (one solve each).
            num_samples: Posterior draws returned.
            search: Sobol points of the locating search (one solve each).
            restarts: Least-squares fits started from the best search points.
            inflate: Scale of the proposal's standard deviations over the Laplace ones.
            seed: Seed of the search, the proposals and the resampling.
            forward: ``θ' (3,) → u_z (..., n, m)`` in mm before the blur (default: the
                finite-element solver, in float64); for checks with a cheap forward model.
            progress: A progress bar over the proposals.

        Returns:
            An :class:`arviz.InferenceData`: ``posterior`` with every latent site (the modelling
            errors as the ratios and shift between θ' and θ), ``E`` and ``mu``;
            ``sample_stats["ess"]``; ``attrs``: ``fit_<site>`` (the fitted θ', per parameter), ``laplace_sd_<site>``
            (of θ' at the fit), ``num_simulations``, ``misfit`` (χ² per pixel at the fit), ``ess``.

        Example:
            >>> params, E, y = phantom.draw(seed=1000)
            >>> ref = phantom.reference(y)              # about 300 solves
            >>> ref.posterior["E_top"].mean().item(), ref.sample_stats["ess"].item()
        """
        from scipy.optimize import least_squares
        from scipy.stats import qmc
        from tqdm.auto import tqdm

        from bayesinv.idata import resampled_chains, to_inference_data

        for name, value, low in (("num_proposals", num_proposals, 2), ("num_samples", num_samples, 1), ("search", search, 1),
                                 ("restarts", restarts, 1)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ProblemError(f"{name} must be an integer >= {low}, got {value!r}")
        if restarts > search:
            raise ProblemError(f"restarts ({restarts}) cannot exceed the search points ({search})")
        if not (isinstance(inflate, (int, float)) and inflate >= 1.0):
            raise ProblemError(f"inflate must be a number >= 1, got {inflate!r}")
        y = np.asarray(y, dtype=np.float64)
        custom = forward is not None
        if not custom:
            if y.shape != (len(SNAPSHOTS), GRID, GRID):
                raise ProblemError(f"y must have shape {(len(SNAPSHOTS), GRID, GRID)} (snapshots, rows, columns), got {y.shape}")
            solver = _solver()
            forward = solver.solve
        if not np.all(np.isfinite(y)):
            raise ProblemError("y holds non-finite values")
        sd, model_error = self.noise_sd, self.model_error
        support = SIMULATED_SUPPORT if model_error else tuple(PRIOR[k] for k in PARAMETERS)
        lower = np.array([math.log(support[0][0]), math.log(support[1][0]), support[2][0]])
        upper = np.array([math.log(support[0][1]), math.log(support[1][1]), support[2][1]])
        count = [0]

        def theta(phi: np.ndarray) -> np.ndarray:
            return np.array([math.exp(phi[0]), math.exp(phi[1]), phi[2]])

        def residual(phi: np.ndarray) -> np.ndarray:
            count[0] += 1
            u = blur(torch.as_tensor(np.asarray(forward(theta(phi)), dtype=np.float64))).numpy()
            if u.shape != y.shape:
                raise ProblemError(f"the forward model gives shape {u.shape}, y has {y.shape}")
            return ((u - y) / sd).ravel()

        points = lower + (upper - lower) * qmc.Sobol(3, scramble=True, seed=seed).random(search)
        costs = np.array([0.5 * np.sum(residual(p) ** 2) for p in points])
        best = None
        for start in points[np.argsort(costs)[:restarts]]:
            fit = least_squares(residual, start, jac="2-point", diff_step=1e-6, bounds=(lower, upper), x_scale="jac",
                                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=200)
            if best is None or fit.cost < best.cost:
                best = fit
        J = best.jac
        cov = np.linalg.inv(J.T @ J)
        laplace_sd_phi = np.sqrt(np.diag(cov))
        rng = np.random.default_rng(seed)
        chol = np.linalg.cholesky(cov) * float(inflate)
        z = rng.standard_normal((num_proposals, 3))
        phis = best.x + z @ chol.T
        log_q = -0.5 * np.sum(z**2, 1) - np.log(np.diag(chol)).sum() - 1.5 * math.log(2 * math.pi)
        sims = np.stack([theta(p) for p in phis])
        log_prior = simulated_log_prior(sims, model_error) + phis[:, 0] + phis[:, 1]  # |dθ'/dφ| = E'_top E'_bottom
        log_like = np.full(num_proposals, -np.inf)
        inside = np.isfinite(log_prior)
        for i in tqdm(np.flatnonzero(inside), desc="reference", disable=not progress):
            log_like[i] = -0.5 * np.sum(residual(phis[i]) ** 2)
        log_like[inside] -= y.size * math.log(sd * math.sqrt(2 * math.pi))
        log_w = log_like + log_prior - log_q
        if not np.isfinite(log_w).any():
            raise ProblemError("every proposal fell outside the prior's support: the fit is at its edge; raise search")
        w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
        w /= w.sum()
        ess = float(1.0 / np.sum(w**2))
        picked = sims[rng.choice(num_proposals, size=num_samples, p=w)]
        labelled = labelled_given_simulated(picked, rng, model_error)
        chains = resampled_chains(num_samples)
        shape = (chains, num_samples // chains)
        post = {k: labelled[:, j].reshape(shape) for j, k in enumerate(PARAMETERS)}
        if model_error:
            post["scale_top"] = (picked[:, 0] / labelled[:, 0]).reshape(shape)
            post["scale_bottom"] = (picked[:, 1] / labelled[:, 1]).reshape(shape)
            post["shift"] = (picked[:, 2] - labelled[:, 2]).reshape(shape)
        grid = y.shape[-1] if custom else GRID
        E = youngs_field(torch.as_tensor(labelled, dtype=torch.float32), grid).numpy()
        post["E"] = E.reshape(*shape, grid, grid)
        post["mu"] = post["E"] / (2 * (1 + POISSON))
        laplace_sd = laplace_sd_phi * np.array([math.exp(best.x[0]), math.exp(best.x[1]), 1.0])
        dims = self.dims if grid == GRID else None
        return to_inference_data(
            post, observed={"y": y}, sample_stats={"ess": np.float64(ess)}, method="reference", seed=seed,
            options={"num_proposals": num_proposals, "search": search, "restarts": restarts, "inflate": float(inflate)},
            dims=dims, coords=self.coords if dims else None,
            attrs={**{f"fit_{k}": float(v) for k, v in zip(PARAMETERS, theta(best.x))},
                   **{f"laplace_sd_{k}": float(v) for k, v in zip(PARAMETERS, laplace_sd)}, "num_simulations": int(count[0]),
                   "misfit": float(2 * best.cost / y.size), "ess": ess, "num_proposals": num_proposals},
        )

    def draw(self, seed: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Ground truth: (E_top, E_bottom, interface) ``(3,)``, the field ``E`` (64, 64) and ``y`` (10, 64, 64).

        With ``n`` given, ``n`` of each (leading axis), drawn from the prior with ``seed``.
        """
        if n is not None and not (isinstance(n, int) and n >= 1):
            raise ProblemError(f"n must be a positive integer or None, got {n!r}")
        with pyro.plate("draws", 1 if n is None else n), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trace = pyro.poutine.trace(self.model).get_trace()
        params = torch.stack([trace.nodes[k]["value"] for k in PARAMETERS], -1).numpy()
        E = trace.nodes["E"]["value"].numpy()
        y = trace.nodes["y"]["value"].numpy()
        return (params[0], E[0], y[0]) if n is None else (params, E, y)
