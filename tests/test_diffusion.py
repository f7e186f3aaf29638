import math

import pytest
import torch

from bayesinv.diffusion.loss import dsm_loss, ncsn_loss
from bayesinv.diffusion.samplers import (
    annealed_langevin,
    predictor_corrector,
    probability_flow_ode,
    reverse_sde,
)
from bayesinv.diffusion.schedules import (
    choose_num_levels,
    choose_sigma_1,
    choose_step_size,
    geometric_sigmas,
    langevin_variance_ratio,
    overlap,
)
from bayesinv.diffusion.sde import VE, VP, expand_like

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
S = 0.5  # data ~ N(MU, S^2 I)
N = 4000


def gaussian_score(process):
    r"""Exact score of p_t = N(m MU, m^2 S^2 + sigma^2)."""

    def score(x, t):
        m, s2 = expand_like(process.mean_scale(t), x), expand_like(process.sigma_sq(t), x)
        return -(x - m * MU) / (m**2 * S**2 + s2)

    return score


def marginal_at_1(process, generator):
    m, s2 = process.mean_scale(torch.tensor(1.0)), process.sigma_sq(torch.tensor(1.0))
    z = torch.randn(N, 2, generator=generator, dtype=torch.float64)
    return m * MU + (m**2 * S**2 + s2).sqrt() * z


def check_moments(x, tol_mean=0.04, tol_std=0.04):
    assert torch.allclose(x.mean(0), MU, atol=tol_mean), x.mean(0)
    assert torch.allclose(x.std(0), torch.full((2,), S, dtype=x.dtype), atol=tol_std), x.std(0)


# processes -------------------------------------------------------------------------


def test_ve_closed_forms():
    ve = VE(sigma_max=5.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(ve.sigma_sq(t), (5.0 ** (2 * t) - 1) / math.log(25.0))
    assert torch.allclose(ve.diffusion_sq(t), 5.0 ** (2 * t))
    assert torch.all(ve.mean_scale(t) == 1) and torch.all(ve.drift_coef(t) == 0)
    # sigma^2(t) = int_0^t g (eq. 4), checked by quadrature
    fine = torch.linspace(0, 0.7, 20001, dtype=torch.float64)
    assert torch.trapezoid(ve.diffusion_sq(fine), fine).item() == pytest.approx(ve.sigma_sq(0.7).item(), rel=1e-6)
    assert ve.prior_std() == pytest.approx(ve.sigma(torch.tensor(1.0)).item(), rel=1e-6)


def test_vp_closed_forms():
    vp = VP(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    integral = 0.1 * t + 0.5 * t**2 * 19.9
    assert torch.allclose(vp.mean_scale(t), torch.exp(-0.5 * integral))
    assert torch.allclose(vp.sigma_sq(t), 1 - torch.exp(-integral))
    assert torch.allclose(vp.drift_coef(t), 0.1 + 19.9 * t) and torch.allclose(vp.diffusion_sq(t), vp.drift_coef(t))
    assert vp.sigma(0.0).item() == 0.0
    # the general relation sigma^2 = m^2 int_0^t g / m^2 holds for VP too
    fine = torch.linspace(0, 0.6, 20001, dtype=torch.float64)
    rhs = vp.mean_scale(0.6) ** 2 * torch.trapezoid(vp.beta(fine) / vp.mean_scale(fine) ** 2, fine)
    assert rhs.item() == pytest.approx(vp.sigma_sq(0.6).item(), rel=1e-6)


def test_perturb_and_expand_like():
    ve = VE(sigma_max=5.0)
    x0, z, t = torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2), torch.tensor([0.0, 0.2, 0.5, 1.0])
    xt = ve.perturb(x0, t, z)
    assert xt.shape == x0.shape and torch.allclose(xt[:, 0, 0, 0], ve.sigma(t))
    assert expand_like(t, x0).shape == (4, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    assert VP().prior_sample((5, 2), g).shape == (5, 2)


# schedules -------------------------------------------------------------------------


def test_geometric_sigmas():
    s = geometric_sigmas(20.0, 0.01, 128, dtype=torch.float64)
    assert s.shape == (128,) and s[0].item() == pytest.approx(20.0) and s[-1].item() == pytest.approx(0.01)
    ratio = s[:-1] / s[1:]
    assert torch.allclose(ratio, torch.full_like(ratio, 2000 ** (1 / 127)))


def test_choose_sigma_1():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert choose_sigma_1(x) == pytest.approx(5.0)
    big = torch.randn(5000, 4, generator=torch.Generator().manual_seed(0))
    sub = choose_sigma_1(big, max_points=500, generator=torch.Generator().manual_seed(1))
    assert 0 < sub <= torch.cdist(big, big).max().item() + 1e-6


@pytest.mark.parametrize("dim, s1", [(56 * 56, 20.0), (64 * 64, 50.0), (100, 5.0)])
def test_choose_num_levels_satisfies_overlap(dim, s1):
    L = choose_num_levels(dim, s1, 0.01)
    gamma = (s1 / 0.01) ** (1 / (L - 1))
    assert overlap(gamma, dim) >= 0.5
    assert overlap((s1 / 0.01) ** (1 / (L - 2)), dim) < 0.5  # the smallest such L
    assert choose_num_levels(2, 5.0, 0.01) == 2  # rule is void in tiny dimension


def test_choose_step_size():
    eps = choose_step_size(20.0, 0.01, 128, 5)
    gamma = 2000 ** (1 / 127)
    best = abs(langevin_variance_ratio(eps, 0.01, gamma, 5) - 1)
    for other in (eps / 2, eps * 2):
        assert best <= abs(langevin_variance_ratio(other, 0.01, gamma, 5) - 1)
    # the ratio formula matches a simulated Langevin level on a point mass
    g = torch.Generator().manual_seed(0)
    sigma_i, T = 0.5, 5
    alpha = eps * sigma_i**2 / 0.01**2
    x = gamma * sigma_i * torch.randn(200_000, generator=g, dtype=torch.float64)
    for _ in range(T):
        x = x + alpha / 2 * (-x / sigma_i**2) + math.sqrt(alpha) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    assert (x.var() / sigma_i**2).item() == pytest.approx(langevin_variance_ratio(eps, 0.01, gamma, T), rel=0.02)


# samplers --------------------------------------------------------------------------


def test_annealed_langevin_gaussian():
    g = torch.Generator().manual_seed(0)
    sigmas = geometric_sigmas(5.0, 0.01, 100, dtype=torch.float64)
    score = lambda x, sigma: -(x - MU) / (S**2 + sigma**2)
    eps = choose_step_size(5.0, 0.01, 100, 30)
    levels = []
    x0 = torch.rand(N, 2, generator=g, dtype=torch.float64)  # U(0, 1) start, as in Algorithm 1
    res = annealed_langevin(score, x0, sigmas, steps_per_level=30, eps=eps, generator=g, callback=lambda d: levels.append(d["i"]))
    assert res.nfe == 100 * 30 + 1 and levels == list(range(100))
    check_moments(res.x)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("process", [VE(sigma_max=25.0), VP(beta_min=0.1, beta_max=20.0)], ids=["VE", "VP"])
def test_reverse_sde_gaussian(process, alpha):
    g = torch.Generator().manual_seed(1)
    x = marginal_at_1(process, g) if isinstance(process, VE) else process.prior_sample((N, 2), g, dtype=torch.float64)
    res = reverse_sde(gaussian_score(process), x, process, alpha=alpha, steps=500, generator=g)
    assert res.nfe == 500
    check_moments(res.x)


@pytest.mark.parametrize("process", [VE(sigma_max=25.0), VP(beta_min=0.1, beta_max=20.0)], ids=["VE", "VP"])
def test_probability_flow_ode_gaussian(process):
    g = torch.Generator().manual_seed(2)
    x = marginal_at_1(process, g)
    res = probability_flow_ode(gaussian_score(process), x, process, rtol=1e-6, atol=1e-6)
    check_moments(res.x)
    assert 10 < res.nfe < 2000
    # deterministic: same x in, same x out; and the exact linear flow is reproduced
    again = probability_flow_ode(gaussian_score(process), x, process, rtol=1e-6, atol=1e-6)
    assert torch.equal(res.x, again.x) and res.nfe == again.nfe
    m1, s1 = process.mean_scale(torch.tensor(1.0)), (process.mean_scale(torch.tensor(1.0)) ** 2 * S**2 + process.sigma_sq(torch.tensor(1.0))).sqrt()
    t = torch.tensor(1e-3)
    mt, st = process.mean_scale(t), (process.mean_scale(t) ** 2 * S**2 + process.sigma_sq(t)).sqrt()
    exact = mt * MU + st * (x - m1 * MU) / s1
    assert torch.allclose(res.x, exact.double(), atol=1e-4)


def test_probability_flow_ode_tolerance_controls_nfe():
    ve = VE(sigma_max=25.0)
    x = marginal_at_1(ve, torch.Generator().manual_seed(3))[:100]
    loose = probability_flow_ode(gaussian_score(ve), x, ve, rtol=1e-3, atol=1e-3)
    tight = probability_flow_ode(gaussian_score(ve), x, ve, rtol=1e-7, atol=1e-7)
    assert loose.nfe < tight.nfe


@pytest.mark.parametrize("process", [VE(sigma_max=25.0), VP(beta_min=0.1, beta_max=20.0)], ids=["VE", "VP"])
def test_probability_flow_ode_in_sqrt_t_is_cheaper_on_narrow_data(process):
    # data N(MU, 0.01² I): the velocity grows like 1/√t down to t ≈ 1e-4, stiff in t; in
    # r = 1 − √t (power 2, the default) it stays bounded and the solver needs far fewer steps
    narrow = 0.01

    def score(x, t):
        m, s2 = expand_like(process.mean_scale(t), x), expand_like(process.sigma_sq(t), x)
        return -(x - m * MU) / (m**2 * narrow**2 + s2)

    one = torch.tensor(1.0)
    m1, sd1 = process.mean_scale(one), (process.mean_scale(one) ** 2 * narrow**2 + process.sigma_sq(one)).sqrt()
    x = m1 * MU + sd1 * torch.randn(500, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor(1e-5)
    mt, sdt = process.mean_scale(t), (process.mean_scale(t) ** 2 * narrow**2 + process.sigma_sq(t)).sqrt()
    exact = mt * MU + sdt * (x - m1 * MU) / sd1
    in_t = probability_flow_ode(score, x, process, rtol=1e-5, atol=1e-5, t_min=1e-5, power=1.0)
    in_sqrt_t = probability_flow_ode(score, x, process, rtol=1e-5, atol=1e-5, t_min=1e-5)
    assert in_sqrt_t.nfe < 0.7 * in_t.nfe, (in_sqrt_t.nfe, in_t.nfe)
    for res in (in_t, in_sqrt_t):  # both end where the exact linear flow ends, to 10 % of the data's spread
        assert (res.x - exact).abs().max() < 0.1 * narrow
        assert (res.x.std(0) - exact.std(0)).abs().max() < 0.02 * narrow


def test_probability_flow_ode_rejects_bad_power_and_t_min():
    ve = VE(sigma_max=25.0)
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="power must be >= 1, got 0.5"):
        probability_flow_ode(lambda x, t: -x, x, ve, power=0.5)
    with pytest.raises(ValueError, match="t_min must lie in"):
        probability_flow_ode(lambda x, t: -x, x, ve, t_min=0.0)


@pytest.mark.parametrize("process", [VE(sigma_max=25.0), VP(beta_min=0.1, beta_max=20.0)], ids=["VE", "VP"])
def test_predictor_corrector_gaussian(process):
    g = torch.Generator().manual_seed(4)
    x = marginal_at_1(process, g)
    res = predictor_corrector(gaussian_score(process), x, process, steps=200, corrector_steps=1, snr=0.16, generator=g, denoise=True)
    assert res.nfe == 200 * 2 + 1
    check_moments(res.x)


def test_samplers_keep_field_shapes():
    ve = VE(sigma_max=25.0)
    score = lambda x, t: -x / (1 + ve.sigma_sq(t))
    x = torch.randn(3, 1, 4, 5)
    for out in (
        reverse_sde(score, x, ve, steps=5),
        predictor_corrector(score, x, ve, steps=5),
        probability_flow_ode(score, x, ve),
        annealed_langevin(score, x, geometric_sigmas(1.0, 0.1, 3), steps_per_level=2, eps=1e-3),
    ):
        assert out.x.shape == x.shape and torch.isfinite(out.x).all()


# losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("process", [VE(sigma_max=5.0), VP(beta_min=0.1, beta_max=20.0)], ids=["VE", "VP"])
def test_dsm_loss_exact_vs_zero_score(process):
    torch.manual_seed(0)
    n, s = 20_000, 0.1
    x0 = MU + s * torch.randn(n, 2, dtype=torch.float64)
    y = torch.zeros(n, 1, dtype=torch.float64)

    def exact(x, y, t):
        m, s2 = expand_like(process.mean_scale(t), x), expand_like(process.sigma_sq(t), x)
        return -(x - m * MU) / (m**2 * s**2 + s2)

    g = torch.Generator().manual_seed(0)
    l_exact = dsm_loss(exact, x0, y, process, generator=g).item()
    l_zero = dsm_loss(lambda x, y, t: torch.zeros_like(x), x0, y, process, generator=g).item()
    # the minimum is E_t sum_d m^2 s^2 / (m^2 s^2 + sigma^2), known in closed form
    t = torch.linspace(1e-3, 1, 20001, dtype=torch.float64)
    m2s2 = process.mean_scale(t) ** 2 * s**2
    floor = 2 * torch.trapezoid(m2s2 / (m2s2 + process.sigma_sq(t)), t).item() / (1 - 1e-3)
    assert l_exact == pytest.approx(floor, abs=0.03)
    assert l_zero == pytest.approx(2.0, rel=0.03) and l_exact < 0.3 * l_zero


def test_ncsn_loss_exact_vs_zero_score_and_mask():
    torch.manual_seed(0)
    x0 = MU + 0.1 * torch.randn(20_000, 2, dtype=torch.float64)
    sigmas = geometric_sigmas(5.0, 0.01, 20, dtype=torch.float64)
    exact = lambda x, y, sigma: -(x - MU) / (0.1**2 + expand_like(sigma, x) ** 2)
    l_exact = ncsn_loss(exact, x0, None, sigmas).item()
    l_zero = ncsn_loss(lambda x, y, sigma: torch.zeros_like(x), x0, None, sigmas).item()
    floor = 2 * (0.1**2 / (0.1**2 + sigmas**2)).mean().item()
    assert l_exact == pytest.approx(floor, abs=0.03) and l_zero == pytest.approx(2.0, rel=0.03)
    seen = {}
    ncsn_loss(lambda x, y, sigma, mask: (seen.setdefault("mask", mask), x)[1], x0[:4], None, sigmas, mask=torch.ones(4, 3))
    assert seen["mask"].shape == (4, 3)


def test_step_time_is_where_the_last_steps_of_the_grid_start():
    from bayesinv.diffusion.samplers import step_time

    proc, zero = VE(sigma_max=5.0), lambda x, t: torch.zeros_like(x)
    full, part = [], []
    x = torch.zeros(3, 2)
    predictor_corrector(zero, x, proc, steps=10, t_min=1e-3, callback=lambda d: full.append(float(d["t"])))
    predictor_corrector(zero, x, proc, steps=4, t_min=1e-3, t_start=step_time(4, 10, 1e-3), callback=lambda d: part.append(float(d["t"])))
    assert part == pytest.approx(full[-4:], rel=1e-6)


@pytest.mark.parametrize("spec", [{"kind": "ve", "sigma_max": 5.0}, {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0}])
def test_reverse_sample_runs_the_named_sampler_with_its_defaults(spec):
    from bayesinv.amortized.method import ReverseOptions
    from bayesinv.diffusion.samplers import reverse_sample
    from bayesinv.diffusion.sde import process_from_spec

    proc = process_from_spec(spec)
    score = gaussian_score(proc)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    options = ReverseOptions(steps=20)  # the rest None: the defaults
    direct = {
        "ode": probability_flow_ode(score, x, proc, rtol=1e-5, atol=1e-5, power=2.0, t_min=1e-3, denoise=True),
        "sde": reverse_sde(score, x, proc, steps=20, t_min=1e-3, denoise=True, generator=torch.Generator().manual_seed(1)),
        "pc": predictor_corrector(score, x, proc, steps=20, t_min=1e-3, denoise=True, generator=torch.Generator().manual_seed(1)),
    }
    for name, ref in direct.items():
        out = reverse_sample(name, score, x, spec, options, t_min=1e-3, generator=torch.Generator().manual_seed(1))
        assert out.nfe == ref.nfe and torch.equal(out.x, ref.x), name


def test_initial_draws_follow_the_centred_start():
    from bayesinv.diffusion.samplers import initial_draws

    spec, mean = {"kind": "vp", "beta_min": 0.1, "beta_max": 5.0}, torch.tensor([2.0, -1.0])
    proc = VP(beta_min=0.1, beta_max=5.0)
    x = initial_draws(spec, (20_000, 2), mean=mean, generator=torch.Generator().manual_seed(0))
    m1, s1 = float(proc.mean_scale(1.0)), float(proc.sigma(1.0))
    assert x.mean(0).tolist() == pytest.approx((m1 * mean).tolist(), abs=0.03)  # 4 standard errors of the mean
    assert x.std(0).tolist() == pytest.approx([s1, s1], rel=0.03)
    u = initial_draws({"kind": "ncsn", "sigmas": [1.0, 0.1]}, (1000, 2), generator=torch.Generator().manual_seed(0))
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
