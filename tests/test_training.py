import math

import pytest
import torch
import torch.nn as nn

from bayesinv.diffusion.loss import dsm_loss
from bayesinv.diffusion.sde import VE
from bayesinv.nets.mlp import ScoreMLP
from bayesinv.training import TrainConfig, TrainResult, train


def regression_data(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    return x, 2 * x + 1 + 0.1 * torch.randn(n, 1, generator=g)


def mse(net, x, y):
    return (net(x) - y).square().mean()


def test_train_reduces_loss_and_keeps_ema():
    torch.manual_seed(0)
    net = nn.Linear(1, 1)
    x, y = regression_data()
    before = mse(net, x, y).item()
    res = train(mse, net, (x, y), batch_size=64, max_steps=300, lr=0.05, ema_decay=0.99, eval_every=50, progress=False)
    assert isinstance(res, TrainResult) and res.steps == 300 and res.wall_time > 0
    assert res.history["step"] == [50, 100, 150, 200, 250, 300]
    assert res.history["train_loss"][-1] < 0.1 * before and res.best_val < 0.05
    assert net.weight.item() == pytest.approx(2.0, abs=0.05) and net.bias.item() == pytest.approx(1.0, abs=0.05)
    assert not torch.equal(res.ema_model.weight, res.model.weight)
    assert res.ema_model.weight.item() == pytest.approx(2.0, abs=0.1)
    assert not res.ema_model.weight.requires_grad


def test_cosine_schedule_and_config():
    x, y = regression_data(128)
    res = train(mse, nn.Linear(1, 1), (x, y), config=TrainConfig(batch_size=32, max_epochs=5, lr=0.01, lr_schedule="cosine", progress=False))
    assert res.steps == 5 * math.ceil(round(128 * 0.9) / 32)
    assert res.history["lr"][0] > 0.009 and res.history["lr"][-1] < 1e-4
    with pytest.raises(ValueError):
        TrainConfig(max_epochs=None, max_steps=None)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lbfgs")


def test_early_stopping():
    x, y = regression_data(256)
    res = train(mse, nn.Linear(1, 1), (x, y), val_data=(x[:64], y[:64]), batch_size=32, max_steps=1000,
                lr=0.0, eval_every=5, patience=2, progress=False)  # fmt: skip
    assert res.stopped_early and res.steps == 20  # best at step 5, then 3 evaluations without progress
    assert len(res.history["val_loss"]) == 4


def dsm_setup():
    torch.manual_seed(0)
    theta = torch.rand(300, 2)
    y = theta.sum(-1, keepdim=True) + 0.1 * torch.randn(300, 1)
    net = ScoreMLP(2, 1, hidden=(16, 16))
    loss = lambda net, theta, y: dsm_loss(net, theta, y, VE(sigma_max=5.0))  # draws from the global RNG
    return net, loss, (theta, y)


def test_checkpoint_resume_continues_exactly(tmp_path):
    opts = dict(batch_size=32, lr=1e-3, eval_every=10, seed=3, restore_best=False, progress=False)
    net, loss, data = dsm_setup()
    straight = train(loss, net, data, max_steps=40, **opts)

    path = tmp_path / "run.ckpt"
    net, loss, data = dsm_setup()
    first = train(loss, net, data, max_steps=20, checkpoint_path=path, checkpoint_every=10, **opts)
    assert first.steps == 20
    ck = torch.load(path, weights_only=True)
    assert ck["step"] == 20 and set(ck) >= {"model", "ema", "optimizer", "history", "best_val"}

    torch.manual_seed(123)  # resuming restores the random state saved in the checkpoint
    net2, _, _ = dsm_setup()
    resumed = train(loss, net2, data, max_steps=40, checkpoint_path=path, resume=True, **opts)
    assert resumed.steps == 40 and resumed.history["step"] == [10, 20, 30, 40]
    assert resumed.history["train_loss"] == pytest.approx(straight.history["train_loss"])
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b)
    for a, b in zip(straight.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.allclose(a, b)
    assert torch.load(path, weights_only=True)["step"] == 40

    again = train(loss, net2, data, max_steps=40, checkpoint_path=path, resume=True, **opts)
    assert again.steps == 40 and len(again.history["step"]) == 4  # nothing left to do


def test_cpu_time_is_recorded_and_carried_across_resumes(tmp_path):
    opts = dict(batch_size=32, lr=1e-3, eval_every=10, seed=3, restore_best=False, progress=False)
    net, loss, data = dsm_setup()
    path = tmp_path / "run.ckpt"
    first = train(loss, net, data, max_steps=20, checkpoint_path=path, checkpoint_every=10, **opts)
    assert math.isfinite(first.cpu_time) and first.cpu_time > 0
    ck = torch.load(path, weights_only=True)
    assert ck["cpu"] == pytest.approx(first.cpu_time, rel=0.5)  # written at step 20, just before the loop's end
    resumed = train(loss, net, data, max_steps=40, checkpoint_path=path, resume=True, **opts)
    assert resumed.cpu_time > ck["cpu"]  # the first segment's CPU time carried, the new one added
    # a checkpoint written before the loop recorded CPU time resumes with it unknown, never as zero
    del ck["cpu"]
    torch.save(ck, path)
    older = train(loss, net, data, max_steps=30, checkpoint_path=path, resume=True, **opts)
    assert older.steps == 30 and math.isnan(older.cpu_time)


# -- checkpoints: fingerprints, start-up checks, atomic writes ----------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.amortized.training import read_checkpoint  # noqa: E402
from bayesinv.errors import CheckpointError, OptionError  # noqa: E402
from bayesinv.models.toy import LinearGaussian  # noqa: E402

LG = LinearGaussian(dim=2, noise=0.5, seed=0)
TINY = dict(method="flow", hidden=(8,), num_transforms=1, max_epochs=None, max_steps=6, batch_size=32, progress=False)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    path = tmp_path / "run.ckpt"
    bayesinv.fit(LG.model, num_simulations=100, seed=0, checkpoint=path, **TINY)
    # another seed, learning rate, data set, model of the same shapes: refused, naming what differs
    with pytest.raises(CheckpointError, match="seed: checkpoint 0, this run 1"):
        bayesinv.fit(LG.model, num_simulations=100, seed=1, checkpoint=path, resume=True, **TINY)
    with pytest.raises(CheckpointError, match="lr"):
        bayesinv.fit(LG.model, num_simulations=100, seed=0, lr=5e-3, checkpoint=path, resume=True, **TINY)
    with pytest.raises(CheckpointError, match="data"):
        bayesinv.fit(LG.model, num_simulations=120, seed=0, checkpoint=path, resume=True, **TINY)
    other = LinearGaussian(dim=2, noise=0.5, seed=1)  # another forward matrix, same shapes
    with pytest.raises(CheckpointError, match="data"):
        bayesinv.fit(other.model, num_simulations=100, seed=0, checkpoint=path, resume=True, **TINY)
    with pytest.raises(CheckpointError, match="num_transforms"):
        bayesinv.fit(LG.model, num_simulations=100, seed=0, checkpoint=path, resume=True, **{**TINY, "num_transforms": 2})
    # the same run resumes, and may train longer
    post = bayesinv.fit(LG.model, num_simulations=100, seed=0, checkpoint=path, resume=True, **{**TINY, "max_steps": 9})
    assert post.info["train_steps"] == 9


def test_checkpoint_options_are_checked_at_the_start(tmp_path):
    with pytest.raises(OptionError, match="resume=True needs checkpoint="):
        bayesinv.fit(LG.model, num_simulations=100, resume=True, **TINY)
    with pytest.raises(OptionError, match="does not exist"):
        bayesinv.fit(LG.model, num_simulations=100, checkpoint=tmp_path / "missing" / "run.ckpt", **TINY)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        bayesinv.fit(LG.model, num_simulations=100, checkpoint=broken, resume=True, **TINY)


WORKER = r"""
import sys, torch
from bayesinv.training import train
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
x = torch.randn(4096, 8, generator=g)
y = x @ torch.randn(8, 1, generator=g)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.SiLU(), torch.nn.Linear(64, 1))
res = train(lambda m, a, b: (m(a) - b).square().mean(), net, (x, y), batch_size=64, max_steps=int(sys.argv[2]),
            checkpoint_every=2, eval_every=20, seed=0, progress=False, checkpoint_path=sys.argv[1], resume=True)
print("done", res.steps)
"""


def test_kills_at_random_moments_leave_a_loadable_checkpoint_and_the_run_finishes(tmp_path):
    # each worker is killed a random (seeded) time after it has written its first checkpoint,
    # that is, while it trains and writes a checkpoint every 2 steps
    path, total = tmp_path / "kill.ckpt", 1000
    rng = np.random.default_rng(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = []
    for delay in rng.uniform(0.0, 0.4, size=3):
        before = path.stat().st_mtime_ns if path.exists() else None
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(path), str(total)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if path.exists() and path.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        steps.append(read_checkpoint(path)["step"])  # always a whole checkpoint, never torn
    assert steps == sorted(steps) and 0 < steps[-1] < total
    done = subprocess.run([sys.executable, "-c", WORKER, str(path), str(total)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["done", str(total)] and read_checkpoint(path)["step"] == total
    assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []  # what killed writers left is cleaned up


def test_training_without_a_terminal_logs_its_size_progress_and_eta(caplog):
    # item 17 of the reliability issue: a long fit says how long it is, through logging, without a terminal
    import logging

    torch.manual_seed(0)
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    net = nn.Linear(2, 2)
    with caplog.at_level(logging.INFO, logger="bayesinv"):
        train(lambda m, b: (m(b) - b).pow(2).mean(), net, (x,), config=TrainConfig(max_steps=60, batch_size=32, progress=None))
    text = caplog.text
    assert "train: starting, 60 steps" in text
    assert "about" in text and "more (estimated after" in text  # the estimated training time
    assert "train: done, 60 steps in" in text


def test_bfloat16_autocast_trains_in_float32_weights_and_bad_precision_is_refused():
    x, y = regression_data()
    nets = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        net = nn.Linear(1, 1)
        res = train(mse, net, (x, y), batch_size=64, max_steps=300, lr=0.05, ema_decay=None, eval_every=100,
                    precision=precision, progress=False)  # fmt: skip
        assert net.weight.dtype == torch.float32 and math.isfinite(res.best_val)
        # y = 2x + 1: bfloat16's 8-bit mantissa (relative 4e-3) still fits the line to 0.05
        assert net.weight.item() == pytest.approx(2.0, abs=0.05) and net.bias.item() == pytest.approx(1.0, abs=0.05)
        nets[precision] = net
    # the autocast did act: the two runs see different rounding, so their weights differ
    assert not torch.equal(nets["float32"].weight, nets["bfloat16"].weight)
    with pytest.raises(ValueError, match="precision 'float16'"):
        TrainConfig(precision="float16")
