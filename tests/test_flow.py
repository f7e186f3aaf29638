import math

import numpy as np
import pytest
import torch

import bayesinv
from bayesinv.amortized import AmortizedPosterior
from bayesinv.methods.flow import ConditionalFlow
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import ProblemError

# prior_scale=3 makes the normaliser's log-Jacobian (3 log 3 ≈ 3.3 nats) visible in log_prob
PROBLEM = LinearGaussian(dim=3, noise=0.5, prior_scale=3.0, seed=0)
FAST = dict(num_simulations=3000, hidden=(48, 48), batch_size=128, max_epochs=25, patience=None, progress=False)


@pytest.fixture(scope="module")
def post():
    return bayesinv.fit(PROBLEM.model, method="flow", seed=0, **FAST)


@pytest.fixture(scope="module")
def obs():
    theta, y = PROBLEM.draw(seed=3)
    mean, cov = PROBLEM.posterior(y)
    return y, mean, cov


def log_gauss(x, mean, cov):
    d = x - mean
    prec = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.einsum("ni,ij,nj->n", d, prec, d) + logdet + len(mean) * math.log(2 * math.pi))


def test_shapes(post, obs):
    y = obs[0]
    assert isinstance(post, AmortizedPosterior) and post.method == "flow"
    assert post.sample(y, 7, seed=0)["theta"].shape == (7, 3)
    ys = np.stack([y, y + 0.1, y - 0.1, y])
    assert post.sample(ys, 5, seed=0)["theta"].shape == (4, 5, 3)
    idata = post.infer(y, num_samples=11, seed=0)
    assert idata.posterior["theta"].shape == (1, 11, 3) and idata.posterior.attrs["method"] == "flow"
    draws = post.sample(y, 6, seed=1)
    assert post.log_prob(draws, y).shape == (6,)
    values, log_q = post.sample_and_log_prob(y, 9)
    assert values["theta"].shape == (9, 3) and log_q.shape == (9,) and log_q.dtype == torch.float64
    assert torch.isfinite(log_q).all()


def test_same_seed_same_draws(post, obs):
    y = obs[0]
    a, b = post.sample(y, 20, seed=5)["theta"], post.sample(y, 20, seed=5)["theta"]
    assert torch.equal(a, b) and not torch.equal(a, post.sample(y, 20, seed=6)["theta"])


def test_save_load_round_trip(post, obs, tmp_path):
    y = obs[0]
    path = post.save(tmp_path / "flow.bayesinv")
    loaded = bayesinv.load(path)
    assert isinstance(loaded, AmortizedPosterior) and loaded.config == post.config
    a, b = post.sample(y, 50, seed=2)["theta"], loaded.sample(y, 50, seed=2)["theta"]
    assert torch.equal(a, b)
    assert torch.allclose(post.log_prob({"theta": a}, y), loaded.log_prob({"theta": a}, y))


def test_accuracy_linear_gaussian(post, obs):
    y, mean, cov = obs
    draws = post.sample(y, 4000, seed=0)["theta"].double().numpy()
    std = np.sqrt(np.diag(cov))
    assert np.abs(draws.mean(0) - mean).max() < 0.25 * std.max() + 0.05
    assert np.allclose(draws.std(0), std, rtol=0.25)


def test_log_prob_is_a_density_in_site_units(post, obs):
    # E_q[log q − log p] is KL(q ‖ p) ≥ 0 and small for a good flow; a missing
    # normaliser Jacobian (Σ log scale ≈ 3.3 here) would push it far off.
    y, mean, cov = obs
    torch.manual_seed(0)
    values, log_q = post.sample_and_log_prob(y, 4000)
    kl = (log_q.numpy() - log_gauss(values["theta"].double().numpy(), mean, cov)).mean()
    assert -0.05 < kl < 0.3, kl


def test_importance_corrected_flow(post, obs):
    y, mean, cov = obs
    idata = bayesinv.infer(
        PROBLEM.model, y, method="importance", proposal=post, num_samples=2000, num_proposals=5000, progress=False
    )
    assert float(idata.sample_stats["ess_fraction"]) > 0.5
    draws = idata.posterior["theta"].values.reshape(-1, 3)
    std = np.sqrt(np.diag(cov))
    assert np.abs(draws.mean(0) - mean).max() < 0.1 * std.max() + 0.02
    assert np.allclose(draws.std(0), std, rtol=0.1)


@pytest.mark.parametrize("kind", ["maf", "realnvp", "nsf_coupling"])
def test_other_flows_and_embedding(kind, obs):
    post = bayesinv.fit(
        PROBLEM.model, method="flow", flow=kind, embedding="mlp", embed_dim=8, num_simulations=200,
        max_steps=3, num_transforms=2, hidden=(16,), progress=False,
    )  # fmt: skip
    assert post.sample(obs[0], 4, seed=0)["theta"].shape == (4, 3)
    assert post.config["architecture"]["flow"] == kind


def test_conditional_flow_returns_distribution():
    net = ConditionalFlow(2, 4, flow="maf", hidden=(8,))
    q = net(torch.randn(5, 4))
    assert isinstance(q, torch.distributions.Distribution)
    assert q.sample((3,)).shape == (3, 5, 2) and q.log_prob(torch.randn(5, 2)).shape == (5,)


def test_bad_options():
    with pytest.raises(ProblemError, match="unknown flow"):
        bayesinv.fit(PROBLEM.model, method="flow", flow="glow", num_simulations=50, progress=False)
    with pytest.raises(ProblemError, match="alpha"):
        bayesinv.fit(PROBLEM.model, method="flow", alpha=1.0, num_simulations=50, max_steps=1, progress=False)
    with pytest.raises(ProblemError, match="cnn"):
        bayesinv.fit(PROBLEM.model, method="flow", embedding="cnn", num_simulations=50, max_steps=1, progress=False)


# -- field targets: the multi-scale conditional coupling flow ---------------------------
def field_model(y=None):
    import pyro
    import pyro.distributions as dist

    E = pyro.sample("E", dist.Normal(torch.zeros(8, 8), 1.0).to_event(2))
    return pyro.sample("y", dist.Normal(E, 0.5).to_event(2), obs=y)


def test_multiscale_flow_is_invertible_with_exact_log_det():
    from bayesinv.nets.coupling import MultiscaleConditionalFlow

    torch.manual_seed(0)
    net = MultiscaleConditionalFlow([1, 8, 8], 5, scales=2, blocks=2, channels=8, cond_channels=4)
    for m in net.modules():  # leave the identity initialisation
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.1)
    c = torch.randn(2, 5)
    q = net(c)
    x = q.sample((3,))
    assert x.shape == (3, 2, 64) and q.log_prob(x).shape == (3, 2)
    _, feats = net.conditioner(c)
    zs, logdet = net._to_latent(x[0].reshape(2, 1, 8, 8), feats)
    assert [tuple(z.shape[1:]) for z in zs] == net._latent_shapes() == [(2, 4, 4), (8, 2, 2)]
    assert torch.allclose(net._from_latent(zs, feats).reshape(2, 64), x[0], atol=1e-5)

    def latent(v):
        out, _ = net._to_latent(v.reshape(1, 1, 8, 8), [f[:1] for f in feats])
        return torch.cat([z.flatten(1) for z in out], 1)[0]

    jac = torch.autograd.functional.jacobian(latent, x[0, 0])
    assert torch.allclose(torch.slogdet(jac)[1], logdet[0], atol=1e-4)


def test_multiscale_flow_fit_save_load(tmp_path):
    post = bayesinv.fit(
        field_model, method="flow", flow="multiscale", alpha=1.0, scales=2, num_transforms=1, hidden=(8,),
        num_simulations=300, max_steps=20, batch_size=64, progress=False,
    )  # fmt: skip
    y = torch.randn(8, 8)
    draws = post.sample(y, 6, seed=0)["E"]
    assert draws.shape == (6, 8, 8) and torch.isfinite(draws).all()
    assert post.log_prob({"E": draws}, y).shape == (6,)
    assert post.sample(torch.randn(2, 8, 8), 3, seed=0)["E"].shape == (2, 3, 8, 8)
    loaded = bayesinv.load(post.save(tmp_path / "field.bayesinv"))
    assert torch.equal(loaded.sample(y, 6, seed=0)["E"], draws)
    with pytest.raises(ProblemError, match="multiscale"):
        bayesinv.fit(PROBLEM.model, method="flow", flow="multiscale", num_simulations=50, max_steps=1, progress=False)


def _lognormal_model(y=None):
    import pyro
    import pyro.distributions as dist

    s = pyro.sample("s", dist.LogNormal(1.0, 1.0))
    return pyro.sample("y", dist.Normal(torch.log(s), 0.5), obs=y)


@pytest.mark.parametrize("kind", ["log", ("log10", 5.0)])
def test_log_prob_with_a_target_transform_is_a_density_in_site_units(kind):
    # log s | y is N(2.6, 0.2) at y = 3: the log-Jacobian of the transform (−log s, about −2.6 nats,
    # and −log ln 10 for log10) is far outside the tolerance if it is missing or has the wrong sign
    post = bayesinv.fit(_lognormal_model, method="flow", transforms={"s": kind}, seed=0, **FAST)
    y = torch.tensor(3.0)
    torch.manual_seed(0)
    values, log_q = post.sample_and_log_prob(y, 4000)
    s = values["s"].double()
    log_p = torch.distributions.LogNormal(2.6, math.sqrt(0.2)).log_prob(s)
    kl = float((log_q - log_p).mean())
    assert -0.05 < kl < 0.3, kl
    # the same density from log_prob on given values, and the importance correction on top of it
    torch.testing.assert_close(post.log_prob({"s": s[:5]}, y).double(), log_q[:5], rtol=1e-4, atol=1e-4)
    idata = bayesinv.infer(_lognormal_model, y, method="importance", proposal=post, num_samples=1000, num_proposals=4000,
                           seed=0, progress=False)  # fmt: skip
    assert float(idata.sample_stats["ess_fraction"]) > 0.5
    log_s = np.log(idata.posterior["s"].values.ravel())
    assert abs(log_s.mean() - 2.6) < 0.05 and abs(log_s.std() - math.sqrt(0.2)) < 0.05
