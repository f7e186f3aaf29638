r"""Bad inputs at every entry point of tracing, conditioning and the ground-truth methods.

Each must raise one of the library's errors (``ProblemError`` / ``OptionError`` /
``SimulationError``) whose message names the site or option and the value received,
before any simulation runs; and the one seed rule holds everywhere (issue 14, items 13-14).
"""

import numpy as np
import pytest
import torch

import bayesinv
import bayesinv.methods.importance
import bayesinv.methods.mcmc
import bayesinv.methods.nuts
from bayesinv.errors import OptionError, ProblemError
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import as_problem, run_batch, trace_problem
from tests import models_for_tests as M

# the runs here are tiny: their ESS / R-hat warnings are expected and not what is tested
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

LG = LinearGaussian(dim=3, num_obs=3, noise=0.5, seed=0)
_, Y = LG.draw(seed=0)
METHODS = {
    "importance": {"num_proposals": 2000},
    "mcmc": {"num_chains": 2, "warmup_steps": 20},
    "nuts": {"num_chains": 1, "warmup_steps": 10},
}

BAD_Y = [
    ("string", "0.1 0.2 0.3", r"site 'y' is a str"),
    ("bytes", b"abc", r"site 'y' is a bytes"),
    ("none", None, r"no observation given for observed site\(s\) \['y'\]"),
    ("ragged", [[1.0, 2.0], [3.0]], r"site 'y' (cannot be read as an array|is not a numeric array)"),
    ("empty_list", [], r"site 'y' is empty"),
    ("empty_array", np.zeros((0,)), r"site 'y' is empty"),
    ("complex_array", np.array([1 + 1j, 2.0, 3.0]), r"site 'y' is complex \(complex128\)"),
    ("complex_tensor", torch.tensor([1 + 1j, 2.0, 3.0]), r"site 'y' is complex \(torch.complex64\)"),
    ("bool", np.array([True, False, True]), r"site 'y' is boolean"),
    ("strings", np.array(["a", "b", "c"]), r"site 'y' is not a numeric array \(dtype <U1"),
    ("objects", np.array([1.0, None, 2.0], dtype=object), r"site 'y' is not a numeric array \(dtype object"),
    ("nan", np.array([0.0, np.nan, 1.0]), r"site 'y' contains 1 NaN/inf.*index \(1,\)"),
    ("inf", torch.tensor([0.0, 1.0, float("inf")]), r"site 'y' contains 1 NaN/inf.*index \(2,\)"),
    ("wrong_shape", np.zeros(4), r"site 'y' has shape \(4,\).*site 'y' has shape \(3,\)"),
    ("scalar", 0.5, r"site 'y' has shape \(\).*site 'y' has shape \(3,\)"),
]


@pytest.mark.parametrize("name, y, message", BAD_Y, ids=[b[0] for b in BAD_Y])
def test_bad_observations_are_refused_at_every_entry_point(name, y, message):
    p = trace_problem(LG.model)
    with pytest.raises(ProblemError, match=message):
        p.check_y(y)
    with pytest.raises(ProblemError, match=message):
        p.check_y(y, allow_batch=True)
    if y is not None:  # run_batch(y=None) simulates: None is not an observation there
        with pytest.raises(ProblemError, match=message):
            run_batch(p, 4, y=y, seed=0)
    for method, options in METHODS.items():
        with pytest.raises(ProblemError, match=message):
            bayesinv.infer(LG.model, y, method=method, num_samples=10, seed=0, progress=False, **options)


def test_complex_observation_is_never_cut_to_its_real_part_in_a_dict():
    q = trace_problem(M.two_obs_model)
    with pytest.raises(ProblemError, match=r"site 'v' is complex"):
        q.check_y({"u": 0.3, "v": np.array([0.1, 0.2, 0.3j])})
    with pytest.raises(ProblemError, match=r"site 'u' is complex"):
        q.check_y({"u": 0.3 + 0.1j, "v": [0.1, 0.2, 0.3]})


def test_observation_that_requires_grad_is_detached():
    y = torch.tensor(Y, requires_grad=True)
    p = trace_problem(LG.model)
    checked, _ = p.check_y(y)
    assert not checked["y"].requires_grad
    b = run_batch(p, 4, y=y, seed=0)
    assert torch.isfinite(b.log_lik).all()
    for method, options in METHODS.items():
        idata = bayesinv.infer(LG.model, y, method=method, num_samples=10, seed=0, progress=False, **options)
        np.testing.assert_allclose(idata.observed_data["y"].values, Y, rtol=1e-6)


BAD_OPTIONS = [
    # (methods, option, value, message)
    (("importance", "mcmc", "nuts"), "num_samples", 2.5, r"num_samples must be an integer >= 1, got 2.5 \(float\)"),
    (("importance", "mcmc", "nuts"), "num_samples", "10", r"num_samples must be an integer >= 1, got '10' \(str\)"),
    (("importance", "mcmc", "nuts"), "num_samples", True, r"num_samples must be an integer >= 1, got True \(bool\)"),
    (("importance", "mcmc", "nuts"), "num_samples", 0, r"num_samples must be an integer >= 1, got 0"),
    (("importance", "mcmc", "nuts"), "seed", "abc", r"seed must be None or an integer in \[0, 2\*\*63\), got 'abc' \(str\)"),
    (("importance", "mcmc", "nuts"), "seed", 1.7, r"seed must be None or an integer in \[0, 2\*\*63\), got 1.7 \(float\)"),
    (("importance", "mcmc", "nuts"), "seed", 2**63, r"seed must be None or an integer in \[0, 2\*\*63\), got 9223372036854775808"),
    (("importance", "mcmc", "nuts"), "seed", -1, r"seed must be None or an integer in \[0, 2\*\*63\), got -1"),
    (("importance",), "num_proposals", 0, r"num_proposals must be an integer >= 1, got 0"),
    (("importance",), "num_proposals", -5, r"num_proposals must be an integer >= 1, got -5"),
    (("importance",), "num_proposals", 1e4, r"num_proposals must be an integer >= 1, got 10000.0 \(float\)"),
    (("importance",), "chunk_size", 2.5, r"chunk_size must be an integer >= 1, got 2.5 \(float\)"),
    (("importance",), "chunk_size", 0, r"chunk_size must be an integer >= 1, got 0"),
    (("importance",), "min_ess", float("nan"), r"min_ess must be a finite number, got nan"),
    (("importance",), "proposal", 3, r"proposal= must be a Pyro guide.*got int"),
    (("mcmc", "nuts"), "warmup_steps", -1, r"warmup_steps must be an integer >= 0, got -1"),
    (("mcmc", "nuts"), "warmup_steps", 2.5, r"warmup_steps must be an integer >= 0, got 2.5 \(float\)"),
    (("mcmc", "nuts"), "num_chains", 0, r"num_chains must be an integer >= 1, got 0"),
    (("mcmc", "nuts"), "num_chains", 2.0, r"num_chains must be an integer >= 1, got 2.0 \(float\)"),
    (("mcmc",), "thin", 0, r"thin must be an integer >= 1, got 0"),
    (("mcmc",), "initial_scale", 0.0, r"initial_scale must be > 0.0, got 0.0"),
    (("mcmc",), "target_accept", 1.0, r"target_accept must be < 1.0, got 1.0"),
    (("nuts",), "target_accept_prob", 0.0, r"target_accept_prob must be > 0.0, got 0.0"),
    (("nuts",), "max_tree_depth", 0, r"max_tree_depth must be an integer >= 1, got 0"),
    (("nuts",), "jit_compile", "yes", r"jit_compile must be True or False, got 'yes'"),
]


@pytest.mark.parametrize(
    "methods, option, value, message", BAD_OPTIONS, ids=[f"{o}={v!r}" for _, o, v, _ in BAD_OPTIONS]
)
def test_bad_option_values_are_refused_before_any_simulation(methods, option, value, message):
    y_bb = np.array([0.5, 0.2], dtype=np.float32)
    for method in methods:
        model = LG.model if method == "nuts" else M.blackbox_model  # nuts refuses black boxes first
        y = Y if method == "nuts" else y_bb
        as_problem(model)  # traced (and cached) before counting simulator calls
        options = {**METHODS[method], "num_samples": 10, "seed": 0, option: value}
        before = M.CALLS["n"]
        # num_samples and seed are infer()'s own arguments (ProblemError); method options raise OptionError
        error = ProblemError if option in ("num_samples", "seed") else OptionError
        with pytest.raises(error, match=message):
            bayesinv.infer(model, y, method=method, progress=False, **options)
        assert M.CALLS["n"] == before, f"{method} ran the simulator before refusing {option}={value!r}"
        # the method checks its arguments itself too, when called without infer()
        problem = as_problem(model)
        y_checked, _ = problem.check_y(y)
        fn = getattr(getattr(bayesinv.methods, method), method)
        with pytest.raises(ProblemError, match=message):
            fn(problem, y_checked, target=problem.latent, progress=False, **options)
        assert M.CALLS["n"] == before


@pytest.mark.parametrize("method", ["importance", "mcmc", "nuts"])
def test_one_seed_rule(method):
    options = {**METHODS[method], "num_samples": 20, "progress": False}
    a = bayesinv.infer(LG.model, Y, method=method, seed=None, **options)
    b = bayesinv.infer(LG.model, Y, method=method, seed=None, **options)
    seed_a = a.posterior.attrs["seed"]
    assert isinstance(seed_a, (int, np.integer)) and 0 <= seed_a < 2**63
    assert seed_a != b.posterior.attrs["seed"]
    assert not np.array_equal(a.posterior["theta"].values, b.posterior["theta"].values)
    again = bayesinv.infer(LG.model, Y, method=method, seed=int(seed_a), **options)  # the recorded seed repeats the run
    np.testing.assert_array_equal(again.posterior["theta"].values, a.posterior["theta"].values)
    big = bayesinv.infer(LG.model, Y, method=method, seed=np.int64(2**63 - 1), **options)
    assert big.posterior.attrs["seed"] == 2**63 - 1


def test_trace_problem_arguments():
    with pytest.raises(ProblemError, match="model must be a callable Pyro or NumPyro model, got int"):
        trace_problem(3)
    with pytest.raises(ProblemError, match=r"observed= names \['nope'\] are not sites of the model"):
        trace_problem(LG.model, observed=["nope"])
    with pytest.raises(ProblemError, match=r"observed= must name at least one site.*\[1\]"):
        trace_problem(LG.model, observed=[1])
    with pytest.raises(ProblemError, match=r"seed must be None or an integer in \[0, 2\*\*63\), got 'abc'"):
        trace_problem(LG.model, seed="abc")
    assert trace_problem(LG.model, observed="y").observed == ("y",)
    assert trace_problem(LG.model, seed=None).observed == ("y",)


@pytest.mark.parametrize(
    "n, message",
    [(2.5, r"n must be an integer >= 1, got 2.5 \(float\)"), ("10", r"n must be an integer >= 1, got '10'"),
     (True, r"n must be an integer >= 1, got True"), (0, r"n must be an integer >= 1, got 0")],
)
def test_run_batch_counts(n, message):
    p = trace_problem(LG.model)
    with pytest.raises(ProblemError, match=message):
        run_batch(p, n, seed=0)


def test_run_batch_seed():
    p = trace_problem(LG.model)
    for seed in ("abc", 1.7, 2**63):
        with pytest.raises(ProblemError, match=r"seed must be None or an integer in \[0, 2\*\*63\)"):
            run_batch(p, 3, seed=seed)
