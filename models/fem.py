r"""Small scikit-fem helpers shared by the physics models.

- :func:`require_skfem` imports scikit-fem or says how to install it.
- :func:`crossed_mesh`: a structured triangle mesh whose cells are split into four
  triangles by their centre ("crossed" or "union jack" mesh). A field given per pixel
  is exactly piecewise constant on it, and pixel centres are mesh nodes.
- :func:`tensor_mesh`: a structured triangle mesh through given x and y lines.
- :class:`ScaledStiffness`: a linear system ``K(c) u = f`` whose matrix is a sum of
  element matrices scaled by a per-element coefficient, ``K(c) = Σ_e c_e K_e``. The
  element matrices, the sparsity pattern and the elimination of Dirichlet values are
  computed once, so each new coefficient costs two sparse mat-vecs and one sparse
  factorisation.

scikit-fem is an optional dependency (``pip install scikit-fem``, extra ``fem``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["require_skfem", "crossed_mesh", "tensor_mesh", "ScaledStiffness", "single_threaded_blas"]


class _NoLimit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_CONTROLLER: Any = None


def single_threaded_blas() -> Any:
    r"""A context manager limiting BLAS/LAPACK to one thread (via threadpoolctl when installed).

    Small banded factorisations are many times slower with several BLAS threads on a
    busy machine; simulators parallelise over draws (``workers=``) instead.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl is optional
            _CONTROLLER = False
    return _CONTROLLER.limit(limits=1, user_api="blas") if _CONTROLLER else _NoLimit()


def require_skfem() -> Any:
    r"""Returns the ``skfem`` module, or raises an ImportError saying how to install it."""
    try:
        import skfem
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this finite-element solver needs scikit-fem: pip install scikit-fem (or bayesinv[fem])"
        ) from error
    return skfem


def crossed_mesh(nx: int, ny: int, lx: float = 1.0, ly: float = 1.0):
    r"""A rectangle ``[0, lx] × [0, ly]`` of ``nx × ny`` cells, each cut into 4 triangles.

    Vertices ``0 .. (nx+1)(ny+1)-1`` are the cell corners (x fastest), the next
    ``nx·ny`` vertices are the cell centres (x fastest, row 0 at the bottom).
    Triangles ``4k .. 4k+3`` belong to cell ``k`` (same order as the centres).

    Returns:
        A :class:`skfem.MeshTri`.
    """
    skfem = require_skfem()
    xs = np.linspace(0.0, lx, nx + 1)
    ys = np.linspace(0.0, ly, ny + 1)
    X, Y = np.meshgrid(xs, ys)  # (ny+1, nx+1), x fastest
    corners = np.stack([X.ravel(), Y.ravel()])
    xc = 0.5 * (xs[1:] + xs[:-1])
    yc = 0.5 * (ys[1:] + ys[:-1])
    XC, YC = np.meshgrid(xc, yc)
    centres = np.stack([XC.ravel(), YC.ravel()])
    p = np.concatenate([corners, centres], axis=1)
    j, i = np.meshgrid(np.arange(nx), np.arange(ny))  # i row, j column
    i, j = i.ravel(), j.ravel()
    sw = i * (nx + 1) + j
    se, nw = sw + 1, sw + nx + 1
    ne = nw + 1
    c = (nx + 1) * (ny + 1) + i * nx + j
    t = np.stack(
        [np.stack([sw, se, c]), np.stack([se, ne, c]), np.stack([ne, nw, c]), np.stack([nw, sw, c])], axis=-1
    )  # (3, ncells, 4)
    return skfem.MeshTri(p, t.reshape(3, -1))


def tensor_mesh(xs: np.ndarray, ys: np.ndarray):
    r"""A triangle mesh through the lines ``x = xs`` and ``y = ys`` (each rectangle cut in two)."""
    skfem = require_skfem()
    return skfem.MeshTri.init_tensor(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float))


class ScaledStiffness:
    r"""Solves ``K(c) u = 0`` with Dirichlet values, where ``K(c) = Σ_e c_e K_e``.

    The unknowns split into free DOFs ``F`` and Dirichlet DOFs ``D`` (values ``u_D``);
    what is solved is ``K_FF(c) u_F = −K_FD(c) u_D``. Both ``K_FF(c).data`` (in a fixed
    CSC pattern) and the right-hand side are linear in ``c``, precomputed as sparse
    matrices ``A`` and ``R``: ``data = A c``, ``rhs = R c``.

    Arguments:
        coo: The COO data of the form assembled with unit coefficient (an object with
            ``indices`` (2, N), ``data`` (N,) laid out as ``(*local_shape, num_elements)``,
            ``shape`` and ``local_shape``, like skfem's ``BilinearForm.coo_data(basis)``).
        dirichlet: Indices of the Dirichlet DOFs.
        values: Their prescribed values ``(len(dirichlet),)``.
        solver: ``"banded"``: LAPACK banded Cholesky in the given DOF order, for
            symmetric positive definite ``K`` on a structured mesh whose numbering keeps
            the bandwidth small (the fastest here); ``"cholesky"``: SuperLU with a
            symmetric ordering and no pivoting (SPD ``K``, any numbering); ``"lu"``:
            SuperLU with partial pivoting (any non-singular ``K``).
    """

    def __init__(self, coo: Any, dirichlet: np.ndarray, values: np.ndarray, *, solver: str = "lu"):
        if solver not in ("banded", "cholesky", "lu"):
            raise ValueError(f"unknown solver {solver!r}: use 'banded', 'cholesky' or 'lu'")
        self.solver = solver
        n = int(coo.shape[0])
        rows, cols = np.asarray(coo.indices[0]), np.asarray(coo.indices[1])
        data = np.asarray(coo.data, dtype=np.float64)
        self.num_elements = data.size // int(np.prod(coo.local_shape))
        elem = np.arange(data.size) % self.num_elements  # data is (*local_shape, nelem) in C order
        dirichlet = np.asarray(dirichlet, dtype=np.int64)
        u_d = np.zeros(n)
        u_d[dirichlet] = values
        free = np.ones(n, dtype=bool)
        free[dirichlet] = False
        self.n, self.free = n, np.flatnonzero(free)
        self.u_dirichlet = u_d
        index = np.full(n, -1)
        index[self.free] = np.arange(self.free.size)
        nf = self.free.size

        ff = free[rows] & free[cols]
        r, c = index[rows[ff]], index[cols[ff]]
        pattern = sp.csc_matrix((np.ones(r.size), (r, c)), shape=(nf, nf))
        pattern.sum_duplicates()
        pattern.sort_indices()
        self.indices, self.indptr = pattern.indices.copy(), pattern.indptr.copy()
        col_of = np.repeat(np.arange(nf), np.diff(pattern.indptr))
        keys = col_of.astype(np.int64) * nf + pattern.indices
        slot = np.searchsorted(keys, c.astype(np.int64) * nf + r)
        self.A = sp.csr_matrix((data[ff], (slot, elem[ff])), shape=(keys.size, self.num_elements))
        if solver == "banded":  # upper triangle in LAPACK's band storage ab[b + i - j, j]
            upper = pattern.indices <= col_of
            self.bandwidth = int((col_of - pattern.indices).max())
            self._band_pos = (self.bandwidth + pattern.indices[upper] - col_of[upper]) * nf + col_of[upper]
            self._A_upper = self.A[np.flatnonzero(upper)]

        fd = free[rows] & ~free[cols] & (u_d[cols] != 0)
        self.R = sp.csr_matrix(
            (-data[fd] * u_d[cols[fd]], (index[rows[fd]], elem[fd])), shape=(nf, self.num_elements)
        )

    def matrix(self, coefficient: np.ndarray) -> sp.csc_matrix:
        r"""``K_FF(c)`` as a CSC matrix."""
        nf = self.free.size
        return sp.csc_matrix((self.A @ coefficient, self.indices, self.indptr), shape=(nf, nf))

    def solve(self, coefficient: np.ndarray) -> np.ndarray:
        r"""The full solution vector ``(n,)`` (Dirichlet values included) for one coefficient ``(num_elements,)``."""
        coefficient = np.asarray(coefficient, dtype=np.float64)
        rhs = self.R @ coefficient
        if self.solver == "banded":
            nf = self.free.size
            ab = np.zeros((self.bandwidth + 1) * nf)
            ab[self._band_pos] = self._A_upper @ coefficient
            with single_threaded_blas():
                x = scipy.linalg.solveh_banded(
                    ab.reshape(self.bandwidth + 1, nf), rhs, overwrite_ab=True, check_finite=False
                )
        elif self.solver == "cholesky":
            options = {"SymmetricMode": True}
            lu = spla.splu(self.matrix(coefficient), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options=options)
            x = lu.solve(rhs)
        else:
            x = spla.splu(self.matrix(coefficient)).solve(rhs)
        u = self.u_dirichlet.copy()
        u[self.free] = x
        return u
