r"""Writes the version-1 posterior fixtures: run with PYTHONPATH at a checkout of 74f82f5 (before the amortized layer):

    PYTHONPATH=/tmp/base python tests/data/make_v1_fixtures.py tests/data

Each fixture is a small seeded fit on a toy problem and 64 (csd_star: 16) draws for seed 7 and fixed y.
"""
import sys
import numpy as np
import pyro, pyro.distributions as dist
import torch
import bayesinv
from bayesinv.methods.cond_score import CondScoreConfig
print(bayesinv.__file__)
from bayesinv.models.toy import LinearGaussian

torch.set_num_threads(1)
out = sys.argv[1]
lg = LinearGaussian(dim=2, noise=0.5, seed=0)
_, y = lg.draw(seed=3)
y = np.asarray(y, dtype=np.float32)
ys = np.stack([np.asarray(lg.draw(seed=s)[1], dtype=np.float32) for s in (4, 5)])

def save(name, post, y, draw_opts):
    post.save(f"{out}/{name}_v1.bayesinv")
    d = post.sample(y, 64, seed=7, **draw_opts)
    np.savez(f"{out}/{name}_v1_draws.npz", y=y, seed=7, n=64, **{f"draw_{k}": v.numpy() for k, v in d.items()})
    print(name, {k: v.shape for k, v in d.items()})

p = bayesinv.fit(lg.model, method="cond_score", num_simulations=500, seed=0, max_epochs=None,
                 config=CondScoreConfig(max_steps=60, hidden=(32, 32), patience=None), progress=False)
save("cond_score", p, ys, dict(sampler="sde", steps=20))
p = bayesinv.fit(lg.model, method="flow", num_simulations=500, seed=0, hidden=(16, 16), num_transforms=2, max_epochs=3, patience=None, progress=False)
save("flow", p, ys, {})
p = bayesinv.fit(lg.model, method="vae", num_simulations=500, seed=0, hidden=(16, 16), regressor_hidden=(16,), max_epochs=3, patience=None, progress=False)
save("vae", p, ys, {})

SIZE = 8
PATTERN = torch.linspace(0.5, 1.5, SIZE)[:, None] * torch.ones(SIZE)
def model(y=None):
    a = pyro.sample("a", dist.Uniform(0.5, 1.5))
    field = pyro.deterministic("field", a * PATTERN)
    return pyro.sample("y", dist.Normal(field.mean() * torch.ones(3), 0.01).to_event(1), obs=y)
data = bayesinv.simulate(model, 200, seed=0, progress=False)
p = bayesinv.fit(model, method="csd_star", target="field", data=data, steps=20, insert_step=8, base_channels=8,
                 channel_mults=(1, 2), max_epochs=None, max_steps=30, batch_size=64, ema_decay=0.99, progress=False)
yc = data["y"].values[:2].astype(np.float32)
start = (yc[:, :1, None] * PATTERN.numpy())
p.save(f"{out}/csd_star_v1.bayesinv")
d = p.sample(yc, 16, seed=7, start=start)
np.savez(f"{out}/csd_star_v1_draws.npz", y=yc, start=start, seed=7, n=16, **{f"draw_{k}": v.numpy() for k, v in d.items()})
print("csd_star", {k: v.shape for k, v in d.items()})
