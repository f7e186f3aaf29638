r"""The optic-nerve-head inverse Helmholtz problem: prior, geometry, finite elements, model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skfem")

import bayesinv  # noqa: E402
from bayesinv.errors import ProblemError  # noqa: E402
from bayesinv.models import optic_nerve_head as onh  # noqa: E402


def _params(n: int = 200, seed: int = 0) -> np.ndarray:
    return onh.sample_parameters(n, seed)


def test_prior_draws_respect_tables_6_and_7():
    params = _params(400)
    for i, name in enumerate(onh.PARAMETERS):
        if name in onh.GEOMETRY:
            lo, hi = onh.GEOMETRY[name]
        else:
            mean, sd = onh.MODULI[name]
            lo, hi = max(0.0, mean - 2 * sd), mean + 2 * sd
        assert params[:, i].min() >= lo and params[:, i].max() <= hi, name
        # the draws fill their range (uniform / truncated normal): not stuck at one value
        assert params[:, i].std() > 0.1 * (hi - lo) / math.sqrt(12), name
    mean_nerve = params[:, onh.PARAMETERS.index("mu_nerve")].mean()
    assert abs(mean_nerve - 9.8) < 0.5  # symmetric truncation keeps the mean (400 draws: s.e. ~0.14)


def test_tissue_layers_along_a_line_away_from_the_canal():
    p = dict(zip(onh.PARAMETERS, _params(1, seed=5)[0]))
    p.update(rotation=0.0, globe_radius=12.0, retina_thickness=0.3, sclera_thickness=0.8, lamina_radius=0.8)
    vec = torch.tensor([p[k] for k in onh.PARAMETERS], dtype=torch.float64)
    top = onh.WINDOW - onh.SURFACE_DEPTH
    x = 0.2  # 1.55 mm from the axis: outside the canal and the nerve
    ys = torch.linspace(top + 0.3, top - 1.3, 3201, dtype=torch.float64)
    labels = onh.regions(torch.stack([torch.full_like(ys, x), ys], -1), vec).numpy()
    rho = onh.WINDOW - x
    surface = top + 12.0 - math.sqrt(12.0**2 - rho**2)  # the globe's inner surface above the axis point
    depth = surface - ys.numpy()  # along the vertical; the globe's radius is 12 mm, so this is close to radial
    names = np.array(onh.REGIONS)[labels]
    assert set(names[depth < -0.01]) == {"background"}
    assert set(names[(depth > 0.01) & (depth < 0.29)]) == {"retina"}
    assert set(names[(depth > 0.31) & (depth < 1.09)]) == {"sclera"}
    assert set(names[depth > 1.11]) <= {"background", "pia", "nerve"}


def test_lamina_only_inside_the_canal_with_its_thickness():
    params = torch.as_tensor(_params(100, seed=3), dtype=torch.float64)
    pts = onh.pixel_centres()
    h = onh.WINDOW / onh.GRID
    for unrotated in (False, True):
        if unrotated:
            params[:, onh.PARAMETERS.index("rotation")] = 0.0
        labels = onh.regions(pts, params)
        for p, lab in zip(params, labels):
            g = dict(zip(onh.PARAMETERS, p.tolist()))
            lamina = lab == onh.REGIONS.index("lamina")
            assert lamina.any()
            # undo the rotation about the pivot: every lamina pixel is within its radius of the axis
            c, s = math.cos(g["rotation"]), math.sin(g["rotation"])
            dx, dy = pts[lamina, 0] - onh.WINDOW, pts[lamina, 1] - (onh.WINDOW - onh.SURFACE_DEPTH)
            assert (c * dx + s * dy).abs().max() < g["lamina_radius"] + 1e-9
            if unrotated:  # the band is r x t in the half cross-section, give or take its boundary pixels
                area = lamina.sum().item() * h**2
                assert abs(area - g["lamina_radius"] * g["lamina_thickness"]) < (g["lamina_radius"] + g["lamina_thickness"]) * h


def test_field_site_is_the_modulus_of_the_labelled_tissue():
    params = torch.as_tensor(_params(3, seed=7))
    mu = onh.modulus_field(params)
    labels = onh.regions(onh.pixel_centres(), params).reshape(mu.shape)
    for b in range(3):
        g = dict(zip(onh.PARAMETERS, params[b].tolist()))
        table = {0: onh.MU_BACKGROUND, 1: g["mu_retina"], 2: g["mu_sclera"], 3: g["mu_lamina"], 4: g["mu_nerve"], 5: g["mu_pia"]}
        expected = np.vectorize(table.get)(labels[b].numpy())
        np.testing.assert_allclose(mu[b].numpy(), expected, rtol=1e-6)  # float32 draws


def test_solver_matches_an_independent_scikit_fem_assembly():
    import scipy.sparse.linalg as spla
    from skfem import Basis, BilinearForm, ElementTriP2, condense
    from skfem.helpers import dot, grad

    solver = onh.HelmholtzSolver(grid=8)  # a coarse window: fast
    p = _params(1, seed=2)[0]
    got = solver.nodal(p)

    basis = Basis(solver.mesh, ElementTriP2())
    mu_e = solver.element_moduli(p)
    mu_q = np.repeat(mu_e[:, None], basis.X.shape[-1], axis=1)  # constant per triangle at the quadrature points

    @BilinearForm
    def stiffness(u, v, w):
        return w["mu"] * dot(grad(u), grad(v))

    @BilinearForm
    def mass(u, v, w):
        return u * v

    omega = 2 * math.pi * onh.FREQUENCY
    A = (complex(1, onh.ALPHA * omega) * 1e6 / omega**2) * stiffness.assemble(basis, mu=mu_q) - mass.assemble(basis)
    boundary = basis.get_dofs().all()
    x = np.zeros(basis.N, dtype=complex)
    x[basis.get_dofs(lambda q: np.isclose(q[0], onh.WINDOW)).all()] = onh.U_RIGHT
    want = x.copy()
    Ac, bc, xc, idx = condense(A.tocsr(), np.zeros(basis.N, dtype=complex), x=x, D=boundary)
    want[idx] = spla.spsolve(Ac.tocsc(), bc)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * onh.U_RIGHT)


def _zeros(params):
    return torch.zeros(*params.shape[:-1], 2, onh.GRID, onh.GRID)


def test_model_traces_and_refuses_bad_inputs():
    prob = onh.OpticNerveHead(simulator=_zeros)
    problem = bayesinv.trace_problem(prob.model)
    assert problem.observed == ("y",)
    assert set(onh.PARAMETERS) <= set(problem.latent) and "mu" in problem.deterministic
    params, mu, y = prob.draw(seed=1)
    assert params.shape == (13,) and mu.shape == (64, 64) and y.shape == (2, 64, 64)
    assert y.std() == pytest.approx(prob.sigma, rel=0.05)  # pure noise here: 8,192 values
    with pytest.raises(ProblemError, match="13 parameters"):
        onh.HelmholtzSolver(grid=8).solve(np.zeros(5))
    with pytest.raises(ProblemError, match="noise"):
        onh.OpticNerveHead(noise=-1)


@pytest.mark.slow
def test_model_simulates_the_wave_field():
    prob = onh.OpticNerveHead()
    params, mu, y = prob.draw(seed=1)
    u = onh.solve_wavefield(params[None])[0]
    assert np.isfinite(u).all() and np.abs(u).max() < 1.5 * onh.U_MAX
    assert (y - u).std() == pytest.approx(prob.sigma, rel=0.05)
