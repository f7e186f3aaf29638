r"""The ODE integrator, divergences and exact densities of ODE-defined laws (bayesinv.diffusion.ode)."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.stats import multivariate_normal

from bayesinv.diffusion.loss import flow_matching_loss
from bayesinv.diffusion.ode import divergence, dopri5, log_prob_ode
from bayesinv.diffusion.samplers import (
    flow_matching_log_prob,
    flow_matching_ode,
    probability_flow_log_prob,
    probability_flow_ode,
)
from bayesinv.diffusion.sde import VE, VP

torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("r0, r1", [(0.0, 1.0), (1.0, 0.0), (0.3, -0.4)])
def test_dopri5_solves_linear_decay_in_both_directions(r0, r1):
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x1, nfe = dopri5(lambda r, x: -x * (1 + r), x0, r0, r1, rtol=1e-8, atol=1e-10)
    exact = x0 * math.exp(-((r1 - r0) + (r1**2 - r0**2) / 2))
    torch.testing.assert_close(x1, exact, rtol=1e-7, atol=1e-9)
    assert nfe > 6


def test_dopri5_refuses_runaway():
    with pytest.raises(RuntimeError, match="not finished after 5 steps"):
        dopri5(lambda r, x: 1e6 * math.sin(1e6 * r) * torch.ones_like(x), torch.zeros(2), 0.0, 1.0, max_steps=5)


def test_divergence_exact_and_hutchinson_of_a_linear_map():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    out, div = divergence(lambda v: v @ A.T, x)
    torch.testing.assert_close(out, x @ A.T)
    torch.testing.assert_close(div, torch.full((3,), float(torch.trace(A)), dtype=torch.float64))
    # Hutchinson: unbiased; the mean of 20,000 Rademacher probes is within 5 standard errors
    xs = x[:1].expand(20_000, 4)
    probes = torch.randint(0, 2, xs.shape, generator=g).double() * 2 - 1
    _, est = divergence(lambda v: v @ A.T, xs, probes)
    S = (A + A.T) / 2
    var = 2 * float((S**2).sum() - (torch.diagonal(S) ** 2).sum())  # 2 sum_{i != j} S_ij^2
    assert abs(float(est.var()) - var) < 0.1 * var
    assert abs(float(est.mean()) - float(torch.trace(A))) < 5 * math.sqrt(var / 20_000)


def test_log_prob_ode_matches_the_gaussian_push_forward_of_a_linear_flow():
    g = torch.Generator().manual_seed(1)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    M = expm(A.numpy())  # x(1) = M x(0), x(0) ~ N(0, I)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    base = lambda z: torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    field = lambda r, v: v @ A.T
    exact = multivariate_normal(np.zeros(3), M @ M.T).logpdf(x.numpy())
    res = log_prob_ode(field, x, 1.0, 0.0, base, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.log_prob.numpy(), exact, rtol=0, atol=1e-6)
    assert torch.all(res.std_error == 0)
    hut = log_prob_ode(field, x, 1.0, 0.0, base, exact=False, num_probes=400, generator=g, rtol=1e-6, atol=1e-6)
    err = np.abs(hut.log_prob.numpy() - exact)
    assert np.all(err < 5 * hut.std_error.numpy() + 1e-4), (err, hut.std_error)
    assert np.all(hut.std_error.numpy() > 0)


@pytest.mark.parametrize("process", [VE(sigma_max=5.0), VP(beta_min=0.1, beta_max=20.0)], ids=["ve", "vp"])
def test_probability_flow_log_prob_is_the_density_of_the_sampler(process):
    # Gaussian data N(mu, s^2 I): the exact score makes the ODE affine per coordinate, x = a z + b,
    # so the sampler's law is N(b, a^2 sigma_T^2) and its density is known in closed form.
    mu, s = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.2

    def score(x, t):
        m = process.mean_scale(t).double()
        return -(x - m * mu) / (m**2 * s**2 + process.sigma_sq(t).double())

    t_min = 1e-3
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    ends = probability_flow_ode(score, z, process, t_min=t_min, rtol=1e-9, atol=1e-9).x
    b, a = ends[0], ends[1] - ends[0]
    g = torch.Generator().manual_seed(2)
    x = b + a * process.prior_std() * torch.randn(6, 2, generator=g, dtype=torch.float64)
    res = probability_flow_log_prob(score, x, process, t_min=t_min, rtol=1e-9, atol=1e-9)
    exact = torch.distributions.Normal(b, a.abs() * process.prior_std()).log_prob(x).sum(1)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=1e-5)
    # and the sampler's draws are near the data law (the VE base N(0, sigma_T^2) ignores the
    # data mean mu; that moves b by 0.022 for VE here, 0.002 for VP): b ~ mu
    torch.testing.assert_close(b, mu, rtol=0, atol=0.05)


def test_flow_matching_exact_field_transports_noise_to_data_with_its_density():
    # For Gaussian data N(mu, s^2 I) the marginal field of the straight path is affine:
    # x_t = a_t x0 + t x1 with a_t = 1 - (1 - smin) t, var_t = a_t^2 + t^2 s^2,
    # v(x, t) = t mu + (x - t mu) * (t s^2 - (1 - smin) a_t) / var_t (per coordinate).
    mu, s, smin = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.3, 1e-4

    def v(x, t):
        t = t.double()
        a = 1 - (1 - smin) * t
        var = a**2 + t**2 * s**2
        return mu + (x - t * mu) * (t * s**2 - (1 - smin) * a) / var

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    out = flow_matching_ode(v, x0, rtol=1e-7, atol=1e-7).x
    sd = math.sqrt(smin**2 + s**2)
    torch.testing.assert_close(out.mean(0), mu, rtol=0, atol=4 * sd / math.sqrt(4000))
    torch.testing.assert_close(out.std(0), torch.full((2,), sd, dtype=torch.float64), rtol=0.05, atol=0)
    lp = flow_matching_log_prob(v, out[:5], rtol=1e-8, atol=1e-8).log_prob
    exact = torch.distributions.Normal(mu, sd).log_prob(out[:5]).sum(1)
    torch.testing.assert_close(lp, exact, rtol=0, atol=1e-4)


def test_flow_matching_loss_is_minimised_by_the_marginal_field():
    # the exact field of the previous test has a lower loss than a perturbed one (same draws)
    mu, s = torch.tensor([1.0, -0.5]), 0.3
    x1 = mu + s * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4))

    def field(shift):
        def v(x, y, t):
            t = t[:, None]
            a = 1 - (1 - 1e-4) * t
            return mu + shift + (x - t * mu) * (t * s**2 - (1 - 1e-4) * a) / (a**2 + t**2 * s**2)

        return v

    best = flow_matching_loss(field(0.0), x1, None, generator=torch.Generator().manual_seed(5))
    worse = flow_matching_loss(field(0.2), x1, None, generator=torch.Generator().manual_seed(5))
    assert float(worse) > float(best) + 0.05  # the shift adds E|0.2|^2 * 2 = 0.08
