r"""The dual-layer phantom: prior, axisymmetric finite elements, Newmark integrator, model."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

pytest.importorskip("skfem")

import bayesinv  # noqa: E402
from bayesinv.errors import ProblemError  # noqa: E402
from bayesinv.models import dual_layer_phantom as dlp  # noqa: E402


def _zeros(params):
    return torch.zeros(*params.shape[:-1], 10, dlp.GRID, dlp.GRID)


@pytest.fixture(scope="module")
def small():
    return dlp.ElastodynamicsSolver(grid=8, cells_per_pixel=0.5, dt=0.01)  # 4 x 4 window cells, 110 steps


def test_prior_and_model_error_respect_table_9():
    prob = dlp.DualLayerPhantom(simulator=_zeros)
    with pyro.plate("draws", 500), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trace = pyro.poutine.trace(prob.model).get_trace()
    for name, (lo, hi) in {**dlp.PRIOR, **dlp.MODEL_ERROR}.items():
        v = trace.nodes[name]["value"].numpy()
        assert v.shape == (500,) and v.min() >= lo and v.max() <= hi, name
        assert abs(v.std() - (hi - lo) / math.sqrt(12)) < 0.1 * (hi - lo) / math.sqrt(12), name  # uniform: sd within 10 %
    E, mu = trace.nodes["E"]["value"].numpy(), trace.nodes["mu"]["value"].numpy()
    np.testing.assert_allclose(mu, E / (2 * (1 + dlp.POISSON)), rtol=1e-6)
    z = dlp.pixel_heights()
    for b in range(20):
        top, bottom, h = (trace.nodes[k]["value"][b].item() for k in dlp.PARAMETERS)
        expected = np.where(z > h, top, bottom)[:, None] * np.ones(dlp.GRID)
        np.testing.assert_allclose(E[b], expected, rtol=1e-6)


def test_element_moduli_keep_each_layers_area(small):
    mesh = small.mesh
    p = mesh.p[:, mesh.t]
    area = 0.5 * np.abs((p[0, 1] - p[0, 0]) * (p[1, 2] - p[1, 0]) - (p[0, 2] - p[0, 0]) * (p[1, 1] - p[1, 0]))
    for h in (2.0, 2.37, 3.6):
        e = small.element_moduli(np.array([3.0, 11.0, h]))
        width = mesh.p[0].max()
        want = 3.0 * width * (dlp.WINDOW - h) + 11.0 * width * h
        assert (area * e).sum() == pytest.approx(want, rel=1e-12)
        assert e.min() >= 3.0 - 1e-12 and e.max() <= 11.0 + 1e-12


def test_stiffness_energy_of_an_exact_axisymmetric_field(small):
    # u_r = a r z, u_z = 0 (zero on the axis and the bottom: admissible), E = 1 homogeneous: P2 holds it
    # exactly and the strain energy is analytic: eps_rr = eps_tt = a z, eps_rz = a r / 2
    a = 0.3
    basis = small.basis
    x = basis.doflocs
    u = np.zeros(basis.N)
    rdofs = basis.split_indices()[0]
    u[rdofs] = a * x[0, rdofs] * x[1, rdofs]
    uf = u[small.free]
    assert np.abs(np.delete(u, small.free)).max() == 0.0
    K = small.stiffness(np.array([1.0, 1.0, 3.0]))
    nu = dlp.POISSON
    mu, lam = 1 / (2 * (1 + nu)), nu / ((1 + nu) * (1 - 2 * nu))
    R, H = small.mesh.p[0].max(), dlp.WINDOW
    energy = mu * a**2 * (2 * H**3 / 3 * R**2 / 2 + R**4 / 4 * H / 2) + 2 * lam * a**2 * H**3 / 3 * R**2 / 2
    assert 0.5 * uf @ (K @ uf) == pytest.approx(energy, rel=1e-10)


def test_per_element_assembly_matches_a_direct_scikit_fem_assembly(small):
    from skfem import BilinearForm

    params = np.array([4.0, 17.0, 2.9])
    e_el = small.element_moduli(params)
    basis = small.basis
    nu = dlp.POISSON
    C = np.array([[1 - nu, nu, nu, 0], [nu, 1 - nu, nu, 0], [nu, nu, 1 - nu, 0], [0, 0, 0, (1 - 2 * nu) / 2]]) / ((1 + nu) * (1 - 2 * nu))

    @BilinearForm
    def stiffness(u, v, w):  # eps^T C eps r with engineering shear strain
        r = w.x[0]
        eu = [u.grad[0][0], u.grad[1][1], u[0] / r, u.grad[0][1] + u.grad[1][0]]
        ev = [v.grad[0][0], v.grad[1][1], v[0] / r, v.grad[0][1] + v.grad[1][0]]
        return w["E"] * sum(C[i, j] * eu[i] * ev[j] for i in range(4) for j in range(4)) * r

    E_q = np.repeat(e_el[:, None], basis.X.shape[-1], axis=1)
    K = stiffness.assemble(basis, E=E_q).tocsr()[small.free][:, small.free]
    got = small.stiffness(params)
    assert abs(got - K).max() <= 1e-10 * abs(K).max()


def test_newmark_conserves_energy_after_the_push(small):
    params = np.array([2.0, 9.0, 2.5])
    K, M = small.stiffness(params), small.mass
    energies = {}

    def record(step, u, v):
        energies[step] = 0.5 * v @ (M @ v) + 0.5 * u @ (K @ u)

    small.integrate(params, record=record)
    after = np.array([energies[s] for s in sorted(energies) if s > small._push_steps])
    assert after.max() > 0 and (after.max() - after.min()) <= 1e-9 * after.max()  # average acceleration: exact, up to round-off
    during = np.array([energies[s] for s in sorted(energies) if s < small._push_steps])
    assert during.max() - during.min() > 0.1 * during.max()  # not conserved while the force does work


def test_axis_condition_and_snapshot_shapes(small):
    params = np.array([5.0, 12.0, 3.0])
    U = small.full(small.integrate(params))
    assert U.shape == (10, small.num_dofs)
    assert small.axis_dofs.size > 0 and np.isin(small.axis_dofs, small.free).sum() == 0
    assert np.abs(U[:, small.axis_dofs]).max() == 0.0  # u_r = 0 on r = 0
    zdofs = small.basis.split_indices()[1]
    on_axis = np.isclose(small.basis.doflocs[0, zdofs], 0.0)
    assert np.abs(U[:, zdofs[on_axis]]).max() > 0  # u_z is free on the axis
    y = small.solve(params)
    assert y.shape == (10, 8, 8) and np.isfinite(y).all()
    # the push is upward (eq. 24 with F < 0): at its end the axis near the focus moves up
    assert y[0, :, 0].max() > 0 and y[0, :, 0].max() > abs(y[0, :, 0].min())


def test_blur_keeps_constants_and_has_the_stated_width():
    flat = torch.full((2, 10, 64, 64), 3.0, dtype=torch.float64)
    torch.testing.assert_close(dlp.blur(flat), flat)
    delta = torch.zeros(1, 64, 64, dtype=torch.float64)
    delta[0, 32, 32] = 1.0
    line = dlp.blur(delta)[0, 32].numpy()
    half = line.max() / 2
    above = np.flatnonzero(line >= half)
    assert above.size in (5, 6, 7)  # full width at half maximum of 6 pixels, on the pixel lattice


def test_model_traces_and_refuses_bad_inputs(small):
    prob = dlp.DualLayerPhantom(simulator=_zeros)
    problem = bayesinv.trace_problem(prob.model)
    assert problem.observed == ("y",)
    assert set(dlp.PRIOR) | set(dlp.MODEL_ERROR) <= set(problem.latent)
    assert {"E", "mu"} <= set(problem.deterministic)
    params, E, y = prob.draw(seed=1)
    assert params.shape == (3,) and E.shape == (64, 64) and y.shape == (10, 64, 64)
    assert y.std() == pytest.approx(dlp.NOISE_SD, rel=0.05)  # pure noise here: 40,960 values
    assert "scale_top" not in bayesinv.trace_problem(dlp.DualLayerPhantom(simulator=_zeros, model_error=False).model).latent
    with pytest.raises(ProblemError, match="3 parameters"):
        small.solve(np.zeros(5))
    with pytest.raises(ProblemError, match="positive"):
        small.solve(np.array([-1.0, 2.0, 3.0]))
    with pytest.raises(ProblemError, match="dt"):
        dlp.ElastodynamicsSolver(grid=8, dt=0.03)
    with pytest.raises(ProblemError, match="cells_per_pixel"):
        dlp.ElastodynamicsSolver(grid=8, cells_per_pixel=0.3)
    with pytest.raises(ProblemError, match="noise_sd"):
        dlp.DualLayerPhantom(noise_sd=0)
    with pytest.raises(ProblemError, match="workers"):
        dlp.DualLayerPhantom(workers=0)
    with pytest.raises(ProblemError, match="n must"):
        prob.draw(n=0)
    with pytest.raises(ProblemError, match=r"\(\.\.\., 3\)"):
        dlp.solve_snapshots(np.zeros((2, 4)))


@pytest.mark.slow
def test_model_simulates_the_snapshots():
    prob = dlp.DualLayerPhantom()
    params, E, y = prob.draw(seed=1)
    assert y.shape == (10, 64, 64) and np.isfinite(y).all()
    assert np.abs(y).max() > 100 * dlp.NOISE_SD  # the waves stand well above the noise


@pytest.mark.slow
@pytest.mark.parametrize("modulus", [4.0, 9.0])
def test_homogeneous_shear_wave_travels_at_the_shear_speed(modulus):
    # the peak of u_z at the focal depth moves out from the axis at c_s = sqrt(E / (2 (1 + nu) rho))
    solver = dlp.ElastodynamicsSolver()
    u = solver.solve(np.array([modulus, modulus, 3.0]))
    row = np.argmin(np.abs(dlp.pixel_heights() - dlp.S2_BAR))
    r = (np.arange(dlp.GRID) + 0.5) * dlp.WINDOW / dlp.GRID
    peaks = r[np.argmax(u[:, row], axis=1)]
    away = peaks > 0.3  # once the wave has left the push region
    assert away.sum() >= 5
    speed = np.polyfit(np.asarray(dlp.SNAPSHOTS)[away], peaks[away], 1)[0]
    c_s = math.sqrt(modulus / (2 * (1 + dlp.POISSON) * dlp.RHO))
    assert speed == pytest.approx(c_s, rel=0.1)  # seen: +5 % (pixel-quantised peaks, cylindrical spreading)


def test_simulated_prior_is_the_marginal_of_prior_and_modelling_error():
    # exp(simulated_log_prior) integrates to 1 over its support (midpoint rule), and its 1-D
    # marginals match a histogram of s·E and h + d drawn from Table 9 and the modelling error
    grids = [np.linspace(lo, hi, n + 1) for (lo, hi), n in zip(dlp.SIMULATED_SUPPORT, (120, 120, 60))]
    mids = [0.5 * (g[1:] + g[:-1]) for g in grids]
    cell = np.prod([np.diff(g)[0] for g in grids])
    pts = np.stack(np.meshgrid(*mids, indexing="ij"), -1).reshape(-1, 3)
    density = np.exp(dlp.simulated_log_prior(pts)).reshape(120, 120, 60)
    assert abs(density.sum() * cell - 1.0) < 1e-2
    rng = np.random.default_rng(0)
    E = rng.uniform(1, 25, 400_000) * rng.uniform(0.8, 1.2, 400_000)
    hist, _ = np.histogram(E, bins=grids[0], density=True)
    marginal = density.sum((1, 2)) * np.diff(grids[1])[0] * np.diff(grids[2])[0]
    assert np.max(np.abs(hist - marginal)) < 4e-3  # histogram noise at 400,000 draws: about 1e-3
    assert np.isneginf(dlp.simulated_log_prior(np.array([[0.5, 5.0, 3.0], [5.0, 5.0, 3.9]]))).all()
    assert np.isfinite(dlp.simulated_log_prior(np.array([[5.0, 5.0, 3.0]]), model_error=False)).all()


def test_reference_matches_brute_force_importance_sampling_on_a_linear_forward_model():
    # a linear forward model u(θ') = Σ θ'_k P_k on 2 × 6 × 6 pixels, noise set so that θ' is known to
    # about 1.5 kPa / 0.15 mm (the modelling error's size): the reference's posterior means and sds of
    # the labelled parameters and of the modelling errors against importance sampling from the joint
    # prior (1,600,000 draws, ESS about 8,000). Tolerance: 4 Monte Carlo standard errors of the two
    # (about 0.12 kPa for the moduli: drawing E | E' uniform instead of ∝ 1/E moves the means by 0.15).
    rng = np.random.default_rng(1)
    patterns = rng.normal(size=(3, 2, 6, 6))
    patterns[2] *= 10.0
    blurred = dlp.blur(torch.as_tensor(patterns)).numpy().reshape(3, -1)
    sd = 1.5 / np.sqrt(np.linalg.inv(blurred @ blurred.T)[0, 0])
    problem = dlp.DualLayerPhantom(noise_sd=float(sd), simulator=lambda p: None)
    truth = np.array([12.0, 6.0, 2.9]) * np.array([1.1, 0.9, 1.0]) + np.array([0, 0, 0.1])
    y = (truth @ blurred).reshape(2, 6, 6) + sd * rng.normal(size=(2, 6, 6))
    ref = problem.reference(y, num_proposals=8000, num_samples=20000, search=16, seed=0,
                            forward=lambda theta: np.tensordot(theta, patterns, 1))  # fmt: skip
    assert ref.attrs["ess"] > 2000 and abs(ref.attrs["misfit"] - 1.0) < 0.5
    n = 1_600_000
    labelled = np.stack([rng.uniform(1, 25, n), rng.uniform(1, 25, n), rng.uniform(2.0, 3.6, n)], -1)
    err = np.stack([rng.uniform(0.8, 1.2, n), rng.uniform(0.8, 1.2, n), rng.uniform(-0.2, 0.2, n)], -1)
    sims = np.stack([labelled[:, 0] * err[:, 0], labelled[:, 1] * err[:, 1], labelled[:, 2] + err[:, 2]], -1)
    log_w = np.concatenate([-0.5 * np.sum(((part @ blurred) - y.ravel()) ** 2, 1) / sd**2 for part in np.array_split(sims, 8)])
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    ess = 1.0 / np.sum(w**2)
    assert ess > 4000
    for j, name in enumerate(dlp.PARAMETERS + ("scale_top", "scale_bottom", "shift")):
        values = (labelled if j < 3 else err)[:, j % 3]
        mean = np.sum(w * values)
        spread = np.sqrt(np.sum(w * (values - mean) ** 2))
        draws = ref.posterior[name].values.ravel()
        se = spread * np.sqrt(1.0 / ess + 1.0 / ref.attrs["ess"])
        assert abs(draws.mean() - mean) < 4 * se, (name, draws.mean(), mean, se)
        assert abs(draws.std() / spread - 1.0) < 0.1, (name, draws.std(), spread)
    params = np.stack([ref.posterior[k].values.ravel() for k in dlp.PARAMETERS], -1)
    np.testing.assert_allclose(ref.posterior["E"].values.reshape(-1, 6, 6), dlp.youngs_field(torch.as_tensor(params, dtype=torch.float32), 6).numpy(), rtol=1e-6)


def test_reference_refuses_bad_arguments():
    problem = dlp.DualLayerPhantom(simulator=lambda p: None)
    y = np.zeros((10, dlp.GRID, dlp.GRID))
    with pytest.raises(ProblemError, match=r"y must have shape \(10, 64, 64\)"):
        problem.reference(np.zeros((10, 32, 32)))
    with pytest.raises(ProblemError, match="num_proposals must be an integer >= 2"):
        problem.reference(y, num_proposals=1)
    with pytest.raises(ProblemError, match="restarts .3. cannot exceed the search points .2."):
        problem.reference(y, search=2, restarts=3)
    with pytest.raises(ProblemError, match="inflate must be a number >= 1"):
        problem.reference(y, inflate=0.5)
    with pytest.raises(ProblemError, match="non-finite"):
        problem.reference(np.full((10, dlp.GRID, dlp.GRID), np.nan))


@pytest.mark.slow
def test_reference_on_the_finite_element_model_fits_to_the_noise_level():
    # the first benchmark observation: χ² per pixel at the fit ≈ 1 (the noise), a usable ESS, and the
    # truth inside the central 99 % of each labelled parameter's posterior
    problem = dlp.DualLayerPhantom()
    params, _, y = problem.draw(seed=1000)
    ref = problem.reference(y, num_proposals=60, num_samples=1000, search=16, restarts=1, seed=0)
    assert abs(ref.attrs["misfit"] - 1.0) < 0.02 and ref.attrs["ess"] > 20
    for j, name in enumerate(dlp.PARAMETERS):
        lo, hi = np.quantile(ref.posterior[name].values, [0.005, 0.995])
        assert lo < params[j] < hi, (name, lo, params[j], hi)
