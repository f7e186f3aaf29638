import pytest
import torch

from bayesinv.nets.embedding import CNNEmbedding, MLPEmbedding, NoiseEmbedding, time_embedding
from bayesinv.nets.mlp import ResidualScoreMLP, ScoreMLP
from bayesinv.nets.unet import ScoreUNet


def test_time_embedding_values():
    assert torch.allclose(time_embedding(torch.tensor(0.0)), torch.tensor([-0.5, 1.0, 0.0, -1.0]))
    assert torch.allclose(time_embedding(torch.tensor(0.25)), torch.tensor([-0.25, 0.0, 1.0, 1.0]), atol=1e-6)
    assert time_embedding(torch.rand(3, 5)).shape == (3, 5, 4)


def test_sigma_embedding_maps_log_sigma_to_unit_interval():
    emb = NoiseEmbedding(sigma_range=(0.01, 10.0))
    assert torch.allclose(emb(torch.tensor([0.01, 10.0])), time_embedding(torch.tensor([0.0, 1.0])), atol=1e-6)
    assert torch.allclose(emb(torch.tensor(0.1)), time_embedding(torch.tensor(1 / 3)), atol=1e-6)
    with pytest.raises(ValueError):
        NoiseEmbedding(sigma_range=(1.0, 0.1))


def test_observation_embeddings():
    assert MLPEmbedding(10, 8)(torch.randn(2, 5, 10)).shape == (2, 5, 8)
    assert CNNEmbedding((2, 20, 12), 16)(torch.randn(3, 4, 2, 20, 12)).shape == (3, 4, 16)


def test_score_mlp_shapes_and_broadcasting():
    net = ScoreMLP(3, 5, hidden=(32, 32))
    x, y = torch.randn(10, 3), torch.randn(10, 5)
    assert net(x, y, torch.rand(10)).shape == (10, 3)
    t = torch.tensor(0.3)
    assert torch.allclose(net(x, y, t), net(x, y, t.expand(10)))
    assert torch.allclose(net(x, y[0], t), net(x, y[0].expand(10, 5), t))  # one observation, many x
    assert net(torch.randn(4, 6, 3), torch.randn(4, 6, 5), torch.rand(4, 6)).shape == (4, 6, 3)
    assert not torch.allclose(net(x, y, torch.tensor(0.1)), net(x, y, torch.tensor(0.9)))
    assert ScoreMLP(3, hidden=(8,))(x, None, t).shape == (10, 3)  # unconditional


def test_score_mlp_mask_and_embedding():
    net = ScoreMLP(3, 5, hidden=(32,), mask_dim=5)
    x, y, t = torch.randn(10, 3), torch.randn(10, 5), torch.rand(10)
    on, off = torch.ones(10, 5), torch.zeros(10, 5)
    assert not torch.allclose(net(x, y, t, mask=on), net(x, y, t, mask=off))
    with pytest.raises(ValueError):
        net(x, y, t)
    cnn = ScoreMLP(3, hidden=(32,), embedding=CNNEmbedding((2, 16, 16), 8))
    assert cnn(x, torch.randn(10, 2, 16, 16), t).shape == (10, 3)
    assert cnn(x, torch.randn(2, 16, 16), t).shape == (10, 3)


def test_score_mlp_scale_by_sigma():
    net = ScoreMLP(3, 5, hidden=(16,), sigma_range=(0.01, 5.0), scale_by_sigma=True)
    x, y, sigma = torch.randn(6, 3), torch.randn(6, 5), torch.tensor([0.01, 0.1, 1.0, 5.0, 2.0, 0.5])
    scaled = net(x, y, sigma)
    net.scale_by_sigma = False
    assert torch.allclose(scaled * sigma[:, None], net(x, y, sigma), rtol=1e-5)
    with pytest.raises(ValueError):
        ScoreMLP(3, 5, scale_by_sigma=True)


def test_score_unet_shapes():
    net = ScoreUNet(1, y_channels=2, base_channels=8, channel_mults=(1, 2, 2))
    x, y = torch.randn(3, 1, 16, 16), torch.randn(3, 2, 16, 16)
    out = net(x, y, torch.rand(3))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    # sizes not divisible by 4, a scalar time and one observation for the whole batch
    x = torch.randn(2, 1, 13, 10)
    assert net(x, torch.randn(2, 13, 10), torch.tensor(0.5)).shape == x.shape
    assert not torch.allclose(net(x, torch.zeros(2, 13, 10), 0.1), net(x, torch.zeros(2, 13, 10), 0.9))


def test_score_unet_embedding_mask_and_sigma():
    emb = MLPEmbedding(7, 16)
    net = ScoreUNet(2, base_channels=8, channel_mults=(1, 2), embedding=emb, mask_channels=1,
                    sigma_range=(0.01, 10.0), scale_by_sigma=True)  # fmt: skip
    x, y, mask, sigma = torch.randn(4, 2, 8, 8), torch.randn(4, 7), torch.ones(4, 1, 8, 8), torch.tensor([0.01, 0.1, 1.0, 10.0])
    out = net(x, y, sigma, mask=mask)
    assert out.shape == x.shape
    net.scale_by_sigma = False
    assert torch.allclose(out * sigma[:, None, None, None], net(x, y, sigma, mask=mask), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(net(x, y, sigma, mask=mask), net(x, y, sigma, mask=0 * mask))
    with pytest.raises(ValueError):
        ScoreUNet(1, y_channels=1, embedding=emb)


def test_score_unet_embedding_map_learns_a_y_dependent_layout():
    # y one-hot picks a quadrant; the output must light that quadrant up from x = 0
    # (the map onto the grid gives the layout directly; without it only the padding could)
    torch.manual_seed(0)
    emb = MLPEmbedding(4, 16)
    net = ScoreUNet(1, base_channels=8, channel_mults=(1, 2), embedding=emb, embedding_map=2, grid_size=(8, 8))
    y = torch.eye(4)
    target = torch.zeros(4, 1, 8, 8)
    for k, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        target[k, 0, r : r + 4, c : c + 4] = 1.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        loss = (net(torch.zeros(4, 1, 8, 8), y, torch.full((4,), 0.5)) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 2e-3
    assert net.y_map.weight.shape == (2 * 4 * 4, emb.out_dim)  # a 4 x 4 map, upsampled to 8 x 8
    with pytest.raises(ValueError, match=r"built for a \(8, 8\) grid"):
        net(torch.zeros(1, 1, 16, 16), y[:1], 0.5)
    with pytest.raises(ValueError, match="embedding_map needs"):
        ScoreUNet(1, embedding=emb, embedding_map=2)


def test_cond_score_net_without_map_channels_builds_as_saved_before():
    # posterior files written before the embedding map existed have no "map_channels"
    from bayesinv.methods.cond_score import CondScoreNet

    spec = dict(network="unet", x_dim=64, c_dim=5, activation="silu", process={"kind": "ve", "sigma_max": 5.0},
                hidden=[8], base_channels=8, channel_mults=[1, 2], x_shape=[1, 8, 8],
                embedding={"kind": "mlp", "dim": 16, "in_shape": []})  # fmt: skip
    assert CondScoreNet(spec).inner.y_map is None
    spec["embedding"]["map_channels"] = 3
    assert CondScoreNet(spec).inner.inp.in_channels == 1 + 3


@pytest.mark.parametrize("method", ["cond_score", "flow_matching"])
def test_mlp_with_a_cnn_embedding_of_a_field_condition_fits_and_samples(method):
    import pyro
    import pyro.distributions as dist

    import bayesinv

    grid = torch.linspace(0, 1, 8)

    def model(y=None):  # a 2-D source position seen on an 8 x 8 image
        theta = pyro.sample("theta", dist.Uniform(torch.zeros(2), torch.ones(2)).to_event(1))
        img = torch.exp(-((grid[:, None] - theta[..., :1, None]) ** 2 + (grid[None, :] - theta[..., 1:, None]) ** 2) / 0.05)
        return pyro.sample("y", dist.Normal(img, 0.1).to_event(2), obs=y)

    post = bayesinv.fit(model, method=method, target="theta", num_simulations=64, network="mlp", embedding="cnn",
                        embed_pool="flatten", max_epochs=None, max_steps=3, batch_size=16, progress=False, seed=0)
    assert post.net.inner.embedding[1].pool == "flatten"  # position-aware: a source position is a vector target
    draws = post.sample(torch.zeros(8, 8), 5, seed=1)["theta"]
    assert draws.shape == (5, 2) and torch.isfinite(draws).all()
    with pytest.raises(bayesinv.OptionError, match="embed_pool"):
        bayesinv.fit(model, method=method, target="theta", num_simulations=64, embed_pool="max")


def test_residual_score_mlp_shapes_time_dependence_and_embedding():
    torch.manual_seed(0)
    net = ResidualScoreMLP(3, 5, width=32, depth=2)
    x, y = torch.randn(7, 3), torch.randn(7, 5)
    out = net(x, y, torch.rand(7))
    assert out.shape == (7, 3)
    assert net(x, y[0], torch.tensor(0.3)).shape == (7, 3)  # one observation and one time broadcast
    # the time enters every block: outputs differ between two times by more than rounding
    assert (net(x, y, torch.full((7,), 0.2)) - net(x, y, torch.full((7,), 0.8))).abs().max() > 1e-3
    # through an embedding of a 4 x 4 field, and with a noise-level input mapped onto [0, 1]
    emb = CNNEmbedding((1, 4, 4), 6)
    net = ResidualScoreMLP(2, embedding=emb, width=16, depth=1, sigma_range=(1e-4, 1.0))
    assert net(torch.randn(5, 2), torch.randn(5, 1, 4, 4), torch.full((5,), 0.01)).shape == (5, 2)
    with pytest.raises(ValueError, match="conditional"):
        net(torch.randn(5, 2), None, torch.rand(5))


def test_resmlp_spec_needs_one_width():
    from bayesinv.amortized.layout import Layout
    from bayesinv.errors import ProblemError
    from bayesinv.methods.flow_matching import FlowMatchingConfig
    from bayesinv.nets.score import net_spec

    target, cond = Layout(("theta",), ((2,),)), Layout(("y",), ((3,),))
    spec = net_spec(FlowMatchingConfig(), target, cond, {"kind": "flow_matching", "sigma_min": 1e-4}, vector_network="resmlp")
    assert spec["network"] == "resmlp" and spec["hidden"] == [128, 128, 128]
    with pytest.raises(ProblemError, match="hidden must repeat one size"):
        net_spec(FlowMatchingConfig(hidden=(64, 32)), target, cond, {"kind": "flow_matching"}, vector_network="resmlp")
