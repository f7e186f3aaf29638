r"""Tests for bayesinv.distributions: WrappedPhase and Implicit."""

import functools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import integrate, special, stats

from bayesinv.distributions import Implicit, LikelihoodFreeError, WrappedPhase, wrap_phase

PI = math.pi


def density_formula(phi: np.ndarray, k: float) -> np.ndarray:
    r"""The density exactly as written in the module docstring (float64 NumPy)."""
    phi = np.asarray(phi, dtype=np.float64)
    return np.exp(-(k**2) / 2) / (2 * PI) + np.sqrt(1 / (8 * PI)) * k * np.exp(
        -(k**2) / 2 * np.sin(phi) ** 2
    ) * np.cos(phi) * (1 + special.erf(k * np.cos(phi) / np.sqrt(2)))


def log_density(phi: np.ndarray, k: float) -> np.ndarray:
    r"""log_prob of WrappedPhase(0, k), float64."""
    d = WrappedPhase(torch.tensor(0.0, dtype=torch.float64), torch.tensor(k, dtype=torch.float64))
    return d.log_prob(torch.as_tensor(phi, dtype=torch.float64)).numpy()


def density(phi: np.ndarray, k: float) -> np.ndarray:
    return np.exp(log_density(phi, k))


def numerical_cdf(k: float, n: int = 40_001):
    grid = np.linspace(-PI, PI, n)
    cdf = integrate.cumulative_trapezoid(density(grid, k), grid, initial=0.0)
    cdf /= cdf[-1]
    return lambda x: np.interp(x, grid, cdf)


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    torch.manual_seed(0)
    np.random.seed(0)


# ---------------------------------------------------------------- wrap_phase


def test_wrap_phase_endpoints_and_range():
    x = torch.tensor([PI, -PI, 3 * PI, -3 * PI, 0.0, 4.0, -4.0], dtype=torch.float64)
    expected = torch.tensor([PI, PI, PI, PI, 0.0, 4.0 - 2 * PI, 2 * PI - 4.0], dtype=torch.float64)
    assert torch.allclose(wrap_phase(x), expected, atol=1e-12)

    x = 100 * torch.randn(10_000)
    y = wrap_phase(x)
    assert bool((y > -PI).all()) and bool((y <= PI).all())
    assert torch.allclose(torch.cos(y), torch.cos(x), atol=1e-3)
    assert torch.allclose(torch.sin(y), torch.sin(x), atol=1e-3)
    assert wrap_phase(torch.tensor(3)).dtype == torch.get_default_dtype()


# ---------------------------------------------------------------- WrappedPhase density


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 3.0, 10.0])
def test_log_prob_matches_formula(k):
    phi = np.linspace(-PI, PI, 2001)[1:]
    ref = density_formula(phi, k)
    keep = k * np.cos(phi) > -2.0  # below, the float64 formula itself cancels: see the mpmath test
    assert np.allclose(density(phi, k)[keep], ref[keep], rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("k", [3.0, 30.0, 1000.0])
def test_log_prob_tails_against_mpmath(k):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    phis = [0.0, 1e-3, 0.5, PI / 2, 2.0, 3.0, PI]

    def ref(phi):
        # the docstring formula with 1 + erf(z) written as erfc(-z): mathematically the
        # same, but 1 + erf(z) would need ~k^2/4.6 digits to survive the cancellation
        kk, p = mpmath.mpf(k), mpmath.mpf(phi)
        val = mpmath.exp(-(kk**2) / 2) / (2 * mpmath.pi) + mpmath.sqrt(1 / (8 * mpmath.pi)) * kk * mpmath.exp(
            -(kk**2) / 2 * mpmath.sin(p) ** 2
        ) * mpmath.cos(p) * mpmath.erfc(-kk * mpmath.cos(p) / mpmath.sqrt(2))
        return float(mpmath.log(val))

    got = log_density(np.array(phis), k)
    expected = np.array([ref(p) for p in phis])
    assert np.all(np.isfinite(got))
    assert np.allclose(got, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 3.0, 10.0, 50.0])
def test_density_integrates_to_one(k):
    total, _ = integrate.quad(lambda p: float(density(p, k)), -PI, PI, points=[0.0], limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_k_zero_is_uniform():
    d = WrappedPhase(torch.tensor(1.0), torch.tensor(0.0))
    lp = d.log_prob(torch.linspace(-PI, PI, 11))
    assert torch.allclose(lp, torch.full_like(lp, -math.log(2 * PI)))


@pytest.mark.parametrize("k", [0.0, 0.7, 2.0, 10.0])
def test_samples_match_density_ks(k):
    torch.manual_seed(1234)
    phase = 0.4
    y = WrappedPhase(torch.tensor(phase, dtype=torch.float64), torch.tensor(k, dtype=torch.float64)).sample(
        (4000,)
    )
    phi = wrap_phase(y - phase).numpy()
    result = stats.kstest(phi, numerical_cdf(k))
    assert result.pvalue > 1e-3


def test_samples_are_not_from_a_wrong_k():
    # the KS test has power: samples at k=2 are rejected against the k=1.5 density
    torch.manual_seed(1234)
    y = WrappedPhase(torch.tensor(0.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)).sample((4000,))
    assert stats.kstest(y.numpy(), numerical_cdf(1.5)).pvalue < 1e-3


def test_log_prob_of_wrapped_measurement():
    k = 2.5
    phase = torch.tensor([3.0, 3.1, -3.1, PI, 0.0], dtype=torch.float64)
    y = torch.tensor([-3.1, 3.0, 3.1, -3.0, PI], dtype=torch.float64)
    d = WrappedPhase(phase, torch.tensor(k, dtype=torch.float64), validate_args=True)
    diff = wrap_phase(y - phase)
    expected_diff = torch.tensor([2 * PI - 6.1, -0.1, 6.2 - 2 * PI, PI - 3.0, PI], dtype=torch.float64)
    assert torch.allclose(diff, expected_diff, atol=1e-12)
    expected = np.log(density_formula(diff.numpy(), k))
    assert np.allclose(d.log_prob(y).numpy(), expected, rtol=1e-10)
    # periodic in the measurement, and both endpoints are in the support
    assert torch.allclose(d.log_prob(torch.tensor(PI)), d.log_prob(torch.tensor(-PI)))
    assert torch.allclose(
        WrappedPhase(phase, k, validate_args=False).log_prob(y + 2 * PI), d.log_prob(y), atol=1e-9
    )


def test_large_k_concentrates_on_phase():
    phase = torch.tensor([PI - 0.01, -PI + 0.01, 0.0, 1.0, PI])
    y = WrappedPhase(phase, torch.tensor(200.0)).sample((2000,))
    err = wrap_phase(y - phase).abs()
    assert float((err < 0.05).float().mean()) >= 0.99
    assert bool((y > -PI).all()) and bool((y <= PI).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_finite_for_huge_k(dtype):
    k = torch.tensor(1000.0, dtype=dtype, requires_grad=True)
    phase = torch.tensor(0.3, dtype=dtype, requires_grad=True)
    d = WrappedPhase(phase, k, validate_args=True)
    y = wrap_phase(phase.detach() + torch.tensor([0.0, PI, PI / 2, 1e-4, -2.5], dtype=dtype))
    lp = d.log_prob(y)
    assert lp.dtype == dtype
    assert bool(torch.isfinite(lp).all())
    # peak: log(k / sqrt(2 pi)) to leading order; opposite side: about -k^2/2
    assert lp[0].item() == pytest.approx(math.log(1000.0 / math.sqrt(2 * PI)), abs=1e-3)
    assert lp[1].item() == pytest.approx(-(1000.0**2) / 2 - math.log(1e6) - math.log(2 * PI), rel=1e-6)
    lp.sum().backward()
    assert bool(torch.isfinite(k.grad)) and bool(torch.isfinite(phase.grad))


def test_gradients_finite_across_branches():
    phi = torch.linspace(-PI, PI, 401, dtype=torch.float64)
    k = torch.tensor([0.0, 0.1, 5.0, 40.0], dtype=torch.float64)[:, None].requires_grad_()
    phase = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    WrappedPhase(phase, k).log_prob(phi).sum().backward()
    assert bool(torch.isfinite(k.grad).all()) and bool(torch.isfinite(phase.grad).all())
    # d log p / d phase against finite differences, at a point in the continued-fraction branch
    kk = torch.tensor(10.0, dtype=torch.float64)
    ph = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(2.5, dtype=torch.float64)
    WrappedPhase(ph, kk).log_prob(y).backward()
    eps = 1e-6
    fd = (WrappedPhase(ph.detach() + eps, kk).log_prob(y) - WrappedPhase(ph.detach() - eps, kk).log_prob(y)) / (2 * eps)
    assert float(ph.grad) == pytest.approx(float(fd), rel=1e-5)


# ---------------------------------------------------------------- WrappedPhase shapes and API


def test_per_pixel_k_broadcasting():
    phase = torch.rand(4, 5) * 2 * PI - PI
    k = torch.tensor([0.0, 1.0, 10.0, 100.0])[:, None]
    d = WrappedPhase(phase, k)
    assert d.batch_shape == (4, 5) and d.event_shape == ()
    y = d.sample((3,))
    assert y.shape == (3, 4, 5)
    assert d.log_prob(y).shape == (3, 4, 5)
    assert d.sample().shape == (4, 5)
    # row 3 (k=100) is close to the phase, row 0 (k=0) is not
    err = wrap_phase(d.sample((200,)) - phase).abs()
    assert float(err[:, 3].mean()) < 0.05 < float(err[:, 0].mean())


def test_expand():
    d = WrappedPhase(torch.tensor(0.5), torch.tensor([1.0, 2.0]))
    e = d.expand((3, 2))
    assert e.batch_shape == (3, 2) and e.sample().shape == (3, 2)
    assert torch.allclose(e.log_prob(torch.tensor(0.1))[1], d.log_prob(torch.tensor(0.1)))


def test_validation():
    with pytest.raises(ValueError, match=r"k.*-2\.0"):
        WrappedPhase(torch.tensor(0.0), torch.tensor([1.0, -2.0]), validate_args=True)
    WrappedPhase(torch.tensor(0.0), torch.tensor([1.0, -2.0]), validate_args=False)  # not checked
    d = WrappedPhase(torch.tensor(0.0), torch.tensor(1.0), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor(4.0))
    with pytest.raises(NotImplementedError, match="circular"):
        d.mean
    assert not d.has_rsample


def test_wrapped_phase_in_pyro_model():
    phase_obs = torch.tensor([0.1, -3.1, 3.1])

    def model(y=None):
        phase = pyro.sample("phase", dist.Uniform(-PI, PI).expand([3]).to_event(1))
        with pyro.plate("pixels", 3, dim=-1):
            return pyro.sample("y", WrappedPhase(phase, torch.tensor(5.0)), obs=y)

    tr = pyro.poutine.trace(model).get_trace(phase_obs)
    tr.compute_log_prob()
    assert tr.nodes["y"]["log_prob"].shape == (3,)
    assert torch.isfinite(tr.nodes["y"]["log_prob"]).all()
    assert pyro.poutine.trace(model).get_trace().nodes["y"]["value"].shape == (3,)


# ---------------------------------------------------------------- Implicit


class CountingSim:
    r"""A noisy simulator that counts its calls; returns (*batch, 3)."""

    __name__ = "counting_sim"

    def __init__(self):
        self.calls = 0

    def __call__(self, theta, scale=0.1):
        self.calls += 1
        return theta + scale * torch.randn(theta.shape)


def test_implicit_is_lazy_and_cached():
    sim = CountingSim()
    d = Implicit(sim, torch.zeros(3), scale=0.5)
    assert sim.calls == 0
    assert d.is_implicit and getattr(d, "is_implicit", False)
    assert d.simulator_name == "counting_sim"
    assert "counting_sim" in repr(d) and sim.calls == 0
    assert d.event_shape == (3,) and d.batch_shape == ()
    assert sim.calls == 1
    first = d.sample()
    assert sim.calls == 1 and first is d.sample()
    many = d.sample((2, 4))
    assert many.shape == (2, 4, 3) and sim.calls == 9
    assert not torch.allclose(many[0, 0], many[0, 1])


def test_implicit_shapes_and_event_dim():
    d = Implicit(lambda: torch.randn(5, 2, 3), event_dim=2)
    assert d.batch_shape == (5,) and d.event_shape == (2, 3)
    d = Implicit(lambda: torch.randn(5, 2), event_dim=0)
    assert d.batch_shape == (5, 2) and d.event_shape == ()
    with pytest.raises(ValueError, match="event_dim"):
        Implicit(lambda: torch.randn(3), event_dim=2).batch_shape
    with pytest.raises(ValueError):
        Implicit(lambda: torch.randn(3), event_dim=-1)


def test_implicit_log_prob_raises():
    def elastography_sim(theta):
        return theta + torch.randn(theta.shape)

    d = Implicit(elastography_sim, torch.zeros(3))
    with pytest.raises(LikelihoodFreeError, match="'elastography_sim' has no likelihood") as info:
        d.log_prob(torch.zeros(3))
    assert isinstance(info.value, NotImplementedError)
    assert "method='cond_score', 'flow' or 'vae'" in str(info.value)
    partial = Implicit(functools.partial(elastography_sim, torch.zeros(3)))
    assert partial.simulator_name == "elastography_sim"


def test_implicit_in_pyro_model_with_and_without_obs():
    sim = CountingSim()

    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        return pyro.sample("y", Implicit(sim, theta), obs=y)

    tr = pyro.poutine.trace(model).get_trace()
    node = tr.nodes["y"]
    assert node["value"].shape == (3,) and not node["is_observed"]
    assert sim.calls == 1
    assert torch.allclose(node["value"], tr.nodes["theta"]["value"], atol=1.0)
    assert getattr(node["fn"], "is_implicit", False)

    y_obs = torch.ones(3)
    tr = pyro.poutine.trace(model).get_trace(y_obs)
    assert tr.nodes["y"]["is_observed"] and tr.nodes["y"]["value"] is y_obs
    assert sim.calls == 1  # observed outside a plate: the simulator is never run
    with pytest.raises(LikelihoodFreeError, match="counting_sim"):
        tr.compute_log_prob()


def test_implicit_under_plate():
    sim = CountingSim()
    n = 6

    def model(y=None):
        with pyro.plate("batch", n, dim=-1):
            theta = pyro.sample("theta", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            return pyro.sample("y", Implicit(sim, theta), obs=y)

    tr = pyro.poutine.trace(model).get_trace()
    assert tr.nodes["theta"]["value"].shape == (n, 3)
    assert tr.nodes["y"]["value"].shape == (n, 3)
    assert tr.nodes["y"]["fn"].batch_shape == (n,)
    assert sim.calls == 1
    tr = pyro.poutine.trace(model).get_trace(torch.zeros(n, 3))
    assert tr.nodes["y"]["value"].shape == (n, 3)


def test_implicit_expand_broadcasts_one_draw():
    sim = CountingSim()
    d = Implicit(sim, torch.zeros(1, 3))
    assert d.expand((1,)) is d
    e = d.expand((4,))
    assert e.batch_shape == (4,) and e.event_shape == (3,)
    value = e.sample()
    assert value.shape == (4, 3) and torch.equal(value[0], value[3])
    assert torch.equal(value[0], d.sample()[0])
    assert e.sample((2,)).shape == (2, 4, 3)
    assert getattr(e, "is_implicit", False)
    with pytest.raises(RuntimeError):
        Implicit(sim, torch.zeros(2, 3)).expand((4,))

    def model():
        with pyro.plate("batch", 4, dim=-1):
            return pyro.sample("y", Implicit(sim, torch.zeros(3)))

    assert model().shape == (4, 3)
