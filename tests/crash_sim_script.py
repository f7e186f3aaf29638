r"""Used by test_simulate's crash tests: a cheap model whose simulator fails for ~31% of rows.

The failing rows (non-finite output, excluded by ``simulate``) make every chunk commit a
different number of draws, so commits straddle zarr chunk boundaries and a commit
rewrites zarr chunks that already hold committed draws — the case a crash must not
corrupt. Run as a script, it simulates into a store and ``os._exit(3)``-s just before
write step ``crash_at`` (1-based; 0: no crash)::

    python tests/crash_sim_script.py STORE N CHUNK SEED CRASH_AT
"""

import os
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import bayesinv
import bayesinv.data


@bayesinv.simulator
def half_broken(theta):
    out = np.stack([theta[:, 0] * 2.0, theta[:, 0] * theta[:, 1]], axis=-1)
    out[theta[:, 0] > 0.5] = np.nan  # P(theta_0 > 0.5) = 0.31: those rows fail
    return out


def model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    count = pyro.sample("k", dist.Poisson(3.0))
    return pyro.sample("y", dist.Normal(half_broken(theta) + count[..., None], 0.1).to_event(1), obs=y)


BROKEN = {"on": False}


@bayesinv.simulator
def always_nan(theta):
    # switched on after tracing: every draw simulate() makes fails
    return np.full_like(theta, np.nan) if BROKEN["on"] else theta


def broken_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(always_nan(theta), 0.1).to_event(1), obs=y)


def crash_before(step: int):
    r"""A ``bayesinv.data._test_hook`` that ends the process (no cleanup) before write step ``step``."""
    seen = {"n": 0}

    def hook(name: str) -> None:
        seen["n"] += 1
        if seen["n"] == step:
            os._exit(3)

    return hook


if __name__ == "__main__":
    store, n, chunk, seed, crash_at = sys.argv[1], *map(int, sys.argv[2:6])
    if crash_at:
        bayesinv.data._test_hook = crash_before(crash_at)
    bayesinv.simulate(model, n, seed=seed, chunk_size=chunk, path=store, progress=False)
