r"""Small models used across the tests (module level so worker processes can import them)."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import bayesinv

CALLS = {"n": 0}


@bayesinv.simulator
def square_sim(theta):
    CALLS["n"] += theta.shape[0]
    return np.stack([theta[:, 0] ** 2, theta[:, 0] + theta[:, 1]], axis=-1)


def blackbox_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    u = pyro.deterministic("u", square_sim(theta))
    return pyro.sample("y", dist.Normal(u, 0.3).to_event(1), obs=y)


@bayesinv.simulator
def flaky_sim(theta):
    if np.any(theta[:, 0] > 1.6448536):  # fails for ~5% of prior draws
        raise RuntimeError("solver diverged")
    return theta * 2.0


def flaky_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    u = flaky_sim(theta)
    return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)


def loop_model(y=None):
    # float() makes this model unable to broadcast over a batch: runs draw by draw
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = float(a) * 2.0
    return pyro.sample("y", dist.Normal(torch.tensor([b, b + 1.0]), 0.5).to_event(1), obs=y)


def two_obs_model(y=None):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    pyro.sample("u", dist.Normal(theta, 0.5), obs=None if y is None else y["u"])
    pyro.sample("v", dist.Normal(theta.expand(3), 0.5).to_event(1), obs=None if y is None else y["v"])


def plate_model(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", 5):
        return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def no_obs_model(y=None):
    pyro.sample("theta", dist.Normal(0.0, 1.0))
