r"""simulate(..., client=) on a 2-worker dask LocalCluster started in the test process.

Checked: the draws equal the local run's bit for bit (vectorised model, failing
simulations, several chunk sizes), a worker killed in the middle of a chunk costs a
redone chunk (exactly n draws, no duplicate, identical values), an interrupted run
resumes on the cluster, and the bad uses of client= raise OptionError.
"""

import os
import signal

import distributed  # the dask extra (in "all", which the test set-up installs)
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv import data as bdata
from bayesinv.errors import OptionError, ProblemError, SimulationError
from tests.models_for_tests import blackbox_model, flaky_model


KILL_MARKER = "BAYESINV_TEST_KILL_MARKER"


def _set_env(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _in_dask_worker() -> bool:
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


@bayesinv.simulator
def killing_sim(theta):
    r"""Kills its own Dask worker process once (the first call on a worker after its first, while no marker exists)."""
    marker = os.environ.get(KILL_MARKER)
    state = killing_sim.__dict__.setdefault("_calls", [0])
    state[0] += 1
    if marker and _in_dask_worker() and state[0] >= 2 and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return np.cumsum(theta, axis=-1)


def killing_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    u = killing_sim(theta)
    return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)


@bayesinv.simulator(workers=2)
def pool_sim(theta):
    return theta * 2.0


def pool_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(pool_sim(theta), 0.1).to_event(1), obs=y)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _same(a, b):
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)  # bit for bit
        assert a[name].dtype == b[name].dtype


@pytest.mark.parametrize("model,n,chunk_size", [(blackbox_model, 700, 64), (flaky_model, 300, 50)])
def test_dask_matches_local_run(client, tmp_path, model, n, chunk_size):
    local = bayesinv.simulate(model, n, seed=5, chunk_size=chunk_size)
    with pytest.warns(bdata.SimulationWarning) if model is flaky_model else _nothing():
        remote = bayesinv.simulate(model, n, seed=5, chunk_size=chunk_size, client=client)
    assert remote.sizes["draw"] == n
    _same(local, remote)
    assert remote.attrs["num_failed"] == local.attrs["num_failed"]
    with pytest.warns(bdata.SimulationWarning) if model is flaky_model else _nothing():
        stored = bayesinv.simulate(model, n, seed=5, chunk_size=chunk_size, path=tmp_path / "s.zarr", client=client)
    _same(local, stored.load())
    assert bdata.open_data(tmp_path / "s.zarr").attrs["complete"] == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_chunk_the_scheduler_cancels_is_submitted_again(client, tmp_path, monkeypatch):
    # a worker dying can make the scheduler cancel a chunk ("already forgotten") instead of
    # rerunning it: the chunk is submitted again and the run ends as the local one
    from bayesinv import _dask

    n, chunk_size = 200, 50
    local = bayesinv.simulate(blackbox_model, n, seed=3, chunk_size=chunk_size)
    submit, cancelled = _dask.ChunkMap._submit, []

    def cancel_the_first_of_each(self, index, tag, args):
        submit(self, index, tag, args)
        if index not in cancelled:  # each chunk's first submission is cancelled on the cluster
            cancelled.append(index)
            self.client.cancel([self._futures[index][1]])

    monkeypatch.setattr(_dask.ChunkMap, "_submit", cancel_the_first_of_each)
    remote = bayesinv.simulate(blackbox_model, n, seed=3, chunk_size=chunk_size, path=tmp_path / "c.zarr", client=client)
    assert sorted(cancelled) == [0, 1, 2, 3]
    _same(local, remote.load())


def test_worker_killed_mid_chunk_is_redone(client, tmp_path, monkeypatch):
    n, chunk_size = 600, 50
    local = bayesinv.simulate(killing_model, n, seed=11, chunk_size=chunk_size)
    marker = tmp_path / "killed"
    client.run(_set_env, KILL_MARKER, str(marker))  # the running workers
    monkeypatch.setenv(KILL_MARKER, str(marker))  # and the ones the nanny starts again (inherited)
    try:
        remote = bayesinv.simulate(killing_model, n, seed=11, chunk_size=chunk_size, path=tmp_path / "k.zarr", client=client)
    finally:
        client.run(_set_env, KILL_MARKER, None)
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert remote.sizes["draw"] == n
    theta = remote["theta"].values
    assert len(np.unique(theta, axis=0)) == n  # no duplicated chunk
    _same(local, remote.load())
    client.wait_for_workers(2, timeout=60)


def test_interrupted_dask_run_resumes(client, tmp_path, monkeypatch):
    n, chunk_size = 500, 50
    local = bayesinv.simulate(blackbox_model, n, seed=2, chunk_size=chunk_size)
    commits = []

    def stop_after_three(step):
        if step == "committed":
            commits.append(step)
            if len(commits) == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(bdata, "_test_hook", stop_after_three)
    store = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        bayesinv.simulate(blackbox_model, n, seed=2, chunk_size=chunk_size, path=store, client=client)
    assert bdata.open_data(store).sizes["draw"] == 3 * chunk_size
    monkeypatch.setattr(bdata, "_test_hook", None)
    resumed = bayesinv.simulate(blackbox_model, n, seed=2, chunk_size=chunk_size, path=store, client=client)
    _same(local, resumed.load())


def test_client_errors(client):
    with pytest.raises(OptionError, match="not an address"):
        bayesinv.simulate(blackbox_model, 10, client="tcp://127.0.0.1:8786")
    with pytest.raises(OptionError, match="must be a dask.distributed Client"):
        bayesinv.simulate(blackbox_model, 10, client=object())
    # a simulator with its own process pool inside a Dask task: refused, whatever the model does with the error
    with pytest.raises(OptionError, match="workers=2.*Dask workers are the pool"):
        bayesinv.simulate(pool_model, 20, chunk_size=10, client=client)


def test_simulation_errors_reach_the_client(client):
    with pytest.raises(ProblemError, match="runs of the model all failed.*no convergence on a worker"):
        bayesinv.simulate(_always_failing_model, 40, chunk_size=20, client=client)
    with pytest.raises(SimulationError, match="returned an output of shape"):  # the worker's error, its type kept
        bayesinv.simulate(_wrong_shape_model, 40, chunk_size=20, client=client)


@bayesinv.simulator
def _failing_sim(theta):
    if _in_dask_worker():
        raise RuntimeError("no convergence on a worker")
    return theta


@bayesinv.simulator
def _wrong_shape_sim(theta):
    return theta[:1] if _in_dask_worker() else theta


def _wrong_shape_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(_wrong_shape_sim(theta), 0.1).to_event(1), obs=y)


def _always_failing_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(_failing_sim(theta), 0.1).to_event(1), obs=y)


def _wide_guide(y=None):
    pyro.sample("theta", dist.Normal(torch.zeros(2), 1.5).to_event(1))


@pytest.mark.parametrize("proposal", [None, _wide_guide])
def test_importance_on_the_cluster_matches_local(client, proposal):
    y = torch.tensor([0.8, 0.3])
    kw = dict(method="importance", num_samples=200, num_proposals=2_400, chunk_size=400, seed=4, proposal=proposal)
    local = bayesinv.infer(blackbox_model, y, **kw)
    remote = bayesinv.infer(blackbox_model, y, client=client, **kw)
    for name in ("theta", "u"):
        np.testing.assert_array_equal(local.posterior[name].values, remote.posterior[name].values)
    assert float(local.sample_stats["ess"]) == float(remote.sample_stats["ess"])
    with pytest.raises(OptionError, match="data=.*client="):
        bayesinv.infer(blackbox_model, y, method="importance", data=bayesinv.simulate(blackbox_model, 50), client=client)
