r"""Prior-only training (bayesinv.amortized.prior_only) and method="score_prior"."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv.amortized.prior_only import prepare_prior_pairs, prior_draws
from bayesinv.errors import ProblemError
from bayesinv.models.deblurring import Deblurring
from bayesinv.problem import as_problem

CALLS = {"n": 0}


@bayesinv.simulator
def _counted_forward(theta):  # (N, 3) -> (N, 5)
    CALLS["n"] += len(theta)
    return np.repeat(theta.sum(-1, keepdims=True), 5, axis=-1)


def blackbox_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    field = pyro.deterministic("field", 2.0 * theta)
    u = _counted_forward(theta)
    return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)


def simulated_target_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    u = pyro.deterministic("u", _counted_forward(theta))
    return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)


def looped_model(y=None):  # does not broadcast over a batch plate (a Python float of a sample)
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    x = pyro.deterministic("x", torch.tensor([float(a), 2.0 * float(a)]))
    return pyro.sample("y", dist.Normal(x, 0.1).to_event(1), obs=y)


# -- prior-only draws ------------------------------------------------------------------------
def test_prior_draws_never_call_the_simulator():
    problem = as_problem(blackbox_model)  # tracing runs the model (and its simulator) once
    CALLS["n"] = 0
    draws = prior_draws(problem, ("theta", "field"), 4000, seed=3)
    assert CALLS["n"] == 0
    assert draws["theta"].shape == (4000, 3) and draws["field"].shape == (4000, 3)
    torch.testing.assert_close(draws["field"], 2 * draws["theta"])
    # N(0, 1) prior: mean within 5 standard errors (0.016) of 0, sd within 0.05 of 1
    assert draws["theta"].mean(0).abs().max() < 0.08
    assert (draws["theta"].std(0) - 1).abs().max() < 0.05
    again = prior_draws(problem, ("theta", "field"), 4000, seed=3)
    assert torch.equal(again["theta"], draws["theta"])


def test_prior_draws_refuse_a_target_computed_by_the_simulator():
    problem = as_problem(simulated_target_model)
    CALLS["n"] = 0
    with pytest.raises(ProblemError, match="calls the simulator '_counted_forward' before"):
        prior_draws(problem, ("u",), 10)
    assert CALLS["n"] == 0


def test_prior_draws_of_a_model_that_does_not_broadcast():
    draws = prior_draws(as_problem(looped_model), ("x",), 50, seed=0)
    torch.testing.assert_close(draws["x"][:, 1], 2 * draws["x"][:, 0])
    assert draws["x"][:, 0].std() > 0.5


def test_prior_pairs_from_data_and_from_the_model():
    problem = as_problem(Deblurring(8).model)
    x = Deblurring(8).L1 @ np.random.default_rng(0).standard_normal((300, 8, 8)) @ Deblurring(8).L1.T
    for data in (x, {"x": x}):
        pairs = prepare_prior_pairs(problem, ("x",), None, normalization="standard", transforms={}, num_simulations=None,
                                    data=data, seed=0, progress=False)  # fmt: skip
        assert pairs.x.shape == (300, 64) and pairs.c.shape == (300, 0) and pairs.num_simulations == 0
        torch.testing.assert_close(pairs.x_norm.inverse(pairs.x), torch.as_tensor(x, dtype=torch.float32).reshape(300, 64))
    pairs = prepare_prior_pairs(problem, ("x",), None, normalization="standard", transforms={}, num_simulations=200,
                                data=None, seed=0, progress=False)  # fmt: skip
    assert pairs.x.shape == (200, 64) and pairs.condition.names == ("y",) and pairs.observed == ("y",)
    with pytest.raises(ProblemError, match="draws of shape"):
        prepare_prior_pairs(problem, ("x",), None, normalization="standard", transforms={}, num_simulations=None,
                            data=np.zeros((20, 4, 4)), seed=0, progress=False)  # fmt: skip
    with pytest.raises(ProblemError, match="no conditions"):
        prepare_prior_pairs(problem, ("x",), "y", normalization="standard", transforms={}, num_simulations=20,
                            data=None, seed=0, progress=False)  # fmt: skip
