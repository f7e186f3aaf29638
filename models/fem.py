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
  factorisation; with ``solver="cholmod"`` the symbolic analysis (fill-reducing
  ordering, elimination tree, supernodes) is done once as well and every draw is only a
  numeric CHOLMOD factorisation. :meth:`ScaledStiffness.solve_many` assembles a whole
  batch of coefficients with one sparse matrix product.
- :func:`nested_dissection_order`: a fill-reducing ordering from DOF coordinates
  (coordinate bisection) or from the graph (breadth-first levels).

scikit-fem is an optional dependency (``pip install scikit-fem``, extra ``fem``); so is
CVXOPT (its CHOLMOD interface, ``pip install cvxopt``, also in the ``fem`` extra), which
``solver="cholmod"`` needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from bayesinv.errors import OptionError, ProblemError

__all__ = [
    "require_skfem",
    "crossed_mesh",
    "tensor_mesh",
    "ScaledStiffness",
    "single_threaded_blas",
    "cholmod_available",
    "nested_dissection_order",
]

SOLVERS = ("banded", "cholesky", "lu", "cholmod")


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


def cholmod_available() -> bool:
    r"""Whether ``solver="cholmod"`` can run (CVXOPT and its CHOLMOD module import)."""
    try:
        from cvxopt import cholmod  # noqa: F401
    except ImportError:
        return False
    return True


def _require_cholmod() -> Any:
    try:
        import cvxopt
        from cvxopt import cholmod
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "solver='cholmod' needs CVXOPT's CHOLMOD interface: pip install cvxopt (or bayesinv[fem]); "
            "solver='banded' (structured meshes) or 'cholesky' need nothing more"
        ) from error
    return cvxopt, cholmod


def nested_dissection_order(
    indptr: np.ndarray, indices: np.ndarray, *, points: np.ndarray | None = None, leaf_size: int = 64
) -> np.ndarray:
    r"""A fill-reducing elimination order of a symmetric sparsity pattern by nested dissection.

    The DOFs are split in two halves at the median of a key, the DOFs of the lower half
    that touch the upper half form the separator (so it always separates, whatever the
    mesh), and both halves are ordered recursively before the separator. The key is
    the coordinate along the longest extent when ``points`` are given (straight mesh
    lines on a structured mesh: the classic geometric nested dissection), otherwise the
    breadth-first level from a pseudo-peripheral vertex.

    Arguments:
        indptr, indices: The CSC (or CSR) pattern of a symmetric ``(n, n)`` matrix.
        points: DOF coordinates ``(n, d)``, or ``None``.
        leaf_size: Parts of at most this many DOFs are not split further.

    Returns:
        The permutation ``(n,)``: position ``k`` holds the DOF eliminated ``k``-th.
    """
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    n = indptr.size - 1
    if int(leaf_size) < 1:
        raise OptionError(f"leaf_size must be a positive integer, got {leaf_size!r}")
    if points is not None:
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[0] != n:
            raise ProblemError(f"points must have shape (n, d) with n = {n} DOFs, got {points.shape}")
    graph = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(n, n))
    order: list[np.ndarray] = []
    stack: list[tuple[np.ndarray, bool]] = [(np.arange(n), False)]  # (DOFs, ready to emit)
    while stack:  # iterative post-order: low half, high half, then the separator
        idx, ready = stack.pop()
        if ready or idx.size <= leaf_size:
            order.append(idx)
            continue
        parts = _bisect(graph, idx, points)
        if parts is None:
            order.append(idx)
            continue
        low, sep, high = parts
        stack.append((sep, True))
        stack.extend((part, False) for part in (high, low) if part.size)
    perm = np.concatenate(order) if order else np.empty(0, dtype=np.int64)
    if perm.size != n or np.unique(perm).size != n:  # pragma: no cover - a bug, not an input
        raise AssertionError("nested dissection lost DOFs")
    return perm


def _bisect(graph: sp.csr_matrix, idx: np.ndarray, points: np.ndarray | None):
    r"""Splits ``idx`` into (low, separator, high) with no edge between low and high; ``None`` if it cannot."""
    sub = graph[idx][:, idx]
    if points is not None:
        extent = points[idx].max(0) - points[idx].min(0)
        key = points[idx, int(np.argmax(extent))]
    else:
        start = int(np.argmin(np.diff(sub.indptr)))  # a low-degree vertex, then the farthest from it
        for _ in range(2):
            level = sp.csgraph.shortest_path(sub, indices=start, unweighted=True, directed=False)
            if np.isinf(level).any():  # disconnected: the component of start against the rest
                inside = np.isfinite(level)
                return idx[inside], idx[:0], idx[~inside]
            start = int(np.argmax(level))
        key = level
    threshold = np.median(key)
    low = key < threshold
    if not low.any():
        low = key <= threshold
    if low.all():
        return None
    touching = np.asarray(sub[low][:, ~low].getnnz(axis=1)) > 0
    inner = np.flatnonzero(low)
    return idx[inner[~touching]], idx[inner[touching]], idx[~low]


class ScaledStiffness:
    r"""Solves ``K(c) u = 0`` with Dirichlet values, where ``K(c) = Σ_e c_e K_e``.

    The unknowns split into free DOFs ``F`` and Dirichlet DOFs ``D`` (values ``u_D``);
    what is solved is ``K_FF(c) u_F = −K_FD(c) u_D``. Both ``K_FF(c).data`` (in a fixed
    CSC pattern) and the right-hand side are linear in ``c``, precomputed as sparse
    matrices ``A`` and ``R``: ``data = A c``, ``rhs = R c`` (for a batch, ``A C`` and
    ``R C``: one sparse matrix product each).

    Arguments:
        coo: The COO data of the form assembled with unit coefficient (an object with
            ``indices`` (2, N), ``data`` (N,) laid out as ``(*local_shape, num_elements)``,
            ``shape`` and ``local_shape``, like skfem's ``BilinearForm.coo_data(basis)``).
        dirichlet: Indices of the Dirichlet DOFs.
        values: Their prescribed values ``(len(dirichlet),)``.
        solver: ``"cholmod"``: CHOLMOD's supernodal Cholesky (through CVXOPT) for
            symmetric positive definite ``K``, the symbolic analysis done once here and
            reused by every solve (the fastest for 2-D problems of thousands of DOFs);
            ``"banded"``: LAPACK banded Cholesky in the given DOF order, for SPD ``K``
            on a structured mesh whose numbering keeps the bandwidth small;
            ``"cholesky"``: SuperLU with a symmetric ordering and no pivoting (SPD
            ``K``, any numbering); ``"lu"``: SuperLU with partial pivoting (any
            non-singular ``K``).
        points: DOF coordinates ``(n, d)`` (all DOFs, Dirichlet ones included) for
            ``"cholmod"``: the elimination order is then the geometric nested dissection
            of :func:`nested_dissection_order` (on structured meshes about 15 % faster
            than CHOLMOD's own AMD ordering); without them CHOLMOD orders by AMD.

    Example:
        >>> system = ScaledStiffness(form.coo_data(basis), dirichlet, values, solver="cholmod")
        >>> u = system.solve(c)                  # (n,)
        >>> U = system.solve_many(np.stack([c1, c2, c3]))   # (3, n)
    """

    def __init__(self, coo: Any, dirichlet: np.ndarray, values: np.ndarray, *, solver: str = "lu",
                 points: np.ndarray | None = None):
        if solver not in SOLVERS:
            raise OptionError(f"unknown solver {solver!r}: use one of {', '.join(map(repr, SOLVERS))}")
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
        elif solver == "cholmod":
            self._setup_cholmod(pattern, col_of, points)

        fd = free[rows] & ~free[cols] & (u_d[cols] != 0)
        self.R = sp.csr_matrix(
            (-data[fd] * u_d[cols[fd]], (index[rows[fd]], elem[fd])), shape=(nf, self.num_elements)
        )

    def _setup_cholmod(self, pattern: sp.csc_matrix, col_of: np.ndarray, points: np.ndarray | None) -> None:
        cvxopt, cholmod = _require_cholmod()
        nf = self.free.size
        lower = pattern.indices >= col_of  # CHOLMOD reads the lower triangle (uplo="L")
        self._A_lower = self.A[np.flatnonzero(lower)]
        values = cvxopt.matrix(np.ones(int(lower.sum())))
        self._cholmod_matrix = cvxopt.spmatrix(
            values, cvxopt.matrix(pattern.indices[lower].astype(np.int64)), cvxopt.matrix(col_of[lower].astype(np.int64)),
            (nf, nf),
        )  # fmt: skip
        if not np.array_equal(np.asarray(self._cholmod_matrix.I).ravel(), pattern.indices[lower]):  # pragma: no cover
            raise AssertionError("CVXOPT reordered the CSC pattern")
        options = {"supernodal": 2, "postorder": True}
        if points is not None:
            points = np.asarray(points, dtype=np.float64)
            if points.ndim != 2 or points.shape[0] != self.n:
                raise ProblemError(f"points must have shape (n, d) with n = {self.n} DOFs, got {points.shape}")
            perm = nested_dissection_order(pattern.indptr, pattern.indices, points=points[self.free])
            self.ordering = "nested dissection (coordinates)"
        else:
            perm = None
            self.ordering = "AMD"
        saved = dict(cholmod.options)
        try:
            cholmod.options.clear()
            cholmod.options.update(options)
            if perm is None:
                self._cholmod_factor = cholmod.symbolic(self._cholmod_matrix, uplo="L")
            else:
                self._cholmod_factor = cholmod.symbolic(self._cholmod_matrix, p=cvxopt.matrix(perm.astype(np.int64)), uplo="L")
        finally:
            cholmod.options.clear()
            cholmod.options.update(saved)
        self._cholmod_options = options

    def matrix(self, coefficient: np.ndarray) -> sp.csc_matrix:
        r"""``K_FF(c)`` as a CSC matrix."""
        nf = self.free.size
        return sp.csc_matrix((self.A @ coefficient, self.indices, self.indptr), shape=(nf, nf))

    def solve(self, coefficient: np.ndarray) -> np.ndarray:
        r"""The full solution vector ``(n,)`` (Dirichlet values included) for one coefficient ``(num_elements,)``."""
        coefficient = np.asarray(coefficient, dtype=np.float64)
        if coefficient.shape != (self.num_elements,):
            raise ProblemError(f"coefficient must have shape ({self.num_elements},), got {coefficient.shape}")
        return self.solve_many(coefficient[None])[0]

    def solve_many(self, coefficients: np.ndarray) -> np.ndarray:
        r"""Full solution vectors ``(B, n)`` for a batch of coefficients ``(B, num_elements)``.

        The matrix values and right-hand sides of the whole batch are assembled by one
        sparse matrix product each; then one factorisation and solve per draw (for
        ``"cholmod"`` numeric only, the symbolic analysis is reused).

        Raises:
            ProblemError: When the shape is wrong, or when ``K(c)`` of a draw is not
                positive definite for a Cholesky solver (the message names the draw).
        """
        coefficients = np.asarray(coefficients, dtype=np.float64)
        if coefficients.ndim != 2 or coefficients.shape[1] != self.num_elements:
            raise ProblemError(f"coefficients must have shape (B, {self.num_elements}), got {coefficients.shape}")
        batch = coefficients.shape[0]
        rhs = np.ascontiguousarray(np.asarray(self.R @ coefficients.T).T)  # (B, nf)
        nf = self.free.size
        out = np.tile(self.u_dirichlet, (batch, 1))
        if batch == 0:
            return out
        if self.solver == "banded":
            bands = np.ascontiguousarray(np.asarray(self._A_upper @ coefficients.T).T)
            with single_threaded_blas():
                for b in range(batch):
                    ab = np.zeros((self.bandwidth + 1) * nf)
                    ab[self._band_pos] = bands[b]
                    try:
                        out[b, self.free] = scipy.linalg.solveh_banded(
                            ab.reshape(self.bandwidth + 1, nf), rhs[b], overwrite_ab=True, check_finite=False
                        )
                    except np.linalg.LinAlgError as error:
                        raise ProblemError(f"draw {b}: the stiffness matrix is not positive definite ({error})") from error
        elif self.solver == "cholmod":
            _, cholmod = _require_cholmod()
            import cvxopt

            values = np.ascontiguousarray(np.asarray(self._A_lower @ coefficients.T).T)
            saved = dict(cholmod.options)
            try:
                cholmod.options.clear()
                cholmod.options.update(self._cholmod_options)
                with single_threaded_blas():
                    for b in range(batch):
                        self._cholmod_matrix.V = cvxopt.matrix(values[b])
                        try:
                            cholmod.numeric(self._cholmod_matrix, self._cholmod_factor)
                        except ArithmeticError as error:
                            raise ProblemError(f"draw {b}: the stiffness matrix is not positive definite") from error
                        x = cvxopt.matrix(rhs[b])
                        cholmod.solve(self._cholmod_factor, x)
                        out[b, self.free] = np.asarray(x).ravel()
            finally:
                cholmod.options.clear()
                cholmod.options.update(saved)
        else:
            for b in range(batch):
                K = self.matrix(coefficients[b])
                if self.solver == "cholesky":
                    lu = spla.splu(K, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
                else:
                    lu = spla.splu(K)
                out[b, self.free] = lu.solve(rhs[b])
        return out
