r"""The fast finite-element path: CHOLMOD with one symbolic analysis, batched assembly.

Every check compares against the solver the models used before (LAPACK banded Cholesky
for elastography, SuperLU for a general mesh) at 1e-10 relative (max |Δu| / max |u|);
the observed agreement is about 1e-13.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bayesinv.errors import OptionError, ProblemError
from bayesinv.models import elastography as el
from bayesinv.models import fem

RTOL = 1e-10


def _relative(u: np.ndarray, ref: np.ndarray) -> float:
    axes = tuple(range(1, ref.ndim))
    return float((np.abs(u - ref).max(axes) / np.abs(ref).max(axes)).max())


@pytest.fixture(scope="module")
def elasticity_solvers():
    return el.ElasticitySolver(solver="banded"), el.ElasticitySolver(solver="cholmod")


def _random_fields(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = torch.as_tensor(rng.uniform(*el.CENTER_RANGE, size=(12, 2)), dtype=torch.float32)
    inclusions = el.inclusion_field(centers).numpy().astype(np.float64)
    rough = np.exp(rng.uniform(np.log(0.05), np.log(5.0), size=(8, el.GRID, el.GRID)))  # 100x contrast per pixel
    x = (np.arange(el.GRID) + 0.5) / el.GRID
    smooth = 0.1 + 2.0 * np.exp(-((x[None, :, None] - rng.uniform(size=(4, 1, 1))) ** 2) / 0.05) * np.ones((1, 1, el.GRID))
    return np.concatenate([inclusions, rough, smooth])


def test_cholmod_elasticity_matches_the_banded_solver(elasticity_solvers):
    banded, cholmod = elasticity_solvers
    mu = _random_fields(0)  # 24 fields: prior inclusions, rough log-uniform fields, smooth fields
    ref = np.stack([banded.vertical(m) for m in mu])  # the path used before, one draw at a time
    fast = cholmod.vertical_many(mu)
    assert _relative(fast, ref) < RTOL
    nodal = cholmod.nodal_many(mu[:3])
    assert _relative(nodal, np.stack([banded.nodal(m) for m in mu[:3]])) < RTOL


def test_solve_displacement_chunks_give_the_per_draw_solution(elasticity_solvers):
    banded, _ = elasticity_solvers
    mu = _random_fields(1)[:7].astype(np.float32)
    out = el.solve_displacement(mu, chunk_size=3)  # chunks 3 + 3 + 1
    assert out.shape == mu.shape
    assert _relative(out, np.stack([banded.vertical(m) for m in mu])) < RTOL
    assert el.solve_displacement(mu[:0]).shape == (0, el.GRID, el.GRID)


def test_cholmod_is_the_default_when_cvxopt_is_installed():
    assert fem.cholmod_available()
    solver = el._solver(1)
    assert solver.solver == "cholmod" and solver.system.ordering.startswith("nested dissection")


def _poisson_system(solver: str, points: bool | np.ndarray = False):
    from skfem import Basis, BilinearForm, ElementTriP2, MeshTri
    from skfem.helpers import dot, grad

    mesh = MeshTri.init_circle(3)  # unstructured
    basis = Basis(mesh, ElementTriP2())

    @BilinearForm
    def laplace(u, v, w):
        return dot(grad(u), grad(v))

    boundary = basis.get_dofs().all()
    values = np.sin(3 * basis.doflocs[0, boundary]) + 1.0
    xy = points if isinstance(points, np.ndarray) else (basis.doflocs.T if points else None)
    return fem.ScaledStiffness(laplace.coo_data(basis), boundary, values, solver=solver, points=xy), mesh.nelements


@pytest.mark.parametrize("points", [False, True])
def test_cholmod_general_mesh_matches_superlu(points):
    lu, nelem = _poisson_system("lu")
    fast, _ = _poisson_system("cholmod", points=points)
    assert fast.ordering == ("nested dissection (coordinates)" if points else "AMD")
    c = np.exp(np.random.default_rng(2).normal(size=(6, nelem)))
    ref = np.stack([lu.solve(ci) for ci in c])
    assert _relative(fast.solve_many(c), ref) < RTOL
    assert _relative(fast.solve(c[0])[None], ref[:1]) < RTOL
    assert _relative(_poisson_system("cholesky")[0].solve_many(c), ref) < RTOL


@pytest.mark.parametrize("use_points", [True, False])
def test_nested_dissection_separators_separate(use_points):
    n = 20
    grid = sp.kron(sp.eye(n), sp.diags([1.0, 1.0, 1.0], [-1, 0, 1], (n, n))) + sp.kron(sp.diags([1.0, 1.0], [-1, 1], (n, n)), sp.eye(n))
    grid = sp.csr_matrix(grid)
    points = np.stack(np.divmod(np.arange(n * n), n), axis=1).astype(float) if use_points else None
    low, sep, high = fem._bisect(grid, np.arange(n * n), points)
    assert low.size and sep.size and high.size
    assert grid[low][:, high].nnz == 0  # no edge across the separator
    assert np.unique(np.concatenate([low, sep, high])).size == n * n
    perm = fem.nested_dissection_order(grid.indptr, grid.indices, points=points, leaf_size=8)
    assert np.array_equal(np.sort(perm), np.arange(n * n))
    if use_points:
        assert sep.size == n  # a straight grid line


def test_bad_inputs_raise_clear_errors(elasticity_solvers):
    _, cholmod = elasticity_solvers
    with pytest.raises(OptionError, match="unknown solver 'superlu'"):
        _poisson_system("superlu")
    with pytest.raises(OptionError, match="unknown solver 'pardiso'"):
        el.ElasticitySolver(solver="pardiso")
    with pytest.raises(ProblemError, match=r"coefficients must have shape \(B, 3136\)"):
        cholmod.system.solve_many(np.ones((2, 5)))
    with pytest.raises(ProblemError, match="draw 1: the stiffness matrix is not positive definite"):
        c = np.ones((2, cholmod.system.num_elements))
        c[1] = -1.0
        cholmod.system.solve_many(c)
    with pytest.raises(ProblemError, match="points must have shape"):
        _poisson_system("cholmod", points=np.ones((3, 2)))
    with pytest.raises(ValueError, match="positive and finite"):
        cholmod.vertical_many(np.zeros((1, el.GRID, el.GRID)))
