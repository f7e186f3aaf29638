r"""Run by test_simulate: a slow simulation written to zarr, to be killed half-way.

The simulator sleeps ``BAYESINV_TEST_SIM_SLEEP`` seconds per batch (default 0.15) when run
as a script; imported by the tests it does not sleep, and gives the same draws::

    python tests/slow_sim_script.py STORE N CHUNK
"""

import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch

import bayesinv

SLEEP = {"s": 0.0}


@bayesinv.simulator
def slow(theta):
    time.sleep(SLEEP["s"])
    return theta * 3.0


def model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(slow(theta), 0.1).to_event(1), obs=y)


if __name__ == "__main__":
    SLEEP["s"] = float(os.environ.get("BAYESINV_TEST_SIM_SLEEP", "0.15"))
    bayesinv.simulate(model, int(sys.argv[2]), seed=7, chunk_size=int(sys.argv[3]), path=sys.argv[1], progress=False)
