r"""The contract every learned method keeps, on the one amortized layer.

Parametrised over cond_score, flow, flow_matching, vae and csd_star: shapes and batches of observations,
seeds (the same seed gives the same draws, also after save/load), the InferenceData layout,
the info record, option handling (keywords, ``config=`` as a dataclass or a dict, bad names
and values refused before any simulation), observations with ``requires_grad``, devices, and the
model's deterministic sites computed from latent draws (also for importance, mcmc and nuts).
Tiny networks and few steps: the whole file runs in well under a minute on one core.
"""

import logging

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv.amortized import INFO_KEYS, get_amortized
from bayesinv.errors import OptionError
from bayesinv.models.toy import LinearGaussian

LG = LinearGaussian(dim=2, noise=0.5, seed=0)
SIZE = 8
PATTERN = torch.linspace(0.5, 1.5, SIZE)[:, None] * torch.ones(SIZE)
CALLS = {"n": 0}


def field_model(y=None):
    a = pyro.sample("a", dist.Uniform(0.5, 1.5))
    field = pyro.deterministic("field", a * PATTERN)
    return pyro.sample("y", dist.Normal(field.mean() * torch.ones(3), 0.01).to_event(1), obs=y)


def counting_model(y=None):
    CALLS["n"] += 1  # counts every run of the model: tracing, simulation
    return LG.model(y)


#: method -> (model, target, fit options, sample options, observation shape, target name, target shape)
CASES = {
    "cond_score": (LG.model, None, dict(hidden=(16,), max_epochs=None, max_steps=20), dict(sampler="sde", steps=5), (2,), "theta", (2,)),
    "flow": (LG.model, None, dict(hidden=(8,), num_transforms=1, max_epochs=None, max_steps=20), {}, (2,), "theta", (2,)),
    "flow_matching": (LG.model, None, dict(hidden=(16,), max_epochs=None, max_steps=20), dict(rtol=1e-3, atol=1e-3), (2,), "theta", (2,)),
    "vae": (LG.model, None, dict(hidden=(8,), regressor_hidden=(8,), max_epochs=None, max_steps=20), {}, (2,), "theta", (2,)),
    "csd_star": (field_model, "field", dict(base_channels=4, channel_mults=(1,), steps=10, insert_step=4, max_epochs=None, max_steps=5),
                 {}, (3,), "field", (SIZE, SIZE)),
}  # fmt: skip
METHODS = list(CASES)
#: Methods fitted on the latent theta of LG.model (csd_star learns the deterministic field).
LATENT = [m for m in METHODS if m != "csd_star"]


def sample_options(method, y):
    opts = dict(CASES[method][3])
    if method == "csd_star":  # CSD* starts from a reconstruction: give it directly
        y = np.asarray(y)
        opts["start"] = y[..., :1, None] * PATTERN.numpy()
    return opts


def observation(method, *batch, seed=0):
    shape = CASES[method][4]
    gen = np.random.default_rng(seed)
    return (1.0 + 0.1 * gen.standard_normal((*batch, *shape))).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def posts():
    out = {}
    for method, (model, target, fit_opts, *_rest) in CASES.items():
        out[method] = bayesinv.fit(model, method=method, target=target, num_simulations=200, seed=0, progress=False,
                                   device="cpu", **fit_opts)  # fmt: skip
    return out


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_batches(method, posts):
    post, name, shape = posts[method], CASES[method][5], CASES[method][6]
    y = observation(method)
    assert post.sample(y, 5, seed=0, **sample_options(method, y))[name].shape == (5, *shape)
    ys = observation(method, 2, 3)
    draws = post.sample(ys, 4, seed=0, **sample_options(method, ys))[name]
    assert draws.shape == (2, 3, 4, *shape) and torch.isfinite(draws).all()


@pytest.mark.parametrize("method", METHODS)
def test_seeds_and_save_load(method, posts, tmp_path):
    post, name = posts[method], CASES[method][5]
    y = observation(method, 2)
    opts = sample_options(method, y)
    a = post.sample(y, 6, seed=3, **opts)[name]
    assert torch.equal(a, post.sample(y, 6, seed=3, **opts)[name])
    assert not torch.equal(a, post.sample(y, 6, seed=4, **opts)[name])
    loaded = bayesinv.load(post.save(tmp_path / f"{method}.bayesinv"))
    assert type(loaded) is type(post) and loaded.method == method and loaded.config == post.config
    assert torch.equal(a, loaded.sample(y, 6, seed=3, **opts)[name])
    with pytest.raises(bayesinv.ProblemError, match="seed"):
        post.sample(y, 2, seed=-1, **opts)
    with pytest.raises(bayesinv.ProblemError, match="seed"):
        post.sample(y, 2, seed=1.5, **opts)


@pytest.mark.parametrize("method", METHODS)
def test_inference_data_layout_and_info(method, posts):
    post, name, shape = posts[method], CASES[method][5], CASES[method][6]
    y = observation(method)
    idata = post.infer(y, num_samples=7, seed=5, **sample_options(method, y))
    var = idata.posterior[name]
    assert var.dims[:2] == ("chain", "draw") and var.shape == (1, 7, *shape)
    assert idata.observed_data["y"].shape == CASES[method][4]
    assert "sample_stats" in idata.groups()
    assert idata.posterior.attrs["method"] == method and idata.posterior.attrs["seed"] == 5
    assert idata.posterior.attrs["num_simulations"] == 200
    batch = post.infer(observation(method, 2), num_samples=3, seed=5, **sample_options(method, observation(method, 2)))
    assert isinstance(batch, list) and len(batch) == 2
    assert set(INFO_KEYS) <= set(post.info)
    best = post.info["best_val_loss"]
    assert best is None or np.isfinite(best)
    assert post.info["train_steps"] >= 5 and post.info["seed"] == 0 and post.info["num_train_pairs"] == 200


@pytest.mark.parametrize("method", METHODS)
def test_observation_with_requires_grad(method, posts):
    post, name = posts[method], CASES[method][5]
    y = observation(method)
    opts = sample_options(method, y)
    draws = post.sample(torch.tensor(y, requires_grad=True), 3, seed=0, **opts)[name]
    assert torch.equal(draws, post.sample(y, 3, seed=0, **opts)[name])
    with pytest.raises(bayesinv.ProblemError, match="complex"):
        post.sample(y.astype(np.complex64), 3, **opts)
    with pytest.raises(bayesinv.ProblemError, match="None"):
        post.sample(None, 3, **opts)


@pytest.mark.parametrize("method", ["cond_score", "flow", "flow_matching", "vae"])
def test_bad_options_are_refused_before_any_simulation(method):
    fit_opts = CASES[method][2]
    samplr = {"samplr": "sde"}
    bad = [
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, bogus=1),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, max_epochs=0),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, max_epochs=None, max_steps=0),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, lr=-1.0),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, config={"bogus": 1}),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=2.5),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, resume=True),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, checkpoint="/no/such/folder/ck.pt"),
        lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, seed="abc"),
        lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, **samplr, **fit_opts),
        lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, num_samples=0),
    ]
    if method == "cond_score":
        bad += [
            lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, sampler="langevin"),
            lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, sampler="ode", steps=5),
            lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, rtol=-1.0),
        ]
    if method == "vae":
        bad.append(lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, spread=-1.0))
    if method == "flow_matching":
        bad += [
            lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, rtol=-1.0),
            lambda: bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, num_probes=0),
            lambda: bayesinv.fit(counting_model, method=method, num_simulations=50, sigma_min=2.0),
        ]
    for call in bad:
        CALLS["n"] = 0
        with pytest.raises(bayesinv.ProblemError) as info:
            call()
        assert CALLS["n"] == 0, f"the model ran before {info.value!r} was raised"
    with pytest.raises(OptionError, match="samplr.*sampling options are"):
        bayesinv.infer(counting_model, np.zeros(2), method=method, num_simulations=50, **samplr)


def test_csd_star_bad_options_are_refused_before_any_simulation():
    def counting_field_model(y=None):
        CALLS["n"] += 1
        return field_model(y)

    for bad in (dict(insert_step=2000), dict(steps=0), dict(process="ncsn"), dict(gn_options=3), dict(sampler="ode")):
        CALLS["n"] = 0
        with pytest.raises(OptionError):
            bayesinv.fit(counting_field_model, method="csd_star", target="field", num_simulations=50, **bad)
        assert CALLS["n"] == 0
    CALLS["n"] = 0
    with pytest.raises(OptionError, match="chunk_size"):
        bayesinv.infer(counting_field_model, np.ones(3), method="csd_star", target="field", num_simulations=50, chunk_size=0)
    assert CALLS["n"] == 0


@pytest.mark.parametrize("method", ["cond_score", "flow", "flow_matching", "vae"])
def test_one_way_to_set_options(method):
    spec = get_amortized(method)
    field = "hidden"
    common = dict(num_simulations=100, seed=0, progress=False, max_epochs=None, max_steps=3)
    by_keyword = bayesinv.fit(LG.model, method=method, **{field: (8,)}, **common)
    by_dict = bayesinv.fit(LG.model, method=method, config={field: [8]}, **common)
    by_class = bayesinv.fit(LG.model, method=method, config=spec.config(**{field: (8,)}, max_epochs=None, max_steps=3),
                            num_simulations=100, seed=0, progress=False)  # fmt: skip
    y = observation(method)
    ref = by_keyword.sample(y, 4, seed=0)["theta"]
    assert torch.equal(ref, by_dict.sample(y, 4, seed=0)["theta"]) and torch.equal(ref, by_class.sample(y, 4, seed=0)["theta"])
    # a keyword overrides the config
    over = bayesinv.fit(LG.model, method=method, config={field: [8], "normalization": "minmax"}, normalization="none", **common)
    assert over.config["normalization"] == "none"
    with pytest.raises(OptionError, match="has no fit option"):
        bayesinv.fit(LG.model, method=method, num_simulations=100, base_chanels=4)


def test_cond_score_keywords_override_its_config_fields():
    post = bayesinv.fit(LG.model, method="cond_score", num_simulations=100, hidden=(8,), max_epochs=None, max_steps=2,
                        embed_dim=16, base_channels=16, progress=False)  # fmt: skip
    assert post.config["embed_dim"] == 16 and post.config["hidden"] == [8] and post.config["base_channels"] == 16


def test_fit_reports_the_estimated_training_time(caplog):
    with caplog.at_level(logging.INFO, logger="bayesinv"):
        bayesinv.fit(LG.model, method="flow", num_simulations=100, hidden=(8,), max_epochs=None, max_steps=30, progress=False)
    assert any("training: 20 steps to go" in r.getMessage() and "more (estimated after 10 steps)" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_data_from_a_store_path(tmp_path):
    store = tmp_path / "pairs.zarr"
    data = bayesinv.simulate(LG.model, 100, seed=0, path=store, progress=False)
    common = dict(method="flow", hidden=(8,), num_transforms=1, max_epochs=None, max_steps=3, seed=0, progress=False)
    from_path = bayesinv.fit(LG.model, data=str(store), **common)
    in_memory = bayesinv.fit(LG.model, data=data, **common)
    y = observation("flow")
    assert torch.equal(from_path.sample(y, 4, seed=0)["theta"], in_memory.sample(y, 4, seed=0)["theta"])
    assert from_path.info["num_simulations"] == 100


def test_none_seed_is_fresh_and_recorded(posts):
    post = posts["flow"]
    y = observation("flow")
    a, b = post.infer(y, num_samples=4, seed=None), post.infer(y, num_samples=4, seed=None)
    assert a.posterior.attrs["seed"] != b.posterior.attrs["seed"]
    again = post.infer(y, num_samples=4, seed=a.posterior.attrs["seed"])
    np.testing.assert_array_equal(again.posterior["theta"].values, a.posterior["theta"].values)


def test_injected_network_with_build():
    from bayesinv.methods.flow import ConditionalFlow

    built = []

    def build(cfg, pairs):
        built.append((pairs.target.dim, pairs.condition.dim))
        return ConditionalFlow(pairs.target.dim, pairs.condition.dim, flow="maf", num_transforms=1, hidden=(4,))

    post = bayesinv.fit(LG.model, method="flow", num_simulations=100, max_epochs=None, max_steps=3, build=build, progress=False)
    assert built == [(2, 2)] and post.sample(observation("flow"), 3, seed=0)["theta"].shape == (3, 2)
    with pytest.raises(bayesinv.ProblemError, match="build="):
        post.save("never-written.bayesinv")


@pytest.mark.parametrize("method", ["cond_score", "flow_matching"])
def test_injected_score_network_without_the_embedding_interface_samples(method):
    # a network of the user's own (forward(x, c, level) only, no embeds/features): sampled as it is
    class Plain(torch.nn.Module):
        def __init__(self, d, c):
            super().__init__()
            self.lin = torch.nn.Linear(d + c + 1, d)

        def forward(self, x, c, level):
            level = torch.as_tensor(level, dtype=x.dtype).expand(x.shape[:-1])[..., None]
            return self.lin(torch.cat([x, c.expand(*x.shape[:-1], c.shape[-1]), level], -1))

    post = bayesinv.fit(LG.model, method=method, num_simulations=100, max_epochs=None, max_steps=2, progress=False,
                        build=lambda cfg, pairs: Plain(pairs.target.dim, pairs.condition.dim))  # fmt: skip
    draws = post.sample(observation(method), 3, seed=0)["theta"]
    assert draws.shape == (3, 2) and torch.isfinite(draws).all()


@pytest.mark.parametrize("method", LATENT)
def test_deterministic_sites_from_latent_draws(method, posts, tmp_path):
    post, A = posts[method], LG.A.float()
    y = observation(method)
    opts = sample_options(method, y)
    assert post.deterministic_sites() == ("mean_y",)
    draws = post.sample(y, 5, seed=0, deterministic=True, **opts)
    torch.testing.assert_close(draws["mean_y"], draws["theta"] @ A.T)
    assert "mean_y" not in post.sample(y, 5, seed=0, **opts)  # opt-in for sample
    batch = post.sample(observation(method, 2), 3, seed=0, deterministic=True, **opts)
    assert batch["mean_y"].shape == (2, 3, 2)
    torch.testing.assert_close(batch["mean_y"], batch["theta"] @ A.T)
    idata = post.infer(y, num_samples=4, seed=0, **opts)  # by default for infer
    np.testing.assert_allclose(idata.posterior["mean_y"].values, idata.posterior["theta"].values @ A.T.numpy(), rtol=1e-5, atol=1e-6)
    assert "mean_y" not in post.infer(y, num_samples=4, seed=0, deterministic=False, **opts).posterior
    # a file does not hold the model: attach it (or pass model=) after load
    loaded = bayesinv.load(post.save(tmp_path / "p.bayesinv"))
    assert loaded.deterministic_sites() == () and "mean_y" not in loaded.infer(y, num_samples=4, seed=0, **opts).posterior
    with pytest.raises(bayesinv.ProblemError, match=r"post\.attach\(model\)"):
        loaded.sample(y, 3, deterministic=True, **opts)
    again = loaded.infer(y, num_samples=4, seed=0, model=LG.model, **opts)
    np.testing.assert_array_equal(again.posterior["mean_y"].values, idata.posterior["mean_y"].values)
    with pytest.raises(bayesinv.ProblemError, match="does not fit this posterior"):
        loaded.attach(field_model)


def test_infer_returns_deterministic_sites_and_refuses_a_partial_target():
    y = observation("flow")
    idata = bayesinv.infer(LG.model, y, method="flow", num_samples=6, num_simulations=100, hidden=(8,), max_epochs=None,
                           max_steps=3, progress=False)  # fmt: skip
    assert set(idata.posterior.data_vars) == {"theta", "mean_y"}

    def two_latents(y=None):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        s = pyro.deterministic("s", a + b)
        return pyro.sample("y", dist.Normal(s, 0.1), obs=y)

    post = bayesinv.fit(two_latents, method="flow", target="a", num_simulations=100, hidden=(8,), max_epochs=None,
                        max_steps=3, progress=False)  # fmt: skip
    assert post.deterministic_sites() == () and set(post.infer(np.float32(0.5), num_samples=3).posterior.data_vars) == {"a"}
    with pytest.raises(bayesinv.ProblemError, match=r"does not draw the latent site\(s\) \['b'\]"):
        post.sample(np.float32(0.5), 3, deterministic=True)


def test_deterministic_sites_before_an_untargeted_latent_are_pushed_forward():
    # a field computed from the target, then a modelling-error latent the posterior does not learn (the
    # dual-layer phantom's layout): the field is replayed from the drawn target alone, the simulator not run
    calls = []

    def field_then_error(y=None):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        s = pyro.deterministic("s", 2.0 * a)
        b = pyro.sample("b", dist.Uniform(-0.1, 0.1))
        calls.append(1)
        late = pyro.deterministic("late", s + b)
        return pyro.sample("y", dist.Normal(late, 0.1), obs=y)

    post = bayesinv.fit(field_then_error, method="flow", target="a", num_simulations=100, hidden=(8,), max_epochs=None,
                        max_steps=3, progress=False, seed=0)  # fmt: skip
    assert post.deterministic_sites() == ("s",)
    calls.clear()
    out = post.sample(np.float32(0.5), 7, deterministic=True, seed=1)
    assert set(out) == {"a", "s"} and not calls
    torch.testing.assert_close(out["s"], 2.0 * out["a"])
    assert set(post.infer(np.float32(0.5), num_samples=5, seed=1).posterior.data_vars) == {"a", "s"}


@pytest.mark.filterwarnings("ignore:mcmc. R-hat:RuntimeWarning")  # 30 draws: only the sites are checked here
@pytest.mark.parametrize("method, options", [
    ("importance", dict(num_proposals=2000)),
    ("mcmc", dict(num_chains=2, warmup_steps=100)),
    ("nuts", dict(num_chains=1, warmup_steps=20)),
])  # fmt: skip
def test_sampling_methods_return_deterministic_targets(method, options):
    y = observation("flow")
    both = bayesinv.infer(LG.model, y, method=method, target=["theta", "mean_y"], num_samples=30, seed=0, progress=False, **options)
    theta, mean_y = both.posterior["theta"].values, both.posterior["mean_y"].values
    np.testing.assert_allclose(mean_y, theta @ LG.A.float().T.numpy(), rtol=1e-5, atol=1e-5)
    only = bayesinv.infer(LG.model, y, method=method, target="mean_y", num_samples=30, seed=0, progress=False, **options)
    assert set(only.posterior.data_vars) == {"mean_y"} and only.posterior["mean_y"].shape[-1] == 2


@pytest.mark.parametrize("method", METHODS)
def test_cpu_device(method, posts):
    post = posts[method]
    assert post.device.type == "cpu" and all(p.device.type == "cpu" for p in post.net.parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_cuda_device(method, posts, tmp_path):
    model, target, fit_opts, _, _, name, shape = CASES[method]
    post = bayesinv.fit(model, method=method, target=target, num_simulations=200, seed=0, device="cuda", progress=False, **fit_opts)
    assert next(post.net.parameters()).device.type == "cuda"
    y = observation(method, 2)
    draws = post.sample(y, 3, seed=0, **sample_options(method, y))[name]
    assert draws.shape == (2, 3, *shape) and draws.device.type == "cpu"
    cpu = bayesinv.load(post.save(tmp_path / "p.bayesinv"), device="cpu")
    assert cpu.sample(y, 3, seed=0, **sample_options(method, y))[name].shape == (2, 3, *shape)


@pytest.mark.parametrize("method", METHODS)
def test_training_defaults_are_declared_once_per_method(method):
    import importlib

    from bayesinv.amortized.fit import check_fit_options

    spec, declared = get_amortized(method), importlib.import_module(f"bayesinv.methods.{method}").TRAIN_DEFAULTS
    assert spec.train_defaults == declared  # every training field is declared in the method's TRAIN_DEFAULTS
    opts = dict(num_simulations=100)
    cfg, _ = check_fit_options(spec, opts)
    tcfg = cfg.train_config(seed=0, device="cpu", progress=False)
    assert (cfg.max_epochs, tcfg.patience, tcfg.lr, cfg.normalization) == tuple(declared[k] for k in ("max_epochs", "patience", "lr", "normalization"))
    # keywords and config= override the method's defaults; the fields not given keep them
    cfg, _ = check_fit_options(spec, dict(opts, max_epochs=7, config={"lr": 0.01}))
    assert (cfg.max_epochs, cfg.lr, cfg.patience) == (7, 0.01, declared["patience"])


def test_train_options_replaces_the_class_defaults_and_refuses_bad_defaults():
    from dataclasses import dataclass, replace

    from bayesinv.amortized import fit_posterior, train_options
    from bayesinv.methods.flow import FLOW, FlowConfig
    from bayesinv.problem import trace_problem

    base = train_options(dict(max_epochs=2, batch_size=30, patience=None))
    assert (base().max_epochs, base().batch_size, base().lr) == (2, 30, 1e-3)  # the rest: TrainOptions' defaults

    @dataclass(frozen=True)
    class ShortFlowConfig(base, FlowConfig):  # the flow's fields, this base's training defaults
        pass

    short = replace(FLOW, name="short_flow", config=ShortFlowConfig)  # not registered: fitted through the layer directly
    problem = trace_problem(LG.model)
    common = dict(target=("theta",), num_simulations=100, seed=0, progress=False, device="cpu", hidden=(8,), num_transforms=1)
    post = fit_posterior(problem, short, **common)
    assert post.info["train_steps"] == 2 * 3  # 2 epochs of ceil(90 / 30) batches
    post = fit_posterior(problem, short, max_epochs=1, batch_size=45, **common)
    assert post.info["train_steps"] == 1 * 2  # the user's options override the declared defaults
    with pytest.raises(OptionError, match=r"\['max_epoch'\] are not training options"):
        train_options(dict(max_epoch=3))
    with pytest.raises(OptionError, match="lr=-1.0"):
        train_options(dict(lr=-1.0))
    with pytest.raises(OptionError, match="lr_schedule"):
        train_options(dict(lr_schedule="linear"))


def test_normalised_values_round_trip_and_choose_sample_option(posts):
    from bayesinv.amortized.fit import choose_sample_option
    from bayesinv.amortized.layout import from_normalised, to_normalised

    post = posts["vae"]
    values = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    x = to_normalised({"theta": values}, post.target, post.transforms, post.x_norm, post.device)
    assert x.shape == (2, 2)
    torch.testing.assert_close(from_normalised(x, post.target, post.transforms, post.x_norm)["theta"], values, rtol=1e-6, atol=1e-6)
    y = observation("vae", 5)
    truth = post.reconstruct(y)["theta"]  # the draws of spread=0 are the reconstruction itself: MSE 0
    best, table = choose_sample_option(post, "spread", [1.0, 0.0], y, truth, seed=0)
    assert best == 0.0 and table[0.0] == pytest.approx(0.0, abs=1e-12) and table[1.0] > 0
