r"""Property-based fuzzing of the public entry points (hypothesis).

Generated observations, option values and malformed posterior files are thrown at
``infer``, ``fit``, ``simulate``, a loaded posterior's ``sample``/``infer`` and ``load``.
Each call must either work or raise one of the library's documented error types
(:class:`bayesinv.errors.BayesinvError`) with a message that names the site or the
option — never a raw torch/numpy/zarr/json exception, never silence. Hypothesis runs
with a fixed seed (``derandomize=True``) so the suite is reproducible; the numbers of
examples are small enough for the default suite and reported in docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.errors import BayesinvError, OptionError, PosteriorFileError  # noqa: E402
from bayesinv.models.toy import LinearGaussian  # noqa: E402

DATA = Path(__file__).parent / "data"
LG = LinearGaussian(dim=2, noise=0.5)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FUZZ_FEW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# -- generated values -----------------------------------------------------------------
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
observations = st.one_of(
    hnp.arrays(np.float64, shapes, elements=any_float),
    hnp.arrays(np.float32, st.just((2,)), elements=finite),  # the right shape: must work
    hnp.arrays(np.complex128, st.just((2,)), elements=st.complex_numbers(max_magnitude=10, allow_nan=False)),
    hnp.arrays(np.int64, st.just((2,)), elements=st.integers(-5, 5)),
    hnp.arrays(np.bool_, st.just((2,))),
    st.none(),
    st.text(max_size=5),
    st.lists(st.one_of(finite, st.lists(finite, max_size=3)), max_size=3),  # ragged nested lists
    st.dictionaries(st.sampled_from(["y", "z", "theta"]), hnp.arrays(np.float32, st.just((2,)), elements=finite), max_size=2),
    st.builds(lambda a: torch.tensor(a, requires_grad=True), hnp.arrays(np.float32, st.just((2,)), elements=finite)),
)
bad_scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2),
)


def _names_something(exc: BaseException, *names: str) -> bool:
    msg = str(exc)
    return bool(msg) and any(n in msg for n in names)


def _check(call, *names: str):
    r"""Runs ``call``: it works, or raises a documented error whose message names one of ``names``."""
    try:
        out = call()
    except BayesinvError as exc:
        assert _names_something(exc, *names), f"{type(exc).__name__} does not name any of {names}: {exc}"
        event(f"refused: {type(exc).__name__}")
        return None
    event("worked")
    return out
    # anything else propagates and fails the test, with its traceback


# -- infer ----------------------------------------------------------------------------
@FUZZ
@given(y=observations)
def test_infer_importance_on_generated_observations(y):
    idata = _check(lambda: bayesinv.infer(LG.model, y, method="importance", num_samples=20, num_proposals=200,
                                          seed=0, progress=False), "'y'", "y")  # fmt: skip
    if idata is not None:
        assert idata.posterior["theta"].shape == (4, 5, 2)  # 20 resampled draws laid out in 4 chains
        assert np.isfinite(idata.posterior["theta"].values).all()


@FUZZ
@given(name=st.sampled_from(["num_samples", "seed", "num_proposals", "chunk_size"]), value=bad_scalars)
def test_infer_importance_on_generated_option_values(name, value):
    options = {"num_samples": 20, "num_proposals": 200, "seed": 0, name: value}
    if name != "seed" and isinstance(value, int) and not isinstance(value, bool) and value > 500:
        options[name] = 100 + value % 400  # a valid large count: keep the run small
    idata = _check(lambda: bayesinv.infer(LG.model, np.zeros(2), method="importance", progress=False, **options), name)
    if idata is not None:  # a valid value went through: it must be what was asked
        assert idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"] == options["num_samples"]


@FUZZ_FEW
@given(name=st.sampled_from(["num_samples", "warmup_steps", "num_chains", "seed"]), value=bad_scalars)
def test_infer_mcmc_on_generated_option_values(name, value):
    options = {"num_samples": 10, "warmup_steps": 10, "num_chains": 1, "seed": 0, name: value}
    if name in ("num_samples", "warmup_steps", "num_chains") and isinstance(value, int) and value > 50:
        options[name] = 50 + value % 7  # keep valid large counts cheap
    _check(lambda: bayesinv.infer(LG.model, np.zeros(2), method="mcmc", progress=False, **options), name)


# -- simulate -------------------------------------------------------------------------
@FUZZ
@given(name=st.sampled_from(["n", "seed", "chunk_size"]), value=bad_scalars)
def test_simulate_on_generated_arguments(name, value):
    args = {"n": 5, "seed": 0, "chunk_size": 5, name: value}
    if name in ("n", "chunk_size") and isinstance(value, int) and not isinstance(value, bool) and value > 50:
        args[name] = 50  # a valid large count: keep it cheap
    ds = _check(lambda: bayesinv.simulate(LG.model, args["n"], seed=args["seed"], chunk_size=args["chunk_size"],
                                          progress=False), name)  # fmt: skip
    if ds is not None:
        assert ds.sizes["draw"] == args["n"]


# -- fit: bad options are refused before any simulation ------------------------------
FIT_OPTIONS = {
    "flow": ["flow", "hidden", "num_transforms", "max_epochs", "batch_size", "lr", "patience", "embedding"],
    "cond_score": ["process", "sampler", "hidden", "max_epochs", "batch_size", "lr", "t_min", "base_channels"],
}


@FUZZ
@given(method=st.sampled_from(sorted(FIT_OPTIONS)), data=st.data())
def test_fit_refuses_generated_option_values_before_simulating(method, data):
    name = data.draw(st.sampled_from(FIT_OPTIONS[method] + ["samplr", "hiden", "max_epoch"]))
    value = data.draw(st.one_of(st.integers(-3, 0), st.floats(max_value=0.0), st.just(float("nan")), st.text(max_size=3),
                                st.lists(st.integers(-2, 0), min_size=1, max_size=2)))  # fmt: skip
    calls = []

    def counting_model(y=None):
        calls.append(1)
        return LG.model(y)

    try:
        post = bayesinv.fit(counting_model, method=method, num_simulations=50, progress=False, **{name: value})
    except BayesinvError as exc:
        assert name in str(exc), f"{type(exc).__name__} does not name option {name!r}: {exc}"
        event(f"refused: {type(exc).__name__}")
        sims = len(calls)
        assert sims <= 3, f"{sims} model runs before the bad option {name}={value!r} was refused (tracing only)"
        return
    # a value that happens to be valid trained a posterior: it must sample
    event("worked")
    assert post.sample(np.zeros(2), 3)["theta"].shape == (3, 2)


# -- a loaded posterior -----------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_post():
    return bayesinv.load(DATA / "flow_v1.bayesinv")


@FUZZ
@given(y=observations)
def test_posterior_sample_and_infer_on_generated_observations(flow_post, y):
    out = _check(lambda: flow_post.sample(y, 4, seed=0), "'y'", "y")
    if out is not None:
        assert out["theta"].shape[-2:] == (4, 2) and torch.isfinite(out["theta"]).all()
    _check(lambda: flow_post.infer(y, num_samples=4, seed=0), "'y'", "y")


@FUZZ
@given(name=st.sampled_from(["n", "seed"]), value=bad_scalars)
def test_posterior_sample_on_generated_arguments(flow_post, name, value):
    args = {"n": 3, "seed": 0, name: value}
    if name == "n" and isinstance(value, int) and not isinstance(value, bool) and value > 50:
        args["n"] = 50
    _check(lambda: flow_post.sample(np.zeros(2), args["n"], seed=args["seed"]), name, "draws", "number")


# -- load: malformed files -----------------------------------------------------------
def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    path.write_bytes(buf.getvalue())
    return path


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(method=st.sampled_from(["flow", "cond_score", "vae", "csd_star"]), data=st.data())
def test_load_refuses_generated_malformed_files(tmp_path_factory, method, data):
    members = _members(DATA / f"{method}_v1.bayesinv")
    meta_name = next(n for n in members if n.endswith(".json"))
    meta = json.loads(members[meta_name])
    kind = data.draw(st.sampled_from(["bytes", "truncate", "meta_bytes", "meta_value", "meta_key", "drop_member"]))
    if kind == "bytes":
        blob = data.draw(st.binary(max_size=200))
        path = tmp_path_factory.mktemp("f") / "p.bayesinv"
        path.write_bytes(blob)
    else:
        if kind == "truncate":
            whole = (DATA / f"{method}_v1.bayesinv").read_bytes()
            path = tmp_path_factory.mktemp("f") / "p.bayesinv"
            path.write_bytes(whole[: data.draw(st.integers(0, len(whole) - 1))])
        else:
            if kind == "meta_bytes":
                members[meta_name] = data.draw(st.binary(max_size=100))
            elif kind == "meta_value":
                key = data.draw(st.sampled_from(sorted(meta)))
                meta[key] = data.draw(json_values)
                members[meta_name] = json.dumps(meta).encode()
            elif kind == "meta_key":
                key = data.draw(st.sampled_from(sorted(meta)))
                del meta[key]
                members[meta_name] = json.dumps(meta).encode()
            else:
                victim = data.draw(st.sampled_from(sorted(members)))
                del members[victim]
            path = _write(tmp_path_factory.mktemp("f") / "p.bayesinv", members)
    try:
        post = bayesinv.load(path)
    except PosteriorFileError as exc:
        assert str(exc), "an empty PosteriorFileError message"
        event("refused: PosteriorFileError")
        return
    event("worked")
    # the mutation left a loadable file (e.g. a changed info field): it must still sample as before
    if method == "csd_star":  # an unconditional prior started from a given reconstruction
        ref = np.load(DATA / "csd_star_v1_draws.npz")
        out = post.sample(ref["y"], 2, seed=0, start=ref["start"])
    else:
        out = post.sample(np.zeros(2), 2, seed=0)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_option_errors_list_the_valid_options():
    with pytest.raises(OptionError, match="samplr") as info:
        bayesinv.infer(LG.model, np.zeros(2), method="flow", num_simulations=50, samplr="ode", progress=False)
    assert "num_simulations" in str(info.value) or "options" in str(info.value)
