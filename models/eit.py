r"""Electrical impedance tomography (EIT) of circular anomalies in the unit disc, with pyEIT.

The problem of the EIT comparison of variational autoencoders, normalizing flows and
score-based diffusion (papers/eit-comparison-cvae-cnf-csd.md, Section 4.1), following
the authors' released data code (``get_anomaly`` and ``tri2square_own`` in
``adahfbch/DGM-EIT``) where the paper is silent:

- **Domain and protocol**: the unit disc, 16 point electrodes equally spaced on the
  boundary (pyEIT's simplified electrode model: unit current in and out through
  boundary nodes), adjacent excitation and adjacent measurement without measuring on
  current-carrying electrodes: 16 × 13 = **208 voltage differences**, in pyEIT's
  default ("std") order: for each excitation the measuring pairs are listed by absolute
  electrode index (not rotated with the excitation), so the homogeneous voltages of
  different excitations agree only after reordering by offset from the excitation.
- **Prior** (latent ``radii`` (K,) and ``centres`` (K, 2), K = 2 or 4): centres uniform
  in the square [−0.55, 0.55]² (so inside the disc: \|c\| ≤ 0.78), radii uniform in
  [0.15, 0.25], and configurations where two circles come closer than a margin of 0.05
  are rejected (the authors' ``is_intersect``), jointly for centres and radii. The
  joint prior density is therefore constant on the admissible set: :class:`AnomalyRadii`
  samples the radii's marginal by joint rejection and scores them uniformly;
  :class:`AnomalyCentres` samples centres given radii by rejection and scores them
  uniformly on the admissible set (−∞ outside). Their sum is the joint log density up
  to one constant, which is all that importance sampling and MCMC need.
- **Conductivities** in fixed order (anomaly k gets value k): 1.5 and 0.5 for K = 2;
  1.5, 0.5, 0.1 and 0.01 for K = 4, on a background of 1. An element belongs to an
  anomaly when its centre lies inside the circle (pyEIT's ``set_perm``).
- **Simulation mesh**: pyEIT distmesh with uniform size ``h0`` = :data:`SIM_H0` = 0.035
  (≈ 3,000 nodes, ≈ 5,800 triangles, fixed distmesh seed). Refining to h0 = 0.025 and
  0.018 changes the 208 voltages by less than 1e-3 relative (``benchmarks/eit.py
  --convergence``), well below the 1 % noise of 40 dB.
- **Target** ``sigma`` (128, 128): the element conductivities interpolated to pixel
  centres by inverse-distance weighting from the element centres (``idw_neighbours``
  nearest centres, power 1; default 1 neighbour, i.e. the nearest element, as in the
  authors' ``tri2square_own``); pixels outside the disc are 0, as in the authors' images.
  Pixel (i, j) has centre x = −1 + (j + ½)·2/128, y = 1 − (i + ½)·2/128: row 0 at the
  **top** (plot with ``origin="upper"``, ``extent=(-1, 1, -1, 1)``).
- **Observation** ``y`` (208,): the voltages v plus Gaussian noise at ``snr_db``
  (40 or 25 dB) relative to the power of each noise-free measurement vector:
  std = rms(v)·10^(−SNR/20), so that 10 log10(Σ v² / Σ (y − v)²) ≈ SNR — the paper's
  Eq. (27) applied to the voltage vector.
- **Inversion** never uses the simulation mesh: :meth:`EIT.gauss_newton` works on its
  own coarser mesh (:data:`INV_H0` = 0.1, another distmesh seed) and returns an image
  on the same pixel grid (registered method ``"gauss_newton"``).

Example:
    >>> eit = make_model(num_anomalies=2, snr_db=40)
    >>> truth, y = eit.draw(seed=1)                     # sigma (128, 128), y (208,)
    >>> idata = bayesinv.infer(eit.model, y, method="gauss_newton", solver=eit, target="sigma")
    >>> ds = make_dataset(1000, path="eit2_40db.zarr", workers=2)
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

import bayesinv

__all__ = [
    "CONDUCTIVITIES",
    "BACKGROUND",
    "CENTRE_HALF_WIDTH",
    "RADIUS_RANGE",
    "MARGIN",
    "SIM_H0",
    "INV_H0",
    "IMAGE_SIZE",
    "PUBLISHED_SPLIT",
    "GN_DEFAULTS",
    "AnomalyRadii",
    "AnomalyCentres",
    "FEMSolver",
    "PixelGrid",
    "EIT",
    "eit_mesh",
    "eit_protocol",
    "fem_solver",
    "paint",
    "solve_voltages",
    "make_model",
    "make_dataset",
    "split_dataset",
]

#: Conductivity of anomaly k, for 2 and 4 anomalies (the authors' order).
CONDUCTIVITIES: dict[int, tuple[float, ...]] = {2: (1.5, 0.5), 4: (1.5, 0.5, 0.1, 0.01)}
BACKGROUND = 1.0
#: Centres are uniform in [−0.55, 0.55]².
CENTRE_HALF_WIDTH = 0.55
#: Radii are uniform in [0.15, 0.25].
RADIUS_RANGE = (0.15, 0.25)
#: Two circles must stay this far apart (edge to edge).
MARGIN = 0.05
#: Distmesh size of the simulation mesh (converged; see the module docstring).
SIM_H0 = 0.035
#: Distmesh size of the inversion (Gauss–Newton) mesh.
INV_H0 = 0.1
IMAGE_SIZE = 128
NUM_ELECTRODES = 16
#: The published dataset: 23,810 pairs, split in this order (the test set is the remaining 50).
PUBLISHED_SPLIT = {"train": 21_600, "validation": 2_160, "test": 50}
#: Gauss–Newton settings chosen on validation draws (benchmarks/eit.py --tune; docs/eit.md).
GN_DEFAULTS: dict[str, Any] = {
    "lamb": 1e-2,
    "p": 0.5,
    "maxiter": 1,
    "lamb_decay": 1.0,
    "lamb_min": 0.0,
    "idw_neighbours": 6,
    "bounds": (0.01, 2.0),
}


# --------------------------------------------------------------------------- prior


def _overlap(centres: torch.Tensor, radii: torch.Tensor, margin: float) -> torch.Tensor:
    r"""Whether any two circles come closer than ``margin``: (..., K, 2), (..., K) → (...,)."""
    d = torch.cdist(centres, centres)
    need = radii[..., :, None] + radii[..., None, :] + margin
    k = radii.shape[-1]
    off = ~torch.eye(k, dtype=torch.bool, device=radii.device)
    return ((d < need) & off).flatten(-2).any(-1)


def _reject(n: int, k: int, half: float, margin: float, radii: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draws ``n`` admissible configurations; with ``radii`` (n, K), only the centres are drawn."""
    lo, hi = RADIUS_RANGE
    centres = torch.empty(n, k, 2)
    out_r = torch.empty(n, k) if radii is None else radii.reshape(n, k).float()
    todo = torch.arange(n)
    while len(todo):
        m = len(todo)
        c = (2 * torch.rand(m, k, 2) - 1) * half
        r = lo + (hi - lo) * torch.rand(m, k) if radii is None else out_r[todo]
        ok = ~_overlap(c, r, margin)
        centres[todo[ok]] = c[ok]
        if radii is None:
            out_r[todo[ok]] = r[ok]
        todo = todo[~ok]
    return centres, out_r


class AnomalyRadii(TorchDistribution):
    r"""The radii (K,) of K non-overlapping circles: the marginal of the joint rejection prior.

    Sampling draws centres and radii jointly (uniform, rejecting overlaps) and keeps the
    radii; ``log_prob`` is the uniform density on [0.15, 0.25]^K. With
    :class:`AnomalyCentres` the two log densities add up to the joint density of the
    rejection prior (up to a constant).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, num_anomalies: int, batch_shape: torch.Size = torch.Size(), validate_args: bool | None = None):
        self.num_anomalies = int(num_anomalies)
        super().__init__(torch.Size(batch_shape), torch.Size([self.num_anomalies]), validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.interval(*RADIUS_RANGE), 1)

    def expand(self, batch_shape, _instance=None):
        return AnomalyRadii(self.num_anomalies, torch.Size(batch_shape))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = math.prod(shape)
        _, radii = _reject(n, self.num_anomalies, CENTRE_HALF_WIDTH, MARGIN)
        return radii.reshape(*shape, self.num_anomalies)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lo, hi = RADIUS_RANGE
        inside = ((value >= lo) & (value <= hi)).all(-1)
        const = -self.num_anomalies * math.log(hi - lo)
        return torch.where(inside, torch.tensor(const, dtype=value.dtype), torch.tensor(-math.inf, dtype=value.dtype))


class AnomalyCentres(TorchDistribution):
    r"""Centres (K, 2) given radii: uniform in [−0.55, 0.55]² per centre, overlaps rejected.

    ``log_prob`` is the uniform density on the square (−∞ where circles overlap),
    without the radius-dependent normaliser — see :class:`AnomalyRadii`.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, radii: torch.Tensor, validate_args: bool | None = None):
        self.radii = radii
        k = radii.shape[-1]
        super().__init__(radii.shape[:-1], torch.Size([k, 2]), validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.interval(-CENTRE_HALF_WIDTH, CENTRE_HALF_WIDTH), 2)

    def expand(self, batch_shape, _instance=None):
        return AnomalyCentres(self.radii.expand(*batch_shape, self.radii.shape[-1]))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        k = self.radii.shape[-1]
        radii = self.radii.expand(*shape, k).reshape(-1, k)
        centres, _ = _reject(len(radii), k, CENTRE_HALF_WIDTH, MARGIN, radii=radii)
        return centres.reshape(*shape, k, 2).to(self.radii.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = value.shape[-2]
        a = CENTRE_HALF_WIDTH
        inside = (value.abs() <= a).flatten(-2).all(-1)
        ok = inside & ~_overlap(value, self.radii.expand(*value.shape[:-1]).to(value.dtype), MARGIN)
        const = -k * math.log((2 * a) ** 2)
        return torch.where(ok, torch.tensor(const, dtype=value.dtype), torch.tensor(-math.inf, dtype=value.dtype))


def paint(points: Any, centres: Any, radii: Any, values: tuple[float, ...], background: float = BACKGROUND) -> torch.Tensor:
    r"""Conductivity at ``points`` (P, 2) for circles ``centres`` (..., K, 2), ``radii`` (..., K).

    A point inside circle k (strictly) gets ``values[k]``; later circles win where they
    overlap (they never do under the prior). Returns (..., P).
    """
    centres = torch.as_tensor(centres)
    dtype = centres.dtype if centres.is_floating_point() else torch.float32
    points = torch.as_tensor(points, dtype=dtype)
    radii = torch.as_tensor(radii, dtype=dtype)
    out = torch.full((*centres.shape[:-2], points.shape[0]), float(background), dtype=dtype)
    for k, value in enumerate(values):
        d2 = ((points - centres[..., k, None, :]) ** 2).sum(-1)
        out = torch.where(d2 < radii[..., k, None] ** 2, torch.tensor(float(value), dtype=dtype), out)
    return out


# --------------------------------------------------------------------- forward model


@functools.lru_cache(maxsize=8)
def eit_mesh(h0: float = SIM_H0, seed: int = 0):
    r"""A pyEIT distmesh of the unit disc with 16 electrodes (cached; deterministic for a seed)."""
    import pyeit.mesh as pm

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        mesh = pm.create(NUM_ELECTRODES, h0=h0)
    finally:
        np.random.set_state(state)
    return mesh


@functools.lru_cache(maxsize=1)
def eit_protocol():
    r"""Adjacent excitation, adjacent measurement, no measurement on driving electrodes (208)."""
    import pyeit.eit.protocol as protocol

    return protocol.create(NUM_ELECTRODES, dist_exc=1, step_meas=1, parser_meas="std")


class FEMSolver:
    r"""pyEIT's point-electrode FEM on one mesh, one banded Cholesky factorisation for all 16 excitations.

    Gives the same voltages as ``pyeit.eit.fem.EITForward.solve_eit`` (pyEIT's element
    stiffness, reference node and protocol), assembled without Python loops.

    Arguments:
        mesh: A ``pyeit.mesh.PyEITMesh``.
        protocol: A ``pyeit.eit.protocol.PyEITProtocol``.
    """

    def __init__(self, mesh: Any, protocol: Any):
        from pyeit.eit.fem import calculate_ke

        self.mesh = mesh
        self.protocol = protocol
        tri = mesh.element
        self.ke = calculate_ke(mesh.node, tri)
        row = np.repeat(tri, 3).ravel()
        col = np.repeat(tri, 3, axis=0).ravel()
        ref = mesh.ref_node
        self._keep = ~((row == ref) | (col == ref))
        self._row = np.append(row[self._keep], ref)
        self._col = np.append(col[self._keep], ref)
        n = mesh.n_nodes
        self.rhs = np.zeros((n, protocol.n_exc))
        for i, (a, b) in enumerate(protocol.ex_mat):
            self.rhs[mesh.el_pos[a], i] = 1.0
            self.rhs[mesh.el_pos[b], i] = -1.0
        # banded Cholesky in reverse Cuthill–McKee order: the stiffness matrix is SPD
        # (the reference node is Dirichlet), and a 2-D mesh has a small bandwidth
        from scipy import sparse
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        pattern = sparse.csr_matrix((np.ones(len(self._row)), (self._row, self._col)), shape=(n, n))
        self._order = reverse_cuthill_mckee(pattern, symmetric_mode=True)
        new = np.empty(n, dtype=np.int64)
        new[self._order] = np.arange(n)
        r, c = new[self._row], new[self._col]
        self._upper = r <= c
        self.bandwidth = int(np.max(c[self._upper] - r[self._upper]))
        self._band_index = (self.bandwidth + r[self._upper] - c[self._upper]) * n + c[self._upper]
        self._exc = np.repeat(np.arange(protocol.n_exc), protocol.meas_mat.shape[1])
        self._n = protocol.meas_mat[:, :, 0].ravel()
        self._m = protocol.meas_mat[:, :, 1].ravel()
        self.centres = mesh.elem_centers[:, :2]

    @property
    def num_elements(self) -> int:
        return int(self.mesh.n_elems)

    def _solve(self, perm: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        from scipy.linalg import solveh_banded

        data = np.append((self.ke * np.asarray(perm, dtype=float)[:, None, None]).ravel()[self._keep], 1.0)
        n = self.mesh.n_nodes
        band = np.bincount(self._band_index, weights=data[self._upper], minlength=(self.bandwidth + 1) * n)
        with _one_blas_thread():
            f = solveh_banded(band.reshape(self.bandwidth + 1, n), rhs[self._order], check_finite=False)
        out = np.empty_like(f)
        out[self._order] = f
        return out

    def potentials(self, perm: np.ndarray) -> np.ndarray:
        r"""Node potentials (n_nodes, 16) of the 16 excitations for element conductivities ``perm``."""
        return self._solve(perm, self.rhs)

    def voltages(self, perm: np.ndarray) -> np.ndarray:
        r"""The 208 voltage differences for element conductivities ``perm`` (n_elems,)."""
        f = self.potentials(perm)[self.mesh.el_pos]  # (16 electrodes, 16 excitations)
        return f[self._n, self._exc] - f[self._m, self._exc]

    def jacobian(self, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r"""pyEIT's Jacobian J = −∂v/∂σ (208, n_elems) and the voltages v (208,) at ``perm``.

        The same matrix as ``EITForward.compute_jac`` (adjoint method: J[m, e] =
        r_mᵀ K_e f with r_m the potential of a unit dipole on measurement pair m),
        vectorised over elements: one solve with the 16 electrode unit sources.
        """
        unit = np.zeros((self.mesh.n_nodes, self.protocol.n_el))
        unit[self.mesh.el_pos, np.arange(self.protocol.n_el)] = 1.0
        green = self._solve(perm, unit)  # K⁻¹ e_el, (n_nodes, 16)
        ex = self.protocol.ex_mat
        f = green[:, ex[:, 0]] - green[:, ex[:, 1]]  # excitation potentials (n_nodes, n_exc)
        tri = self.mesh.element
        kf = np.einsum("eij,ejx->eix", self.ke, f[tri])  # (E, 3, n_exc)
        g = np.einsum("eik,eix->xke", green[tri], kf)  # (n_exc, 16, E)
        jac = g[self._exc, self._n] - g[self._exc, self._m]
        fe = f[self.mesh.el_pos]
        return jac, fe[self._n, self._exc] - fe[self._m, self._exc]


@functools.lru_cache(maxsize=8)
def fem_solver(h0: float = SIM_H0, seed: int = 0) -> FEMSolver:
    r"""The cached :class:`FEMSolver` on ``eit_mesh(h0, seed)``."""
    return FEMSolver(eit_mesh(h0, seed), eit_protocol())


def solve_voltages(centres: np.ndarray, radii: np.ndarray, conductivities: tuple[float, ...], h0: float = SIM_H0) -> np.ndarray:
    r"""The black box: anomalies (n, K, 2), (n, K) → the 208 voltage differences (n, 208).

    The raw NumPy function behind the model's :func:`bayesinv.simulator` (one banded
    Cholesky factorisation per draw on the simulation mesh of size ``h0``).
    """
    solver = fem_solver(float(h0))
    perm = paint(solver.centres, torch.as_tensor(np.asarray(centres, dtype=np.float64)),
                 torch.as_tensor(np.asarray(radii, dtype=np.float64)), tuple(conductivities)).numpy()
    return np.stack([solver.voltages(p) for p in perm])


@functools.lru_cache(maxsize=1)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


def _one_blas_thread():
    r"""One BLAS thread: the banded solves are small, and threads only contend (10× slower on a busy machine)."""
    import contextlib

    ctl = _blas_controller()
    return contextlib.nullcontext() if ctl is None else ctl.limit(limits=1, user_api="blas")


# ----------------------------------------------------------------------- pixel grid


@dataclass(frozen=True)
class PixelGrid:
    r"""The 128 × 128 image grid over [−1, 1]², row 0 at the top.

    Attributes:
        size: Pixels per side.
        x: Pixel-centre x coordinates (size,), increasing with the column.
        y: Pixel-centre y coordinates (size,), decreasing with the row.
        inside: Mask (size, size) of pixels whose centre lies in the unit disc.
    """

    size: int = IMAGE_SIZE

    @property
    def x(self) -> np.ndarray:
        return -1.0 + (np.arange(self.size) + 0.5) * 2.0 / self.size

    @property
    def y(self) -> np.ndarray:
        return self.x[::-1].copy()

    @property
    def points(self) -> np.ndarray:
        r"""Pixel centres (size², 2), row-major."""
        xg, yg = np.meshgrid(self.x, self.y, indexing="xy")
        return np.stack([xg.ravel(), yg.ravel()], -1)

    @property
    def inside(self) -> np.ndarray:
        p = self.points
        return ((p**2).sum(-1) <= 1.0).reshape(self.size, self.size)


class IDWInterpolator:
    r"""Inverse-distance weighting from scattered points (element centres) to the pixel grid.

    Each pixel takes Σ w_i s_i / Σ w_i over its ``neighbours`` nearest points with
    w_i = 1 / d_i^power (pyEIT's ``weight_idw``, computed with a k-d tree); pixels
    outside the disc are ``outside``.
    """

    def __init__(self, points: np.ndarray, grid: PixelGrid, neighbours: int = 1, power: float = 1.0, outside: float = 0.0):
        from scipy.spatial import cKDTree

        self.grid = grid
        self.outside = float(outside)
        d, idx = cKDTree(points).query(grid.points, k=neighbours)
        d, idx = d.reshape(len(grid.points), -1), idx.reshape(len(grid.points), -1)
        w = 1.0 / np.maximum(d, 1e-12) ** power
        self.index = torch.as_tensor(idx)
        self.weight = torch.as_tensor(w / w.sum(-1, keepdims=True))
        self.mask = torch.as_tensor(grid.inside)

    def __call__(self, values: Any) -> torch.Tensor:
        r"""(..., n_points) → (..., size, size)."""
        values = torch.as_tensor(values)
        dtype = values.dtype if values.is_floating_point() else torch.float32
        image = (values[..., self.index] * self.weight.to(dtype)).sum(-1)
        image = image.reshape(*values.shape[:-1], self.grid.size, self.grid.size)
        return torch.where(self.mask, image, torch.tensor(self.outside, dtype=dtype))


# ---------------------------------------------------------------------------- model


class EIT:
    r"""The EIT inverse problem: prior, pyEIT forward model, noise, Gauss–Newton baseline.

    Arguments:
        num_anomalies: 2 or 4.
        snr_db: Signal-to-noise ratio of the observation in dB (40 and 25 in the paper).
        workers: Worker processes of the voltage simulator.
        h0: Distmesh size of the simulation mesh.
        idw_neighbours: Nearest element centres used for the target image.
        inv_h0: Distmesh size of the Gauss–Newton mesh (must differ from ``h0``).
        simulator: A simulator to use instead, ``(centres, radii, conductivities, h0) → (n, 208)``.
        image_size: Pixels per side of the target image (the paper: 128). A coarser grid
            (32, 64) makes the learned methods affordable on a CPU; the simulation is the
            same, only the image (and the Gauss–Newton image) is sampled more coarsely.

    Attributes:
        model: The Pyro model: latent ``radii`` (K,), ``centres`` (K, 2); deterministic
            ``sigma`` (128, 128) (``image_size`` per side); observed ``y`` (208,).
        grid: The :class:`PixelGrid`.
        mesh: The simulation mesh (pyEIT).
        conductivities: The anomaly conductivities, in order.
    """

    def __init__(
        self,
        num_anomalies: int = 2,
        snr_db: float = 40.0,
        *,
        workers: int = 1,
        h0: float = SIM_H0,
        idw_neighbours: int = 1,
        inv_h0: float = INV_H0,
        simulator: Any = None,
        image_size: int = IMAGE_SIZE,
    ):
        if num_anomalies not in CONDUCTIVITIES:
            raise ValueError(f"num_anomalies must be one of {sorted(CONDUCTIVITIES)}, got {num_anomalies}")
        if inv_h0 == h0:
            raise ValueError("the inversion mesh must differ from the simulation mesh (inverse crime): pass another inv_h0")
        self.num_anomalies = int(num_anomalies)
        self.snr_db = float(snr_db)
        self.h0 = float(h0)
        self.inv_h0 = float(inv_h0)
        self.conductivities = CONDUCTIVITIES[self.num_anomalies]
        self.grid = PixelGrid(int(image_size))
        self.solver = fem_solver(self.h0)
        self.mesh = self.solver.mesh
        self.to_image = IDWInterpolator(self.solver.centres, self.grid, neighbours=idw_neighbours)
        self.simulator = simulator or bayesinv.simulator(solve_voltages, name="eit_voltages", workers=workers)
        self._gn_cache: dict[tuple, Any] = {}

    def __repr__(self) -> str:
        size = "" if self.grid.size == IMAGE_SIZE else f", image_size={self.grid.size}"
        return f"EIT(num_anomalies={self.num_anomalies}, snr_db={self.snr_db}, h0={self.h0}, elements={self.mesh.n_elems}{size})"

    # -- model ------------------------------------------------------------------------
    def noise_scale(self, v: torch.Tensor) -> torch.Tensor:
        r"""Noise standard deviation rms(v)·10^(−SNR/20) of each measurement vector (..., 208) → (..., 1)."""
        return v.pow(2).mean(-1, keepdim=True).sqrt() * 10.0 ** (-self.snr_db / 20.0)

    def sigma_image(self, centres: Any, radii: Any) -> torch.Tensor:
        r"""The target image (..., 128, 128) of anomalies (..., K, 2), (..., K)."""
        return self.to_image(paint(self.solver.centres, centres, radii, self.conductivities))

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model ``model(y=None)``."""
        radii = pyro.sample("radii", AnomalyRadii(self.num_anomalies))
        centres = pyro.sample("centres", AnomalyCentres(radii))
        pyro.deterministic("sigma", self.sigma_image(centres, radii))
        v = self.simulator(centres, radii, self.conductivities, self.h0)
        return pyro.sample("y", dist.Normal(v, self.noise_scale(v)).to_event(1), obs=y)

    __call__ = model

    def draw(self, seed: int = 0, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Ground-truth image(s) and noisy observation(s): (128, 128), (208,) or (n, 128, 128), (n, 208)."""
        from bayesinv.problem import as_problem, run_batch

        batch = run_batch(as_problem(self.model), 1 if n is None else n, seed=seed)
        sigma, y = batch.values["sigma"].numpy(), batch.values["y"].numpy()
        return (sigma[0], y[0]) if n is None else (sigma, y)

    # -- Gauss–Newton ---------------------------------------------------------------------
    def _gn_setup(self, idw_neighbours: int) -> dict[str, Any]:
        key = ("setup", idw_neighbours)
        if key not in self._gn_cache:
            from pyeit.eit.jac import JAC

            mesh = eit_mesh(self.inv_h0, seed=1)
            jac = JAC(mesh, eit_protocol())
            jac.setup(p=GN_DEFAULTS["p"], lamb=GN_DEFAULTS["lamb"], method="kotre", perm=BACKGROUND)
            self._gn_cache[key] = {
                "jac": jac,
                "fem": FEMSolver(mesh, eit_protocol()),
                "mesh": mesh,
                "j0": np.real(jac.J),
                "v_inv_bg": np.real(jac.v0),
                # the reference measurement: the homogeneous background through the measurement
                # system (the simulation model), noise free
                "v_ref": self.solver.voltages(np.full(self.mesh.n_elems, BACKGROUND)),
                "to_image": IDWInterpolator(mesh.elem_centers[:, :2], self.grid, neighbours=idw_neighbours),
            }
        return self._gn_cache[key]

    def gauss_newton(
        self,
        y: Any,
        *,
        lamb: float | None = None,
        p: float | None = None,
        maxiter: int | None = None,
        lamb_decay: float | None = None,
        lamb_min: float | None = None,
        idw_neighbours: int | None = None,
        bounds: tuple[float, float] | None | str = "default",
        return_elements: bool = False,
    ) -> np.ndarray:
        r"""Regularised Gauss–Newton (Levenberg–Marquardt-type) reconstruction on the inversion mesh.

        pyEIT's Jacobian solver (``pyeit.eit.jac.JAC``) on its own mesh (size
        :data:`INV_H0`), started from the homogeneous background σ₀ = 1 and fitted to the
        difference from a reference measurement v_ref of the homogeneous background:

            σ_{k+1} = clip(σ_k − (JᵀJ + λ R)⁻¹ Jᵀ r_k),   R = diag(JᵀJ)^p,
            r_k = (y − v_ref) − (F_inv(σ_k) − F_inv(1)),

        with J = −∂F_inv/∂σ at σ_k (pyEIT's sign). p = 1 is Levenberg–Marquardt (the
        paper's Eq. 9), p = 0 damped GN; one iteration is pyEIT's ``JAC.solve(y, v_ref)``.
        The element values are interpolated to the pixel grid by IDW.

        Arguments:
            y: Observation(s) (208,) or (n, 208).
            lamb, p, maxiter, lamb_decay, lamb_min, idw_neighbours, bounds: Override
                :data:`GN_DEFAULTS`; λ is multiplied by ``lamb_decay`` after each iteration
                (not below ``lamb_min``); ``bounds=None`` disables clipping.
            return_elements: Return the element values on the inversion mesh instead.

        Returns:
            The image(s) (128, 128) or (n, 128, 128) (float64).
        """
        opts = dict(GN_DEFAULTS)
        given = {"lamb": lamb, "p": p, "maxiter": maxiter, "lamb_decay": lamb_decay, "lamb_min": lamb_min,
                 "idw_neighbours": idw_neighbours}
        opts.update({k: v for k, v in given.items() if v is not None})
        if bounds != "default":
            opts["bounds"] = bounds
        setup = self._gn_setup(int(opts["idw_neighbours"]))
        jac = setup["jac"]
        y = np.asarray(y, dtype=np.float64)
        single = y.ndim == 1
        dv = np.atleast_2d(y) - setup["v_ref"]
        h_key = ("h0", float(opts["lamb"]), float(opts["p"]))
        if h_key not in self._gn_cache:
            self._gn_cache[h_key] = jac._compute_h(setup["j0"], float(opts["p"]), float(opts["lamb"]), "kotre")
        h0_mat = self._gn_cache[h_key]
        lo, hi = opts["bounds"] if opts["bounds"] is not None else (-np.inf, np.inf)
        with _one_blas_thread():
            out = [self._gn_iterate(d, h0_mat, setup, opts, lo, hi) for d in dv]
        elements = np.stack(out)
        result = elements if return_elements else setup["to_image"](torch.as_tensor(elements)).numpy()
        return result[0] if single else result

    def _gn_iterate(self, d: np.ndarray, h0_mat: np.ndarray, setup: dict, opts: dict, lo: float, hi: float) -> np.ndarray:
        r"""Gauss–Newton iterations for one difference vector ``d = y − v_ref``."""
        sigma = np.clip(BACKGROUND - h0_mat @ d, lo, hi)
        for it in range(int(opts["maxiter"]) - 1):
            j, v = setup["fem"].jacobian(sigma)
            r = d - (v - setup["v_inv_bg"])
            lamb_k = max(float(opts["lamb"]) * float(opts["lamb_decay"]) ** (it + 1), float(opts["lamb_min"]))
            h = setup["jac"]._compute_h(j, float(opts["p"]), lamb_k, "kotre")
            sigma = np.clip(sigma - h @ r, lo, hi)
        return sigma


def make_model(num_anomalies: int = 2, snr_db: float = 40.0, **kw: Any) -> EIT:
    r"""The EIT problem with ``num_anomalies`` (2 or 4) at ``snr_db`` (see :class:`EIT`)."""
    return EIT(num_anomalies, snr_db, **kw)


# -------------------------------------------------------------------------- datasets


def make_dataset(
    n: int = sum(PUBLISHED_SPLIT.values()),
    path: str | os.PathLike | None = None,
    *,
    num_anomalies: int = 2,
    snr_db: float = 40.0,
    workers: int = 1,
    seed: int = 0,
    chunk_size: int = 500,
    eit: EIT | None = None,
    **kw: Any,
):
    r"""Simulates ``n`` (sigma, y) pairs with :func:`bayesinv.simulate` (zarr, resumable).

    The published size is 23,810 pairs (:data:`PUBLISHED_SPLIT`: 21,600 train, 2,160
    validation, the remaining 50 test); each pair stores ``sigma`` (128 × 128 float32,
    64 KiB), so the full set is ≈ 1.6 GB in memory; the piecewise-constant images compress
    well and the zarr store takes ≈ 50 MB (about 3 minutes with ``workers=2`` on a 2-core
    CPU: ``benchmarks/eit.py --datasets``). Split it with :func:`split_dataset`.

    Arguments:
        n: Number of pairs.
        path: A zarr store (written chunk by chunk; an interrupted run resumes).
        num_anomalies, snr_db, workers: See :class:`EIT` (ignored when ``eit`` is given).
        seed: The seed.
        chunk_size: Draws per chunk.
        eit: An existing :class:`EIT` problem.
        kw: Further arguments of :func:`bayesinv.simulate`.

    Returns:
        The :class:`xarray.Dataset` (dims ``sigma``: row, col; ``y``: meas).
    """
    eit = eit or EIT(num_anomalies, snr_db, workers=workers)
    dims = {"sigma": ["row", "col"], "y": ["meas"], "centres": ["anomaly", "xy"], "radii": ["anomaly"]}
    return bayesinv.simulate(eit.model, n, seed=seed, path=path, chunk_size=chunk_size, dims=dims, **kw)


def split_dataset(ds: Any, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    r"""Consecutive train / validation / test parts of a dataset from :func:`make_dataset`.

    With the published size (23,810) the parts are exactly :data:`PUBLISHED_SPLIT`; for
    another size they keep its proportions (test takes the rest).
    """
    sizes = dict(sizes or PUBLISHED_SPLIT)
    n = int(ds.sizes["draw"])
    total = sum(sizes.values())
    names = list(sizes)
    counts = [round(sizes[k] * n / total) for k in names[:-1]]
    counts.append(n - sum(counts))
    out, start = {}, 0
    for name, c in zip(names, counts):
        out[name] = ds.isel(draw=slice(start, start + c))
        start += c
    return out
