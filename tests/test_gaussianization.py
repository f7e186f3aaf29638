r"""The Gaussianization layers: invertibility, log-determinants, gradients, SciPy references, Gaussianizing power."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from bayesinv.errors import OptionError, ProblemError
from bayesinv.nets.gaussianization import (
    LAYERS, Gaussianization, LambertW, Standardization, Whitening, YeoJohnson, lambertw, yeo_johnson, yeo_johnson_inverse,
)

torch.set_default_dtype(torch.float32)


def _gamma(rows: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).gamma(2.0, 1.0, size=(rows, d)))


def _heavy(rows: int, d: int, delta: float = 0.3, seed: int = 0) -> torch.Tensor:
    u = np.random.default_rng(seed).standard_normal((rows, d))
    return torch.as_tensor(1.0 + 2.0 * u * np.exp(delta * u * u / 2))


def _correlated(rows: int, d: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((rows, d // 2, 2)) @ np.array([[1.0, 0.9], [0.0, 0.4]])
    return torch.as_tensor(v.reshape(rows, d))


LAYER_CASES = {
    "whiten": (lambda: Whitening(2), _correlated),
    "lambertw": (LambertW, _heavy),
    "yeojohnson": (YeoJohnson, _gamma),
    "standardize": (Standardization, _gamma),
}


# -- the Lambert W function ------------------------------------------------------------------
def test_lambertw_matches_scipy():
    a = torch.cat([torch.tensor([-1 / math.e + 1e-9, -0.3, -0.1, 0.0, 1e-300, 1e-12], dtype=torch.float64),
                   torch.logspace(-8, 10, 300, dtype=torch.float64)])  # fmt: skip
    ref = scipy.special.lambertw(a.numpy(), k=0).real
    got = lambertw(a).numpy()
    away = a.numpy() > -0.35  # the branch point is ill-conditioned: W ~ sqrt(a + 1/e)
    np.testing.assert_allclose(got[away], ref[away], rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(got[~away], ref[~away], atol=1e-6)


def test_lambertw_gradients_and_domain():
    a = (torch.rand(6, dtype=torch.float64) * 5 + 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(lambertw, (a,))
    assert torch.autograd.gradgradcheck(lambertw, (a,))
    with pytest.raises(ProblemError, match="-1/e"):
        lambertw(torch.tensor([-0.5], dtype=torch.float64))


# -- Yeo–Johnson against SciPy ------------------------------------------------------------------
@pytest.mark.parametrize("lmbda", [-1.3, 0.0, 0.5, 1.0, 2.0, 3.2])
def test_yeo_johnson_matches_scipy_and_inverts(lmbda):
    x = torch.as_tensor(np.random.default_rng(1).standard_normal(200) * 2)
    y = yeo_johnson(x, torch.tensor(lmbda, dtype=torch.float64))
    np.testing.assert_allclose(y.numpy(), scipy.stats.yeojohnson(x.numpy(), lmbda), rtol=1e-12, atol=1e-12)
    back = yeo_johnson_inverse(y, torch.tensor(lmbda, dtype=torch.float64))
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-10)


def test_yeo_johnson_lambda_is_scipys_maximum_likelihood():
    x = _gamma(3, 2000, seed=2) - 1.0  # skewed, both signs
    (lmbda,) = YeoJohnson().fit(x)
    for i in range(3):
        _, ref = scipy.stats.yeojohnson(x[i].numpy())
        assert abs(float(lmbda[i]) - ref) < 1e-6  # SciPy's Brent search stops at ~1e-8
        # ours is the stationary point of SciPy's own log-likelihood
        llf = lambda l: scipy.stats.yeojohnson_llf(l, x[i].numpy())  # noqa: E731
        h = 1e-5
        assert abs((llf(float(lmbda[i]) + h) - llf(float(lmbda[i]) - h)) / (2 * h)) < 1e-4 * len(x[i])


# -- Lambert W × Gaussian against SciPy's W --------------------------------------------------------
def test_lambertw_layer_matches_scipy_reference_and_recovers_delta():
    x = _heavy(2, 5000, delta=0.3, seed=3)
    mu, sigma, delta = LambertW().fit(x)
    np.testing.assert_allclose(delta.numpy(), [0.3, 0.3], atol=0.03)  # MLE from 5,000 draws (its sd is about 0.01)
    np.testing.assert_allclose(sigma.numpy(), [2.0, 2.0], atol=0.1)
    np.testing.assert_allclose(mu.numpy(), [1.0, 1.0], atol=0.1)
    out = LambertW().transform(x, (mu, sigma, delta)).numpy()
    z = (x.numpy() - mu.numpy()[:, None]) / sigma.numpy()[:, None]
    d = delta.numpy()[:, None]
    ref = mu.numpy()[:, None] + sigma.numpy()[:, None] * np.sign(z) * np.sqrt(scipy.special.lambertw(d * z * z).real / d)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_lambertw_layer_is_identity_on_gaussian_rows():
    x = torch.as_tensor(np.random.default_rng(4).standard_normal((1, 4000)))
    mu, sigma, delta = LambertW().fit(x)
    assert float(delta) < 0.01
    np.testing.assert_allclose(LambertW()(x).numpy(), x.numpy(), atol=0.02 * float(x.abs().max()))


# -- invertibility, log-determinants and gradients of every layer -----------------------------------
@pytest.mark.parametrize("name", LAYERS)
def test_layer_round_trip_and_log_det(name):
    make, data = LAYER_CASES[name]
    layer = make()
    x = data(2, 64, seed=5)
    params = layer.fit(x)
    y = layer.transform(x, params)
    assert torch.allclose(layer.inverse(y, params), x, atol=1e-6, rtol=0)
    for i in range(2):  # log|det| at fixed parameters against the dense Jacobian
        p_i = tuple(p[i : i + 1] for p in params)
        jac = torch.autograd.functional.jacobian(lambda v: layer.transform(v.unsqueeze(0), p_i)[0], x[i])
        assert abs(float(torch.linalg.slogdet(jac)[1]) - float(layer.log_abs_det(x[i : i + 1], p_i)[0])) < 1e-8


@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradients_through_the_fitted_parameters(name):
    make, data = LAYER_CASES[name]
    x = data(1, 12, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: make()(v), (x,), atol=1e-6, rtol=1e-4)


def test_composition_round_trip_and_gradients():
    g = Gaussianization(block=2)
    x = _heavy(2, 48, seed=7)
    y, params = g.forward_with_params(x)
    assert torch.allclose(g.inverse(y, params), x, atol=1e-6, rtol=0)
    small = _heavy(1, 10, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: g(v), (small,), atol=1e-6, rtol=1e-4)
    # a warm start gives the same fit
    y2, _ = g.forward_with_params(x, params)
    assert torch.allclose(y, y2, atol=1e-9)


# -- they Gaussianize --------------------------------------------------------------------------------
def _ks(x: np.ndarray) -> float:
    return float(scipy.stats.kstest(x, "norm").statistic)


def test_skewed_and_heavy_tailed_samples_become_standard_gaussian():
    n = 4096
    rng = np.random.default_rng(8)
    # skewed: a Gaussian pushed through an inverse Yeo–Johnson map (λ = 0.2); heavy-tailed: Student t, 3 dof
    skewed = yeo_johnson_inverse(torch.as_tensor(rng.normal(1.0, 1.5, size=(1, n))), torch.tensor(0.2, dtype=torch.float64))
    heavy = torch.as_tensor(rng.standard_t(3, size=(1, n)))
    for x, own in ((skewed, "yeojohnson"), (heavy, "lambertw")):
        assert _ks(Standardization()(x).numpy()[0]) > 0.05  # standardizing alone is not enough
        for layers in ((own, "standardize"), LAYERS):
            z = Gaussianization(layers, block=2)(x).numpy()[0]
            # KS distance to N(0, 1) below 0.03 (the 1 % critical value for n = 4096 is 0.025);
            # skewness and excess kurtosis within ±0.15
            assert _ks(z) < 0.03, layers
            assert abs(scipy.stats.skew(z)) < 0.15 and abs(scipy.stats.kurtosis(z)) < 0.15, layers
    corr = _correlated(1, 4096, seed=10)
    w = Whitening(2)(corr).reshape(-1, 2).numpy()
    np.testing.assert_allclose(np.cov(w.T, bias=True), np.eye(2), atol=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(OptionError, match="unknown layer"):
        Gaussianization(("whiten", "boxcox"))
    with pytest.raises(OptionError, match="block"):
        Whitening(0)
    with pytest.raises(ProblemError, match="multiple of block"):
        Whitening(4)(torch.randn(1, 18))
    with pytest.raises(ProblemError, match="D >= 3"):
        YeoJohnson()(torch.randn(2, 2))
    with pytest.raises(ProblemError, match="all entries equal"):
        Standardization()(torch.ones(1, 8))
