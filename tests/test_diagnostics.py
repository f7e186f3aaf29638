import warnings

import matplotlib

matplotlib.use("Agg")

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bayesinv.diagnostics import (
    absolute_l1,
    c2st,
    compare,
    dynamic_range,
    mmd,
    mse,
    plot_coverage,
    plot_field_panels,
    plot_sbc_ranks,
    psnr,
    relative_l1,
    sbc_ranks,
    sbc_uniformity,
    sinkhorn_distance,
    ssim,
    tarp_coverage,
    wasserstein2,
)
from bayesinv.errors import OptionError

# ------------------------------------------------------------------ sample metrics


def gaussians(n=500, d=2, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift


@pytest.mark.parametrize("classifier", ["mlp", "rf"])
def test_c2st_same_distribution_is_chance(classifier):
    a, b = gaussians()
    assert abs(c2st(a, b, classifier=classifier) - 0.5) < 0.05


def test_c2st_disjoint_is_one():
    a, b = gaussians(n=300, shift=6.0)
    assert c2st(a, b) > 0.95


def test_c2st_subsamples_to_equal_size_and_validates():
    a, b = gaussians(n=300, shift=6.0)
    assert c2st(a, b[:100], classifier="rf") > 0.95
    with pytest.raises(ValueError, match="classifier"):
        c2st(a, b, classifier="svm")
    with pytest.raises(ValueError, match="dimension"):
        c2st(a, b[:, :1])


def test_sinkhorn_zero_on_itself_and_grows_with_shift():
    a, _ = gaussians(n=200)
    assert sinkhorn_distance(a, a) < 0.02
    values = [sinkhorn_distance(a, a + shift) for shift in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]
    # a translation by s costs about |s| (Euclidean ground cost)
    assert values[2] == pytest.approx(2.0 * np.sqrt(2.0), rel=0.05)


def test_sinkhorn_matches_pot():
    a, b = gaussians(n=80, shift=0.7)
    ours = sinkhorn_distance(a, b, reg=0.05)
    pot = sinkhorn_distance(a, b, reg=0.05, solver="pot")
    assert ours == pytest.approx(pot, rel=1e-6)


def test_mmd_zero_vs_positive():
    a, b = gaussians(n=300)
    _, c = gaussians(n=300, shift=1.0)
    assert abs(mmd(a, b)) < 0.01
    assert mmd(a, c) > 0.1
    assert mmd(a, c, bandwidth=1.0) > 0.1


# ------------------------------------------------------------------- field metrics


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    truth = np.sin(3 * xx) * np.cos(2 * yy) + 0.5 * xx
    estimate = truth + 0.1 * rng.normal(size=truth.shape)
    return estimate, truth


def test_ssim_psnr_agree_with_skimage(images):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    estimate, truth = images
    data_range = truth.max() - truth.min()
    assert ssim(estimate, truth) == pytest.approx(
        structural_similarity(truth, estimate, data_range=data_range)
    )
    assert psnr(estimate, truth) == pytest.approx(
        peak_signal_noise_ratio(truth, estimate, data_range=data_range)
    )
    assert psnr(estimate, truth, data_range=2.0) == pytest.approx(
        10 * np.log10(4.0 / mse(estimate, truth))
    )
    with pytest.raises(ValueError, match="2-D"):
        ssim(estimate.ravel(), truth.ravel())


def test_l1_and_dynamic_range_by_hand():
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    estimate = np.array([[1.0, 2.0], [3.0, 6.0]])
    assert relative_l1(estimate, truth) == pytest.approx(2.0 / 10.0)
    assert absolute_l1(estimate, truth) == pytest.approx(2.0 / 4.0)
    assert dynamic_range(estimate, truth) == pytest.approx(5.0 / 3.0)
    assert mse(estimate, truth) == pytest.approx(4.0 / 4.0)
    with pytest.raises(ValueError, match="shape"):
        mse(estimate, truth.ravel())


# ------------------------------------------------------------------------ compare


def tiny_idata(scale=1.0, offset=0.0, field_shape=(4, 5)):
    # ±1 alternating draws: per-entry mean 0 and std (ddof=1) sqrt(100/99) exactly
    signs = np.where(np.arange(100) % 2 == 0, 1.0, -1.0).reshape(2, 50)
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(2, 50, 2)) * scale + offset
    field = signs[..., None, None] * np.ones(field_shape) * scale + offset
    return az.from_dict(
        posterior={"theta": theta, "E": field},
        dims={"E": ["row", "col"]},
        observed_data={"y": np.zeros(3)},
    )


def test_compare_rows_and_rmse():
    idata, reference = tiny_idata(), tiny_idata(scale=3.0, offset=2.0)
    truth = {"E": np.arange(20.0).reshape(4, 5), "theta": np.array([0.5, -0.5])}
    with pytest.warns(UserWarning, match="skipping c2st, sinkhorn, mmd for variable 'E'"):
        table = compare(
            idata,
            reference,
            truth=truth,
            max_dim=4,
            metric_kwargs={"c2st": {"classifier": "rf"}, "sinkhorn": {"reg": 0.05}},
        )
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "variable", "metric", "value", "n_samples", "n_reference", "note",
    ]
    sample = ["rmse_mean", "rmse_std", "c2st", "sinkhorn", "mmd"]
    field = ["mse", "psnr", "ssim", "relative_l1", "absolute_l1", "dynamic_range"]
    # only the metrics that apply: no two-sample rows for E (20 > max_dim), no image metrics for theta
    expected = [("theta", m) for m in sample + ["mse", "relative_l1", "absolute_l1"]]
    expected += [("E", m) for m in ["rmse_mean", "rmse_std"] + field]
    assert list(zip(table.variable, table.metric)) == expected
    assert not table.value.isna().any()
    assert table.attrs["skipped"] == [
        "psnr, ssim, dynamic_range for theta (not a 2-D field)",
        "c2st, sinkhorn, mmd for E (20 entries > max_dim=4)",
    ]
    value = table.set_index(["variable", "metric"])["value"]

    assert value["E", "rmse_mean"] == pytest.approx(2.0)
    assert value["E", "rmse_std"] == pytest.approx(2.0 * np.sqrt(100 / 99))
    assert value["theta", "c2st"] > 0.6 and value["theta", "mmd"] > 0.05
    assert (table.n_samples[table.variable == "theta"] == 100).all()

    mean = np.zeros((4, 5))
    assert value["E", "mse"] == pytest.approx(mse(mean, truth["E"]))
    assert value["E", "relative_l1"] == pytest.approx(1.0)
    assert value["E", "ssim"] == pytest.approx(ssim(mean, truth["E"]))
    assert value["E", "dynamic_range"] == pytest.approx(0.0)
    assert table.n_reference[table.metric == "mse"].isna().all()


def test_compare_leaves_out_what_does_not_apply():
    rng = np.random.default_rng(1)
    draws = {"s": rng.normal(size=(200,)), "E": rng.normal(size=(200, 4, 4)),
             "V": rng.normal(size=(200, 3, 3, 3))}  # fmt: skip
    truth = {"s": 0.3, "E": np.full((4, 4), 2.0), "V": np.zeros((3, 3, 3))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: what does not apply is left out quietly
        table = compare(draws, draws, truth=truth, metrics=("rmse_mean",))
    assert not table.value.isna().any()
    got = {(v, m) for v, m in zip(table.variable, table.metric)}
    assert got == {("s", "rmse_mean"), ("s", "mse"), ("s", "relative_l1"), ("s", "absolute_l1"),
                   ("E", "rmse_mean"), ("E", "mse"), ("E", "relative_l1"), ("E", "absolute_l1"),
                   ("V", "rmse_mean"), ("V", "mse"), ("V", "absolute_l1")}  # fmt: skip
    assert table.attrs["skipped"] == [
        "psnr, ssim, dynamic_range for s (not a 2-D field)",
        "psnr, ssim, dynamic_range for E (truth is constant)",
        "psnr, dynamic_range for V (truth is constant)",
        "ssim for V (not a 2-D field)",
        "relative_l1 for V (truth is zero)",
    ]
    # an explicit data range makes PSNR and SSIM of a constant truth defined
    table = compare(draws, draws, "E", truth={"E": truth["E"]}, metrics=(), truth_metrics=("psnr", "ssim"),
                    metric_kwargs={"psnr": {"data_range": 1.0}, "ssim": {"data_range": 1.0}})  # fmt: skip
    assert list(table.metric) == ["psnr", "ssim"] and np.isfinite(table.value).all()


def test_compare_joint_sees_dependence_the_marginals_miss():
    # same marginals (theta ~ N(0, I), s ~ N(0, 1)); s = theta[0] in b, independent in a
    rng = np.random.default_rng(0)
    theta_a, theta_b = rng.normal(size=(2, 600, 2))
    a = {"theta": theta_a, "s": rng.normal(size=600)}
    b = {"theta": theta_b, "s": theta_b[:, 0] + 0.05 * rng.normal(size=600)}
    table = compare(a, b, metrics=("mmd",), joint=True, joint_metrics=("c2st", "mmd"),
                    metric_kwargs={"c2st": {"classifier": "rf"}}, seed=0)  # fmt: skip
    value = table.set_index(["variable", "metric"])["value"]
    assert list(zip(table.variable, table.metric)) == [("theta", "mmd"), ("s", "mmd"), ("theta+s", "c2st"),
                                                       ("theta+s", "mmd")]  # fmt: skip
    # marginals agree: MMD² at its noise level (|.| < 0.004 for 600 draws); jointly told apart
    assert abs(value["theta", "mmd"]) < 0.004 and abs(value["s", "mmd"]) < 0.004
    assert value["theta+s", "mmd"] > 0.01
    assert value["theta+s", "c2st"] > 0.8
    note = table.note[table.variable == "theta+s"].iloc[0]
    assert note == "joint over theta, s: 3 entries, standardised by the reference"


def test_compare_joint_standardises_sites_and_matches_metrics():
    rng = np.random.default_rng(2)
    a = {"x": rng.normal(size=(300, 2)), "big": 1e4 * rng.normal(size=300)}
    b = {"x": rng.normal(size=(300, 2)), "big": 1e4 * rng.normal(size=300)}
    table = compare(a, b, metrics=(), joint=["x", "big"], joint_metrics=("mmd", "w2"), max_samples=300)
    # by hand: stack, standardise by the reference, then the metrics of bayesinv.diagnostics.metrics
    fa = np.column_stack([a["x"], a["big"]])
    fb = np.column_stack([b["x"], b["big"]])
    mu, sd = fb.mean(0), fb.std(0)
    za, zb = (fa - mu) / sd, (fb - mu) / sd
    value = table.set_index("metric")["value"]
    assert value["mmd"] == pytest.approx(mmd(za, zb), rel=1e-9)
    assert value["w2"] == pytest.approx(wasserstein2(za, zb), rel=1e-9)
    assert value["w2"] < 1.0  # same law, standardised: finite-sample W2 ~0.5, not the 1e4 scale of "big"


def test_compare_joint_errors():
    idata = tiny_idata()
    with pytest.raises(OptionError, match=r"joint=\['theta', 'E'\].*22 entries.*max_dim=4"):
        compare(idata, idata, joint=True, max_dim=4)
    with pytest.raises(OptionError, match="at least two distinct sites"):
        compare(idata, idata, joint=["theta"])
    with pytest.raises(KeyError, match="'nope' not in idata"):
        compare(idata, idata, "theta", joint=["theta", "nope"])
    with pytest.raises(ValueError, match=r"different numbers of draws in idata.*'a': 10, 'b': 12"):
        compare({"a": np.zeros((10, 1)), "b": np.zeros((12, 1))}, {"a": np.zeros((10, 1)), "b": np.zeros((10, 1))},
                metrics=(), joint=True)  # fmt: skip
    with pytest.raises(OptionError, match=r"joint_metrics: unknown metrics \['rmse_mean'\]"):
        compare(idata, idata, joint=True, joint_metrics=("rmse_mean",))


def test_compare_prints_compactly():
    idata, reference = tiny_idata(), tiny_idata(scale=3.0, offset=2.0)
    truth = {"E": np.arange(20.0).reshape(4, 5), "theta": np.array([0.5, -0.5])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = compare(idata, reference, truth=truth, max_dim=4, metrics=("rmse_mean", "mmd"),
                        truth_metrics=("mse", "ssim"))  # fmt: skip
    text = str(table)
    assert repr(table) == text == table.to_text()
    lines = text.splitlines()
    assert lines[0] == "compare: 100 draws vs 100 reference draws"
    assert lines[1].split() == ["vs", "reference", "rmse_mean", "mmd"]
    assert lines[2].split()[:2] == ["theta", "(2)"] and len(lines[2].split()) == 4
    assert lines[3].split() == ["E", "(4×5)", "2"]  # no two-sample value for E: an empty cell, not NaN
    assert lines[4].split() == ["vs", "truth", "mse", "ssim"]
    assert lines[5].split()[:2] == ["theta", "(2)"] and len(lines[5].split()) == 3
    assert lines[6].split()[:2] == ["E", "(4×5)"] and len(lines[6].split()) == 4
    assert lines[7:] == ["not computed: ssim for theta (not a 2-D field)",
                         "not computed: mmd for E (20 entries > max_dim=4)"]  # fmt: skip
    joint = compare(idata, reference, metrics=("rmse_mean",), joint=True, joint_metrics=("mmd",), max_dim=22)
    lines = str(joint).splitlines()
    assert lines[1].split() == ["vs", "reference", "rmse_mean", "mmd"]
    assert lines[4].split()[:2] == ["theta+E", "(22)"] and len(lines[4].split()) == 3  # no rmse for the joint row
    assert "nan" not in text.lower()
    assert max(len(line) for line in lines) < 80
    # derived tables are plain DataFrames (their own print)
    assert type(table[table.metric == "mse"]) is pd.DataFrame
    assert type(pd.concat([table.assign(method="a"), table.assign(method="b")])) is pd.DataFrame


def test_compare_accepts_dicts_and_identical_posteriors():
    idata = tiny_idata()
    draws = {"theta": idata.posterior["theta"].values.reshape(100, 2)}
    table = compare(idata, draws, "theta", metrics=("rmse_mean", "rmse_std", "mmd"))
    assert isinstance(table, pd.DataFrame) and len(table) == 3
    np.testing.assert_allclose(table.value[:2], 0.0, atol=1e-12)


def test_compare_errors():
    idata = tiny_idata()
    with pytest.raises(KeyError, match=r"'nope'.*available variables.*theta"):
        compare(idata, tiny_idata(), ["nope"])
    with pytest.raises(ValueError, match=r"'E'.*\(4, 5\).*\(5, 4\)"):
        compare(idata, tiny_idata(field_shape=(5, 4)), ["E"], metrics=("rmse_mean",))
    with pytest.raises(OptionError, match=r"metrics: unknown metrics \['rmse'\]"):
        compare(idata, idata, metrics=("rmse",))
    with pytest.raises(ValueError, match="unknown metrics"):  # OptionError is a ValueError
        compare(idata, idata, truth_metrics=("psnr2",))


# -------------------------------------------------------------------- calibration


def gaussian_pairs(std_factor, num_pairs=200, num_draws=100, seed=0):
    # theta ~ N(0, 1), y = theta + N(0, 1): posterior N(y / 2, 1 / 2)
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(num_pairs, 2))
    y = theta + rng.normal(size=theta.shape)
    std = np.sqrt(0.5) * std_factor
    draws = y[:, None] / 2 + std * rng.normal(size=(num_pairs, num_draws, 2))
    return draws, theta


def test_calibration_passes_exact_posterior():
    draws, theta = gaussian_pairs(1.0)
    ranks = sbc_ranks(draws, theta)
    assert ranks.shape == (200, 2) and ranks.min() >= 0 and ranks.max() <= 100
    result = sbc_uniformity(ranks, 100)
    assert (result.chi2_pvalue > 1e-3).all() and (result.ks_pvalue > 1e-3).all()
    alpha, ecp = tarp_coverage(draws, theta)
    assert alpha.shape == ecp.shape == (101,)
    assert np.max(np.abs(ecp - alpha)) < 0.15


def test_calibration_flags_overconfident_posterior():
    draws, theta = gaussian_pairs(1.0 / 3.0)
    result = sbc_uniformity(sbc_ranks(draws, theta), 100)
    assert (result.chi2_pvalue < 1e-6).all() and (result.ks_pvalue < 1e-6).all()
    alpha, ecp = tarp_coverage(draws, theta)
    assert np.max(np.abs(ecp - alpha)) > 0.2


# -------------------------------------------------------------------------- plots


def test_plot_field_panels(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(12, 16))
    draws = truth + 0.3 * rng.normal(size=(3, 12, 16))
    fig = plot_field_panels(
        truth=truth,
        measurement=rng.normal(size=40),
        draws=draws,
        mean=draws.mean(0),
        std=draws.std(0),
        titles={"mean": "E mean"},
        suptitle="elastography",
    )
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    expected = ["truth", "measurement", "draw 1", "draw 2", "draw 3", "E mean",
                "posterior std", "|mean − truth|"]
    assert [t for t in titles if t] == expected
    assert len(fig.axes) == 2 * 8 - 1  # a colour bar per image panel, none for the line
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert images["truth"].get_clim() == images["draw 2"].get_clim() == images["E mean"].get_clim()
    assert images["posterior std"].get_clim() != images["truth"].get_clim()
    fig.savefig(tmp_path / "fields.png")
    assert (tmp_path / "fields.png").stat().st_size > 0


def test_plot_field_panels_from_inference_data(tmp_path):
    rng = np.random.default_rng(0)
    E = rng.normal(size=(2, 50, 6, 7))
    idata = az.from_dict(
        posterior={"E": E, "theta": rng.normal(size=(2, 50, 2))},
        observed_data={"y": rng.normal(size=(5, 5))},
        dims={"E": ["row", "col"]},
    )
    idata.posterior.attrs["method"] = "importance"
    truth = rng.normal(size=(6, 7))
    fig = plot_field_panels(idata=idata, truth=truth, num_draws=2)  # E: the only 2-D site
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["truth", "measurement", "draw 1", "draw 2", "posterior mean", "posterior std", "|mean − truth|"]
    assert fig.get_suptitle() == "E (importance)"
    images = {ax.get_title(): ax.images[0].get_array() for ax in fig.axes if ax.images}
    flat = E.reshape(100, 6, 7)
    np.testing.assert_allclose(images["posterior mean"], flat.mean(0))
    np.testing.assert_allclose(images["posterior std"], flat.std(0, ddof=1))
    np.testing.assert_allclose(images["draw 1"], flat[0])
    np.testing.assert_allclose(images["draw 2"], flat[99])
    np.testing.assert_allclose(images["measurement"], idata.observed_data["y"].values)
    # y= replaces the observation; the array form is unchanged
    fig = plot_field_panels(idata=idata, var_name="E", y=np.arange(4.0), num_draws=0, suptitle="run")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["measurement", "posterior mean", "posterior std"]
    fig.savefig(tmp_path / "idata.png")
    with pytest.raises(OptionError, match=r"site 'theta' has shape \(2,\)"):
        plot_field_panels(idata=idata, var_name="theta")
    with pytest.raises(OptionError, match=r"'nope' is not in the posterior; its sites: \{'E': \(6, 7\), 'theta': \(2,\)\}"):
        plot_field_panels(idata=idata, var_name="nope")
    with pytest.raises(OptionError, match=r"the arrays \['mean'\], not both"):
        plot_field_panels(idata=idata, mean=truth)
    with pytest.raises(OptionError, match="pass idata= too"):
        plot_field_panels(truth=truth, var_name="E")
    two = az.from_dict(posterior={"E": E, "F": E})
    with pytest.raises(OptionError, match=r"pass var_name=: the posterior has 2 2-D field site\(s\) \['E', 'F'\]"):
        plot_field_panels(idata=two)


def test_plot_coverage_and_ranks(tmp_path):
    draws, theta = gaussian_pairs(1.0, num_pairs=100, num_draws=50)
    fig = plot_coverage(*tarp_coverage(draws, theta))
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.lines) == 2  # diagonal and curve
    plot_coverage(*tarp_coverage(draws * 0.5, theta), ax=ax, label="shrunk")
    assert len(ax.lines) == 3
    fig.savefig(tmp_path / "coverage.png")

    fig = plot_sbc_ranks(sbc_ranks(draws, theta), 50, names=["a", "b"])
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["SBC ranks a", "SBC ranks b"]
    fig.savefig(tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").stat().st_size > 0


def test_arviz_plots_run_on_inference_data():
    rng = np.random.default_rng(0)
    idata = az.from_dict(
        posterior={"theta": rng.normal(size=(2, 100, 2)), "E": rng.normal(size=(2, 100, 3, 3))},
        dims={"E": ["row", "col"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.plot_posterior(idata, var_names=["theta"])
        az.plot_pair(idata, var_names=["theta"])
        az.plot_rank(idata, var_names=["theta"])
        az.plot_ess(idata, var_names=["theta"])
    assert plt.get_fignums()
    plt.close("all")
