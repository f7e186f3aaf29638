r"""The elastography forward model in dolfinx, run out of process by bayesinv.python_script.

    /usr/bin/python3 elastography_dolfinx.py INPUT.npz OUTPUT.npy

INPUT.npz holds ``arg0``: shear modulus (n, 56, 56) in kPa, ``mu[i, j]`` at the pixel
centre x = (j + 1/2)/56, y = (i + 1/2)/56 cm (row 0 at the bottom). OUTPUT.npy gets the
vertical displacement (n, 56, 56) in cm at the same pixel centres.

Same problem and discretisation as ``bayesinv.models.elastography`` (scikit-fem): the
1 x 1 cm square, plane stress, incompressible (sigma = 2 mu eps + 2 mu tr(eps) I),
bottom edge u_y = 0, bottom-left corner u_x = 0, top edge u_y = -0.01 cm, sides
traction-free; linear triangles on a "crossed" mesh with ELASTO_CELLS_PER_PIXEL
(environment variable, default 1) cells per pixel side; modulus constant per pixel.

Written for the Debian package python3-dolfinx-real (dolfinx 0.5) and kept compatible
with later dolfinx versions where their APIs differ. Needs only dolfinx, ufl, petsc4py,
mpi4py and NumPy; it does not import bayesinv.
"""

import os
import sys

import numpy as np
import ufl
from dolfinx import fem, mesh as dmesh
from dolfinx.fem.petsc import LinearProblem
from mpi4py import MPI
from petsc4py import PETSc

GRID = 56
TOP_DISPLACEMENT = -0.01


def _vector_space(domain):
    if hasattr(fem, "VectorFunctionSpace"):  # dolfinx <= 0.7
        return fem.VectorFunctionSpace(domain, ("CG", 1))
    return fem.functionspace(domain, ("Lagrange", 1, (domain.geometry.dim,)))


def _dg0_space(domain):
    if hasattr(fem, "FunctionSpace") and not hasattr(fem, "functionspace"):
        return fem.FunctionSpace(domain, ("DG", 0))
    return fem.functionspace(domain, ("DG", 0))


def _cell_dofs(space, num_cells):
    dofs = space.dofmap.list
    array = dofs.array if hasattr(dofs, "array") else np.asarray(dofs)
    return np.asarray(array).reshape(num_cells, -1)[:, 0]


def _collapse(sub):
    out = sub.collapse()
    return out if isinstance(out, tuple) else (out, None)


def main(inputs, output):
    mu_all = np.asarray(np.load(inputs)["arg0"], dtype=np.float64)
    k = int(os.environ.get("ELASTO_CELLS_PER_PIXEL", "1"))
    n = GRID * k
    domain = dmesh.create_rectangle(
        MPI.COMM_SELF, [np.array([0.0, 0.0]), np.array([1.0, 1.0])], [n, n],
        dmesh.CellType.triangle, diagonal=dmesh.DiagonalType.crossed,
    )
    tdim = domain.topology.dim
    domain.topology.create_connectivity(tdim - 1, tdim)
    domain.topology.create_connectivity(0, tdim)
    V = _vector_space(domain)
    Q = _dg0_space(domain)

    # modulus of each cell: the pixel its midpoint lies in
    num_cells = domain.topology.index_map(tdim).size_local
    mid = dmesh.compute_midpoints(domain, tdim, np.arange(num_cells, dtype=np.int32))
    col = np.minimum((mid[:, 0] * GRID).astype(np.int64), GRID - 1)
    row = np.minimum((mid[:, 1] * GRID).astype(np.int64), GRID - 1)
    pixel = row * GRID + col
    qdofs = _cell_dofs(Q, num_cells)
    mu = fem.Function(Q)

    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    eps = lambda w: ufl.sym(ufl.grad(w))  # noqa: E731
    a = (2 * mu * ufl.inner(eps(u), eps(v)) + 2 * mu * ufl.tr(eps(u)) * ufl.tr(eps(v))) * ufl.dx
    zero = fem.Constant(domain, PETSc.ScalarType((0.0, 0.0)))
    L = ufl.inner(zero, v) * ufl.dx

    bottom = dmesh.locate_entities_boundary(domain, tdim - 1, lambda x: np.isclose(x[1], 0.0))
    top = dmesh.locate_entities_boundary(domain, tdim - 1, lambda x: np.isclose(x[1], 1.0))
    corner = dmesh.locate_entities_boundary(domain, 0, lambda x: np.isclose(x[0], 0.0) & np.isclose(x[1], 0.0))
    bcs = [
        fem.dirichletbc(PETSc.ScalarType(0.0), fem.locate_dofs_topological(V.sub(1), tdim - 1, bottom), V.sub(1)),
        fem.dirichletbc(PETSc.ScalarType(TOP_DISPLACEMENT), fem.locate_dofs_topological(V.sub(1), tdim - 1, top), V.sub(1)),
        fem.dirichletbc(PETSc.ScalarType(0.0), fem.locate_dofs_topological(V.sub(0), 0, corner), V.sub(0)),
    ]
    problem = LinearProblem(a, L, bcs=bcs, petsc_options={"ksp_type": "preonly", "pc_type": "lu"})

    # u_y at the pixel centres, which are vertices of the crossed mesh
    V1, parent = _collapse(V.sub(1))
    coords = V1.tabulate_dof_coordinates()[:, :2]
    key = {(round(x * n * 2), round(y * n * 2)): i for i, (x, y) in enumerate(coords)}
    pc = (np.arange(GRID) + 0.5) / GRID
    want = [key[(round(x * n * 2), round(y * n * 2))] for y in pc for x in pc]
    parent = np.asarray(parent) if parent is not None else None

    out = np.empty((mu_all.shape[0], GRID * GRID))
    for draw, field in enumerate(mu_all.reshape(-1, GRID * GRID)):
        mu.x.array[qdofs] = field[pixel]
        uh = problem.solve()
        values = uh.x.array
        uy = values[parent] if parent is not None else uh.sub(1).collapse().x.array
        out[draw] = uy[want]
    np.save(output, out.reshape(mu_all.shape), allow_pickle=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
