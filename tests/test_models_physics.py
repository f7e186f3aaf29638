r"""The physics models: advection-diffusion boundary flux and quasi-static elastography."""

import importlib.util
import subprocess
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import bayesinv
from bayesinv.models import advection_diffusion as ad
from bayesinv.models import elastography as el
from bayesinv.problem import ProblemError, trace_problem

# ----------------------------------------------------------------- advection-diffusion


@pytest.mark.parametrize("masked", [False, True])
def test_advection_sites_and_simulated_data(masked):
    problem = ad.make_problem(noise=0.02, masked=masked)
    traced = trace_problem(problem.model)
    expected = {"flux_raw": "latent", "flux": "deterministic", "concentration": "deterministic", "y": "observed"}
    if masked:
        expected["mask"] = "latent"
    assert {n: s.kind for n, s in traced.sites.items()} == expected
    assert all(s.shape == (30,) for s in traced.sites.values())
    ds = bayesinv.simulate(problem.model, 200, seed=0, progress=False)
    flux_raw, flux = ds["flux_raw"].values, ds["flux"].values
    np.testing.assert_array_equal(flux, np.maximum(flux_raw, 0))
    np.testing.assert_allclose(ds["concentration"].values, flux @ problem.forward.T, rtol=1e-4, atol=1e-4)
    y = ds["y"].values
    if masked:
        mask = ds["mask"].values
        assert set(np.unique(mask)) <= {0.0, 1.0} and 0.6 < mask.mean() < 0.8
        np.testing.assert_array_equal(y[mask == 0], -1.0)
        np.testing.assert_array_equal(ad.mask_from_y(y), mask)
    else:
        assert (y - ds["concentration"].values).std() == pytest.approx(0.02, rel=0.1)
    # the prior: mean 2, variance 1 (+ nugget), RBF correlation
    cov = ad.prior_covariance()
    assert np.allclose(np.diag(cov), 1.0 + 1e-4) and cov[0, 1] == pytest.approx(np.exp(-(0.47**2) / 8))


def test_forward_matrix_reproduces_a_direct_fem_solve():
    pytest.importorskip("skfem", reason="needs scikit-fem")
    flux = np.random.default_rng(0).uniform(0, 4, 30)
    setup = ad.fem_setup(h=0.1, degree=2)  # another mesh than the shipped matrix (h = 0.05)
    direct = setup["probes"] @ ad.solve_fields(setup, flux)[:, 0]
    shipped = ad.load_forward() @ flux
    assert np.abs(direct - shipped).max() < 1e-4 * np.abs(shipped).max()
    assert setup["peclet"] < 0.1  # no stabilisation needed
    # sensors see the flux: positive, and upstream segments reach downstream sensors
    G = ad.load_forward()
    assert (G > 0).all() and G[14, 0] > 0 and G[0, 14] < G[14, 14]


def test_shipped_forward_matrix_equals_a_fresh_computation():
    pytest.importorskip("skfem", reason="needs scikit-fem")
    fresh = ad.compute_forward()  # ~5 s
    shipped = ad.load_forward()
    assert np.linalg.norm(fresh - shipped) <= 1e-8 * np.linalg.norm(shipped)


def test_gaussian_posterior_matches_importance_sampling_on_unclipped_model():
    problem = ad.make_problem(noise=0.05, clip=False)
    traced = trace_problem(problem.model)
    traced.require_differentiable("nuts")  # a matrix product: gradient methods may run
    _, y = problem.draw(seed=2)
    mean, cov = problem.posterior_gaussian(y)
    sd = np.sqrt(np.diag(cov))
    # a proposal 1.2x wider than the analytic posterior: the weights carry the model's
    # likelihood, so a wrong posterior_gaussian would show in the reweighted moments
    idata = bayesinv.infer(
        problem.model, y, method="importance", proposal=problem.gaussian_guide(y, scale=1.2),
        num_samples=4000, num_proposals=40_000, target="flux_raw", progress=False,
    )
    assert 3000 < float(idata.sample_stats["ess"]) < 30_000
    draws = idata.posterior["flux_raw"].values.reshape(-1, 30)
    assert (np.abs(draws.mean(0) - mean) / sd).max() < 0.15
    assert np.abs(draws.std(0) / sd - 1).max() < 0.12
    # with the exact proposal every weight is equal
    exact = problem.reference(y, num_samples=500, num_proposals=10_000)
    assert float(exact.sample_stats["ess_fraction"]) > 0.99


@pytest.mark.parametrize("masked", [False, True])
def test_clipped_reference_posterior(masked):
    problem = ad.make_problem(noise=0.02, masked=masked)
    flux, y = problem.draw(seed=30)  # 3 segments clipped to zero
    assert (flux == 0).sum() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = problem.reference(y, num_samples=1000, num_proposals=20_000)
    assert float(idata.sample_stats["ess"]) > 100
    post = idata.posterior["flux"].values.reshape(-1, 30)
    assert (post >= 0).all() and np.abs(post.mean(0) - flux).max() < 0.3
    assert idata.posterior["flux"].dims == ("chain", "draw", "segment")
    if masked:
        np.testing.assert_array_equal(idata.posterior["mask"].values[0, 0], ad.mask_from_y(y))


# ----------------------------------------------------------------------- elastography

needs_skfem = pytest.mark.skipif(importlib.util.find_spec("skfem") is None, reason="needs scikit-fem (pip install scikit-fem)")


@needs_skfem
def test_elastography_sites():
    problem = el.make_problem(noise=0.05)
    traced = trace_problem(problem.model)
    assert {n: (s.kind, s.shape) for n, s in traced.sites.items()} == {
        "center": ("latent", (2,)),
        "mu": ("deterministic", (56, 56)),
        "y": ("observed", (56, 56)),
    }
    assert traced.simulators == ("displacement",)
    ds = problem.simulate_reference_set(8, chunk_size=8, progress=False)
    assert ds["_sim_displacement"].shape == (8, 56, 56) and ds["mu"].dims == ("draw", "row", "col")
    c = ds["center"].values
    assert ((c >= 0.2) & (c <= 0.8)).all()
    assert set(np.unique(ds["mu"].values)) == {np.float32(0.1), np.float32(1.5)}
    noise = ds["y"].values - ds["_sim_displacement"].values
    assert np.abs(noise).max() <= 3 * problem.sigma * (1 + 1e-5)
    assert np.abs(ds["_sim_displacement"].values).max() <= el.U_MAX * 1.01
    # the inclusion field: pixel (i, j) at x = (j + 1/2)/56, y = (i + 1/2)/56
    mu = el.inclusion_field(torch.tensor([0.3, 0.7])).numpy()
    assert mu[int(0.7 * 56), int(0.3 * 56)] == 1.5 and mu[int(0.3 * 56), int(0.7 * 56)] == 0.1


@needs_skfem
def test_homogeneous_specimen_gives_the_uniaxial_solution():
    solver = el.ElasticitySolver()
    x, y = solver.mesh.p
    u = solver.nodal(np.full((56, 56), 0.1))
    # u_y linear in height; plane stress, ν = 1/2: lateral expansion ε_xx = −ν ε_yy
    np.testing.assert_allclose(u[1], -0.01 * y, atol=1e-12)
    np.testing.assert_allclose(u[0], 0.005 * x, atol=1e-12)
    # pixel values: the same at the pixel centres
    pc = (np.arange(56) + 0.5) / 56
    np.testing.assert_allclose(solver.vertical(np.full((56, 56), 3.0)), -0.01 * pc[:, None] * np.ones(56), atol=1e-12)
    # scales with the load
    doubled = el.ElasticitySolver(top_displacement=-0.02)
    np.testing.assert_allclose(doubled.nodal(np.full((56, 56), 0.1)), 2 * u, atol=1e-12)
    # displacement-controlled: independent of the modulus scale, also with an inclusion
    mu = el.inclusion_field(torch.tensor([0.45, 0.55])).double().numpy()
    np.testing.assert_allclose(solver.vertical(7.0 * mu), solver.vertical(mu), rtol=1e-9, atol=1e-14)


@needs_skfem
def test_inclusion_reduces_strain_inside():
    center = torch.tensor([0.5, 0.5])
    mu = el.inclusion_field(center).numpy()
    u = el.solve_displacement(mu[None])[0]
    strain = np.gradient(u, 1 / 56, axis=0)  # ε_yy = ∂u_y/∂y (rows are y)
    inside = mu == el.MU_INCLUSION
    pc = (np.arange(56) + 0.5) / 56
    core = (pc[:, None] - 0.5) ** 2 + (pc[None, :] - 0.5) ** 2 < 0.08**2
    assert inside.sum() > 100
    assert np.abs(strain[core]).mean() < 0.4 * 0.01  # the stiff inclusion barely deforms
    assert np.abs(strain[~inside]).mean() > 0.01  # the soft background takes the load


@needs_skfem
def test_parallel_workers_give_the_same_result():
    centers = torch.tensor([[0.3, 0.3], [0.5, 0.7], [0.7, 0.4], [0.25, 0.75]])
    mu = el.inclusion_field(centers)
    serial = el.displacement(mu)
    with bayesinv.simulator(el.solve_displacement, name="displacement", workers=2) as parallel:
        out = parallel(mu)
    assert out.shape == (4, 56, 56) and out.dtype == torch.float32
    torch.testing.assert_close(out, serial, rtol=0, atol=0)


@pytest.mark.parametrize("low, high", [(-3.0, 3.0), (-1.0, 2.5), (0.5, 4.0)])
def test_truncated_normal_is_normalised(low, high):
    loc, scale = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    d = el.TruncatedNormal(loc, scale, loc + low * scale, loc + high * scale)
    grid = torch.linspace(float(loc + low * scale), float(loc + high * scale), 20_001, dtype=torch.float64)
    density = d.log_prob(grid).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)
    assert d.log_prob(loc + (high + 0.01) * scale).item() == -np.inf
    draws = d.sample((200_000,))
    assert draws.min() >= d.low and draws.max() <= d.high
    assert draws.mean().item() == pytest.approx(d.mean.item(), abs=0.01)
    assert draws.var().item() == pytest.approx(d.variance.item(), rel=0.02)


@needs_skfem
def test_importance_reference_concentrates_near_the_true_center():
    # Reuse noise-free displacements of centres on a fine grid around the truth: with a
    # uniform prior, proposals uniform on a box holding the posterior need no correction.
    truth = np.array([0.4137, 0.5821], dtype=np.float32)
    offsets = np.linspace(-0.03, 0.03, 13, dtype=np.float32)
    centers = np.stack(np.meshgrid(truth[0] + offsets, truth[1] + offsets), -1).reshape(-1, 2)
    u = el.solve_displacement(el.inclusion_field(torch.as_tensor(centers)).numpy()).astype(np.float32)
    ds = xr.Dataset({"center": (("draw", "coord"), centers), "_sim_displacement": (("draw", "row", "col"), u)})
    spread = {}
    for noise in (0.025, 0.10):
        problem = el.make_problem(noise=noise)
        _, y = problem.draw(seed=4, center=truth)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = problem.reference(y, data=ds, num_samples=500)
        post = idata.posterior["center"].values.reshape(-1, 2)
        assert np.abs(post.mean(0) - truth).max() < 0.01
        assert idata.posterior["mu"].shape == (4, 125, 56, 56)  # 500 resampled draws laid out in 4 chains
        spread[noise] = post.std(0).max()
    assert spread[0.025] <= spread[0.10] and spread[0.10] < 0.015


@needs_skfem
def test_reference_from_prior_draws_with_zoom_in():
    problem = el.make_problem(noise=0.10)
    center, y = problem.draw(seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = problem.reference(y, num_simulations=150, refine=1, num_local=150, num_samples=300)
    box = np.array(idata.posterior.attrs["center_box"]).reshape(2, 2)
    assert (box[0] < center).all() and (center < box[1]).all() and (box[1] - box[0]).max() < 0.35
    post = idata.posterior["center"].values.reshape(-1, 2)
    assert np.abs(post.mean(0) - center).max() < 0.02
    assert idata.posterior["mu"].dims == ("chain", "draw", "row", "col")


@needs_skfem
def test_zoom_in_reference_survives_a_coarse_set_at_low_noise():
    # At σ_η = 2.5% the ±3σ truncated law gives every centre of a coarse set zero
    # likelihood (some pixel misses by more than 3σ): the plain reference has nothing
    # to weigh, the zoom-in reference locates the posterior with the untruncated law.
    g = np.linspace(0.2, 0.8, 12, dtype=np.float32)
    centers = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    u = el.solve_displacement(el.inclusion_field(torch.as_tensor(centers)).numpy()).astype(np.float32)
    ds = xr.Dataset({"center": (("draw", "coord"), centers), "_sim_displacement": (("draw", "row", "col"), u)})
    problem = el.make_problem(noise=0.025)
    truth, y = problem.draw(seed=106)
    with pytest.raises(ProblemError, match="zero likelihood"):
        problem.reference(y, data=ds, num_samples=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = problem.reference(y, data=ds, num_samples=300, refine=2, num_local=200)
    box = np.array(idata.posterior.attrs["center_box"]).reshape(2, 2)
    assert (box[0] < truth).all() and (truth < box[1]).all() and (box[1] - box[0]).max() < 0.1
    post = idata.posterior["center"].values.reshape(-1, 2)
    assert np.abs(post.mean(0) - truth).max() < 0.01


def _has_dolfinx() -> bool:
    try:
        return subprocess.run(["/usr/bin/python3", "-c", "import dolfinx"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _has_dolfinx(), reason="dolfinx is not installed for /usr/bin/python3 (apt install python3-dolfinx-real)")
def test_dolfinx_backend_agrees_with_scikit_fem():
    mu = el.inclusion_field(torch.tensor([[0.35, 0.6], [0.7, 0.3]])).double().numpy()
    ours = el.solve_displacement(mu)
    theirs = np.asarray(el.dolfinx_simulator(timeout=300)(mu))
    assert theirs.shape == ours.shape
    # the same mesh and element: agreement well inside the discretisation error (4e-3 U_MAX)
    assert np.abs(theirs - ours).max() < 1e-3 * el.U_MAX
