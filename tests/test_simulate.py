import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import bayesinv
import bayesinv.data as D
from bayesinv.data import SimulationWarning, StoreWarning, _read_state, _write_state, open_data
from bayesinv.errors import StoreError, StoreLockedError
from bayesinv.models.toy import LinearGaussian
from bayesinv.problem import ProblemError, as_problem
from tests import crash_sim_script as C
from tests import models_for_tests as M
from tests import slow_sim_script

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _no_hook():
    D._test_hook = None
    yield
    D._test_hook = None


# --------------------------------------------------------------------------------------------
# helpers: crash injection, forked writers, comparisons with an uninterrupted run
# --------------------------------------------------------------------------------------------


class _Killed(BaseException):
    r"""Raised by the test hook: leaves the writer exactly where a kill would (no except catches it)."""


def _raise_before(step: int):
    seen = {"n": 0}

    def hook(name: str) -> None:
        seen["n"] += 1
        if seen["n"] == step:
            raise _Killed(name)

    return hook


def _simulate(path, n, chunk, seed=5, model=C.model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationWarning)
        return bayesinv.simulate(model, n, seed=seed, chunk_size=chunk, path=path, progress=False, **kw)


_REFERENCES: dict = {}


def _reference(n, chunk, seed=5, model=C.model):
    key = (model, n, chunk, seed)
    if key not in _REFERENCES:
        ds = _simulate(None, n, chunk, seed=seed, model=model, vectorize=True)
        _REFERENCES[key] = {k: ds[k].values for k in ds.data_vars}
    return _REFERENCES[key]


def _assert_equal_to(ds, ref, n):
    assert ds.sizes["draw"] == n
    assert set(ds.data_vars) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(ds[k].values, v, err_msg=k)  # bit for bit
    assert len(np.unique(ds["theta"].values, axis=0)) == n, "duplicated draws"


def _check_committed_prefix(path, ref) -> int:
    r"""What a reader sees now: exactly the committed draws, equal to the reference's first rows."""
    state = _read_state(path)
    if state is None or state["n_done"] == 0:
        return 0
    part = open_data(path)
    assert part.sizes["draw"] == state["n_done"]
    for k in part.data_vars:
        np.testing.assert_array_equal(part[k].values, ref[k][: state["n_done"]], err_msg=k)
    return state["n_done"]


def _fork_writer(path, n, chunk, seed=5, hook=None, barrier=None, report=None):
    r"""A writer in a forked child (a real process: a kill leaves what a kill leaves)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            warnings.simplefilter("ignore")
            if barrier is not None:
                os.read(barrier, 1)
            D._test_hook = hook
            _simulate(path, n, chunk, seed=seed)
        except BaseException as exc:  # noqa: BLE001
            code = 1
            if report is not None:
                os.write(report, f"{type(exc).__name__}: {exc}\n".encode())
            else:
                traceback.print_exc()
        os._exit(code)
    return pid


def _wait(pid, timeout=60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"writer {pid} did not finish in {timeout} s")


def _steps(path, n, chunk, model=C.model) -> list[str]:
    steps: list[str] = []
    D._test_hook = steps.append
    _simulate(path, n, chunk, model=model)
    D._test_hook = None
    shutil.rmtree(path)
    return steps


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


def test_dataset_layout_and_reproducibility(tmp_path):
    lg = LinearGaussian(dim=4)
    a = bayesinv.simulate(lg.model, 2500, seed=3, chunk_size=1000, progress=False)
    assert set(a.data_vars) == {"theta", "mean_y", "y"}
    assert a["theta"].dims == ("draw", "theta_dim_0") and a.sizes["draw"] == 2500
    b = bayesinv.simulate(lg.model, 2500, seed=3, chunk_size=1000, path=tmp_path / "a.zarr", progress=False)
    np.testing.assert_array_equal(a["theta"].values, b["theta"].values)
    assert b["theta"].dims == ("draw", "theta_dim_0") and b.attrs["seed"] == 3
    c = bayesinv.simulate(lg.model, 2500, seed=4, chunk_size=1000, progress=False)
    assert not np.allclose(a["theta"].values, c["theta"].values)
    # sample moments of the prior (2500 draws: standard error 0.02 for the mean, 0.014 for the std)
    assert abs(float(a["theta"].mean())) < 0.05 and abs(float(a["theta"].std()) - 1) < 0.05
    with pytest.raises(StoreError, match=r"another configuration \(n: 2500 in the store, 100 now\)"):
        bayesinv.simulate(lg.model, 100, seed=3, chunk_size=1000, path=tmp_path / "a.zarr", progress=False)
    with pytest.raises(StoreError, match=r"seed: 3 in the store, 9 now; chunk_size: 1000 in the store, 10 now"):
        bayesinv.simulate(lg.model, 2500, seed=9, chunk_size=10, path=tmp_path / "a.zarr", progress=False)
    d = bayesinv.simulate(lg.model, 100, seed=3, chunk_size=10, path=tmp_path / "a.zarr", overwrite=True, progress=False)
    assert d.sizes["draw"] == 100
    np.testing.assert_array_equal(
        d["theta"].values, bayesinv.simulate(lg.model, 100, seed=3, chunk_size=10, progress=False)["theta"].values
    )


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
    assert "solver diverged" in ds.attrs["errors"][0]


def test_seed_none_draws_a_seed_and_a_resume_keeps_the_stores_seed(tmp_path):
    lg = LinearGaussian(dim=2)
    a = bayesinv.simulate(lg.model, 50, seed=None, chunk_size=10, progress=False)
    b = bayesinv.simulate(lg.model, 50, seed=None, chunk_size=10, progress=False)
    assert isinstance(a.attrs["seed"], int) and a.attrs["seed"] != b.attrs["seed"]
    assert bayesinv.simulate(lg.model, 5, progress=False).attrs["seed"] == 0  # the default, as for infer and fit
    np.testing.assert_array_equal(
        a["theta"].values, bayesinv.simulate(lg.model, 50, seed=a.attrs["seed"], chunk_size=10, progress=False)["theta"].values
    )
    path = tmp_path / "s.zarr"
    steps = _steps(tmp_path / "count.zarr", 50, 10, model=lg.model)
    D._test_hook = _raise_before(steps.index("record", 30) + 1)  # killed in a commit: rows written, not recorded
    with pytest.raises(_Killed):
        _simulate(path, 50, 10, seed=None, model=lg.model)
    D._test_hook = None
    seed = _read_state(path)["config"]["seed"]
    with pytest.warns(StoreWarning, match="discarded 10 uncommitted draw"):
        ds = _simulate(path, 50, 10, seed=None, model=lg.model)  # seed=None: resumes with the store's seed
    assert ds.attrs["seed"] == seed
    np.testing.assert_array_equal(ds["theta"].values, _reference(50, 10, seed=seed, model=lg.model)["theta"])


def test_a_small_last_chunk_that_fails_entirely_is_not_fatal_but_a_broken_simulator_is():
    # seed 5: chunk 4 has 2 draws to make and both fail (P = 0.31**2); the old rule gave up there
    ds = _simulate(None, 20, 10, seed=5)
    _assert_equal_to(ds, _reference(20, 10, seed=5), 20)
    problem = as_problem(C.broken_model)
    C.BROKEN["on"] = True
    try:
        with pytest.raises(ProblemError, match="all 20 simulations of chunk 0 failed; first error: .*non-finite"):
            bayesinv.simulate(problem, 20, seed=0, chunk_size=20, progress=False)
    finally:
        C.BROKEN["on"] = False


# --------------------------------------------------------------------------------------------
# item 1: transactional commits — a crash between any two write steps, a kill at any moment
# --------------------------------------------------------------------------------------------

CRASH_N, CRASH_CHUNK = 30, 10  # 4 arrays, 5 commits of 2-9 rows (31% of rows fail): 56 write steps


def test_every_write_step_is_listed():
    steps = _steps(Path(os.environ.get("TMPDIR", "/tmp")) / f"steps-{os.getpid()}.zarr", CRASH_N, CRASH_CHUNK)
    names = ["theta", "k", "y", "_sim_half_broken"]
    assert steps[:2] == ["create record", "create group"]
    assert steps[2:6] == [f"create {k}" for k in names] and sorted(_reference(CRASH_N, CRASH_CHUNK)) == sorted(names)
    commits = steps.count("record")
    assert commits == 5 and steps.count("committed") == commits
    for kind in ("resize", "write"):
        assert Counter(s.split(" ", 1)[1] for s in steps if s.startswith(kind + " ")) == {k: commits for k in names}
    assert len(steps) == 2 + 4 + commits * 10 == 56


def _crash_in_process(tmp_path, second_crash_every):
    ref = _reference(CRASH_N, CRASH_CHUNK)
    steps = _steps(tmp_path / "count.zarr", CRASH_N, CRASH_CHUNK)
    for k in range(1, len(steps) + 1):
        path = tmp_path / f"k{k}.zarr"
        D._test_hook = _raise_before(k)
        with pytest.raises(_Killed, match=steps[k - 1]):
            _simulate(path, CRASH_N, CRASH_CHUNK)
        D._test_hook = None
        _check_committed_prefix(path, ref)
        if k % second_crash_every == 0:  # and a second crash, in the resumed run's recovery or first commit
            D._test_hook = _raise_before(1 + (k // second_crash_every) % 4)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", StoreWarning)
                    _simulate(path, CRASH_N, CRASH_CHUNK)
            except _Killed:
                pass
            D._test_hook = None
            _check_committed_prefix(path, ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreWarning)
            ds = _simulate(path, CRASH_N, CRASH_CHUNK)
        _assert_equal_to(ds, ref, CRASH_N)
        _assert_equal_to(open_data(path), ref, CRASH_N)
        shutil.rmtree(path)


def test_crash_before_every_write_step_in_process_resumes_bit_for_bit(tmp_path):
    _crash_in_process(tmp_path, second_crash_every=4)


@pytest.mark.slow
def test_crash_before_every_write_step_and_again_while_resuming(tmp_path):
    _crash_in_process(tmp_path, second_crash_every=1)


def _crash_processes(tmp_path, n, chunk, points):
    r"""For each step k: a forked writer ``os._exit``-s before write step k; the parent resumes."""
    ref = _reference(n, chunk)
    for k in points:
        path = tmp_path / f"k{k}.zarr"
        pid = _fork_writer(path, n, chunk, hook=C.crash_before(k))
        assert _wait(pid) == 3, f"the writer did not reach write step {k}"
        _check_committed_prefix(path, ref)
        holder = json.loads((path / "_bayesinv" / "holder.json").read_text())
        assert holder["pid"] == pid and holder["host"] == socket.gethostname()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            ds = _simulate(path, n, chunk)
        stale = rf"took over the stale lock of pid {pid} on host .* no longer running"
        assert [w for w in caught if issubclass(w.category, StoreWarning) and re.search(stale, str(w.message))], caught
        _assert_equal_to(ds, ref, n)
        assert not (path / "_bayesinv" / "holder.json").exists()
        shutil.rmtree(path)


def test_process_exit_before_the_write_steps_of_creation_and_of_a_later_commit_resumes_bit_for_bit(tmp_path):
    steps = _steps(tmp_path / "count.zarr", CRASH_N, CRASH_CHUNK)
    first, second = [i for i, s in enumerate(steps) if s == "committed"][:2]
    points = [*range(1, 7), *range(first + 2, second + 2)]  # 1-based: creation, then every step of commit 2
    assert [steps[k - 1] for k in points][-3:] == ["write _sim_half_broken", "record", "committed"]
    _crash_processes(tmp_path, CRASH_N, CRASH_CHUNK, points)


@pytest.mark.slow
def test_process_exit_before_every_write_step_resumes_bit_for_bit(tmp_path):
    n, chunk = 120, 16
    _crash_processes(tmp_path, n, chunk, range(1, len(_steps(tmp_path / "count.zarr", n, chunk)) + 1))


def _kill_loop(tmp_path, n, chunk, kills, seed, max_delay):
    r"""SIGKILLs a forked writer ``kills`` times at random moments, resuming each time."""
    ref = _reference(n, chunk)
    path = tmp_path / "killed-0.zarr"
    rng = np.random.default_rng(seed)
    read, write = os.pipe()
    os.set_blocking(read, False)
    landed: Counter = Counter()
    done, survived, pid = 0, 0, None
    while survived < kills:
        pid = _fork_writer(path, n, chunk, hook=lambda name: os.write(write, (name + "\n").encode()))
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(pid, signal.SIGKILL)
        code = _wait(pid)
        try:
            trail = os.read(read, 1 << 20).decode().splitlines()
        except BlockingIOError:
            trail = []
        if code == 0:  # finished before the kill (a fast machine): check it, start a new store
            _assert_equal_to(open_data(path), ref, n)
            path, done = tmp_path / f"killed-{survived}.zarr", 0
            continue
        assert code == -signal.SIGKILL
        survived += 1
        landed[trail[-1].split(" ")[0] if trail else "start"] += 1  # the last write step begun
        now = _check_committed_prefix(path, ref)
        assert now >= done, f"committed draws lost: {done} -> {now}"
        done = now
    os.close(read)
    os.close(write)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        ds = _simulate(path, n, chunk)
    _assert_equal_to(ds, ref, n)
    return survived, landed


def test_random_kills_never_lose_or_duplicate_draws(tmp_path):
    # a forked writer takes ~0.1 s to its first commit, then commits 8 draws every ~0.03 s
    survived, landed = _kill_loop(tmp_path, 800, 8, kills=32, seed=0, max_delay=0.25)
    print(f"kills survived: {survived}; last write step begun: {dict(landed)}")
    assert survived == 32
    assert landed["write"] + landed["resize"] + landed["record"] >= 8, landed  # kills inside commits happened


@pytest.mark.slow
def test_random_kills_never_lose_or_duplicate_draws_long(tmp_path):
    survived, landed = _kill_loop(tmp_path, 4000, 16, kills=400, seed=1, max_delay=0.15)
    print(f"kills survived: {survived}; last write step begun: {dict(landed)}")
    assert survived == 400


def test_resume_after_half_written_chunk(tmp_path):
    # a crash between writing a chunk and recording it: the arrays are longer than the commit record
    lg = LinearGaussian(dim=2)
    path = tmp_path / "b.zarr"
    bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, path=path, progress=False)
    state = _read_state(path)
    state.update(n_done=20, chunks_done=2)
    _write_state(path, state)
    assert open_data(path).sizes["draw"] == 20  # a reader sees the committed draws only
    with pytest.warns(StoreWarning, match="discarded 10 uncommitted draw"):
        ds = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, path=path, progress=False)
    ref = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, progress=False)
    assert ds.sizes["draw"] == 30
    np.testing.assert_array_equal(ds["theta"].values, ref["theta"].values)


def test_lost_group_attributes_and_arrays_of_different_lengths_still_read_and_resume(tmp_path):
    # what the old xarray append left behind: group attributes wiped, one array longer than the others
    ref = _reference(CRASH_N, CRASH_CHUNK)
    path = tmp_path / "c.zarr"
    steps = _steps(tmp_path / "count.zarr", CRASH_N, CRASH_CHUNK)
    D._test_hook = _raise_before(steps.index("resize k", 20) + 1)  # theta resized, the others not
    with pytest.raises(_Killed):
        _simulate(path, CRASH_N, CRASH_CHUNK)
    D._test_hook = None
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(ValueError, match="conflicting sizes for dimension 'draw'"):
        xr.open_zarr(path, consolidated=False)  # what a plain reader would hit
    assert _check_committed_prefix(path, ref) > 0
    with pytest.warns(StoreWarning, match="discarded"):
        _assert_equal_to(_simulate(path, CRASH_N, CRASH_CHUNK), ref, CRASH_N)


def test_a_store_written_before_the_commit_record_still_reads_and_resumes(tmp_path):
    lg = LinearGaussian(dim=2)
    problem = as_problem(lg.model)
    full = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, progress=False)
    path = tmp_path / "old.zarr"
    full.isel(draw=slice(0, 25)).to_zarr(path, mode="w", consolidated=False)  # 5 rows past the state: a killed append
    config = {"model": problem.name, "n": 30, "seed": 1, "chunk_size": 10, "sites": {k: s.kind for k, s in problem.sites.items()}}
    state = {"config": config, "n_done": 20, "chunks_done": 2, "num_failed": 0, "errors": []}
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = {"bayesinv_simulate": json.dumps(state)}
    (path / "zarr.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(open_data(path)["theta"].values, full["theta"].values[:20])
    with pytest.warns(StoreWarning, match="discarded 5 uncommitted"):
        ds = bayesinv.simulate(lg.model, 30, seed=1, chunk_size=10, path=path, progress=False)
    for k in full.data_vars:
        np.testing.assert_array_equal(ds[k].values, full[k].values)


# --------------------------------------------------------------------------------------------
# item 2: one writer per store
# --------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    # also the kill of a real interpreter half way through, resumed bit for bit
    path = tmp_path / "shared.zarr"
    n, chunk = 600, 30
    env = {**ENV, "BAYESINV_TEST_SIM_SLEEP": "2.0"}  # 20 batches, 40 s: a second interpreter starts well before the end
    script = [sys.executable, str(ROOT / "tests" / "slow_sim_script.py"), str(path), str(n), str(chunk)]
    first = subprocess.Popen(script, env=env)
    try:
        deadline = time.time() + 120
        while not ((path / "_bayesinv" / "holder.json").exists() and (_read_state(path) or {}).get("n_done", 0) > 0):
            assert time.time() < deadline and first.poll() is None, "the first writer did not start"
            time.sleep(0.05)
        since = r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        holder = rf"pid {first.pid} on host '{socket.gethostname()}' {since}"
        # a second call in this process
        with pytest.raises(StoreLockedError, match=holder):
            bayesinv.simulate(slow_sim_script.model, n, seed=7, chunk_size=chunk, path=path, progress=False)
        # a second process
        second = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "StoreLockedError" in second.stderr and f"pid {first.pid} on host" in second.stderr, second.stderr[-2000:]
        assert first.poll() is None, "the first writer finished before the second one was checked"
        committed = open_data(path).sizes["draw"]  # a reader needs no lock
        assert 0 < committed < n
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with pytest.warns(StoreWarning, match=rf"took over the stale lock of pid {first.pid} .* no longer running"):
        ds = bayesinv.simulate(slow_sim_script.model, n, seed=7, chunk_size=chunk, path=path, progress=False)
    ref = bayesinv.simulate(slow_sim_script.model, n, seed=7, chunk_size=chunk, progress=False)
    assert ds.sizes["draw"] == n and len(np.unique(ds["theta"].values, axis=0)) == n
    np.testing.assert_array_equal(ds["theta"].values, ref["theta"].values)
    np.testing.assert_array_equal(ds["y"].values, ref["y"].values)


def test_two_writers_started_at_once_one_wins(tmp_path):
    path = tmp_path / "race.zarr"
    n, chunk = 200, 8
    gate_read, gate_write = os.pipe()
    report_read, report_write = os.pipe()
    pids = [_fork_writer(path, n, chunk, barrier=gate_read, report=report_write) for _ in range(2)]
    os.write(gate_write, b"go")  # both start simulate() at the same moment
    codes = sorted(_wait(pid) for pid in pids)
    os.close(report_write)
    report = os.read(report_read, 1 << 16).decode()
    for fd in (gate_read, gate_write, report_read):
        os.close(fd)
    assert codes == [0, 1], report
    assert report.startswith("StoreLockedError") and "is being written by another simulate(): pid" in report
    assert any(f"pid {pid} on host" in report for pid in pids)
    _assert_equal_to(open_data(path), _reference(n, chunk), n)


# --------------------------------------------------------------------------------------------
# item 3: overwrite deletes only bayesinv stores
# --------------------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_that_is_not_a_bayesinv_store(tmp_path):
    thesis = tmp_path / "thesis"
    (thesis / "chapters").mkdir(parents=True)
    (thesis / "chapters" / "intro.tex").write_text("\\chapter{Introduction}")
    (thesis / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    before = _tree(thesis)
    lg = LinearGaussian(dim=2)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match=rf"{thesis} exists and is not a bayesinv simulation store") as info:
            bayesinv.simulate(lg.model, 10, seed=0, path=thesis, overwrite=overwrite, progress=False)
        assert ("refusing to delete it" in str(info.value)) == overwrite
    assert _tree(thesis) == before and sorted(p.name for p in thesis.iterdir()) == ["chapters", "zarr.json"]


def test_a_file_as_path_is_a_store_error(tmp_path):
    file = tmp_path / "results.csv"
    file.write_text("a,b\n1,2\n")
    lg = LinearGaussian(dim=2)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match=rf"{file} is a file, not a simulation store"):
            bayesinv.simulate(lg.model, 10, seed=0, path=file, overwrite=overwrite, progress=False)
    with pytest.raises(StoreError, match=rf"{file} is a file, not a zarr store"):
        open_data(file)
    assert file.read_text() == "a,b\n1,2\n"


def test_overwrite_replaces_a_bayesinv_store_and_an_interrupted_overwrite_is_safe(tmp_path):
    lg = LinearGaussian(dim=2)
    path = tmp_path / "s.zarr"
    bayesinv.simulate(lg.model, 40, seed=1, chunk_size=10, path=path, progress=False)
    D._test_hook = _raise_before(2)  # the new record is written, the old arrays not yet deleted
    with pytest.raises(_Killed):
        bayesinv.simulate(lg.model, 30, seed=2, chunk_size=10, path=path, overwrite=True, progress=False)
    D._test_hook = None
    assert _read_state(path)["config"]["n"] == 30 and _read_state(path)["n_done"] == 0
    ds = bayesinv.simulate(lg.model, 30, seed=2, chunk_size=10, path=path, progress=False)
    np.testing.assert_array_equal(ds["theta"].values, _reference(30, 10, seed=2, model=lg.model)["theta"])


# --------------------------------------------------------------------------------------------
# item 4: open_data decodes nothing unchecked
# --------------------------------------------------------------------------------------------


class _Payload:
    r"""Unpickling it creates the file ``self.marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hostile_v2_store(path: Path, marker: Path) -> None:
    r"""A zarr v2 store whose array has object dtype and a pickle filter (as zarr 2.x wrote them)."""
    (path / "theta").mkdir(parents=True)
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (path / "theta" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None, "fill_value": 0,
        "filters": [{"id": "pickle", "protocol": 4}], "order": "C", "dimension_separator": ".",
    }))
    (path / "theta" / ".zattrs").write_text(json.dumps({"_ARRAY_DIMENSIONS": ["draw"]}))
    (path / "theta" / "0").write_bytes(pickle.dumps([_Payload(marker), 0], protocol=4))


def test_open_data_refuses_a_pickle_codec_store_before_decoding_anything(tmp_path):
    import numcodecs

    marker = tmp_path / "code-ran"
    store = tmp_path / "hostile.zarr"
    _hostile_v2_store(store, marker)
    # the store is truly hostile: unpickling its chunk (what zarr 2's pickle filter did) runs the payload
    pickle.loads((store / "theta" / "0").read_bytes())
    assert marker.exists()
    marker.unlink()
    assert numcodecs.Pickle.codec_id == "pickle"
    with pytest.raises(StoreError, match=r"variable 'theta' has dtype '\|O'"):
        open_data(store)
    with pytest.raises(StoreError, match=r"variable 'theta' has dtype '\|O'"):
        open_data(str(store))
    # a numeric dtype does not make a pickle filter acceptable
    meta = json.loads((store / "theta" / ".zarray").read_text())
    (store / "theta" / ".zarray").write_text(json.dumps({**meta, "dtype": "<f8"}))
    with pytest.raises(StoreError, match=r"variable 'theta' uses the codec 'pickle'"):
        open_data(store)
    assert not marker.exists(), "open_data decoded the hostile chunk"


def test_open_data_refuses_zarr3_object_codecs_and_string_arrays(tmp_path):
    import zarr

    marker = tmp_path / "code-ran"
    store = tmp_path / "v3.zarr"
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.create_array("theta", shape=(2,), dtype="float64", dimension_names=["draw"])[:] = [1.0, 2.0]
    assert open_data(store)["theta"].values.tolist() == [1.0, 2.0]
    meta = json.loads((store / "theta" / "zarr.json").read_text())
    hostile = {**meta, "codecs": [{"name": "numcodecs.pickle", "configuration": {"protocol": 4}}]}
    (store / "theta" / "zarr.json").write_text(json.dumps(hostile))
    (store / "theta" / "c").mkdir(exist_ok=True)
    (store / "theta" / "c" / "0").write_bytes(pickle.dumps([_Payload(marker), 0], protocol=4))
    with pytest.raises(StoreError, match=r"variable 'theta' uses the codec 'numcodecs.pickle'"):
        open_data(store)
    (store / "theta" / "zarr.json").write_text(json.dumps({**meta, "data_type": {"name": "object"}}))
    with pytest.raises(StoreError, match=r"variable 'theta' has data type \{'name': 'object'\}"):
        open_data(store)
    assert not marker.exists()
    shutil.rmtree(store)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group.create_array("label", shape=(2,), dtype=str, dimension_names=["draw"])[:] = ["a", "b"]
    with pytest.raises(StoreError, match=r"variable 'label' has data type 'string'"):
        open_data(store)
    # the same rules for a Dataset passed in memory; a missing path is a StoreError too
    with pytest.raises(StoreError, match=r"variable 'label' has dtype object"):
        open_data(xr.Dataset({"label": ("draw", np.array(["a", 1], dtype=object))}))
    with pytest.raises(StoreError, match="no such zarr store"):
        open_data(tmp_path / "missing.zarr")
    with pytest.raises(StoreError, match="not a zarr store"):
        open_data(tmp_path)


def test_open_data_reads_a_plain_zarr_store_and_names_what_xarray_cannot_open(tmp_path):
    import zarr

    store = tmp_path / "plain.zarr"
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.create_array("a", shape=(3,), dtype="int64", dimension_names=["draw"])[:] = [1, 2, 3]
    ds = open_data(store)  # not a bayesinv store: read as it is (no commit record to cut it to)
    assert ds["a"].values.tolist() == [1, 2, 3] and "complete" not in ds.attrs
    group.create_array("b", shape=(4,), dtype="float32", dimension_names=["draw"])
    with pytest.raises(StoreError, match=rf"{store}: xarray cannot open this zarr store .*conflicting sizes"):
        open_data(store)
