r"""NumPyro models under the same API: detection, tracing, simulation, importance, NUTS, amortized fits."""

import numpy as np
import pytest
import torch

pytest.importorskip("numpyro")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as nd  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv._numpyro import is_numpyro_model, torch_constraint  # noqa: E402
from bayesinv.errors import OptionError, ProblemError  # noqa: E402
from bayesinv.models.advection_diffusion import AdvectionDiffusion  # noqa: E402
from bayesinv.models.toy import LinearGaussian  # noqa: E402

LG = LinearGaussian(dim=3)


def positive_model(y=None):
    scale = numpyro.sample("scale", nd.HalfNormal(1.0))
    loc = numpyro.sample("loc", nd.Uniform(-2.0, 2.0))
    with numpyro.plate("data", 5):
        return numpyro.sample("y", nd.Normal(loc, scale), obs=y)


def reshaping_model(y=None):
    theta = numpyro.sample("theta", nd.Normal(jnp.zeros(4), 1.0).to_event(1))
    obs = None if y is None else jnp.reshape(jnp.asarray(y), (4,))
    return numpyro.sample("y", nd.Normal(theta, 0.1).to_event(1), obs=obs)


def test_language_is_detected_from_the_code():
    assert is_numpyro_model(LG.numpyro_model) and is_numpyro_model(positive_model)
    assert not is_numpyro_model(LG.model)
    assert bayesinv.trace_problem(positive_model).language == "numpyro"
    assert bayesinv.trace_problem(LG.model).language == "pyro"


def test_numpyro_twin_traces_to_the_same_sites_as_the_pyro_model():
    for pyro_model, np_model in [(LG.model, LG.numpyro_model), (AdvectionDiffusion().model, AdvectionDiffusion().numpyro_model)]:
        a, b = bayesinv.trace_problem(pyro_model), bayesinv.trace_problem(np_model)
        assert {k: (s.kind, s.shape, s.event_dim) for k, s in a.sites.items()} == {
            k: (s.kind, s.shape, s.event_dim) for k, s in b.sites.items()
        }


def test_supports_plates_and_transformed_observations():
    p = bayesinv.trace_problem(positive_model)
    assert p.observed == ("y",) and p.sites["y"].shape == (5,)
    assert p.sites["scale"].support is torch.distributions.constraints.positive
    assert float(p.sites["loc"].support.lower_bound) == -2.0
    assert bayesinv.trace_problem(reshaping_model).observed == ("y",)
    assert torch_constraint(nd.Normal(0, 1).expand([3]).to_event(1).support).event_dim == 1


def test_observation_errors_name_the_site():
    with pytest.raises(ProblemError, match=r"site 'y' has shape \(4,\).*shape \(3,\)"):
        bayesinv.infer(LG.numpyro_model, np.zeros(4), method="importance", progress=False)
    with pytest.raises(ProblemError, match="complex"):
        bayesinv.infer(LG.numpyro_model, np.zeros(3) + 1j, method="importance", progress=False)


def test_simulate_is_reproducible_resumable_and_matches_the_prior(tmp_path):
    a = bayesinv.simulate(LG.numpyro_model, 3000, seed=1, chunk_size=1000, progress=False)
    b = bayesinv.simulate(LG.numpyro_model, 3000, seed=1, chunk_size=1000, path=tmp_path / "s.zarr", progress=False)
    np.testing.assert_array_equal(a["theta"].values, b["theta"].values)
    assert set(a.data_vars) == {"theta", "mean_y", "y"}
    theta = a["theta"].values
    assert abs(theta.mean()) < 0.05 and abs(theta.std() - 1) < 0.05  # 9,000 N(0, 1) values: 4 sd
    resid = a["y"].values - a["mean_y"].values
    assert abs(resid.std() - LG.noise) < 0.02
    np.testing.assert_allclose(a["mean_y"].values, theta @ LG.A.numpy().T.astype(np.float32), rtol=1e-4, atol=1e-5)


def _exact(seed=1):
    _, y = LG.draw(seed)
    mean, cov = LG.posterior(y)
    return y, mean, np.sqrt(np.diag(cov))


def test_importance_on_a_numpyro_model_matches_the_exact_posterior():
    y, mean, sd = _exact()
    idata = bayesinv.infer(LG.numpyro_model, y, method="importance", num_samples=4000, num_proposals=200_000,
                           seed=0, progress=False)  # fmt: skip
    post = idata.posterior["theta"].values.reshape(-1, 3)
    ess = float(idata.sample_stats["ess"]) if "ess" in idata.sample_stats else float(idata.posterior.attrs["ess"])
    assert ess > 1000
    tol = 4 * sd / np.sqrt(min(ess, 4000))  # 4 Monte-Carlo standard errors
    assert np.all(np.abs(post.mean(0) - mean) < tol), (post.mean(0), mean, tol)
    assert np.all(np.abs(post.std(0) / sd - 1) < 0.1)
    assert "mean_y" in idata.posterior  # deterministic sites replayed in JAX


def test_numpyro_nuts_matches_the_exact_posterior_and_records_numpyro_stats():
    y, mean, sd = _exact()
    idata = bayesinv.infer(LG.numpyro_model, y, method="nuts", num_samples=500, warmup_steps=300, num_chains=2,
                           seed=0, progress=False)  # fmt: skip
    post = idata.posterior["theta"].values.reshape(-1, 3)
    assert np.all(np.abs(post.mean(0) - mean) < 5 * sd / np.sqrt(500)), (post.mean(0), mean)  # ESS >= 500 of 1,000
    assert np.all(np.abs(post.std(0) / sd - 1) < 0.12)
    for stat in ("diverging", "step_size", "acceptance_rate", "energy", "lp", "n_steps", "tree_depth"):
        assert idata.sample_stats[stat].shape == (2, 500), stat
    attrs = idata.posterior.attrs
    assert attrs["engine"] == "numpyro" and attrs["chain_method"] == "vectorized" and attrs["jax_backend"] == "cpu"
    # same seed, same draws
    again = bayesinv.infer(LG.numpyro_model, y, method="nuts", num_samples=500, warmup_steps=300, num_chains=2,
                           seed=0, progress=False)  # fmt: skip
    np.testing.assert_array_equal(idata.posterior["theta"].values, again.posterior["theta"].values)


def test_numpyro_nuts_options_are_checked():
    with pytest.raises(OptionError, match="init_strategy"):
        bayesinv.infer(LG.numpyro_model, np.zeros(3), method="nuts", init_strategy="middle", progress=False)
    with pytest.raises(OptionError, match="chain_method"):
        bayesinv.infer(LG.model, np.zeros(3), method="nuts", chain_method="vectorized", progress=False)


def test_mcmc_and_an_amortized_fit_run_on_a_numpyro_model():
    y, mean, sd = _exact()
    idata = bayesinv.infer(LG.numpyro_model, y, method="mcmc", num_samples=1500, warmup_steps=1500, num_chains=2,
                           seed=0, progress=False)  # fmt: skip
    post = idata.posterior["theta"].values.reshape(-1, 3)
    assert np.all(np.abs(post.mean(0) - mean) < 0.35 * sd * 3)  # random-walk chains: ESS ~ 100
    posterior = bayesinv.fit(LG.numpyro_model, method="flow", num_simulations=2000, max_epochs=5, seed=0, progress=False)
    draws = posterior.sample(y, 50, seed=0)["theta"]
    assert draws.shape == (50, 3) and torch.isfinite(draws).all()


@bayesinv.simulator
def _cubic(theta):
    if np.any(theta[:, 0] > 2.5):
        raise RuntimeError("solver diverged")
    return np.stack([theta[:, 0] ** 3, theta[:, 0] + theta[:, 1]], -1)


def blackbox_model(y=None):
    theta = numpyro.sample("theta", nd.Normal(jnp.zeros(2), 1.0).to_event(1))
    u = numpyro.deterministic("u", _cubic(theta))
    return numpyro.sample("y", nd.Normal(u, 0.1).to_event(1), obs=y)


def test_a_blackbox_simulator_in_a_numpyro_model_runs_batched_and_is_refused_by_nuts():
    problem = bayesinv.trace_problem(blackbox_model)
    assert problem.simulators == ("_cubic",)
    calls = _cubic.num_calls
    with pytest.warns(bayesinv.data.SimulationWarning, match="solver diverged"):
        ds = bayesinv.simulate(blackbox_model, 2000, seed=0, chunk_size=1000, progress=False)
    theta, u = ds["theta"].values, ds["u"].values
    assert (theta[:, 0] <= 2.5).all() and 0 < ds.attrs["num_failed"] < 40  # P(theta_0 > 2.5) = 0.6 %
    np.testing.assert_allclose(u[:, 0], theta[:, 0] ** 3, rtol=1e-5, atol=1e-5)
    # one batched call per chunk plus the bisection of the failing rows, not one call per draw
    assert _cubic.num_calls - calls < 2 * 2 * 12 * 10 + 4
    with pytest.raises(ProblemError, match=r"black-box simulator\(s\) \['_cubic'\]"):
        bayesinv.infer(blackbox_model, np.array([1.0, 0.5]), method="nuts", progress=False)


def test_both_languages_give_the_same_importance_posterior():
    y, mean, sd = _exact()
    runs = [bayesinv.infer(m, y, method="importance", num_samples=4000, num_proposals=100_000, seed=3, progress=False)
            for m in (LG.model, LG.numpyro_model)]  # fmt: skip
    (a, b) = [r.posterior["theta"].values.reshape(-1, 3) for r in runs]
    ess = min(float(r.sample_stats["ess"]) for r in runs)
    se = sd * np.sqrt(2 / min(ess, 4000))  # standard error of a difference of two independent means
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se), (a.mean(0), b.mean(0), se)
    assert np.all(np.abs(a.std(0) / b.std(0) - 1) < 0.1)


def test_deblurring_twins_and_numpyro_nuts_against_the_exact_field_posterior():
    from bayesinv.models.deblurring import Deblurring

    problem = Deblurring(size=6, length_scale=2.0)
    a, b = bayesinv.trace_problem(problem.model), bayesinv.trace_problem(problem.numpyro_model)
    assert {k: (s.kind, s.shape) for k, s in a.sites.items()} == {k: (s.kind, s.shape) for k, s in b.sites.items()}
    _, y = problem.draw(seed=0)
    mean, sd = problem.posterior(y)
    idata = bayesinv.infer(problem.numpyro_model, y, method="nuts", num_samples=400, warmup_steps=300, num_chains=2,
                           target="x", seed=0, progress=False)  # fmt: skip
    post = idata.posterior["x"].values.reshape(-1, 6, 6)
    assert set(idata.posterior.data_vars) == {"x"}  # R-hat and ESS on the target, not on the whitening latent z
    assert np.abs(post.mean(0) - mean).max() < 5 * sd.max() / np.sqrt(200)  # ESS >= 200 of 800 draws
    assert 0.85 < (post.std(0) / sd).min() and (post.std(0) / sd).max() < 1.15


def test_importance_reuses_a_simulated_store_of_a_numpyro_model(tmp_path):
    y, mean, sd = _exact()
    ds = bayesinv.simulate(LG.numpyro_model, 100_000, seed=4, chunk_size=50_000, path=tmp_path / "joint.zarr", progress=False)
    idata = bayesinv.infer(LG.numpyro_model, y, method="importance", num_samples=2000, data=tmp_path / "joint.zarr",
                           seed=0, progress=False)  # fmt: skip
    post = idata.posterior["theta"].values.reshape(-1, 3)
    ess = float(idata.sample_stats["ess"])
    assert int(idata.sample_stats["num_proposals"]) == ds.sizes["draw"]  # the stored draws were the proposals
    assert np.all(np.abs(post.mean(0) - mean) < 4 * sd / np.sqrt(min(ess, 2000)))
