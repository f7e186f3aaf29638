r"""Posteriors whose network came from ``build=``: saved and loaded when its classes are registered
(:mod:`bayesinv.amortized.custom`), refused with a message that says what to do otherwise."""

import json
import zipfile

import pytest
import torch

import bayesinv
from bayesinv.amortized.custom import registered_network, saveable_network
from bayesinv.errors import PosteriorFileError, ProblemError
from bayesinv.models.toy import LinearGaussian

LG = LinearGaussian(dim=2, noise=0.5, seed=0)
Y = torch.tensor([0.3, -0.2])
FIT = dict(method="flow", hidden=(8,), num_transforms=1, num_simulations=100, max_epochs=None, max_steps=3, seed=0, progress=False)


@saveable_network
class Doubled(torch.nn.Module):
    r"""A condition embedding of the user's own: a linear map after doubling its input."""

    def __init__(self, c_dim: int, out_dim: int):
        super().__init__()
        self.c_dim, self.out_dim = c_dim, out_dim
        self.lin = torch.nn.Linear(c_dim, out_dim)

    def forward(self, c):
        return self.lin(2 * c)

    def recipe(self):
        return {"c_dim": self.c_dim, "out_dim": self.out_dim}

    @classmethod
    def from_recipe(cls, recipe):
        return cls(int(recipe["c_dim"]), int(recipe["out_dim"]))


@saveable_network
class Liar(Doubled):
    r"""Its recipe describes a narrower module than it is."""

    def recipe(self):
        return {"c_dim": self.c_dim, "out_dim": self.out_dim + 1}


def _flow_with(embedding_cls):
    def build(cfg, pairs):
        from bayesinv.methods.flow import build as flow_build

        net, _ = flow_build(cfg, pairs, 0)
        paths = [p for p, m in net.named_modules() if isinstance(m, bayesinv.nets.MLPEmbedding)]
        assert len(paths) == 1, paths
        parent, _, name = paths[0].rpartition(".")
        old = getattr(net.get_submodule(parent) if parent else net, name)
        setattr(net.get_submodule(parent) if parent else net, name, embedding_cls(pairs.condition.dim, old.out_dim))
        return net

    return build


def test_build_network_with_a_registered_submodule_round_trips(tmp_path):
    post = bayesinv.fit(LG.model, embedding="mlp", embed_dim=4, build=_flow_with(Doubled), **FIT)
    path = post.save(tmp_path / "custom.bayesinv")
    again = bayesinv.load(path)
    assert sum(isinstance(m, Doubled) for m in again.net.modules()) == 1
    assert torch.equal(post.sample(Y, 16, seed=3)["theta"], again.sample(Y, 16, seed=3)["theta"])
    # a loaded posterior saves again (its settings carry the recipe)
    assert torch.equal(bayesinv.load(again.save(tmp_path / "twice.bayesinv")).sample(Y, 4, seed=1)["theta"],
                       post.sample(Y, 4, seed=1)["theta"])


def test_unregistered_build_network_is_refused_before_anything_is_written(tmp_path):
    class Plain(Doubled):  # not registered: the subclass is its own class
        pass

    post = bayesinv.fit(LG.model, embedding="mlp", embed_dim=4, build=_flow_with(Plain), **FIT)
    with pytest.raises(ProblemError, match="saveable_network"):
        post.save(tmp_path / "never.bayesinv")
    assert not list(tmp_path.iterdir())


def test_a_recipe_that_rebuilds_other_weights_is_refused(tmp_path):
    post = bayesinv.fit(LG.model, embedding="mlp", embed_dim=4, build=_flow_with(Liar), **FIT)
    with pytest.raises(ProblemError, match="other weights"):
        post.save(tmp_path / "never.bayesinv")
    assert not list(tmp_path.iterdir())


def _rewrite_meta(path, out, change):
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("meta.json"):
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)
    return out


def test_a_file_naming_an_unregistered_class_is_refused(tmp_path):
    post = bayesinv.fit(LG.model, embedding="mlp", embed_dim=4, build=_flow_with(Doubled), **FIT)
    path = post.save(tmp_path / "custom.bayesinv")
    if not zipfile.is_zipfile(path):
        pytest.fail(f"{path} is not the zip the test rewrites; update _rewrite_meta for the file format")

    def rename(meta):
        (entry,) = meta["config"]["custom_network"]["replace"].values()
        entry["class"] = "os.system"

    bad = _rewrite_meta(path, tmp_path / "bad.bayesinv", rename)
    with pytest.raises(PosteriorFileError, match="'os.system', which is not a registered network class"):
        bayesinv.load(bad)
    with pytest.raises(PosteriorFileError, match="not a registered network class"):
        registered_network("bayesinv.no_such_module.Net")  # our own package's names are imported, then looked up

    def widen(meta):  # a recipe asking for more than the stored weights allow
        (entry,) = meta["config"]["custom_network"]["replace"].values()
        entry["recipe"]["out_dim"] = 10**6

    with pytest.raises(PosteriorFileError, match="exceeds what the stored weights allow"):
        bayesinv.load(_rewrite_meta(path, tmp_path / "wide.bayesinv", widen))


def test_saveable_network_checks_the_class():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        saveable_network(int)

    class NoRecipe(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="needs a method 'recipe'"):
        saveable_network(NoRecipe)
