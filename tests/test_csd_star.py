r"""CSD*: an unconditional score prior entered part-way from a reconstruction (method="csd_star")."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv.diffusion import VE, predictor_corrector, reverse_from, step_time
from bayesinv.diffusion.from_start import insert_time, sample_from_start
from bayesinv.methods.csd_star import CSDStarPosterior, choose_insert_step
from bayesinv.problem import ProblemError

SIZE = 8
PATTERN = torch.linspace(0.5, 1.5, SIZE)[:, None] * torch.ones(SIZE)  # a ramp image


def model(y=None):
    a = pyro.sample("a", dist.Uniform(0.5, 1.5))
    field = pyro.deterministic("field", a * PATTERN)
    return pyro.sample("y", dist.Normal(field.mean() * torch.ones(3), 0.01).to_event(1), obs=y)


class RampSolver:
    r"""A "reconstruction" of the ramp image from y, far off the prior's images (a bump of 2 on 4 × 4 pixels)."""

    def gauss_newton(self, y, **options):
        y = np.atleast_2d(np.asarray(y))
        bump = np.zeros((SIZE, SIZE))
        bump[2:6, 2:6] = float(options.get("bump", 2.0))
        return y[:, :1, None] * PATTERN.numpy() + bump


@pytest.fixture(scope="module")
def data():
    return bayesinv.simulate(model, 600, seed=0, progress=False)


@pytest.fixture(scope="module")
def post(data):
    torch.set_num_threads(1)
    return bayesinv.fit(
        model, method="csd_star", target="field", data=data, solver=RampSolver(), steps=100, insert_step=40,
        base_channels=8, channel_mults=(1, 2), max_epochs=None, max_steps=300, batch_size=64, lr=2e-3,
        ema_decay=0.99, progress=False,
    )  # fmt: skip


def test_pc_from_an_intermediate_time_reaches_the_data_distribution():
    # data N(0, s0²): the score at t is −x / (s0² + σ²(t)); started from p_{t'} the
    # reverse process must end at N(0, s0²), not at the wider p_{t'}
    proc, s0, t_start = VE(sigma_max=10.0), 0.5, 0.6
    score = lambda x, t: -x / (s0**2 + proc.sigma_sq(t))  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=gen) * float((s0**2 + proc.sigma_sq(torch.tensor(t_start))).sqrt())
    out = predictor_corrector(score, x, proc, steps=200, t_start=t_start, t_min=1e-3, generator=gen).x
    assert out.std().item() == pytest.approx(s0, rel=0.05)


def test_sample_from_start_is_reverse_from_with_n_draws_per_start_and_its_stats():
    # data N(0, s0²) in 2-D, exact score; K' = K forgets the start, K' = 1 stays near it
    proc, s0 = VE(sigma_max=10.0), 0.5
    score = lambda x, t: -x / (s0**2 + proc.sigma_sq(t))  # noqa: E731
    starts = torch.tensor([[3.0, -3.0], [1.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    x, stats = sample_from_start(score, starts, proc, 5, insert_step=7, steps=20, t_min=1e-3, generator=gen)
    ref = reverse_from(score, starts.repeat_interleave(5, 0), proc, insert_step=7, steps=20, t_min=1e-3,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert x.shape == (2, 5, 2) and torch.equal(x.reshape(10, 2), ref.x)
    assert stats == {"sampler": "pc", "insert_step": 7, "steps": 20, "t_insert": step_time(7, 20, 1e-3), "nfe": 7 * 2 + 1,
                     "sigma_insert": pytest.approx(float(proc.sigma(torch.tensor(step_time(7, 20, 1e-3)))))}  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    far = sample_from_start(score, starts, proc, 4000, insert_step=200, steps=200, t_min=1e-3, generator=gen)[0]
    assert far.mean().abs().item() < 0.05 and far.std().item() == pytest.approx(s0, rel=0.05)  # 8,000 draws of 2 coordinates
    near = sample_from_start(score, starts, proc, 100, insert_step=1, steps=200, t_min=1e-3, generator=gen)[0]
    # sigma(t') = 0.03: one predictor-corrector step and the denoising pull (0.18 at most when written)
    assert (near - starts[:, None]).abs().max().item() < 0.3
    assert insert_time(200, 200, 1e-3) == 1.0
    for bad in (0, 201):
        with pytest.raises(ProblemError, match="insert_step K' must lie in 1..K = 200"):
            insert_time(bad, 200, 1e-3)


def test_shapes_options_and_stats(post, data):
    y = data["y"].values[:3]
    draws = post.sample(y, 2, seed=0)["field"]
    assert isinstance(post, CSDStarPosterior) and draws.shape == (3, 2, SIZE, SIZE)
    assert post.insert_step == 40 and post.insert_time() == pytest.approx(post.config["t_min"] + (1 - post.config["t_min"]) * 0.4**2)
    idata = post.infer(y[0], num_samples=2, insert_step=10)
    assert idata.posterior["field"].shape == (1, 2, SIZE, SIZE)
    assert int(idata.sample_stats["insert_step"]) == 10 and int(idata.sample_stats["nfe"]) == 2 * 10 + 1
    with pytest.raises(ProblemError, match="insert_step"):
        post.sample(y, 1, insert_step=101)
    with pytest.raises(ProblemError, match="no sampling option"):
        post.sample(y, 1, sampler="ode")


def test_prior_pulls_the_reconstruction_back_to_the_image_manifold(post, data):
    y, truth = data["y"].values[:40], data["field"].values[:40]
    start = RampSolver().gauss_newton(y)
    out = post.sample(y, 1, seed=1)["field"][:, 0].numpy()
    err_start = ((start - truth) ** 2).mean()
    err_out = ((out - truth) ** 2).mean()
    prior_spread = 2 * ((truth - truth.mean(0)) ** 2).mean()  # MSE between two prior draws
    # 300 training steps: most of the way back (0.37 of the start's error when written), not all
    assert err_start > 0.9 and err_out < 0.6 * err_start and err_out < 3 * prior_spread, (err_out, err_start, prior_spread)
    # K' = 1 of 1000 (σ(t') ≈ 0.05 in normalised units) stays near the start
    near = post.sample(y, 1, seed=1, insert_step=1, steps=1000)["field"][:, 0].numpy()
    assert np.abs(near - start).mean() < 0.3 * np.abs(out - start).mean()


def test_choose_insert_step_and_start(post, data):
    y, truth = data["y"].values[40:60], data["field"].values[40:60]
    best, table = choose_insert_step(post, y, truth, candidates=(1, 40), update=False)
    assert set(table) == {1, 40} and best == 40 and table[40] < table[1]
    # update: the best K' becomes the default, with the K it is a step of; the fitted settings are put back after
    saved = dict(post.config)
    try:
        best, table = choose_insert_step(post, y, truth, candidates=(2, 20), steps=50, update=True)
        assert post.insert_step == best == min(table, key=table.get) and post.config["steps"] == 50
    finally:
        post.config.clear()
        post.config.update(saved)
    same = post.sample(y, 1, seed=3, start=RampSolver().gauss_newton(y))["field"]
    np.testing.assert_allclose(same, post.sample(y, 1, seed=3)["field"], atol=1e-5)


def test_save_load_round_trip(post, data, tmp_path):
    path = tmp_path / "csd.bayesinv"
    post.save(path)
    loaded = bayesinv.load(path)
    assert isinstance(loaded, CSDStarPosterior) and loaded.insert_step == post.insert_step
    y = data["y"].values[:2]
    with pytest.raises(ProblemError, match="solver"):
        loaded.sample(y, 1)
    loaded.solver = RampSolver()
    np.testing.assert_allclose(loaded.sample(y, 1, seed=2)["field"], post.sample(y, 1, seed=2)["field"], atol=1e-5)


def test_needs_one_field_target():
    def vector_model(y=None):
        a = pyro.sample("a", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        return pyro.sample("y", dist.Normal(a, 0.1).to_event(1), obs=y)

    with pytest.raises(ProblemError, match="2-D field"):
        bayesinv.fit(vector_model, method="csd_star", num_simulations=20, progress=False)
