r"""method="flow_matching": accuracy and density against the analytic linear-Gaussian posterior, save/load, fields.

One fit (2-D linear Gaussian, 4,000 simulations, 1,500 steps, about 10 s on one core) is
shared by the tests; tolerances are stated in each test.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import multivariate_normal

import bayesinv
from bayesinv.errors import OptionError
from bayesinv.models.toy import LinearGaussian

SIZE = 8
PATTERN = torch.linspace(0.5, 1.5, SIZE)[:, None] * torch.linspace(1.0, 2.0, SIZE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear():
    lg = LinearGaussian(dim=2, noise=0.5, seed=0)
    post = bayesinv.fit(lg.model, method="flow_matching", num_simulations=4000, seed=0, hidden=(128, 128, 128),
                        max_epochs=None, max_steps=1500, patience=None, progress=False)  # fmt: skip
    return lg, post


def test_recovers_linear_gaussian_posterior(linear):
    # tolerances: mean within 0.25 posterior sd, sd within 20 %
    lg, post = linear
    for obs_seed in (3, 4):
        _, y = lg.draw(seed=obs_seed)
        mean, cov = lg.posterior(y)
        std = np.sqrt(np.diag(cov))
        theta = post.sample(y, 4000, seed=0)["theta"].numpy()
        assert theta.shape == (4000, 2)
        np.testing.assert_array_less(np.abs(theta.mean(0) - mean), 0.25 * std)
        np.testing.assert_array_less(np.abs(theta.std(0) / std - 1), 0.2)


def test_log_prob_matches_the_analytic_density(linear):
    # measured: mean |log q - log p| 0.07 over 2,000 draws; bound 0.2
    lg, post = linear
    _, y = lg.draw(seed=3)
    mean, cov = lg.posterior(y)
    draws = post.sample(y, 2000, seed=1)
    log_q = post.log_prob(draws, y).numpy()
    log_p = multivariate_normal(mean, cov).logpdf(draws["theta"].numpy())
    assert np.abs(log_q - log_p).mean() < 0.2


def test_log_prob_integrates_to_one(linear):
    # Riemann sum of exp(log q) on a 60 x 60 grid over +-8 posterior sd: within 2 % of 1 (measured 1.0000)
    lg, post = linear
    _, y = lg.draw(seed=3)
    mean, cov = lg.posterior(y)
    std = np.sqrt(np.diag(cov))
    axes = [np.linspace(m - 8 * s, m + 8 * s, 60) for m, s in zip(mean, std)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    log_q = post.log_prob({"theta": grid}, y).double().numpy()
    cell = np.prod([a[1] - a[0] for a in axes])
    assert abs(np.exp(log_q).sum() * cell - 1) < 0.02


def test_hutchinson_estimate_within_its_stated_error(linear):
    # 8 probes: |hutchinson - exact| <= 4 standard errors (+1e-3) for at least 95 % of 200 points
    lg, post = linear
    _, y = lg.draw(seed=4)
    draws = post.sample(y, 200, seed=2)
    exact = post.log_prob(draws, y)
    est, se = post.log_prob(draws, y, exact=False, num_probes=8, seed=0, with_error=True)
    assert (se >= 0).all() and (se > 0).float().mean() > 0.9  # in 2-D, 8 equal probes (p = 1/128) give 0
    assert ((est - exact).abs() <= 4 * se + 1e-3).float().mean() >= 0.95


def test_importance_with_the_flow_matching_proposal(linear):
    # measured: ESS fraction 0.98; bounds 0.8 and posterior mean within 0.2 sd
    lg, post = linear
    _, y = lg.draw(seed=3)
    mean, cov = lg.posterior(y)
    idata = bayesinv.infer(lg.model, y, method="importance", proposal=post, num_samples=1000, num_proposals=2000, seed=0,
                           progress=False)  # fmt: skip
    assert float(idata.sample_stats["ess_fraction"]) > 0.8
    theta = idata.posterior["theta"].values.reshape(-1, len(mean))  # every chain of the resample
    np.testing.assert_array_less(np.abs(theta.mean(0) - mean), 0.2 * np.sqrt(np.diag(cov)))


def test_save_load_same_draws_and_density(linear, tmp_path):
    lg, post = linear
    _, y = lg.draw(seed=3)
    loaded = bayesinv.load(post.save(tmp_path / "fm.bayesinv"))
    assert loaded.method == "flow_matching" and loaded.config == post.config
    a, b = post.sample(y, 50, seed=7), loaded.sample(y, 50, seed=7)
    assert torch.equal(a["theta"], b["theta"])
    assert torch.equal(post.log_prob(a, y), loaded.log_prob(a, y))
    assert not torch.equal(a["theta"], post.sample(y, 50, seed=8)["theta"])
    stats = post.infer(y, num_samples=10, seed=0).sample_stats
    assert str(stats["sampler"].values) == "ode" and int(stats["nfe"]) > 0


def test_bad_options_are_refused(linear):
    lg, post = linear
    _, y = lg.draw(seed=3)
    for bad in (dict(rtol=-1.0), dict(num_probes=0), dict(exact="yes"), dict(steps=5)):
        with pytest.raises(OptionError):
            post.sample(y, 3, **bad)
    with pytest.raises(OptionError):
        bayesinv.fit(lg.model, method="flow_matching", num_simulations=50, sigma_min=-0.1)


def field_model(y=None):
    a = pyro.sample("a", dist.Uniform(0.5, 1.5))
    field = pyro.deterministic("field", a * PATTERN)
    return pyro.sample("y", dist.Normal(field, 0.05).to_event(2), obs=y)


def test_field_target_with_a_unet():
    post = bayesinv.fit(field_model, method="flow_matching", target="field", num_simulations=200, seed=0, base_channels=4,
                        channel_mults=(1,), max_epochs=None, max_steps=30, progress=False)  # fmt: skip
    spec = post.config["net"]
    assert spec["network"] == "unet" and spec["grid_slices"]  # y on the target grid enters as channels
    y = (1.1 * PATTERN).numpy()
    draws = post.sample(y, 4, seed=0, rtol=1e-3, atol=1e-3)
    assert draws["field"].shape == (4, SIZE, SIZE) and torch.isfinite(draws["field"]).all()
    lp, se = post.log_prob(draws, y, rtol=1e-3, atol=1e-3, num_probes=2, with_error=True)  # Hutchinson for 64 dims
    assert lp.shape == (4,) and torch.isfinite(lp).all() and (se > 0).all()


def test_flow_matching_times_put_the_log_share_at_small_noise_scales():
    from bayesinv.diffusion.loss import flow_matching_times

    g = torch.Generator().manual_seed(0)
    n, sigma_min = 200_000, 1e-4
    sigma = lambda t: 1 - (1 - sigma_min) * t  # noqa: E731
    t0 = flow_matching_times(n, sigma_min=sigma_min, log_fraction=0.0, generator=g)
    t1 = flow_matching_times(n, sigma_min=sigma_min, log_fraction=1.0, generator=g)
    th = flow_matching_times(n, sigma_min=sigma_min, log_fraction=0.5, generator=g)
    assert 0 <= float(t1.min()) and float(t1.max()) <= 1
    # uniform t: P(sigma < 0.01) = 0.01; log-uniform sigma on [1e-4, 1]: log(100)/log(1e4) = 0.5; half of each: 0.255
    # (binomial standard errors at n = 200,000 are below 0.0012: tolerance 0.005)
    assert float((sigma(t0) < 0.01).double().mean()) == pytest.approx(0.01, abs=0.005)
    assert float((sigma(t1) < 0.01).double().mean()) == pytest.approx(0.5, abs=0.005)
    assert float((sigma(th) < 0.01).double().mean()) == pytest.approx(0.255, abs=0.005)
