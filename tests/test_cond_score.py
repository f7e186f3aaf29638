import zipfile

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import bayesinv
from bayesinv.io import PosteriorFileError
from bayesinv.amortized import AmortizedPosterior
from bayesinv.methods.cond_score import CondScoreConfig
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import ProblemError
from scipy.stats import multivariate_normal

FAST = dict(max_epochs=None, patience=None, batch_size=256)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    r"""One torch thread: faster than two on a shared 2-core machine (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear():
    r"""One cond_score fit on a 2-D linear-Gaussian problem, shared by the tests below."""
    lg = LinearGaussian(dim=2, noise=0.5, seed=0)
    cfg = CondScoreConfig(hidden=(128, 128, 128), max_steps=2000, **FAST)
    post = bayesinv.fit(lg.model, method="cond_score", num_simulations=4000, seed=0, config=cfg, progress=False)
    return lg, post


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_recovers_linear_gaussian_posterior(linear, sampler):
    # tolerances: mean within 0.25 posterior std, std within 20 %
    lg, post = linear
    for obs_seed in (3, 4):
        _, y = lg.draw(seed=obs_seed)
        mean, cov = lg.posterior(y)
        std = np.sqrt(np.diag(cov))
        theta = post.sample(y, 4000, seed=0, sampler=sampler)["theta"].numpy()
        assert theta.shape == (4000, 2)
        np.testing.assert_array_less(np.abs(theta.mean(0) - mean), 0.25 * std)
        np.testing.assert_array_less(np.abs(theta.std(0) / std - 1), 0.2)


def test_batch_of_observations_in_one_call(linear):
    lg, post = linear
    ys = np.stack([lg.draw(seed=s)[1] for s in range(6)]).reshape(2, 3, 2)
    draws = post.sample(ys, 50, seed=1, sampler="sde", steps=50, chunk_size=64)
    assert draws["theta"].shape == (2, 3, 50, 2)
    single = post.sample(ys[1, 2], 50, seed=1, sampler="sde", steps=50)["theta"]
    assert single.shape == (50, 2)
    # each observation gets its own posterior: means follow the analytic ones
    means = draws["theta"].mean(-2).reshape(6, 2).numpy()
    exact = np.stack([lg.posterior(y)[0] for y in ys.reshape(6, 2)])
    assert np.corrcoef(means[:, 0], exact[:, 0])[0, 1] > 0.9
    idatas = post.infer(ys[0], num_samples=20, steps=20, sampler="sde")
    assert isinstance(idatas, list) and len(idatas) == 3
    assert idatas[0].posterior["theta"].shape == (1, 20, 2)


def test_save_load_same_draws(linear, tmp_path):
    lg, post = linear
    _, y = lg.draw(seed=3)
    path = post.save(tmp_path / "new" / "folder" / "lg.bayesinv")  # the folder is created
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = bayesinv.load(path)
    assert isinstance(loaded, AmortizedPosterior) and loaded.method == "cond_score" and repr(loaded) == repr(post)
    for options in ({"sampler": "sde", "steps": 100}, {"sampler": "ode"}):
        a = post.sample(y, 200, seed=7, **options)["theta"]
        b = loaded.sample(y, 200, seed=7, **options)["theta"]
        assert torch.equal(a, b)
    assert not torch.equal(a, post.sample(y, 200, seed=8, sampler="ode")["theta"])


def test_corrupted_and_wrong_version_files(linear, tmp_path):
    _, post = linear
    path = post.save(tmp_path / "good.bayesinv")
    broken = tmp_path / "broken.bayesinv"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(PosteriorFileError, match="not a readable bayesinv posterior"):
        bayesinv.load(broken)
    with zipfile.ZipFile(path) as zf:
        meta, weights = zf.read("meta.json").decode(), zf.read("tensors.pt")
    old = tmp_path / "old.bayesinv"
    with zipfile.ZipFile(old, "w") as zf:
        zf.writestr("meta.json", meta.replace('"format_version": 2', '"format_version": 99'))
        zf.writestr("tensors.pt", weights)
    with pytest.raises(PosteriorFileError, match="format version 99.*reads versions"):
        bayesinv.load(old)
    garbage = tmp_path / "garbage.bayesinv"
    with zipfile.ZipFile(garbage, "w") as zf:
        zf.writestr("meta.json", meta)
        zf.writestr("tensors.pt", b"not a tensor file")
    with pytest.raises(PosteriorFileError, match="weights cannot be read"):
        bayesinv.load(garbage)


def test_bad_observation_shape_names_site_and_shapes(linear):
    _, post = linear
    with pytest.raises(ProblemError, match=r"site 'y' has shape \(3,\).*site 'y' with shape \(2,\)"):
        post.sample(np.zeros(3, dtype=np.float32), 10)
    with pytest.raises(ProblemError, match="no sampling option"):
        post.sample(np.zeros(2, dtype=np.float32), 10, sampler="sde", step=3)
    with pytest.raises(ProblemError, match="sampler 'langevin' does not fit process 've'"):
        post.sample(np.zeros(2, dtype=np.float32), 10, sampler="langevin")
    with pytest.raises(ProblemError, match=r"sampler 'ode' does not use option\(s\) \['steps'\]"):
        post.sample(np.zeros(2, dtype=np.float32), 10, sampler="ode", steps=100)
    with pytest.raises(ProblemError, match=r"sampler 'sde' does not use option\(s\) \['power', 'rtol'\]"):
        post.sample(np.zeros(2, dtype=np.float32), 10, sampler="sde", rtol=1e-3, power=2)


def test_guide_interface_with_deterministic_sites(linear):
    lg, post = linear
    _, y = lg.draw(seed=3)
    tr = poutine.trace(post).get_trace(torch.as_tensor(y))
    assert tr.nodes["theta"]["value"].shape == (2,)
    with pyro.plate("_bayesinv_draws", 5, dim=-1):
        tr = poutine.trace(post).get_trace(torch.as_tensor(y))
    theta, mean_y = tr.nodes["theta"]["value"], tr.nodes["mean_y"]["value"]
    assert theta.shape == (5, 2) and tr.nodes["mean_y"]["is_observed"]  # deterministic: not a proposal site
    torch.testing.assert_close(mean_y, theta @ lg.A.float().T)


def test_log_prob_is_the_ode_samplers_density(linear):
    # measured: mean |log q - log p| 0.26 over 1,000 draws (q's sd is 10-19 % wide); bound 0.4
    lg, post = linear
    _, y = lg.draw(seed=3)
    mean, cov = lg.posterior(y)
    draws = post.sample(y, 1000, seed=1, sampler="ode", denoise=False)
    log_q = post.log_prob(draws, y).numpy()
    assert np.abs(log_q - multivariate_normal(mean, cov).logpdf(draws["theta"].numpy())).mean() < 0.4
    # self-consistency: exp(log q) on a 50 x 50 grid over +-8 posterior sd sums to 1 within 2 % (measured 1.0000)
    std = np.sqrt(np.diag(cov))
    axes = [np.linspace(m - 8 * s, m + 8 * s, 50) for m, s in zip(mean, std)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)
    mass = np.exp(post.log_prob({"theta": grid}, y).double().numpy()).sum() * np.prod([a[1] - a[0] for a in axes])
    assert abs(mass - 1) < 0.02


def test_importance_with_the_cond_score_proposal(linear):
    # measured: ESS fraction 0.93; bounds 0.6 and posterior mean within 0.2 sd
    lg, post = linear
    _, y = lg.draw(seed=3)
    mean, cov = lg.posterior(y)
    idata = bayesinv.infer(lg.model, y, method="importance", proposal=post, num_samples=1000, num_proposals=2000, seed=0,
                           progress=False)  # fmt: skip
    assert float(idata.sample_stats["ess_fraction"]) > 0.6
    theta = idata.posterior["theta"].values.reshape(-1, len(mean))  # every chain of the resample
    np.testing.assert_array_less(np.abs(theta.mean(0) - mean), 0.2 * np.sqrt(np.diag(cov)))


def test_log_prob_refuses_samplers_without_a_density(linear):
    lg, post = linear
    _, y = lg.draw(seed=3)
    theta = {"theta": np.zeros((3, 2), dtype=np.float32)}
    with pytest.raises(ProblemError, match="sampler='sde' is stochastic"):
        post.log_prob(theta, y, sampler="sde")
    with pytest.raises(ProblemError, match="denoise=True"):
        post.log_prob(theta, y, denoise=True)


def test_infer_end_to_end_returns_inference_data():
    lg = LinearGaussian(dim=2, noise=0.5, seed=0)
    _, y = lg.draw(seed=1)
    idata = bayesinv.infer(
        lg.model, y, method="cond_score", num_samples=100, num_simulations=500, hidden=(32, 32),
        max_epochs=3, sampler="sde", steps=50, progress=False,
    )  # fmt: skip
    assert isinstance(idata, az.InferenceData)
    assert idata.posterior["theta"].shape == (1, 100, 2)
    attrs = idata.posterior.attrs
    assert attrs["method"] == "cond_score" and attrs["num_simulations"] == 500
    assert attrs["fit_time_s"] > 0 and attrs["sample_time_s"] > 0
    assert '"sampler": "sde"' in attrs["options"]
    stats = idata.sample_stats
    assert str(stats["sampler"].values) == "sde" and int(stats["nfe"]) == 51
    assert float(stats["sigma_max"]) > float(stats["sigma_min"]) > 0
    np.testing.assert_allclose(idata.observed_data["y"].values, y)


def test_patience_none_keyword_turns_early_stopping_off():
    # ``patience=None`` as a keyword means "no early stopping", as in CondScoreConfig, not "the default".
    lg = LinearGaussian(dim=2, noise=0.5, seed=0)
    common = dict(num_simulations=200, hidden=(16,), max_epochs=2, progress=False)
    assert bayesinv.fit(lg.model, method="cond_score", **common).config["patience"] == CondScoreConfig().patience
    assert bayesinv.fit(lg.model, method="cond_score", patience=None, **common).config["patience"] is None
    post = bayesinv.fit(lg.model, method="cond_score", num_simulations=200, hidden=(16,), max_epochs=None,
                        config=CondScoreConfig(max_steps=5), progress=False)  # fmt: skip
    assert post.config["max_epochs"] is None and post.info["train_steps"] == 5


def test_ncsn_levels_chosen_and_langevin_runs(tmp_path):
    lg = LinearGaussian(dim=2, noise=0.5, seed=0)
    _, y = lg.draw(seed=1)
    post = bayesinv.fit(lg.model, method="cond_score", num_simulations=500, process="ncsn", hidden=(32, 32),
                        config=CondScoreConfig(max_steps=50, **FAST), progress=False, checkpoint=str(tmp_path / "ck.pt"))  # fmt: skip
    levels = post.config["net"]["process"]
    assert levels["sigmas"][0] > 1.0 and levels["sigmas"][-1] == pytest.approx(0.01) and len(levels["sigmas"]) >= 20
    assert levels["eps"] > 0 and (tmp_path / "ck.pt").exists()
    idata = post.infer(y, num_samples=30, seed=0)
    assert idata.posterior["theta"].shape == (1, 30, 2) and str(idata.sample_stats["sampler"].values) == "langevin"
    assert int(idata.sample_stats["nfe"]) == 5 * len(levels["sigmas"]) + 1
    with pytest.raises(ProblemError, match="process='ncsn'.*no tractable density"):
        post.log_prob(post.sample(y, 3, seed=0), y)
    with pytest.raises(ProblemError, match="process='ncsn'.*no tractable density"):
        bayesinv.infer(lg.model, y, method="importance", proposal=post, num_samples=10, num_proposals=50)


def test_mask_condition_and_log_transform():
    def model(y=None):
        E = pyro.sample("E", dist.LogNormal(torch.zeros(2), 0.3).to_event(1))
        mask = pyro.sample("mask", dist.Bernoulli(0.7 * torch.ones(3)).to_event(1))
        u = torch.stack([E[..., 0], E[..., 1], E.sum(-1)], -1)
        reading = torch.where(mask > 0, u, -torch.ones_like(u))  # off sensors read -1
        return pyro.sample("y", dist.Normal(reading, 0.05).to_event(1), obs=y)

    post = bayesinv.fit(model, method="cond_score", num_simulations=300, condition="mask", transforms={"E": "log10"},
                        hidden=(16,), config=CondScoreConfig(max_steps=20, **FAST), progress=False)  # fmt: skip
    assert post.target.names == ("E",) and post.condition.names == ("y", "mask")
    draws = post.sample({"y": np.array([1.0, -1.0, 2.0]), "mask": np.array([1.0, 0.0, 1.0])}, 10, steps=10, sampler="sde")
    assert draws["E"].shape == (10, 2) and (draws["E"] > 0).all()
    with pytest.raises(ProblemError, match=r"conditions on \['y', 'mask'\]: pass y as a dict"):
        post.sample(np.array([1.0, -1.0, 2.0]), 5)
    with pytest.raises(ProblemError, match="missing conditioning value.*mask"):
        post.sample({"y": np.array([1.0, -1.0, 2.0])}, 5)


def test_field_target_unet_smoke(tmp_path):
    def model(y=None):
        E = pyro.sample("E", dist.Normal(torch.zeros(8, 8), 1.0).to_event(2))
        y_mean = torch.nn.functional.avg_pool2d(E.unsqueeze(-3), 3, stride=1, padding=1).squeeze(-3)
        return pyro.sample("y", dist.Normal(y_mean, 0.1).to_event(2), obs=y)

    post = bayesinv.fit(model, method="cond_score", num_simulations=64, config=CondScoreConfig(
        max_steps=3, base_channels=8, channel_mults=(1, 2), **FAST), progress=False)  # fmt: skip
    assert post.config["net"]["network"] == "unet" and post.config["net"]["grid_slices"] == [[0, 64, 1]]
    ys = np.zeros((2, 8, 8), dtype=np.float32)
    draws = post.sample(ys, 3, seed=0, sampler="sde", steps=4)
    assert draws["E"].shape == (2, 3, 8, 8)
    loaded = bayesinv.load(post.save(tmp_path / "unet.bayesinv"))
    assert torch.equal(loaded.sample(ys, 3, seed=0, sampler="sde", steps=4)["E"], draws["E"])

    def model_vec_obs(y=None):  # y not on the grid: CNN-free MLP embedding
        E = pyro.sample("E", dist.Normal(torch.zeros(8, 8), 1.0).to_event(2))
        return pyro.sample("y", dist.Normal(E.mean((-1, -2)).unsqueeze(-1).expand(*E.shape[:-2], 5), 0.1).to_event(1), obs=y)

    post = bayesinv.fit(model_vec_obs, method="cond_score", num_simulations=64, config=CondScoreConfig(
        max_steps=2, base_channels=8, channel_mults=(1, 2), **FAST), progress=False)  # fmt: skip
    assert post.config["net"]["embedding"]["kind"] == "mlp"
    assert post.sample(np.zeros(5), 2, sampler="sde", steps=3)["E"].shape == (2, 8, 8)


def test_thresholded_score_clips_the_denoiser_and_keeps_it_inside():
    from bayesinv.diffusion import VE, thresholded_score, tweedie_denoise

    process = VE(sigma_max=5.0)
    far = lambda x, t: (3.0 - x) / process.sigma_sq(t)  # noqa: E731  (the score of a point mass at 3: x̂₀ = 3)
    inside = lambda x, t: (0.2 - x) / process.sigma_sq(t)  # noqa: E731  (x̂₀ = 0.2, inside [-1, 1])
    x, t = torch.linspace(-4, 4, 9).reshape(9, 1), torch.tensor(0.3)
    low, high = torch.tensor([-1.0]), torch.tensor([1.0])
    torch.testing.assert_close(tweedie_denoise(thresholded_score(far, process, low, high), x, t, process), torch.ones(9, 1))
    torch.testing.assert_close(thresholded_score(inside, process, low, high)(x, t), inside(x, t))  # unchanged inside


def test_clip_keeps_draws_of_an_under_trained_network_in_the_training_range(linear, tmp_path):
    lg, post = linear
    rough = bayesinv.fit(lg.model, method="cond_score", num_simulations=500, seed=0, progress=False,
                         config=CondScoreConfig(hidden=(32,), max_steps=20, **FAST))  # fmt: skip  (barely trained)
    lo, hi = (np.asarray(r) for r in zip(*rough.config["x_range"]))
    _, y = lg.draw(seed=3)
    norm = lambda d: rough.x_norm(torch.as_tensor(d).reshape(-1, 2)).numpy()  # noqa: E731
    free = norm(rough.sample(y, 400, seed=0, sampler="sde", steps=100)["theta"])
    clipped = norm(rough.sample(y, 400, seed=0, sampler="sde", steps=100, clip=True)["theta"])
    assert (free < lo - 1e-3).any() or (free > hi + 1e-3).any()  # measured: 90 % of the draws outside
    assert (clipped >= lo - 1e-5).all() and (clipped <= hi + 1e-5).all()  # the final Tweedie step is clipped: exactly inside
    idata = rough.infer(y, 20, seed=0, sampler="ode", clip=True)
    assert bool(idata.sample_stats["clip"].values)
    # a trained network's draws barely change (its denoiser stays in range): posterior mean within 0.1 std
    a = post.sample(y, 2000, seed=0, sampler="ode")["theta"].numpy()
    b = post.sample(y, 2000, seed=0, sampler="ode", clip=True)["theta"].numpy()
    np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)), 0.1 * a.std(0))
    with pytest.raises(ProblemError, match="clip=True has none"):
        post.log_prob({"theta": a[:5]}, y, clip=True)
    # a file saved without the range refuses clip=True by name
    post.save(tmp_path / "p.bayesinv")
    old = bayesinv.load(tmp_path / "p.bayesinv")
    del old.config["x_range"]
    with pytest.raises(ProblemError, match="refit it to sample with clip=True"):
        old.sample(y, 5, clip=True)
