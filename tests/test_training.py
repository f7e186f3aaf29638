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
