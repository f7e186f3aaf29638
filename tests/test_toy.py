import numpy as np
import pytest
from scipy import stats

import bayesinv
from bayesinv.models.toy import CONDITIONAL_DENSITIES, LinearGaussian, bimodal, joint_reference, spiral, tanh


def test_tanh_noise_is_gamma_shape_1_scale_03():
    ds = bayesinv.simulate(tanh, 20_000, seed=0, chunk_size=20_000, progress=False)
    y, x = ds["y"].values, ds["x"].values
    assert y.min() >= -3 and y.max() <= 3
    c1 = x - np.tanh(y)
    assert stats.kstest(c1, stats.gamma(a=1.0, scale=0.3).cdf).pvalue > 1e-3


def test_bimodal_is_real_cube_root():
    ds = bayesinv.simulate(bimodal, 20_000, seed=1, chunk_size=20_000, progress=False)
    y, x = ds["y"].values.astype(np.float64), ds["x"].values.astype(np.float64)
    c2 = x**3 - y
    assert stats.kstest(c2, "norm").pvalue > 1e-3
    assert (x < 0).mean() > 0.3  # the real cube root keeps negative values


def test_spiral_geometry():
    ds = bayesinv.simulate(spiral, 20_000, seed=2, chunk_size=20_000, progress=False)
    w = 1.5 * np.pi * (1 + 2 * ds["h"].values.astype(np.float64))
    c3 = (10 * ds["x"].values - w * np.sin(w))
    c4 = (10 * ds["y"].values - w * np.cos(w))
    assert stats.kstest(c3, "norm").pvalue > 1e-3 and stats.kstest(c4, "norm").pvalue > 1e-3


@pytest.mark.parametrize("name", sorted(CONDITIONAL_DENSITIES))
def test_importance_matches_joint_reference(name):
    model = CONDITIONAL_DENSITIES[name]
    ref = joint_reference(model, 0.5, num_joint=100_000, seed=3)
    assert len(ref) > 300
    idata = bayesinv.infer(model, np.float32(0.5), num_samples=4000, num_proposals=100_000, seed=0, progress=False)
    x = idata.posterior["x"].values.ravel()
    # the ±0.05 window blurs the reference a little: compare moments loosely, and distributions by KS
    assert abs(x.mean() - ref.mean()) < 0.1 * ref.std() + 0.02
    assert abs(x.std() / ref.std() - 1) < 0.15
    assert stats.ks_2samp(x, ref).statistic < 0.1


def test_linear_gaussian_posterior_is_exact():
    lg = LinearGaussian(dim=3, num_obs=5, noise=0.3, seed=1)
    theta, y = lg.draw(seed=0)
    mean, cov = lg.posterior(y)
    # closed-form check via the joint Gaussian conditional
    A = lg.A.numpy()
    S_yy = A @ A.T + 0.09 * np.eye(5)
    K = A.T @ np.linalg.inv(S_yy)
    np.testing.assert_allclose(mean, K @ y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, np.eye(3) - K @ A, rtol=1e-5, atol=1e-8)
