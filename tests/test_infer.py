r"""Accuracy of the baselines on problems with analytic posteriors, and their errors."""

import json
import logging
import math
import re
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
import bayesinv.distributions as bdist
from bayesinv._arviz import az
from bayesinv.models.toy import LinearGaussian
from bayesinv.errors import SimulationError
from bayesinv.problem import ProblemError
from tests import models_for_tests as M

LG = LinearGaussian(dim=10, noise=1.0)
THETA, Y = LG.draw(seed=1)
MEAN, COV = LG.posterior(Y)
SD = np.sqrt(np.diag(COV))


def _check(idata, *, mean_tol, std_tol):
    draws = idata.posterior["theta"].values.reshape(-1, LG.dim)
    z = np.abs(draws.mean(0) - MEAN) / SD
    ratio = draws.std(0) / SD
    assert z.max() < mean_tol, z
    assert np.abs(ratio - 1).max() < std_tol, ratio


def test_importance_matches_analytic_posterior():
    # 300k prior proposals give ESS ~ 7000: MC error of the mean ~ 0.012 sd, of the sd ~ 1%
    idata = bayesinv.infer(LG.model, Y, method="importance", num_samples=4000, num_proposals=300_000, seed=0, progress=False)
    assert float(idata.sample_stats["ess"]) > 3000
    _check(idata, mean_tol=0.1, std_tol=0.1)
    assert idata.posterior["theta"].dims == ("chain", "draw", "theta_dim_0")
    assert idata.posterior.attrs["method"] == "importance"
    np.testing.assert_allclose(idata.observed_data["y"].values, Y)
    # the deterministic site comes along by default
    np.testing.assert_allclose(
        idata.posterior["mean_y"].values[0], idata.posterior["theta"].values[0] @ LG.A.float().numpy().T, rtol=1e-4, atol=1e-4
    )


def test_nuts_matches_analytic_posterior():
    idata = bayesinv.infer(LG.model, Y, method="nuts", num_samples=400, warmup_steps=300, num_chains=2, seed=0, progress=False)
    # 800 draws of (nearly independent) NUTS: MC error of the mean ~ 0.04 sd
    _check(idata, mean_tol=0.2, std_tol=0.15)
    assert idata.posterior.sizes["chain"] == 2
    for k in ("diverging", "step_size", "acceptance_rate"):
        assert idata.sample_stats[k].shape == (2, 400)
    assert 0.5 < float(idata.sample_stats["acceptance_rate"].mean()) <= 1.0
    assert idata.posterior.attrs["max_rhat"] < 1.05


def test_mcmc_gradient_free_on_blackbox_model():
    lg = LinearGaussian(dim=3, noise=0.7, seed=2)
    theta, y = lg.draw(seed=4)
    mean, cov = lg.posterior(y)
    idata = bayesinv.infer(lg.model, y, method="mcmc", num_samples=1500, num_chains=4, thin=1, seed=0, progress=False)
    draws = idata.posterior["theta"].values.reshape(-1, 3)
    sd = np.sqrt(np.diag(cov))
    assert np.abs(draws.mean(0) - mean).max() / sd.min() < 0.25
    assert np.abs(draws.std(0) / sd - 1).max() < 0.2
    assert 0.1 < idata.posterior.attrs["acceptance_rate"] < 0.5
    assert idata.posterior.attrs["max_rhat"] < 1.05
    assert idata.sample_stats["accepted"].shape == (4, 1500)
    # black-box simulators: mcmc runs, nuts refuses with a clear message
    y_bb = np.array([0.5, 0.2], dtype=np.float32)
    out = bayesinv.infer(M.blackbox_model, y_bb, method="mcmc", num_samples=200, warmup_steps=200, num_chains=2, seed=0, progress=False)
    assert out.posterior["u"].shape == (2, 200, 2)
    with pytest.raises(ProblemError, match="black-box simulator.*square_sim.*mcmc"):
        bayesinv.infer(M.blackbox_model, y_bb, method="nuts")


def test_importance_with_analytic_guide_has_full_ess():
    L = torch.linalg.cholesky(torch.as_tensor(COV)).float()
    mean = torch.as_tensor(MEAN).float()

    def guide(y=None):
        pyro.sample("theta", dist.MultivariateNormal(mean, scale_tril=L))

    idata = bayesinv.infer(LG.model, Y, method="importance", proposal=guide, num_samples=2000, num_proposals=20_000, seed=0, progress=False)
    assert float(idata.sample_stats["ess_fraction"]) > 0.99
    _check(idata, mean_tol=0.15, std_tol=0.1)


def test_importance_reuses_simulated_data_without_rerunning_the_simulator():
    ds = bayesinv.simulate(M.blackbox_model, 20_000, seed=0, chunk_size=5000, progress=False)
    assert "_sim_square_sim" in ds
    y = np.array([0.5, 0.2], dtype=np.float32)
    before = M.CALLS["n"]
    a = bayesinv.infer(M.blackbox_model, y, method="importance", data=ds, num_samples=3000, seed=1, progress=False)
    assert M.CALLS["n"] == before, "the simulator ran again"
    assert int(a.sample_stats["num_proposals"]) == 20_000
    b = bayesinv.infer(M.blackbox_model, y, method="importance", num_proposals=20_000, num_samples=3000, seed=2, progress=False)
    for site in ("theta", "u"):
        ma, mb = a.posterior[site].values.reshape(3000, -1), b.posterior[site].values.reshape(3000, -1)
        assert np.abs(ma.mean(0) - mb.mean(0)).max() < 0.1
        assert np.abs(ma.std(0) - mb.std(0)).max() < 0.1


def test_small_ess_warns():
    lg = LinearGaussian(dim=10, noise=0.05)
    _, y = lg.draw(seed=0)
    with pytest.warns(bayesinv.methods.importance.ImportanceWarning, match="ESS"):
        bayesinv.infer(lg.model, y, method="importance", num_samples=100, num_proposals=2000, seed=0, progress=False)


def test_importance_is_chunked_and_reproducible():
    a = bayesinv.infer(LG.model, Y, num_samples=500, num_proposals=30_000, chunk_size=7000, seed=5, progress=False)
    b = bayesinv.infer(LG.model, Y, num_samples=500, num_proposals=30_000, chunk_size=7000, seed=5, progress=False)
    np.testing.assert_array_equal(a.posterior["theta"].values, b.posterior["theta"].values)


def test_implicit_observation_is_refused_by_likelihood_methods():
    def sim(theta):
        return theta + torch.randn_like(theta)

    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("y", bdist.Implicit(sim, theta), obs=y)

    for method in ("importance", "nuts", "mcmc"):
        with pytest.raises(ProblemError, match="observed site 'y'.*Implicit.*cond_score"):
            bayesinv.infer(model, np.zeros(2, dtype=np.float32), method=method)
    ds = bayesinv.simulate(model, 50, seed=0, progress=False)
    assert ds["y"].shape == (50, 2)


def test_netcdf_round_trip_with_dims_and_coords(tmp_path):
    idata = bayesinv.infer(
        LG.model,
        Y,
        num_samples=200,
        dims={"theta": ["param"], "y": ["sensor"], "mean_y": ["sensor"]},
        coords={"param": [f"p{i}" for i in range(10)], "sensor": np.arange(10) * 0.5},
        progress=False,
    )
    assert idata.posterior["theta"].dims == ("chain", "draw", "param")
    assert idata.observed_data["y"].dims == ("sensor",)
    path = tmp_path / "post.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    for group in ("posterior", "sample_stats", "observed_data"):
        assert back[group].identical(idata[group]) or back[group].equals(idata[group])
        assert dict(back[group].attrs) == dict(idata[group].attrs)
    assert list(back.posterior["theta"].coords["param"].values) == [f"p{i}" for i in range(10)]
    with pytest.raises(ValueError, match="dims for 'theta'"):
        bayesinv.infer(LG.model, Y, num_samples=10, dims={"theta": ["a", "b"]}, progress=False)


def test_arviz_summary_and_plots_work(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    idata = bayesinv.infer(LG.model, Y, method="mcmc", num_samples=200, num_chains=2, target="theta", seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata, var_names=["theta"])
        assert len(summary) == 10
        az.plot_trace(idata, var_names=["theta"], coords={"theta_dim_0": [0, 1]})
        az.plot_rank(idata, var_names=["theta"], coords={"theta_dim_0": [0]})


def test_custom_method_registration():
    @bayesinv.register_method("prior_only", overwrite=True)
    def prior_only(problem, y, *, num_samples, seed, target, progress, scale=1.0):
        from bayesinv.problem import run_batch

        b = run_batch(problem, num_samples, seed=seed)
        return bayesinv.Draws(posterior={n: b.values[n][None].numpy() * scale for n in target})

    idata = bayesinv.infer(LG.model, Y, method="prior_only", num_samples=50, target="theta", scale=2.0)
    assert idata.posterior["theta"].shape == (1, 50, 10)
    assert "prior_only" in bayesinv.available_methods()
    with pytest.raises(ValueError, match="already registered"):
        bayesinv.register_method("prior_only")(lambda *a, **k: None)


# ---------------------------------------------------------------- long runs say how long they are (issue 14, item 17)


def test_runs_without_a_terminal_log_their_size_and_eta(caplog, monkeypatch):
    import bayesinv.methods._util as util

    monkeypatch.setattr(util, "_on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="bayesinv")
    bayesinv.infer(LG.model, Y, method="importance", num_samples=1000, chunk_size=2000, seed=0, progress=None)
    text = caplog.text
    assert "importance: 20,000 proposals from the prior (the default max(20 * num_samples, 10,000) for num_samples=1,000" in text
    assert "importance: starting, 20,000 proposals" in text
    assert re.search(r"importance: 2,000/20,000 proposals \(10%\), [0-9.e+]+ proposals/s, elapsed \d+:\d\d, ETA \d+:\d\d", text)
    assert "importance: done, 20,000 proposals in" in text
    caplog.clear()
    bayesinv.infer(LG.model, Y, method="importance", num_samples=100, num_proposals=3000, seed=0, progress=False)
    assert "importance: 3,000 proposals from the prior (num_proposals=3,000)" in caplog.text
    caplog.clear()
    bayesinv.infer(LG.model, Y, method="mcmc", num_samples=50, num_chains=2, thin=1, seed=0, progress=None)
    assert "mcmc: 2 chain(s) moved together, 100 warm-up + 50 x thin 1 steps = 150 model runs of 2 draws (warm-up defaults to 2 * num_samples)" in caplog.text
    assert re.search(r"mcmc: 15/150 steps \(10%\).*ETA", caplog.text)
    caplog.clear()
    bayesinv.infer(LG.model, Y, method="mcmc", num_samples=50, num_chains=2, seed=0, progress=None)  # thin sized by the run
    assert "x thin (auto, 1-10) steps = 150 or more model runs" in caplog.text
    assert re.search(r"mcmc: thin \d+ \(autocorrelation time", caplog.text)
    caplog.clear()
    bayesinv.infer(LG.model, Y, method="nuts", num_samples=20, num_chains=1, seed=0, progress=None)
    assert "nuts: 1 chain(s) x (20 warm-up + 20 draws) = 40 steps (warm-up defaults to num_samples)" in caplog.text
    assert re.search(r"nuts: 4/40 steps \(10%\).*ETA", caplog.text)


def test_log_progress_reports_rate_and_eta_every_30_s(caplog, monkeypatch):
    import bayesinv.methods._util as util

    clock = {"t": 1000.0}
    monkeypatch.setattr(util.time, "perf_counter", lambda: clock["t"])
    caplog.set_level(logging.INFO, logger="bayesinv")
    bar = util.LogProgress(10_000, "simulate", "draws", every_fraction=1.0)  # reports by time only
    for _ in range(5):
        clock["t"] += 31.0
        bar.update(100)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "simulate: starting, 10,000 draws"
    # 100 draws per 31 s: 3.23 draws/s, so 9,900 draws left after the first report take 51 min
    assert lines[1] == "simulate: 100/10,000 draws (1%), 3.23 draws/s, elapsed 0:31, ETA 51:09"
    assert lines[5] == "simulate: 500/10,000 draws (5%), 3.23 draws/s, elapsed 2:35, ETA 49:05"
    assert lines[6] == "simulate: done, 500 draws in 2:35"


# ---------------------------------------------------------------- chains in separate modes


def _wrapped_phase_model(y=None):
    theta = pyro.sample("theta", dist.Uniform(0.0, 6 * math.pi))  # three aliases of the phase
    return pyro.sample("y", bdist.WrappedPhase(theta, torch.tensor(50.0)), obs=y)


def _squared_model(y=None):
    theta = pyro.sample("theta", dist.Normal(0.0, 3.0))
    return pyro.sample("y", dist.Normal(theta**2, 0.1), obs=y)  # y = 4: modes at -2 and +2


@pytest.mark.parametrize("model, num_modes", [(_wrapped_phase_model, 3), (_squared_model, 2)], ids=["wrapped_phase", "squared"])
def test_mcmc_chains_in_separate_modes_are_reported(model, num_modes):
    y = np.float32(1.0) if model is _wrapped_phase_model else np.float32(4.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = bayesinv.infer(model, y, method="mcmc", num_samples=500, num_chains=4, seed=0, progress=False)
    means = idata.posterior["theta"].values.mean(1)
    # seed 0 starts the chains in different modes; they stay there (a random walk does not cross)
    if model is _wrapped_phase_model:
        aliases = np.round((means - 1.0) / (2 * math.pi))
        np.testing.assert_allclose(means, 1.0 + 2 * math.pi * aliases, atol=0.05)
    else:
        aliases = np.sign(means)
        np.testing.assert_allclose(np.abs(means), 2.0, atol=0.02)
    assert len(set(aliases.tolist())) == num_modes
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    modes = [m for m in messages if "separate modes" in m]
    assert len(modes) == 1 and f"the chains sit in {num_modes} separate modes" in modes[0]
    assert not any("run longer" in m for m in messages)
    assert idata.posterior.attrs["num_modes"] == num_modes
    mode_of_chain = json.loads(idata.posterior.attrs["mode_of_chain"])
    for i in range(4):
        for j in range(4):
            assert (mode_of_chain[i] == mode_of_chain[j]) == (aliases[i] == aliases[j])


def test_mcmc_short_unimodal_run_still_advises_a_longer_run():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = bayesinv.infer(LG.model, Y, method="mcmc", num_samples=10, warmup_steps=20, num_chains=4, seed=0, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("run longer" in m for m in messages) and not any("separate modes" in m for m in messages)
    assert idata.posterior.attrs["num_modes"] == 1


# ---------------------------------------------------------------- a simulator whose every output is NaN

NAN_SWITCH = {"on": False}


@bayesinv.simulator
def _switchable_sim(theta):
    return np.full_like(theta, np.nan) if NAN_SWITCH["on"] else theta


def _switchable_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(_switchable_sim(theta), 0.5).to_event(1), obs=y)


def test_importance_names_a_simulator_that_returns_only_nan():
    NAN_SWITCH["on"] = False
    bayesinv.problem.as_problem(_switchable_model)  # traced while the simulator still works
    NAN_SWITCH["on"] = True
    try:
        with pytest.raises(SimulationError, match=r"simulator\(s\) \['_switchable_sim'\] returned only non-finite values.*all 500 proposals"):
            bayesinv.infer(_switchable_model, np.zeros(2, dtype=np.float32), num_samples=10, num_proposals=500, seed=0, progress=False)
    finally:
        NAN_SWITCH["on"] = False
