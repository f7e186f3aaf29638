r"""Learned methods on a CUDA device: fit there, sample there, save on GPU and load on CPU.

Marked ``gpu``: skipped without CUDA (see conftest.py).
"""

import numpy as np
import pytest
import torch

import bayesinv
from bayesinv.models.toy import LinearGaussian

pytestmark = pytest.mark.gpu
PROBLEM = LinearGaussian(dim=2, noise=0.5, seed=0)


@pytest.mark.parametrize(
    "method, options",
    [("cond_score", dict(hidden=(128, 128, 128), max_epochs=60, patience=None)), ("flow", dict(max_epochs=60, patience=None))],
)
def test_fit_and_sample_on_cuda(method, options, tmp_path):
    post = bayesinv.fit(PROBLEM.model, method=method, num_simulations=4000, seed=0, device="cuda", progress=False, **options)
    assert next(post.net.parameters()).device.type == "cuda"
    theta, y = PROBLEM.draw(seed=3)
    draws = post.sample(y, 4000, seed=0)["theta"]
    assert draws.shape == (4000, 2)
    mean, cov = PROBLEM.posterior(y)
    std = np.sqrt(np.diag(cov))
    d = draws.cpu().numpy()
    assert np.abs(d.mean(0) - mean).max() < 0.3 * std.max()
    assert np.allclose(d.std(0), std, rtol=0.3)
    post.save(tmp_path / "p.bayesinv")
    cpu = bayesinv.load(tmp_path / "p.bayesinv", device="cpu")
    assert next(cpu.net.parameters()).device.type == "cpu"
    assert cpu.sample(y, 10, seed=0)["theta"].shape == (10, 2)


def test_auto_device_picks_cuda():
    post = bayesinv.fit(PROBLEM.model, method="flow", num_simulations=500, max_epochs=1, patience=None, progress=False)
    assert post.device.type == "cuda"
    assert torch.cuda.is_available()
