r"""CNNEmbedding's ``pool="flatten"``: a position-aware embedding for vector targets."""

from __future__ import annotations

import pytest
import torch

from bayesinv.errors import OptionError
from bayesinv.nets.embedding import CNNEmbedding


def test_flatten_keeps_the_position_that_mean_pooling_loses():
    torch.manual_seed(0)
    y = torch.zeros(2, 1, 56, 56)
    y[0, 0, 20:26, 10:16] = 1.0  # the same blob at two positions away from the edges
    y[1, 0, 20:26, 34:40] = 1.0  # shifted by 24 px, a multiple of the total stride 8
    mean, flat = CNNEmbedding((1, 56, 56), 8), CNNEmbedding((1, 56, 56), 8, pool="flatten")
    assert flat.head.in_features == 64 * 7 * 7
    assert flat(y).shape == (2, 8)
    with torch.no_grad():
        d_mean = (mean(y)[0] - mean(y)[1]).abs().max()
        d_flat = (flat(y)[0] - flat(y)[1]).abs().max()
    assert d_mean < 1e-5  # such a shift leaves the pooled features unchanged
    assert d_flat > 1e-3


def test_odd_sizes_and_bad_pool():
    assert CNNEmbedding((2, 57, 31), 4, pool="flatten")(torch.randn(3, 2, 57, 31)).shape == (3, 4)
    with pytest.raises(OptionError, match="pool must be 'mean' or 'flatten'"):
        CNNEmbedding((1, 8, 8), 4, pool="max")


@pytest.mark.parametrize("method", ["flow", "vae"])
def test_flow_and_vae_take_embed_pool_and_keep_it_when_saved(method, tmp_path):
    import bayesinv

    torch.manual_seed(0)
    theta = torch.rand(64, 2)
    y = torch.zeros(64, 1, 16, 16)
    rows, cols = (theta * 12).long().unbind(-1)
    y[torch.arange(64), 0, rows, cols] = 1.0  # a bright pixel at the target's position

    def model(obs=None):  # only the names and shapes matter: the fit reads the pairs
        import pyro
        import pyro.distributions as dist

        c = pyro.sample("c", dist.Uniform(torch.zeros(2), torch.ones(2)).to_event(1))
        return pyro.sample("y", dist.Normal(torch.zeros(1, 16, 16) + c.sum(-1)[..., None, None, None], 1.0).to_event(3), obs=obs)

    post = bayesinv.fit(model, method=method, target="c", data={"c": theta, "y": y}, seed=0, progress=False,
                        embedding="cnn", embed_pool="flatten", max_epochs=None, max_steps=2, batch_size=16)
    cnns = [m for m in post.net.modules() if isinstance(m, CNNEmbedding)]
    assert [m.pool for m in cnns] == ["flatten"]
    loaded = bayesinv.load(post.save(tmp_path / "p.bayesinv"))
    assert [m.pool for m in loaded.net.modules() if isinstance(m, CNNEmbedding)] == ["flatten"]
    a = post.sample(y[0], 4, seed=1)["c"]
    b = loaded.sample(y[0], 4, seed=1)["c"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the loaded network is the same network


@pytest.mark.parametrize("method", ["flow", "vae"])
def test_embed_pool_is_checked_before_training(method):
    import bayesinv

    def model(obs=None):
        import pyro
        import pyro.distributions as dist

        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(c, 1.0), obs=obs)

    with pytest.raises(OptionError, match="embed_pool"):
        bayesinv.fit(model, method=method, target="c", num_simulations=32, embed_pool="max", seed=0, progress=False)
    with pytest.raises(OptionError, match="embed_pool='flatten' needs embedding='cnn'"):
        bayesinv.fit(model, method=method, target="c", num_simulations=32, embed_pool="flatten", embedding="mlp", seed=0,
                     progress=False)


@pytest.mark.parametrize("method", ["cond_score", "flow_matching"])
def test_score_samplers_embed_each_observation_once(method, monkeypatch):
    # the CNN embedding runs once per observation, not at every ODE step of every draw, and the
    # draws are those of the network that embeds inside its forward pass (tolerance: float32 rounding)
    from bayesinv.nets.score import CondScoreNet

    import bayesinv
    import pyro
    import pyro.distributions as dist

    def model(obs=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("y", dist.Normal(torch.zeros(8, 8) + theta.sum(-1)[..., None, None], 1.0).to_event(2), obs=obs)

    post = bayesinv.fit(model, method=method, target="theta", num_simulations=64, seed=0, progress=False, embedding="cnn",
                        embed_dim=8, hidden=(16, 16), max_epochs=None, max_steps=2, batch_size=16)  # fmt: skip
    y = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1))
    calls = []
    embedding = post.net.inner.embedding
    handle = embedding.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    tight = dict(rtol=1e-7, atol=1e-7)  # adaptive ODE solvers: keep their step choices from amplifying rounding
    fast = post.sample(y, 5, seed=3, **tight)["theta"]
    handle.remove()
    assert calls == [2]
    monkeypatch.setattr(CondScoreNet, "embeds", lambda self: False)
    slow = post.sample(y, 5, seed=3, **tight)["theta"]
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
