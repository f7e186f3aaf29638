r"""The InferenceData every method returns: top-level attrs, honest weighted draws, one-chain runs.

Also the metadata around results: a simulated dataset's ``attrs["errors"]`` and the
training summary of an amortized posterior.
"""

import json
import logging
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv._arviz import az
from bayesinv._version import __version__
from bayesinv.diagnostics import calibrate_posterior
from bayesinv.errors import OptionError, ProblemError
from bayesinv.idata import resampled_chains, resampled_layout, to_inference_data
from bayesinv.methods.importance import ImportanceWarning
from bayesinv.models.toy import LinearGaussian

LG = LinearGaussian(dim=2, noise=0.5, seed=0)
THETA, Y = LG.draw(seed=1)
TOP = ("method", "options", "seed", "bayesinv_version", "sample_time_s")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def narrow_model(y=None):
    # a prior much wider than the likelihood: few proposals carry the weight
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(theta, 0.05).to_event(1), obs=y)


# ------------------------------------------------------------------------- attrs


def test_to_inference_data_sets_top_level_attrs_and_round_trips(tmp_path):
    idata = to_inference_data(
        {"theta": np.zeros((2, 5, 3))},
        observed={"y": np.ones(4)},
        method="demo",
        options={"num_samples": 5, "lr": np.float32(0.5)},
        seed=7,
        attrs={"sample_time_s": 1.5, "fit_time_s": None, "flag": True},
    )
    assert idata.attrs["method"] == "demo" and idata.attrs["seed"] == 7
    assert json.loads(idata.attrs["options"]) == {"num_samples": 5, "lr": 0.5}
    assert idata.attrs["bayesinv_version"] == __version__ and idata.attrs["sample_time_s"] == 1.5
    assert idata.attrs["flag"] == 1 and "fit_time_s" not in idata.attrs  # netCDF-friendly: bool as int, None left out
    for group in idata.groups():
        assert {k: idata[group].attrs[k] for k in idata.attrs} == idata.attrs
    idata.to_netcdf(str(tmp_path / "run.nc"))
    back = az.from_netcdf(str(tmp_path / "run.nc"))
    assert dict(back.attrs) == idata.attrs


@pytest.mark.parametrize("method, options", [
    ("importance", dict(num_proposals=2000)),
    ("mcmc", dict(num_chains=2, warmup_steps=50, thin=1)),
    ("nuts", dict(num_chains=1, warmup_steps=20)),
])  # fmt: skip
def test_every_sampling_method_records_top_level_attrs(method, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs: R-hat warnings are not the point here
        idata = bayesinv.infer(LG.model, Y, method=method, num_samples=40, seed=3, progress=False, **options)
    attrs = idata.attrs
    assert attrs["method"] == method and attrs["seed"] == 3
    assert json.loads(attrs["options"]) == {"num_samples": 40, **options}
    assert attrs["bayesinv_version"] == __version__
    assert attrs["sample_time_s"] > 0 and attrs["fit_time_s"] == 0.0
    assert attrs == {k: idata.posterior.attrs[k] for k in attrs}


def test_amortized_posterior_records_top_level_attrs_and_summary(tmp_path):
    post = bayesinv.fit(LG.model, method="flow", num_simulations=200, hidden=(8,), num_transforms=1, max_epochs=None,
                        max_steps=20, seed=4, progress=False, device="cpu")  # fmt: skip
    idata = post.infer(Y, num_samples=30, seed=5)
    for key in TOP + ("fit_time_s", "num_simulations", "fit_seed"):
        assert key in idata.attrs, key
    assert idata.attrs["method"] == "flow" and idata.attrs["seed"] == 5 and idata.attrs["fit_seed"] == 4
    assert idata.attrs["num_simulations"] == 200 and idata.attrs["fit_time_s"] == pytest.approx(post.info["fit_time_s"])
    assert json.loads(idata.attrs["options"])["num_samples"] == 30
    # through infer(): fit and sample in one call, the fit time on the top level as on every group
    idata = bayesinv.infer(LG.model, Y, method="flow", num_samples=10, num_simulations=200, hidden=(8,), num_transforms=1,
                           max_epochs=None, max_steps=5, seed=4, progress=False, device="cpu")  # fmt: skip
    assert idata.attrs["method"] == "flow" and idata.attrs["num_simulations"] == 200
    assert idata.attrs == {k: idata.posterior.attrs[k] for k in idata.attrs}

    summary = post.summary()
    assert summary.method == "flow" and summary.target == {"theta": (2,)} and summary.condition == {"y": (2,)}
    assert summary.num_simulations == 200 and summary.num_train_pairs == post.info["num_train_pairs"]
    assert summary.train_steps == 20 and summary.stopping == "ran its whole budget (max_epochs / max_steps)"
    assert summary.best_val_loss == post.info["best_val_loss"] and summary.fit_time_s == post.info["fit_time_s"]
    assert summary.as_dict()["target"] == {"theta": (2,)}
    text = str(summary)
    lines = text.splitlines()
    assert lines[0] == "flow posterior q(theta (2,) | y (2,))"
    assert lines[1] == "  trained on: 200 simulations (200 training pairs)"
    assert lines[2].startswith("  training: 20 steps in ") and lines[2].endswith(", ran its whole budget (max_epochs / max_steps)")
    assert f"best validation {post.info['best_val_loss']:.4g}" in text and "calibration: not computed" in text
    assert "nan" not in text.lower()

    # calibration on fresh simulations, recorded in the info (and so in the summary and the file)
    result = calibrate_posterior(post, num_pairs=40, num_draws=20, seed=1)
    assert post.info["calibration"] == result and result["num_pairs"] == 40 and result["num_draws"] == 20
    assert 0.0 <= result["sbc_min_pvalue"] <= 1.0 and 0.0 <= result["tarp_max_deviation"] <= 1.0
    line = [t for t in str(post.summary()).splitlines() if "calibration" in t][0]
    assert line == (f"  calibration: SBC min p-value {result['sbc_min_pvalue']:.3g}, TARP max |ECP - alpha| "
                    f"{result['tarp_max_deviation']:.3g} (40 pairs x 20 draws)")  # fmt: skip
    post.save(tmp_path / "lg.bayesinv")
    loaded = bayesinv.load(tmp_path / "lg.bayesinv")
    assert loaded.summary().calibration == result and loaded.summary().target == summary.target
    with pytest.raises(ProblemError, match="needs the model: pass model="):
        calibrate_posterior(loaded, num_pairs=10, num_draws=5)
    with pytest.raises(OptionError, match="num_pairs must be an integer >= 2"):
        calibrate_posterior(post, num_pairs=1)


# ------------------------------------------------------------ weighted draws honest


def test_resampled_layout_keeps_the_draws_and_groups_repeats():
    rng = np.random.default_rng(0)
    proposals = rng.normal(size=(50, 3))
    log_w = rng.normal(size=50) * 2
    idx = rng.choice(50, size=400, p=np.exp(log_w) / np.exp(log_w).sum())
    field = np.repeat(proposals[:, :1, None], 4, axis=2)  # (50, 1, 4), a second site of the same draws
    post, lw, attrs = resampled_layout({"theta": torch.as_tensor(proposals[idx]), "E": field[idx]}, log_w[idx],
                                       ess=12.0, num_proposals=50, seed=1)  # fmt: skip
    assert post["theta"].shape == (4, 100, 3) and post["E"].shape == (4, 100, 1, 4) and lw.shape == (4, 100)
    flat, flat_lw = post["theta"].reshape(400, 3), lw.reshape(400)
    # the same multiset of draws, each still with its own weight and its own field
    np.testing.assert_array_equal(np.sort(flat, axis=0), np.sort(proposals[idx], axis=0))
    source = np.array([np.flatnonzero((proposals == row).all(1))[0] for row in flat])
    np.testing.assert_array_equal(flat_lw, log_w[source])
    np.testing.assert_array_equal(post["E"].reshape(400, 1, 4), field[source])
    # repeats are consecutive: each distinct draw forms one run
    runs = 1 + np.count_nonzero(np.diff(source))
    assert runs == len(np.unique(idx)) == attrs["num_distinct_draws"]
    assert attrs["draws_layout"] == "resampled" and attrs["ess"] == 12.0
    assert "importance ESS 12.0" in attrs["draws_note"] and "sample_stats['ess']" in attrs["draws_note"]
    assert [resampled_chains(n) for n in (4000, 999, 1001, 10, 7, 997)] == [4, 3, 7, 2, 1, 1]


def test_importance_inference_data_is_honest_in_arviz(caplog):
    y = np.array([0.5, -0.3], dtype=np.float32)
    with pytest.warns(ImportanceWarning, match="ESS is"):
        idata = bayesinv.infer(narrow_model, y, method="importance", num_samples=2000, num_proposals=10_000, seed=0,
                               progress=False)  # fmt: skip
    ess = float(idata.sample_stats["ess"])
    assert 10 < ess < 100  # importance ESS of the run (about 2000 * 0.05**2 * ... : few proposals carry the weight)
    assert idata.attrs["ess"] == pytest.approx(ess) and idata.posterior.attrs["ess"] == pytest.approx(ess)
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 500
    assert "importance ESS" in idata.attrs["draws_note"]
    with caplog.at_level(logging.WARNING, logger="arviz"), warnings.catch_warnings():
        warnings.simplefilter("error")  # az.summary accepts the layout: no warning, no "Shape validation failed"
        table = az.summary(idata, var_names=["theta"])
    assert not [r for r in caplog.records if r.name.startswith("arviz")], caplog.text
    # ArviZ's ESS now sees the repeats: near the importance ESS (factor 3), far below the 2000 draws
    assert (table["ess_bulk"] < 3 * ess).all() and (table["ess_bulk"] > ess / 3).all(), (table, ess)
    assert (table["r_hat"] > 1.005).all()  # few proposals carry the weight: the chains disagree
    # the weights stay with their draws
    lw = idata.sample_stats["log_weight"].values
    theta = idata.posterior["theta"].values
    same = (theta[:, 1:] == theta[:, :-1]).all(-1)
    np.testing.assert_array_equal(lw[:, 1:][same], lw[:, :-1][same])


def test_importance_with_many_effective_draws_keeps_arviz_ess_high():
    idata = bayesinv.infer(LG.model, Y, method="importance", num_samples=400, num_proposals=20_000, seed=0,
                           progress=False)  # fmt: skip
    ess = float(idata.sample_stats["ess"])
    assert ess > 5000  # a good proposal: the importance ESS exceeds the resample
    table = az.summary(idata, var_names=["theta"])
    assert (table["ess_bulk"] > 250).all()  # the resample's ESS, at most its 400 draws
    assert (table["r_hat"] < 1.02).all()


# ----------------------------------------------------------------- one-chain runs


@pytest.mark.parametrize("method, options", [
    ("nuts", dict(warmup_steps=20)),
    ("mcmc", dict(warmup_steps=40, thin=1)),
])  # fmt: skip
def test_one_chain_runs_warn_nothing(method, options, caplog):
    with caplog.at_level(logging.WARNING, logger="arviz"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "All-NaN slice", no R-hat warning for one chain
        idata = bayesinv.infer(LG.model, Y, method=method, num_samples=30, num_chains=1, seed=0, progress=False,
                               **options)  # fmt: skip
    assert not [r for r in caplog.records if r.name.startswith("arviz")], caplog.text
    assert idata.posterior.sizes["chain"] == 1
    assert math.isnan(idata.attrs["max_rhat"])  # undefined for one chain (not 0)
    assert idata.attrs["min_ess_bulk"] > 0
    per_site = json.loads(idata.attrs["convergence"])
    assert per_site["theta"]["max_rhat"] is None and per_site["theta"]["min_ess_bulk"] > 0


# ------------------------------------------------------------- dataset attrs


def test_dataset_errors_are_a_list(tmp_path):
    from tests import models_for_tests as M

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the flaky simulator's failures warn
        ds = bayesinv.simulate(M.flaky_model, 200, seed=0, chunk_size=100, progress=False)
        stored = bayesinv.simulate(M.flaky_model, 200, seed=0, chunk_size=100, progress=False, path=tmp_path / "s.zarr")
    for data in (ds, stored, bayesinv.data.open_data(tmp_path / "s.zarr")):
        assert isinstance(data.attrs["errors"], list) and data.attrs["num_failed"] > 0
        assert data.attrs["errors"] and all(isinstance(e, str) for e in data.attrs["errors"])
    assert stored.attrs["errors"] == ds.attrs["errors"]


def test_dataset_errors_written_as_json_still_read_as_a_list(tmp_path):
    import xarray as xr

    old = xr.Dataset({"theta": (("draw",), np.zeros(3))},
                     attrs={"errors": json.dumps(["solver diverged"]), "num_failed": 1})  # fmt: skip
    old.to_zarr(tmp_path / "old.zarr", zarr_format=3, consolidated=False)  # as an earlier version wrote a dataset's attrs
    back = bayesinv.data.open_data(tmp_path / "old.zarr")
    assert back.attrs["errors"] == ["solver diverged"]
    # a list written as an attribute reads back as a list too
    new = old.copy()
    new.attrs["errors"] = ["a", "b"]
    new.to_zarr(tmp_path / "new.zarr", zarr_format=3, consolidated=False)
    assert bayesinv.data.open_data(tmp_path / "new.zarr").attrs["errors"] == ["a", "b"]
