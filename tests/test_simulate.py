import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bayesinv
from bayesinv.data import SimulationWarning
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import ProblemError
from tests import models_for_tests as M
from tests import slow_sim_script

ROOT = Path(__file__).resolve().parents[1]


def test_dataset_layout_and_reproducibility(tmp_path):
    lg = LinearGaussian(dim=4)
    a = bayesinv.simulate(lg.model, 2500, seed=3, chunk_size=1000, progress=False)
    assert set(a.data_vars) == {"theta", "mean_y", "y"}
    assert a["theta"].dims == ("draw", "theta_dim_0") and a.sizes["draw"] == 2500
    b = bayesinv.simulate(lg.model, 2500, seed=3, chunk_size=1000, path=tmp_path / "a.zarr", progress=False)
    np.testing.assert_array_equal(a["theta"].values, b["theta"].values)
    c = bayesinv.simulate(lg.model, 2500, seed=4, chunk_size=1000, progress=False)
    assert not np.allclose(a["theta"].values, c["theta"].values)
    # sample moments of the prior
    assert abs(float(a["theta"].mean())) < 0.05 and abs(float(a["theta"].std()) - 1) < 0.05
    with pytest.raises(ProblemError, match="another configuration"):
        bayesinv.simulate(lg.model, 100, seed=3, chunk_size=1000, path=tmp_path / "a.zarr", progress=False)
    d = bayesinv.simulate(lg.model, 100, seed=3, chunk_size=10, path=tmp_path / "a.zarr", overwrite=True, progress=False)
    assert d.sizes["draw"] == 100


def test_failing_simulator_is_counted_and_excluded():
    with pytest.warns(SimulationWarning, match=r"simulations failed \(\d+\.\d%\).*solver diverged"):
        ds = bayesinv.simulate(M.flaky_model, 2000, seed=0, chunk_size=500, progress=False)
    assert ds.sizes["draw"] == 2000
    theta = ds["theta"].values
    assert np.isfinite(ds["y"].values).all()
    assert (theta[:, 0] <= 1.6448536).all(), "draws whose simulation failed must be excluded"
    failed = ds.attrs["num_failed"]
    # theta[0] > 1.645 has probability 5%: about 105 failures per 2000 kept draws
    assert 60 < failed < 160, failed
    assert "solver diverged" in json.loads(ds.attrs["errors"])[0]


def test_simulate_killed_half_way_resumes_exactly(tmp_path):
    path = tmp_path / "run.zarr"
    n, chunk = 120, 10
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_sim_script.py"), str(path), str(n), str(chunk)], env=env)
    from bayesinv.data import _read_state

    deadline = time.time() + 120
    while time.time() < deadline:
        state = _read_state(path) if path.exists() else None
        if state and state["n_done"] >= 4 * chunk:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the simulation did not progress")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _read_state(path)["n_done"]
    assert chunk <= partial < n
    ds = bayesinv.simulate(slow_sim_script.model, n, seed=7, chunk_size=chunk, path=path, progress=False)
    assert ds.sizes["draw"] == n
    reference = bayesinv.simulate(slow_sim_script.model, n, seed=7, chunk_size=chunk, progress=False, vectorize=True)
    np.testing.assert_array_equal(ds["theta"].values, reference["theta"].values)
    np.testing.assert_array_equal(ds["y"].values, reference["y"].values)
    assert len(np.unique(ds["theta"].values[:, 0])) == n, "duplicated draws"


def test_resume_after_half_written_chunk(tmp_path):
    # simulate a crash between writing a chunk and recording it: the store is longer than its state
    lg = LinearGaussian(dim=2)
    path = tmp_path / "b.zarr"
    bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, path=path, progress=False)
    from bayesinv.data import _read_state, _write_state

    state = _read_state(path)
    state.update(n_done=20, chunks_done=2)
    _write_state(path, state)
    ds = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, path=path, progress=False)
    ref = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, progress=False)
    assert ds.sizes["draw"] == 30
    np.testing.assert_array_equal(ds["theta"].values, ref["theta"].values)
