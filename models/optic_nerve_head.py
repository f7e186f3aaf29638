r"""Time-harmonic elastography of the optic nerve head: an inverse Helmholtz problem.

The synthetic problem of Section 4.1.2 of the conditional score-based diffusion paper for
mechanics (eq. 23, Tables 6–7, Figs. 4–6), after Ray et al.:

- **Physics** (eq. 23): :math:`-\omega^2 u - \nabla\cdot[(\mu/\rho)(1 + i\alpha\omega)\nabla u] = 0`
  for the complex displacement :math:`u = u_R + i u_I`, α = 5·10⁻⁵ s, ρ = 1000 kg/m³, at
  :data:`FREQUENCY` = 5 kHz (ω = 2π·5000 s⁻¹; the paper does not state ω). At 5 kHz the
  shear wavelength :math:`2\pi\sqrt{\mu/\rho}/\omega` is 0.63 mm in the optic nerve and
  retina (μ = 9.8 kPa: 2.8 wavelengths across the window, 23 pixels per wavelength),
  1.7 mm in the lamina cribrosa (73 kPa) and 2.2 mm in the sclera (125 kPa); αω = 1.57, so
  waves decay within about a wavelength, which is what the padding is for.
- **Domain**: the 1.75 × 1.75 mm window of interest, padded by 2.6 mm on the left and
  1.75 mm at the top and bottom (4.35 × 5.25 mm); the right edge is the nerve's axis of
  symmetry. Dirichlet data: :math:`u_R` = 0.02 mm, :math:`u_I` = 0 on the right edge,
  u = 0 on the other edges.
- **Finite elements** (scikit-fem): quadratic (P2) triangles on a tensor mesh whose
  window cells are the pixels, each cut in two (so pixel centres are the midpoints of the
  diagonals, i.e. P2 nodes: the measurement is read off the solution without
  interpolation error), graded to 0.15 mm cells in the padding. Inside the window each
  triangle takes the modulus of its pixel (the field ``mu`` exactly: refining the mesh
  with ``cells_per_pixel`` keeps the field), in the padding the tissue at its centroid. The system matrix is
  :math:`\sum_e [(1 + i\alpha\omega)\,\mu_e/(\rho\omega^2)\,K_e - M_e]`: the element
  matrices, the sparsity pattern and the Dirichlet elimination are computed once per mesh
  (:class:`bayesinv.models.fem.ScaledStiffness`), each draw costs two sparse mat-vecs and
  one complex sparse LU: UMFPACK (through CVXOPT, in the ``fem`` extra) with its symbolic
  analysis done once, as the pattern never changes; SuperLU without CVXOPT. ``cells_per_pixel`` refines for the mesh-convergence
  check (``benchmarks/optic_nerve_head.py convergence``).
- **Prior** (Tables 6–7): geometry — lamina cribrosa radius U(0.55, 1.35) mm and thickness
  U(0.16, 0.44) mm; peripapillary sclera thickness U(0.45, 1.15) mm; radius of the globe
  (sclera and retina) U(8, 16) mm; retinal thickness U(0.20, 0.40) mm; optic nerve radius
  at the bottom of the window U(1.10, 2.20) mm; pia mater thickness U(0.06, 0.10) mm;
  rotation U(−π/12, π/12). The paper gives only these ranges ("resulting from combining
  multiple random variables in some cases"); we draw each dimension uniformly on its range.
  Shear moduli (kPa) — optic nerve N(9.8, 3.34²), sclera N(125, 5²), pia mater N(125, 50²),
  retina N(9.8, 3.34²), lamina cribrosa N(73.1, 46.9²) — truncated to ϖ ± 2ς and to
  positive values: the table's footnote "(0, 2ς]" read literally would exclude every
  mean, so we read it as two standard deviations about the mean, cut at zero. Background
  (vitreous and orbit) 0.1 kPa.
- **Geometry** (what the paper leaves open, our choices): the globe's inner surface
  (retina) meets the axis 0.15 mm below the top of the window, its centre of curvature on
  the axis above; along the globe's radius come the retina, then the sclera; the scleral
  canal (distance to the axis below the lamina radius) holds the lamina cribrosa at the
  middle of the scleral thickness, with neural tissue (optic-nerve modulus) above and
  below it; behind the sclera the optic nerve widens linearly from the lamina radius to
  its radius at the bottom of the window, sheathed by the pia mater. The whole geometry
  is rotated about the point where the axis meets the retina. :func:`regions` labels
  the tissues; ``examples/optic_nerve_head.py`` draws prior realisations (Fig. 4/5).
- **Field** ``mu`` (64, 64), kPa, deterministic: the modulus at the pixel centres,
  ``mu[i, j]`` at x = (j + ½) h, y = 1.75 mm − (i + ½) h, h = 1.75/64 mm (row 0 at the
  top, on the vitreous side; column 63 at the axis).
- **Measurement** ``y`` (2, 64, 64): :math:`(u_R, u_I)` at the pixel centres (mm) plus
  Gaussian noise of standard deviation 4 % of :data:`U_MAX`, the largest of
  :math:`|u_R|, |u_I|` over 200 prior draws (:func:`compute_u_max`).

Example:
    >>> onh = OpticNerveHead()
    >>> params, mu, y = onh.draw(seed=0)       # truth, its field (64, 64), y (2, 64, 64)
    >>> idata = bayesinv.infer(onh.model, y, method="cond_score", target="mu", num_simulations=2000)
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
    "FREQUENCY",
    "ALPHA",
    "RHO",
    "U_RIGHT",
    "MU_BACKGROUND",
    "GEOMETRY",
    "MODULI",
    "PARAMETERS",
    "U_MAX",
    "REGIONS",
    "regions",
    "shear_modulus",
    "HelmholtzSolver",
    "solve_wavefield",
    "wavefield",
    "compute_u_max",
    "OpticNerveHead",
    "prior_distributions",
    "sample_parameters",
]

GRID = 64  # pixels per side of the window
WINDOW = 1.75  # mm
PAD_LEFT = 2.6  # mm
PAD_TOP_BOTTOM = 1.75  # mm
PAD_CELL = 0.15  # mm, the largest cell of the graded padding
FREQUENCY = 5000.0  # Hz
ALPHA = 5e-5  # s
RHO = 1000.0  # kg/m^3
U_RIGHT = 0.02  # mm, u_R on the right edge (the axis of symmetry)
MU_BACKGROUND = 0.1  # kPa
SURFACE_DEPTH = 0.15  # mm below the top of the window, where the retina meets the axis
NOISE = 0.04  # noise standard deviation as a fraction of U_MAX

#: Table 6: each dimension drawn uniformly on its range (mm; rotation in rad).
GEOMETRY = {
    "lamina_radius": (0.55, 1.35),
    "lamina_thickness": (0.16, 0.44),
    "sclera_thickness": (0.45, 1.15),
    "globe_radius": (8.0, 16.0),
    "retina_thickness": (0.20, 0.40),
    "nerve_radius": (1.10, 2.20),
    "pia_thickness": (0.06, 0.10),
    "rotation": (-math.pi / 12, math.pi / 12),
}
#: Table 7: shear moduli (kPa), N(ϖ, ς²) truncated to [max(0, ϖ − 2ς), ϖ + 2ς].
MODULI = {
    "mu_nerve": (9.8, 3.34),
    "mu_sclera": (125.0, 5.0),
    "mu_pia": (125.0, 50.0),
    "mu_retina": (9.8, 3.34),
    "mu_lamina": (73.1, 46.9),
}
#: The latent sites in the order of the parameter vector the simulator takes.
PARAMETERS = tuple(GEOMETRY) + tuple(MODULI)
#: Region labels of :func:`regions`.
REGIONS = ("background", "retina", "sclera", "lamina", "nerve", "pia")

# The largest of |u_R|, |u_I| (mm) at the pixel centres over 200 prior draws (seed 0) at one
# cell per pixel; recompute with compute_u_max().
U_MAX = 0.01984


def _omega() -> float:
    return 2 * math.pi * FREQUENCY


def regions(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    r"""The tissue label (index into :data:`REGIONS`) at ``points`` for each parameter vector.

    Arguments:
        points: ``(N, 2)`` coordinates (mm) in the padded domain, x to the right
            (the axis at x = 1.75), y up (the window is ``[0, 1.75]²``).
        params: ``(..., len(PARAMETERS))`` parameter vectors (only the geometry is used).

    Returns:
        ``(..., N)`` integer labels.
    """
    p = {name: params[..., i, None] for i, name in enumerate(PARAMETERS)}
    x, y = points[:, 0], points[:, 1]
    top = WINDOW - SURFACE_DEPTH  # where the retina meets the axis
    c, s = torch.cos(p["rotation"]), torch.sin(p["rotation"])
    dx, dy = x - WINDOW, y - top  # about the pivot, then rotated back by -rotation
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    rho = xr.abs()  # distance from the (rotated) axis: the geometry is symmetric about it
    depth = torch.sqrt(rho**2 + (yr - p["globe_radius"]) ** 2) - p["globe_radius"]  # along the globe's radius
    t_r, t_s, r_lc = p["retina_thickness"], p["sclera_thickness"], p["lamina_radius"]
    back = t_r + t_s  # the outer surface of the sclera
    canal = rho < r_lc
    label = torch.zeros(torch.broadcast_shapes(depth.shape), dtype=torch.long)  # background (vitreous, orbit)
    label = torch.where((depth >= 0) & (depth < t_r) & ~canal, 1, label)  # retina
    in_sclera = (depth >= t_r) & (depth < back)
    label = torch.where(in_sclera & ~canal, 2, label)  # peripapillary sclera
    mid = t_r + 0.5 * t_s
    lamina = in_sclera & canal & ((depth - mid).abs() < 0.5 * p["lamina_thickness"])
    label = torch.where((depth >= 0) & (depth < back) & canal, 4, label)  # neural tissue in the canal
    label = torch.where(lamina, 3, label)
    # behind the sclera: the nerve widens linearly from the lamina radius at the back of the
    # sclera to its radius at the bottom of the window (depth `top` on the axis), then stays
    frac = ((depth - back) / (top - back).clamp_min(1e-6)).clamp(0.0, 1.0)
    radius = r_lc + (p["nerve_radius"] - r_lc) * frac
    behind = depth >= back
    label = torch.where(behind & (rho < radius), 4, label)
    label = torch.where(behind & (rho >= radius) & (rho < radius + p["pia_thickness"]), 5, label)
    return label


def shear_modulus(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    r"""The shear modulus (kPa) at ``points`` ``(N, 2)`` for parameter vectors ``(..., 13)``: ``(..., N)``."""
    params = torch.as_tensor(params)
    label = regions(points, params)
    idx = {name: PARAMETERS.index(name) for name in MODULI}
    table = torch.stack(
        [torch.full(params.shape[:-1], MU_BACKGROUND, dtype=params.dtype), params[..., idx["mu_retina"]],
         params[..., idx["mu_sclera"]], params[..., idx["mu_lamina"]], params[..., idx["mu_nerve"]],
         params[..., idx["mu_pia"]]], dim=-1,
    )  # (..., 6)
    return torch.gather(table, -1, label)


def pixel_centres(grid: int = GRID) -> torch.Tensor:
    r"""``(grid², 2)`` pixel centres (mm), row 0 at the top of the window, x fastest."""
    h = WINDOW / grid
    c = (torch.arange(grid, dtype=torch.float64) + 0.5) * h
    yy, xx = torch.meshgrid(WINDOW - c, c, indexing="ij")
    return torch.stack([xx.ravel(), yy.ravel()], dim=-1)


def modulus_field(params: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    r"""The deterministic site ``mu``: ``(..., grid, grid)`` kPa at the pixel centres."""
    params = torch.as_tensor(params)
    mu = shear_modulus(pixel_centres(grid).to(params.dtype), params)
    return mu.reshape(*params.shape[:-1], grid, grid)


def _graded(h0: float, length: float, growth: float = 1.25, hmax: float = PAD_CELL) -> np.ndarray:
    r"""Cell sizes growing from ``h0`` by ``growth`` (capped at ``hmax``) that add up to ``length``."""
    sizes, h = [], h0
    while sum(sizes) < length:
        h = min(h * growth, hmax)
        sizes.append(h)
    sizes = np.array(sizes)
    sizes *= length / sizes.sum()
    return sizes


class HelmholtzSolver:
    r"""The damped Helmholtz equation on the padded optic-nerve-head domain, P2 triangles.

    Arguments:
        grid: Pixels per side of the window.
        cells_per_pixel: Mesh cells per pixel side in the window (1 by default; 2, 3, ...
            for convergence checks); the padding is graded from the window's cell size.
        frequency: Excitation frequency (Hz).

    Example:
        >>> solver = HelmholtzSolver()
        >>> u = solver.solve(params)          # (2, 64, 64): u_R, u_I at the pixel centres (mm)
    """

    def __init__(self, grid: int = GRID, cells_per_pixel: int = 1, frequency: float = FREQUENCY):
        from skfem import Basis, BilinearForm, ElementTriP2
        from skfem.helpers import dot, grad

        from bayesinv.models.fem import ScaledStiffness, require_skfem

        skfem = require_skfem()
        self.grid, self.cells_per_pixel, self.frequency = int(grid), int(cells_per_pixel), float(frequency)
        h = WINDOW / (self.grid * self.cells_per_pixel)
        window = np.linspace(0.0, WINDOW, self.grid * self.cells_per_pixel + 1)
        left = -np.cumsum(_graded(h, PAD_LEFT))[::-1]
        pad = np.cumsum(_graded(h, PAD_TOP_BOTTOM))
        xs = np.concatenate([left, window])
        ys = np.concatenate([-pad[::-1], window, WINDOW + pad])
        self.mesh = mesh = skfem.MeshTri.init_tensor(xs, ys)
        basis = Basis(mesh, ElementTriP2())

        @BilinearForm
        def stiffness(u, v, w):
            return dot(grad(u), grad(v))

        @BilinearForm
        def mass(u, v, w):
            return u * v

        k, m = stiffness.coo_data(basis), mass.coo_data(basis)
        ntri = mesh.t.shape[1]

        class _Both:  # K_e for every triangle, then M_e: one coefficient per block
            indices = np.concatenate([k.indices.reshape(2, 6, 6, ntri), m.indices.reshape(2, 6, 6, ntri)], -1).reshape(2, -1)
            data = np.concatenate([k.data.reshape(6, 6, ntri), m.data.reshape(6, 6, ntri)], -1).ravel()
            shape = k.shape
            local_shape = (6, 6)

        boundary = basis.get_dofs().all()
        right = basis.get_dofs(lambda x: np.isclose(x[0], WINDOW)).all()
        values = np.where(np.isin(boundary, right), U_RIGHT, 0.0)
        self.system = ScaledStiffness(_Both, boundary, values, solver="lu")
        self.num_dofs = basis.N
        self.num_triangles = ntri
        centroids = mesh.p[:, mesh.t].mean(axis=1)  # (2, ntri)
        self._centroids = torch.as_tensor(centroids.T)
        # inside the window a triangle takes the modulus of its pixel (the field site mu, exactly);
        # in the padding the geometry at its centroid
        inside = (centroids[0] > 0) & (centroids[0] < WINDOW) & (centroids[1] > 0) & (centroids[1] < WINDOW)
        col = np.minimum((centroids[0] / WINDOW * self.grid).astype(np.int64), self.grid - 1)
        row = np.minimum(((WINDOW - centroids[1]) / WINDOW * self.grid).astype(np.int64), self.grid - 1)
        self._in_window = inside
        self._pixel_of = (row * self.grid + col)[inside]
        probes = basis.probes(pixel_centres(self.grid).numpy().T).tocsr()
        self._probe = probes
        omega = 2 * math.pi * self.frequency
        # (mu/rho) in m^2/s^2 for mu in kPa is mu itself; gradients in 1/mm: times 1e6 mm^2/m^2
        self._scale = complex(1.0, ALPHA * omega) * 1e6 / omega**2
        self._pattern, self._symbolic = None, None

    def element_moduli(self, params: np.ndarray) -> np.ndarray:
        r"""The shear modulus (kPa) of every triangle for one parameter vector ``(13,)``: its pixel's
        value of the field ``mu`` inside the window, the geometry at its centroid in the padding."""
        p = torch.as_tensor(np.asarray(params, dtype=np.float64))
        out = shear_modulus(self._centroids, p).numpy()
        out[self._in_window] = modulus_field(p, self.grid).numpy().reshape(-1)[self._pixel_of]
        return out

    def _factorise(self, matrix):
        r"""A solve function for ``matrix`` (CSC): UMFPACK through CVXOPT, its symbolic analysis once per mesh, else SuperLU."""
        import scipy.sparse.linalg as spla

        try:
            import cvxopt
            import cvxopt.umfpack as umfpack
        except ImportError:  # pragma: no cover - cvxopt is in the fem extra
            return spla.splu(matrix, permc_spec="MMD_AT_PLUS_A").solve
        if self._pattern is None:
            matrix.sort_indices()
            cols = np.repeat(np.arange(matrix.shape[1]), np.diff(matrix.indptr))
            self._pattern = tuple(cvxopt.matrix(np.asarray(a, dtype=np.int64).tolist(), tc="i") for a in (matrix.indices, cols))
            self._symbolic = None
        m = cvxopt.spmatrix(cvxopt.matrix(np.ascontiguousarray(matrix.data, dtype=np.complex128)), *self._pattern, matrix.shape)
        if self._symbolic is None:
            self._symbolic = umfpack.symbolic(m)
        numeric = umfpack.numeric(m, self._symbolic)

        def solve(rhs: np.ndarray) -> np.ndarray:
            b = cvxopt.matrix(np.ascontiguousarray(rhs, dtype=np.complex128))
            umfpack.solve(m, numeric, b)
            return np.array(b).ravel()

        return solve

    def nodal(self, params: np.ndarray) -> np.ndarray:
        r"""The complex P2 solution ``(num_dofs,)`` (mm) for one parameter vector."""
        mu_e = self.element_moduli(params)
        coefficient = np.concatenate([self._scale * mu_e, -np.ones(self.num_triangles)])
        s = self.system
        matrix = s.matrix(coefficient)
        matrix.sort_indices()  # the pattern is the same for every draw: the symbolic analysis is reused
        x = self._factorise(matrix)(s.R @ coefficient)
        u = s.u_dirichlet.astype(np.complex128)
        u[s.free] = x
        return u

    def solve(self, params: np.ndarray) -> np.ndarray:
        r"""``(2, grid, grid)``: :math:`u_R, u_I` (mm) at the pixel centres for one parameter vector."""
        params = np.asarray(params, dtype=np.float64)
        if params.shape != (len(PARAMETERS),):
            raise ProblemError(f"the optic-nerve-head simulator takes {len(PARAMETERS)} parameters {PARAMETERS}, got shape {params.shape}")
        if not np.all(np.isfinite(params)):
            raise ProblemError(f"non-finite parameters: {dict(zip(PARAMETERS, params.tolist()))}")
        u = self._probe @ self.nodal(params)
        return np.stack([u.real, u.imag]).reshape(2, self.grid, self.grid)


_SOLVERS: dict[tuple, HelmholtzSolver] = {}


def _solver(cells_per_pixel: int = 1) -> HelmholtzSolver:
    key = (cells_per_pixel, FREQUENCY)
    if key not in _SOLVERS:
        _SOLVERS[key] = HelmholtzSolver(cells_per_pixel=cells_per_pixel)
    return _SOLVERS[key]


def solve_wavefield(params: np.ndarray, cells_per_pixel: int = 1) -> np.ndarray:
    r"""Batched solver: parameter vectors ``(n, 13)`` → :math:`(u_R, u_I)` ``(n, 2, 64, 64)`` (mm)."""
    from bayesinv.models.fem import single_threaded_blas

    params = np.asarray(params, dtype=np.float64)
    solver = _solver(cells_per_pixel)
    with single_threaded_blas():
        return np.stack([solver.solve(p) for p in params.reshape(-1, len(PARAMETERS))]).astype(np.float32)


#: The in-process simulator (one worker); ``OpticNerveHead(workers=k)`` runs k processes.
wavefield = bayesinv.simulator(solve_wavefield, name="wavefield")


def prior_distributions() -> dict[str, dist.Distribution]:
    r"""The prior of every latent site (Tables 6–7), in the order of :data:`PARAMETERS`."""
    from bayesinv.models.elastography import TruncatedNormal

    out: dict[str, dist.Distribution] = {name: dist.Uniform(torch.tensor(lo), torch.tensor(hi)) for name, (lo, hi) in GEOMETRY.items()}
    for name, (mean, sd) in MODULI.items():
        out[name] = TruncatedNormal(torch.tensor(mean), torch.tensor(sd), torch.tensor(max(0.0, mean - 2 * sd)), torch.tensor(mean + 2 * sd))
    return out


def sample_parameters(n: int, seed: int = 0) -> np.ndarray:
    r"""``n`` parameter vectors ``(n, 13)`` drawn from the prior (no simulation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([d.sample((int(n),)) for d in prior_distributions().values()], -1).numpy()


class OpticNerveHead:
    r"""The optic-nerve-head inverse Helmholtz problem.

    Arguments:
        noise: Noise standard deviation as a fraction of :data:`U_MAX` (the paper: 4 %).
        workers: Worker processes of the simulator.
        simulator: A simulator to use instead (parameters (n, 13) → (n, 2, 64, 64)).

    Attributes:
        model: The Pyro model: latent geometry and moduli sites (:data:`PARAMETERS`),
            deterministic ``mu`` (64, 64) kPa, observed ``y`` (2, 64, 64) mm.
        sigma: The noise standard deviation (mm).
    """

    def __init__(self, noise: float = NOISE, *, workers: int = 1, simulator: Any = None):
        if not (isinstance(noise, (int, float)) and noise > 0 and math.isfinite(noise)):
            raise ProblemError(f"noise must be a positive fraction of U_MAX, got {noise!r}")
        self.noise = float(noise)
        self.sigma = self.noise * U_MAX
        if simulator is not None:
            self.simulator = simulator
        elif workers == 1:
            self.simulator = wavefield
        else:
            self.simulator = bayesinv.simulator(solve_wavefield, name="wavefield", workers=workers)
        h = WINDOW / GRID
        pc = (np.arange(GRID) + 0.5) * h
        self.dims = {"mu": ["row", "col"], "y": ["part", "row", "col"]}
        self.coords = {"row": WINDOW - pc, "col": pc, "part": ["real", "imag"]}

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        values = [pyro.sample(name, d) for name, d in prior_distributions().items()]
        params = torch.stack(torch.broadcast_tensors(*values), dim=-1)
        pyro.deterministic("mu", modulus_field(params.double()).to(params.dtype))
        u = self.simulator(params)
        return pyro.sample("y", dist.Normal(u, self.sigma).to_event(3), obs=y)

    __call__ = model

    def draw(self, seed: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Ground truth: parameters ``(13,)``, field ``mu`` (64, 64) and observation ``y`` (2, 64, 64).

        With ``n`` given, ``n`` of each (leading axis), drawn from the prior with ``seed``.
        """
        with pyro.plate("draws", 1 if n is None else int(n)), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trace = pyro.poutine.trace(self.model).get_trace()
        params = torch.stack([trace.nodes[k]["value"] for k in PARAMETERS], -1).numpy()
        mu = trace.nodes["mu"]["value"].numpy()
        y = trace.nodes["y"]["value"].numpy()
        return (params[0], mu[0], y[0]) if n is None else (params, mu, y)


def compute_u_max(num_draws: int = 200, seed: int = 0) -> float:
    r"""The largest of :math:`|u_R|, |u_I|` (mm) over ``num_draws`` prior draws: how :data:`U_MAX` was computed."""
    return float(np.abs(solve_wavefield(sample_parameters(num_draws, seed))).max())
