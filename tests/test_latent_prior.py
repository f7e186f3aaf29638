r"""method="latent_prior": the flow priors, MALA, MAP reparameterisations, the model's likelihood, refusals, save/load."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
import bayesinv.methods.latent_prior as lp
from bayesinv.errors import OptionError, ProblemError
from bayesinv.models.deblurring import Deblurring
from bayesinv.models.toy import LinearGaussian
from bayesinv.nets.multiscale_flow import MultiscaleFlow, VectorFlowPrior
from tests.models_for_tests import blackbox_model

FAST = dict(max_epochs=20, batch_size=128, num_transforms=2, hidden=(16, 16), progress=False)


# -- the flow priors ------------------------------------------------------------------------------------
def test_multiscale_flow_round_trip_and_log_det():
    torch.manual_seed(0)
    flow = MultiscaleFlow([1, 8, 8], scales=2, steps=1, hidden=4).double()
    for m in flow.modules():  # leave the identity initialisation of the couplings
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    x = torch.randn(3, 64, dtype=torch.float64)
    flow.initialize(x)
    z, logdet = flow.to_latent(x)
    assert z.shape == (3, 64)
    assert torch.allclose(flow.generate(z), x, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: flow.to_latent(v.unsqueeze(0))[0][0], x[0], vectorize=True)
    assert abs(float(torch.linalg.slogdet(jac)[1] - logdet[0].detach())) < 1e-8
    assert flow.sample(5).shape == (5, 64)


def test_vector_flow_prior_round_trip():
    torch.manual_seed(0)
    flow = VectorFlowPrior(3, transforms=2, hidden=(8,))
    x = torch.randn(4, 3)
    z, _ = flow.to_latent(x)
    assert torch.allclose(flow.generate(z), x, atol=1e-5)
    with pytest.raises(ProblemError, match="2 or more"):
        VectorFlowPrior(1)


# -- MALA ------------------------------------------------------------------------------------------------
def test_mala_samples_a_correlated_gaussian():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    log_prob = lambda z: -0.5 * (((z - mean) @ prec) * (z - mean)).sum(-1)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    draws, stats = lp.mala(log_prob, torch.zeros(8, 2, dtype=torch.float64), num_draws=2000, warmup=300, step_size=0.1, generator=gen)
    flat = draws.reshape(-1, 2)
    assert abs(stats["accept_rate"] - 0.574) < 0.1  # the dual-averaging target
    # 16,000 correlated draws: effective size > 1,000, so errors of mean/cov < 0.1
    assert torch.allclose(flat.mean(0), mean, atol=0.1)
    assert torch.allclose(torch.cov(flat.T), cov, atol=0.12)


# -- the whole method on a linear-Gaussian problem with a known posterior ---------------------------------
@pytest.fixture(scope="module")
def linear():
    problem = LinearGaussian(dim=4, noise=0.3, seed=1)
    post = bayesinv.fit(problem.model, method="latent_prior", target="theta", num_simulations=2000, **FAST)
    theta, y = problem.draw(seed=3)
    return problem, post, y


def test_posterior_draws_match_the_exact_posterior(linear):
    problem, post, y = linear
    mean, cov = problem.posterior(y)
    idata = post.infer(y, num_samples=1200, warmup=200, map_steps=200, seed=0)
    draws = idata.posterior["theta"].values.reshape(-1, 4)
    sd = np.sqrt(np.diag(cov))
    # the prior is a flow fitted on 2,000 draws: the mean within 0.25 posterior sd, the sd within 25 %
    assert np.abs(draws.mean(0) - mean).max() < 0.25 * sd.min(), (draws.mean(0), mean)
    assert np.abs(draws.std(0) / sd - 1).max() < 0.25, (draws.std(0), sd)
    assert idata.sample_stats["sampler"].item() == "mala" and 0.3 < float(idata.sample_stats["accept_rate"]) < 0.85


def test_map_reparameterisations(linear):
    problem, post, y = linear
    mean, _ = problem.posterior(y)
    m_beta = post.map(y, reparam="beta", beta=0.5, map_steps=300)["theta"].numpy()
    assert np.abs(m_beta - mean).max() < 0.1  # β = ½: the latent posterior mode ≈ the Gaussian posterior mean
    ll_beta = post.last_map[0]["map_log_lik"]
    m_none = post.map(y, reparam="none", map_steps=300)["theta"].numpy()
    assert post.last_map[0]["map_log_lik"] > ll_beta  # the unpenalised fit explains y better ...
    assert np.linalg.norm(m_none) > np.linalg.norm(m_beta)  # ... with a larger solution
    with pytest.raises(OptionError, match="16 or more"):
        post.map(y, reparam="gaussianize")


def test_the_likelihood_is_the_models_own_law():
    def poisson_model(y=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        return pyro.sample("y", dist.Poisson(torch.exp(theta)).to_event(1), obs=y)

    post = bayesinv.fit(poisson_model, method="latent_prior", target="theta", num_simulations=500, max_epochs=2,
                        num_transforms=1, hidden=(8,), progress=False)  # fmt: skip
    y = torch.tensor([0.0, 3.0, 7.0])
    objective = lp._Objective(post, y)
    z = torch.randn(2, 3)
    ll, x = objective(z)
    theta = post.x_norm.inverse(x)
    expected = dist.Poisson(torch.exp(theta)).log_prob(y).sum(-1)
    assert torch.allclose(ll, expected, atol=1e-4)
    m = post.map(y, reparam="beta", map_steps=200)["theta"]  # MAP of counts: larger counts, larger log-rate
    assert m[0] < m[1] < m[2]


def test_gaussianize_keeps_the_latent_standard_on_a_field():
    problem = Deblurring(size=8, length_scale=2.0)
    post = bayesinv.fit(problem.model, method="latent_prior", target="x", num_simulations=300, max_epochs=2,
                        num_transforms=1, hidden=(8,), progress=False)  # fmt: skip
    assert post.config["architecture"]["flow"] == "multiscale"
    _, y = problem.draw(seed=0)
    x_map = post.map(y, reparam="gaussianize", map_steps=10, block=2)["x"]
    assert x_map.shape == (8, 8) and torch.isfinite(x_map).all()
    assert abs(post.last_map[0]["map_latent_norm2_per_dim"] - 1.0) < 1e-4  # the layers end with a standardization


# -- refusals and save/load -------------------------------------------------------------------------------
def test_one_prior_serves_another_operator(linear, tmp_path):
    problem, post, _ = linear
    other = LinearGaussian(dim=4, num_obs=2, noise=0.3, seed=5)  # another forward matrix, y of 2 entries
    loaded = bayesinv.load(post.save(tmp_path / "lp.bayesinv")).attach(other.model)
    _, y2 = other.draw(seed=4)
    mean, _ = other.posterior(y2)
    m = loaded.map(y2, reparam="beta", map_steps=300)["theta"].numpy()
    assert np.abs(m - mean).max() < 0.15  # the latent posterior mode of the new problem
    loaded.save(tmp_path / "other.bayesinv")  # the observation layout saved is the new one
    assert bayesinv.load(tmp_path / "other.bayesinv").condition.shapes == ((2,),)


def test_registered_as_a_builtin_method():
    from bayesinv.registry import _BUILTIN

    assert "latent_prior" in _BUILTIN  # found by infer/fit/load without importing the method file first
    assert "latent_prior" in bayesinv.available_methods()


def test_black_box_simulator_is_refused_by_name_before_any_work():
    with pytest.raises(ProblemError, match="black-box simulator.*square_sim"):
        bayesinv.fit(blackbox_model, method="latent_prior", num_simulations=100, progress=False)


def test_options_are_validated():
    with pytest.raises(OptionError, match="reparam"):
        lp.LatentPriorSampler(reparam="tikhonov")
    with pytest.raises(OptionError, match="init_scale > 0"):
        lp.LatentPriorSampler(reparam="gaussianize", init_scale=0.0)
    with pytest.raises(OptionError, match="layers"):
        lp.LatentPriorSampler(layers=("whiten", "boxcox"))
    with pytest.raises(OptionError, match="flow"):
        lp.LatentPriorConfig(flow="nsf")
    with pytest.raises(OptionError, match="beta"):
        lp.check_sample({"dim": 64}, lp.LatentPriorSampler(), {"beta"})


def test_save_load_needs_the_model_again(linear, tmp_path):
    problem, post, y = linear
    path = post.save(tmp_path / "lp.bayesinv")
    loaded = bayesinv.load(path)
    with pytest.raises(ProblemError, match="attach"):
        loaded.sample(y, 10)
    loaded.attach(problem.model)
    a = post.map(y, reparam="beta", map_steps=50, seed=1)["theta"]
    b = loaded.map(y, reparam="beta", map_steps=50, seed=1)["theta"]
    assert torch.allclose(a, b, atol=1e-5)
