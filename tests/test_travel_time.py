import numpy as np
import pytest
import torch

from bayesinv.models.travel_time import TravelTimeTomography, eikonal


def test_homogeneous_medium_first_order_convergence():
    # exact times |x - x_s| / v; the first-order scheme's error falls as the grid is refined, a little slower than h
    # near a point source (measured max error 4.3 %, 2.7 %, 1.65 % of the largest time at 17, 33, 65 nodes)
    errs = []
    for n in (17, 33, 65):
        h = 1.0 / (n - 1)
        src = (n // 2, 0)
        T = eikonal(torch.full((n, n), 0.5, dtype=torch.float64), torch.tensor([src]), h)[0].numpy()  # v = 2 km/s
        r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        exact = 0.5 * h * np.hypot(r - src[0], c - src[1])
        errs.append(np.abs(T - exact).max() / exact.max())
        along = T[src[0], :]  # along a grid line the scheme is exact
        np.testing.assert_allclose(along, exact[src[0], :], rtol=1e-12, atol=1e-12)
    assert errs[0] < 0.05 and errs[1] < 0.7 * errs[0] and errs[2] < 0.7 * errs[1]


def test_linear_gradient_medium_matches_the_closed_form():
    # v = v0 + g z: T = arccosh(1 + g^2 |x - x_s|^2 / (2 v(x) v(x_s))) / g; within 2 % of the largest time at 65 nodes
    n, v0, g = 65, 2.0, 1.5
    h = 1.0 / (n - 1)
    z = np.linspace(0, 1, n)[:, None] * np.ones((1, n))
    v = v0 + g * z
    src = (0, 32)
    T = eikonal(torch.as_tensor(1 / v), torch.tensor([src]), h)[0].numpy()
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d2 = (h * (r - src[0])) ** 2 + (h * (c - src[1])) ** 2
    exact = np.arccosh(1 + g**2 * d2 / (2 * v * v[src])) / g
    assert np.abs(T - exact).max() < 0.02 * exact.max()


def test_the_scheme_is_scikit_fmms_fast_marching_on_prior_draws():
    skfmm = pytest.importorskip("skfmm")  # in the `imaging` extra (installed by `make setup`)
    tt = TravelTimeTomography(32)
    vs, _ = tt.draw(3, seed=1)
    for v in vs.astype(np.float64):
        src = tuple(tt.sources[2])
        ours = eikonal(torch.as_tensor(1 / v), torch.tensor([src]), tt.h)[0].numpy()
        phi = np.ones_like(v)
        phi[src] = -1.0  # scikit-fmm's front starts half a cell from the source node: add that half cell's time
        ref = skfmm.travel_time(phi, speed=v, dx=tt.h, order=1) + 0.5 * tt.h / v[src]
        far = ours > 0.1 * ours.max()
        # the same Godunov upwind scheme (fast marching against our Jacobi sweeps): measured 2-3e-4 of the largest time
        assert np.abs(ours - ref)[far].max() < 1e-3 * ours.max()


def test_times_are_differentiable_in_the_velocity():
    tt = TravelTimeTomography(8, num_sources=2, num_receivers=5, num_anomalies=1)
    v, _ = tt.draw(seed=0)
    v = torch.as_tensor(v, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v_: tt.times(v_), (v,), eps=1e-6, atol=1e-6)
    grad = torch.autograd.grad(tt.times(v).sum(), v)[0]
    assert bool((grad <= 1e-12).all()) and float(grad.abs().sum()) > 0  # faster anywhere -> no time grows


def test_prior_draws_observation_and_baseline():
    tt = TravelTimeTomography(32, num_sources=8, num_receivers=24)
    vs, ys = tt.draw(16, seed=0)
    assert vs.shape == (16, 32, 32) and ys.shape == (16, 8, 24) and vs.dtype == np.float32
    assert vs.min() >= 1.0 and 1.5 < vs.mean() < 4.5
    v1, y1 = tt.draw(seed=5)
    v2, y2 = tt.draw(seed=5)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(y1, y2)
    assert tt.receivers.shape == (24, 2) and (tt.sources[:, 1] == 0).all()
    # the straight-ray damped least squares beats the prior mean (measured RMSE 0.13 against 0.47 km/s)
    base = tt.straight_ray_baseline(ys[:4])
    assert np.sqrt(((base - vs[:4]) ** 2).mean()) < 0.5 * np.sqrt(((vs.mean(0) - vs[:4]) ** 2).mean())
    import bayesinv
    from bayesinv.problem import as_problem

    problem = as_problem(tt.model)
    assert problem.sites["v"].shape == (32, 32) and problem.sites["y"].shape == (8, 24)
    small = TravelTimeTomography(12, num_sources=3, num_receivers=8)
    from bayesinv.methods.importance import ImportanceWarning

    with pytest.warns(ImportanceWarning):  # 200 prior proposals are far too few: the warning says so
        idata = bayesinv.infer(small.model, small.draw(seed=0)[1], method="importance", num_samples=20, num_proposals=200,
                               seed=0, progress=False)  # fmt: skip
    assert idata.posterior["v"].shape[-2:] == (12, 12)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="num_sources"):
        TravelTimeTomography(16, num_sources=0)
    with pytest.raises(ValueError, match="noise"):
        TravelTimeTomography(16, noise=-1.0)
    tt = TravelTimeTomography(16)
    with pytest.raises(ValueError, match=r"v must have shape \(\*, 16, 16\)"):
        tt.times(torch.ones(8, 8))
    with pytest.raises(ValueError, match="positive"):
        tt.times(torch.zeros(16, 16))
    with pytest.raises(ValueError, match="node indices"):
        eikonal(torch.ones(4, 4), torch.tensor([[4, 0]]), 0.1)
    with pytest.raises(ValueError, match="trailing shape"):
        tt.straight_ray_baseline(np.zeros((3, 3)))
