r"""Run by test_simulate: a slow simulation written to zarr, to be killed half-way."""

import sys
import time

import pyro
import pyro.distributions as dist
import torch

import bayesinv


@bayesinv.simulator
def slow(theta):
    time.sleep(0.15)
    return theta * 3.0


def model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(slow(theta), 0.1).to_event(1), obs=y)


if __name__ == "__main__":
    bayesinv.simulate(model, int(sys.argv[2]), seed=7, chunk_size=int(sys.argv[3]), path=sys.argv[1], progress=False)
