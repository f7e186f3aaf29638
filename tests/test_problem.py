import numpy as np
import pytest
import torch
from torch.distributions import constraints

import bayesinv
from bayesinv.models.toy import LinearGaussian, spiral
from bayesinv.problem import ProblemError, run_batch, trace_problem
from tests import models_for_tests as M


def test_trace_sites_shapes_supports():
    lg = LinearGaussian(dim=4, num_obs=6)
    p = trace_problem(lg.model)
    assert p.latent == ("theta",)
    assert p.deterministic == ("mean_y",)
    assert p.observed == ("y",)
    assert p.sites["theta"].shape == (4,) and p.sites["theta"].event_dim == 1
    assert p.sites["y"].shape == (6,)
    assert p.sites["mean_y"].shape == (6,)
    assert isinstance(p.sites["theta"].support, constraints.independent) and p.sites["theta"].support.base_constraint is constraints.real
    assert "theta[4]" in repr(p)


def test_trace_finds_blackbox_and_multiple_observed_sites():
    p = trace_problem(M.blackbox_model)
    assert p.simulators == ("square_sim",)
    q = trace_problem(M.two_obs_model)
    assert set(q.observed) == {"u", "v"}
    y, batch = q.check_y({"u": 0.3, "v": [0.1, 0.2, 0.3]})
    assert batch == () and y["v"].shape == (3,)


def test_errors_name_the_problem():
    p = trace_problem(LinearGaussian(dim=3).model)
    with pytest.raises(ProblemError, match=r"site 'y' has shape \(4,\).*shape \(3,\)"):
        p.check_y(np.zeros(4))
    bad = np.zeros(3)
    bad[1] = np.nan
    with pytest.raises(ProblemError, match=r"NaN/inf.*index \(1,\)"):
        p.check_y(bad)
    with pytest.raises(ProblemError, match="no observed site"):
        trace_problem(M.no_obs_model)
    with pytest.raises(ProblemError, match="unknown target site 'E'.*theta"):
        p.resolve_target("E")
    with pytest.raises(ProblemError, match="dict keyed by site name"):
        trace_problem(M.two_obs_model).check_y(np.zeros(3))
    with pytest.raises(ProblemError, match="missing"):
        trace_problem(M.two_obs_model).check_y({"u": 0.0})
    with pytest.raises(ProblemError, match="a batch of shape"):
        bayesinv.infer(LinearGaussian(dim=3).model, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        bayesinv.infer(LinearGaussian(dim=3).model, np.zeros(3), method="nope")
    with pytest.raises(ProblemError, match="no option.*'stepsize'"):
        bayesinv.infer(LinearGaussian(dim=3).model, np.zeros(3), method="importance", stepsize=3)


def test_run_batch_vectorised_and_loop_agree_in_shape():
    p = trace_problem(spiral)
    b = run_batch(p, 64, seed=0)
    assert b.values["x"].shape == (64,) and b.valid.all()
    q = trace_problem(M.loop_model)
    b2 = run_batch(q, 7, seed=0)
    assert b2.values["y"].shape == (7, 2) and b2.values["a"].shape == (7,)
    torch.testing.assert_close(b2.values["y"][:, 0], 2 * b2.values["a"], atol=2.5, rtol=0)
    r = trace_problem(M.plate_model)
    b3 = run_batch(r, 11, seed=0)
    assert b3.values["y"].shape == (11, 5) and b3.values["mu"].shape == (11,)


def test_run_batch_is_reproducible_and_conditions_on_y():
    p = trace_problem(LinearGaussian(dim=3).model)
    a = run_batch(p, 10, seed=3)
    b = run_batch(p, 10, seed=3)
    torch.testing.assert_close(a.values["theta"], b.values["theta"], rtol=0, atol=0)  # the same seed: identical
    y, _ = p.check_y(np.zeros(3))
    c = run_batch(p, 10, y=y, seed=3, log_prior=True)
    assert c.log_lik.shape == (10,) and c.log_prior.shape == (10,)
    assert "y" not in c.values


def test_loop_and_vectorized_log_lik_match():
    p = trace_problem(LinearGaussian(dim=3).model)
    y, _ = p.check_y(np.ones(3))
    fixed = {"theta": torch.randn(5, 3, generator=torch.Generator().manual_seed(0))}
    a = run_batch(p, 5, y=y, fixed=fixed, vectorize=True)
    b = run_batch(p, 5, y=y, fixed=fixed, vectorize=False)
    # the float32 forward map runs as one batched matmul vs row by row (different rounding,
    # ~1e-7 relative); the float64 log-likelihoods (magnitude ~1-30) agree to well within 1e-5
    torch.testing.assert_close(a.log_lik, b.log_lik, rtol=1e-5, atol=1e-5)
