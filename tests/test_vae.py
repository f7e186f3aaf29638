import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import bayesinv
from bayesinv.amortized.layout import Layout
from bayesinv.errors import OptionError
from bayesinv.methods.vae import TwoStageVAE, VAEConfig, VAEPosterior
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import ProblemError

PROBLEM = LinearGaussian(dim=3, noise=0.5, seed=0)
FAST = dict(num_simulations=3000, hidden=(64, 64), regressor_hidden=(64, 64), batch_size=128, max_epochs=25, patience=None, progress=False)


@pytest.fixture(scope="module")
def post():
    return bayesinv.fit(PROBLEM.model, method="vae", seed=0, **FAST)


@pytest.fixture(scope="module")
def obs():
    theta, y = PROBLEM.draw(seed=3)
    mean, cov = PROBLEM.posterior(y)
    return y, mean, cov


def test_shapes_and_reconstruction(post, obs):
    y = obs[0]
    assert isinstance(post, VAEPosterior) and post.method == "vae"
    assert post.sample(y, 7, seed=0)["theta"].shape == (7, 3)
    ys = np.stack([y, y + 0.1])
    assert post.sample(ys, 5, seed=0)["theta"].shape == (2, 5, 3)
    assert post.reconstruct(y)["theta"].shape == (3,)
    assert post.reconstruct(ys)["theta"].shape == (2, 3)
    idata = post.infer(y, num_samples=11, seed=0)
    assert idata.posterior["theta"].shape == (1, 11, 3) and idata.posterior.attrs["method"] == "vae"
    # spread=0: every draw is the reconstruction decoder(f(y))
    flat = post.sample(y, 4, seed=0, spread=0.0)["theta"]
    assert torch.allclose(flat, post.reconstruct(y)["theta"].expand(4, 3))
    assert len(post.info["latent_spread"]) == post.net.latent_dim == 3


def test_save_load_round_trip(post, obs, tmp_path):
    y = obs[0]
    loaded = bayesinv.load(post.save(tmp_path / "vae.bayesinv"))
    assert isinstance(loaded, VAEPosterior)
    assert torch.equal(post.sample(y, 30, seed=4)["theta"], loaded.sample(y, 30, seed=4)["theta"])
    assert torch.equal(loaded.net.z_spread, post.net.z_spread)


def test_reconstruction_near_posterior_mean(post, obs):
    # Loose by design: decoder(E[z | y]) is not E[θ | y], and the VAE shrinks a little.
    y, mean, cov = obs
    std = np.sqrt(np.diag(cov))
    rec = post.reconstruct(y)["theta"].double().numpy()
    assert np.abs(rec - mean).max() < 0.5 * std.max() + 0.1
    draws = post.sample(y, 4000, seed=0)["theta"].double().numpy()
    assert np.abs(draws.mean(0) - mean).max() < 0.5 * std.max() + 0.1
    # the spread is of the right order, not calibrated (see the module docs)
    assert np.all((draws.std(0) > 0.4 * std) & (draws.std(0) < 2.5 * std))


def test_refuses_to_be_a_proposal(post, obs):
    y = obs[0]
    with pytest.raises(ProblemError, match="no density"):
        bayesinv.infer(PROBLEM.model, y, method="importance", proposal=post, num_samples=10, progress=False)
    with pytest.raises(ProblemError, match="no density"):
        post.log_prob({"theta": torch.zeros(3)}, y)


def test_two_stage_net_and_options(obs):
    net = TwoStageVAE(4, 6, latent_dim=2, hidden=(8,), regressor_hidden=(8,))
    assert net.decoder(net.regress(torch.randn(3, 6))).shape == (3, 4)
    post = bayesinv.fit(
        PROBLEM.model, method="vae", latent_dim=2, embedding="mlp", embed_dim=4, num_simulations=200,
        max_steps=3, hidden=(8,), regressor_hidden=(8,), progress=False,
    )  # fmt: skip
    assert post.net.latent_dim == 2 and post.sample(obs[0], 3, seed=0)["theta"].shape == (3, 3)
    with pytest.raises(ProblemError, match="spread"):
        post.sample(obs[0], 3, spread=-1.0)


def test_train_stages_train_both_stages_and_keep_their_ema_weights():
    torch.manual_seed(0)
    net = TwoStageVAE(4, 6, latent_dim=2, hidden=(8,), regressor_hidden=(8,))
    x, c, calls = torch.randn(10, 4), torch.randn(10, 6), []

    def run(loss_fn, module, data, suffix):  # the shared loop's stand-in: an "EMA copy" with constant weights
        frozen = not any(p.requires_grad for p in net.encoder.parameters())
        finite = bool(torch.isfinite(loss_fn(module, *data)))
        calls.append((suffix, type(module).__name__, [tuple(d.shape) for d in data], frozen, finite))
        ema = copy.deepcopy(module)
        for p in ema.parameters():
            p.data.fill_(0.5 if suffix == ".stage1" else 0.25)
        return SimpleNamespace(model=module, ema_model=ema)

    results = net.train_stages(run, x, c, 0.1, torch.arange(3, 8))
    assert calls == [(".stage1", "Stage1Loss", [(10, 4)], False, True), (".stage2", "Stage2Loss", [(10, 4), (10, 6)], True, True)]
    assert len(results) == 2 and all(p.requires_grad for p in net.parameters())
    assert all(bool((p == 0.5).all()) for m in (net.encoder, net.decoder) for p in m.parameters())
    assert all(bool((p == 0.25).all()) for p in net.regressor.parameters())
    # the latent spread: the RMS of z - f(y) on rows 3..7, with the stage weights (encoder noise: a spread > 0)
    assert net.z_spread.shape == (2,) and bool((net.z_spread > 0).all())


def test_vae_options_and_saved_settings():
    cfg = VAEConfig(latent_dim=3, hidden=(16,), regressor_hidden=(8, 8), embedding="mlp", embed_dim=5, beta=0.5)
    target, condition = Layout(("theta",), ((4,),)), Layout(("y",), ((6,),))
    settings = cfg.vae_settings(target, condition)
    assert settings["beta"] == 0.5 and settings["architecture"] == dict(
        x_dim=4, c_dim=6, latent_dim=3, hidden=[16], regressor_hidden=[8, 8], embedding="mlp", embed_dim=5
    )
    net = TwoStageVAE.from_settings(settings)
    assert net.latent_dim == 3 and net.regress(torch.zeros(2, 6)).shape == (2, 3)
    assert VAEConfig().vae_settings(target, condition)["architecture"]["latent_dim"] == 4  # None: min(D, 32)
    for name, bad in (("beta", -1.0), ("hidden", (0,)), ("embedding", "rnn"), ("latent_dim", 0)):
        with pytest.raises(OptionError, match=f"VAEConfig: option {name}="):
            VAEConfig(**{name: bad})
