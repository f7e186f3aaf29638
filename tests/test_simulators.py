import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesinv
from bayesinv._context import RunContext, run_context
from bayesinv.data import SimulationWarning
from bayesinv.errors import OptionError
from bayesinv.problem import run_batch, trace_problem
from bayesinv.simulators import SimulationError, Simulator, external, python_script, simulator

ROOT = Path(__file__).resolve().parents[1]


@simulator
def decay(theta):
    t = np.linspace(0.0, 1.0, 7)
    return theta[:, :1] * np.exp(-np.abs(theta[:, 1:2]) * t)


def _decay_raw(theta):
    return decay.fn(theta)


@simulator(workers=2)
def decay_parallel(theta):
    return _decay_raw(theta)


@simulator(workers=2, batch_size=16)
def decay_chunked(theta):
    assert len(theta) <= 16
    return _decay_raw(theta)


@simulator(workers=2)
def crashes_on_negative(theta):
    if np.any(theta[:, 0] < 0):
        os._exit(3)
    return _decay_raw(theta)


def make_flaky(threshold, calls=None, **options):
    @simulator(name="flaky", **options)
    def flaky(theta):
        if calls is not None:
            calls.append(len(theta))
        if np.any(theta[:, 0] > threshold):
            raise RuntimeError(f"solver diverged at {theta[theta[:, 0] > threshold, 0].max():.3f}")
        return np.repeat(theta[:, :1], 3, axis=1)

    return flaky


# ------------------------------------------------------------------ conversions


def test_torch_in_torch_out():
    theta = torch.rand(10, 2, requires_grad=True)
    out = decay(theta)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (10, 7) and out.dtype == torch.float32
    assert not out.requires_grad
    assert decay.differentiable is False
    expected = decay.fn(theta.detach().numpy().astype(np.float64))
    assert np.allclose(out.numpy(), expected, atol=1e-6)


def test_numpy_in_numpy_out_and_float64_kept():
    theta = np.random.default_rng(0).random((4, 2))
    out = decay(theta)
    assert isinstance(out, np.ndarray) and out.shape == (4, 7)
    out64 = decay(torch.as_tensor(theta))
    assert out64.dtype == torch.float64
    assert np.array_equal(out64.numpy(), out)


def test_scalars_passed_through_and_event_ndim():
    seen = []

    @simulator(event_ndim=1)
    def scaled(x, factor):
        seen.append((x.shape, factor))
        return x * factor

    assert scaled(torch.ones(3), 2.0).shape == (3,)
    assert scaled(torch.ones(5, 3), 2.0).shape == (5, 3)
    assert seen == [((1, 3), 2.0), ((5, 3), 2.0)]


def test_decorator_metadata_and_repr():
    assert isinstance(decay, Simulator) and decay.__name__ == "decay" and decay.name == "decay"
    assert repr(decay_parallel) == "Simulator(name='decay_parallel', workers=2)"
    assert pickle.loads(pickle.dumps(decay)) is decay


# ----------------------------------------------------------------- run context


def test_unbatched_context_adds_and_strips_axis():
    shapes = []

    @simulator(name="fwd")
    def fwd(x):
        shapes.append(x.shape)
        return np.stack([x.sum(axis=1), x.prod(axis=1)], axis=1)

    with run_context(RunContext(batch_size=None)) as ctx:
        a = fwd(torch.tensor([1.0, 2.0, 3.0]))
        b = fwd(torch.tensor([1.0, 1.0, 1.0]))
    assert shapes == [(1, 3), (1, 3)]
    assert a.shape == (2,) and torch.equal(a, torch.tensor([6.0, 6.0]))
    assert ctx.calls == ["fwd", "fwd_1"]
    assert ctx.outputs["fwd"].shape == (1, 2) and torch.equal(ctx.outputs["fwd_1"], torch.tensor([[3.0, 1.0]]))
    assert ctx.failures == 0 and ctx.errors == []


def test_batched_context_passes_inputs_unchanged():
    theta = torch.rand(5, 2)
    with run_context(RunContext(batch_size=5)) as ctx:
        out = decay(theta)
    assert out.shape == (5, 7)
    assert ctx.calls == ["decay"] and torch.equal(ctx.outputs["decay"], out)


def test_replay_returns_stored_outputs_without_running():
    calls = []

    @simulator(name="counted")
    def counted(x):
        calls.append(1)
        return x * 2

    stored = {"counted": torch.full((1, 3), 7.0), "counted_1": torch.full((1, 3), 8.0)}
    with run_context(RunContext(batch_size=None, replay=stored)) as ctx:
        first = counted(torch.ones(3))
        second = counted(torch.ones(3))
        third = counted(torch.ones(3))  # not in replay: runs
    assert calls == [1]
    assert torch.equal(first, torch.full((3,), 7.0)) and torch.equal(second, torch.full((3,), 8.0))
    assert torch.equal(third, torch.full((3,), 2.0))
    assert ctx.calls == ["counted", "counted_1", "counted_2"]

    with run_context(RunContext(batch_size=4, replay={"counted": torch.zeros(4, 3)})):
        assert torch.equal(counted(torch.ones(4, 3)), torch.zeros(4, 3))
    assert calls == [1]


# -------------------------------------------------------------------- failures


def test_failing_rows_become_nan():
    theta = torch.as_tensor(np.random.default_rng(1).normal(size=(200, 2)), dtype=torch.float32)
    threshold = float(torch.quantile(theta[:, 0], 0.95))
    bad = (theta[:, 0] > threshold).numpy()
    assert 5 <= bad.sum() <= 15
    flaky = make_flaky(threshold)
    with run_context(RunContext(batch_size=200)) as ctx:
        out = flaky(theta)
    nan_rows = torch.isnan(out).any(dim=1).numpy()
    assert np.array_equal(nan_rows, bad)
    assert torch.isnan(out[bad]).all()
    assert torch.allclose(out[~bad], theta[~bad, :1].expand(-1, 3))
    assert ctx.failures == bad.sum() and flaky.num_failures == bad.sum()
    assert len(ctx.errors) == 5 and flaky.errors == ctx.errors
    first = int(np.flatnonzero(bad)[0])
    assert ctx.errors[0].startswith(f"row {first}: RuntimeError: solver diverged")


def test_nonfinite_rows_counted():
    @simulator
    def half_nan(x):
        out = x.copy()
        out[x[:, 0] < 0] = np.nan
        return out

    x = np.array([[1.0], [-1.0], [2.0], [-3.0]])
    with run_context(RunContext(batch_size=4)) as ctx:
        out = half_nan(x)
    assert np.array_equal(np.isnan(out[:, 0]), [False, True, False, True])
    assert ctx.failures == 2 and half_nan.num_failures == 2
    assert ctx.errors[0] == "row 1: FloatingPointError: non-finite simulator output"


@pytest.mark.parametrize("isolate, expected", [("bisect", [4, 2, 1, 1, 2, 1, 1]), ("rows", [4, 1, 1, 1, 1])])
def test_all_rows_failing_raises(isolate, expected):
    calls = []
    flaky = make_flaky(-np.inf, calls, isolate=isolate)
    with pytest.raises(SimulationError, match="row 0: RuntimeError: solver diverged"):
        flaky(np.ones((4, 2)))
    assert calls == expected and flaky.num_calls == len(expected)
    assert flaky.num_failures == 4


def test_wrong_output_batch_raises_value_error():
    @simulator(name="sloppy")
    def sloppy(x):
        return x[:1]

    with pytest.raises(ValueError, match=r"'sloppy'.*batch of 6 rows.*shape \(1, 2\)"):
        sloppy(np.ones((6, 2)))


# ------------------------------------------------------------------ parallel


def test_workers_match_serial_and_chunking():
    theta = np.random.default_rng(2).normal(size=(50, 2))
    serial = decay(theta)
    with decay_parallel, decay_chunked:
        assert np.array_equal(decay_parallel(theta), serial)
        assert np.array_equal(decay_chunked(theta), serial)
        out = decay_chunked(torch.as_tensor(theta, dtype=torch.float32))
        assert out.dtype == torch.float32 and torch.allclose(out, torch.as_tensor(serial, dtype=torch.float32))
        assert len(decay_chunked.worker_pids) == 2
    assert decay_parallel.worker_pids == [] and decay_chunked.worker_pids == []


def test_serial_chunking():
    sizes = []

    @simulator(batch_size=3)
    def chunked(x):
        sizes.append(len(x))
        return x + 1

    assert np.array_equal(chunked(np.zeros((8, 2))), np.ones((8, 2)))
    assert sizes == [3, 3, 2]


def test_crashed_worker_isolated():
    theta = np.abs(np.random.default_rng(3).normal(size=(8, 2)))
    theta[5, 0] = -1.0
    try:
        out = crashes_on_negative(theta)
    finally:
        crashes_on_negative.close()
    assert np.isnan(out[5]).all() and np.isfinite(np.delete(out, 5, axis=0)).all()
    assert np.allclose(np.delete(out, 5, axis=0), decay.fn(np.delete(theta, 5, axis=0)))
    assert crashes_on_negative.num_failures == 1 and crashes_on_negative.errors[0].startswith("row 5: BrokenProcessPool")


def test_local_function_with_workers_gives_clear_error():
    @simulator(workers=2)
    def local(x):
        return x

    with pytest.raises(TypeError, match="module level"):
        local(np.ones((2, 1)))


# ------------------------------------------------------------------- external

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np

    data = np.load(sys.argv[1], allow_pickle=False)
    theta, scale = data["arg0"], data["arg1"]
    if np.any(theta[:, 0] < 0):
        sys.stderr.write("negative parameter\\n")
        sys.exit(3)
    np.save(sys.argv[2], np.asarray(theta * scale[:, None], dtype=np.float64), allow_pickle=False)
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "solve.py"
    path.write_text(SCRIPT)
    return path


def test_external_round_trip(script):
    sim = python_script(script, python=sys.executable, batch_size=4)
    assert sim.name == "solve"
    theta = torch.rand(6, 2)
    out = sim(theta, torch.full((6,), 2.0))
    assert out.shape == (6, 2) and torch.allclose(out, 2 * theta)


def test_external_failure_reports_exit_code_and_stderr(script):
    sim = external([sys.executable, str(script), "{input}", "{output}"], name="solver")
    with pytest.raises(SimulationError, match="exit code 3") as info:
        sim(-np.ones((2, 2)), np.ones(2))
    assert "negative parameter" in str(info.value)

    theta = np.array([[1.0, 1.0], [-1.0, 1.0], [2.0, 1.0]])
    with run_context(RunContext(batch_size=3)) as ctx:
        out = sim(theta, np.ones(3))
    assert np.isnan(out[1]).all() and np.array_equal(out[[0, 2]], theta[[0, 2]])
    assert ctx.failures == 1 and "negative parameter" in ctx.errors[0]


def test_external_shell_string_and_timeout(tmp_path, script):
    sim = external(f"{sys.executable} {script} {{input}} {{output}}")
    assert np.array_equal(sim(np.ones((2, 2)), np.ones(2)), np.ones((2, 2)))
    slow = external([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    with pytest.raises(SimulationError, match="TimeoutError"):
        slow(np.ones((1, 1)))


def _system_python_has_numpy():
    if not os.path.exists("/usr/bin/python3"):
        return False
    probe = subprocess.run(["/usr/bin/python3", "-c", "import numpy"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _system_python_has_numpy(), reason="/usr/bin/python3 missing or cannot import numpy")
def test_python_script_default_interpreter(script):
    sim = python_script(script)
    theta = np.random.default_rng(4).random((3, 2))
    assert np.allclose(sim(theta, np.full(3, 0.5)), 0.5 * theta)


# ------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(timeout=0), r"'checked': timeout .* must be > 0.0, got 0"),
        (dict(timeout=-1.5), r"'checked': timeout .* must be > 0.0, got -1.5"),
        (dict(timeout=float("inf")), r"'checked': timeout .* must be a finite number, got inf"),
        (dict(timeout=float("nan")), r"'checked': timeout .* must be a finite number, got nan"),
        (dict(timeout="10"), r"'checked': timeout .* must be a finite number, got '10' \(str\)"),
        (dict(timeout=True), r"'checked': timeout .* must be a finite number, got True \(bool\)"),
        (dict(workers=0), r"'checked': workers must be an integer >= 1, got 0 \(int\)"),
        (dict(workers=2.5), r"'checked': workers must be an integer >= 1, got 2.5 \(float\)"),
        (dict(workers=True), r"'checked': workers must be an integer >= 1, got True \(bool\)"),
        (dict(batch_size=0), r"'checked': batch_size .* must be an integer >= 1, got 0"),
        (dict(isolate="halves"), r"'checked': isolate must be one of \('bisect', 'rows'\), got 'halves'"),
        (dict(mp_context="threads"), r"'checked': mp_context must be None or one of .*, got 'threads'"),
    ],
)
def test_options_are_checked_before_anything_runs(options, message):
    calls = []

    def checked(x):
        calls.append(1)
        return x

    with pytest.raises(OptionError, match=message):
        simulator(checked, **options)
    assert calls == []
    with pytest.raises(OptionError, match=r"external 'solver': timeout .* must be > 0.0, got 0"):
        external(["solver", "{input}", "{output}"], timeout=0)


# --------------------------------------------------------- output shape bugs


def _decay_rows(x):
    t = np.linspace(0.0, 1.0, 3)
    return x[:, :1] * np.exp(-np.abs(x[:, 1:2]) * t)  # (N, 2) -> (N, 3)


SHAPE_CALLS = []  # the batch sizes of the calls of the two simulators below


@simulator(name="drops_a_row")
def drops_a_row(x):
    SHAPE_CALLS.append(len(x))
    out = _decay_rows(x)
    return out[:-1] if len(x) > 1 else out  # right for one draw, one row short for a batch


@simulator(name="doubles_the_event")
def doubles_the_event(x):
    SHAPE_CALLS.append(len(x))
    out = _decay_rows(x)
    return np.concatenate([out, out], axis=1) if len(x) > 1 else out  # (N, 6) for a batch


def _model_of(sim):
    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        u = sim(theta)
        return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)

    return model


def test_output_rows_wrong_is_a_simulation_error():
    with pytest.raises(SimulationError, match=r"'sloppy'.*batch of 6 rows.*shape \(1, 2\); expected shape \(6, \.\.\.\)"):
        simulator(lambda x: x[:1], name="sloppy")(np.ones((6, 2)))


@pytest.mark.parametrize(
    "sim, got",
    [(drops_a_row, r"\(49, 3\)"), (doubles_the_event, r"\(50, 6\)")],
    ids=["rows", "event_shape"],
)
def test_batch_with_wrong_shape_raises_instead_of_running_draws_one_at_a_time(sim, got):
    problem = trace_problem(_model_of(sim))  # one draw: the right shape (1, 3)
    SHAPE_CALLS.clear()
    with pytest.raises(SimulationError, match=rf"simulator {sim.name!r} .*{got}.*expected shape \(50, 3\)") as info:
        run_batch(problem, 50, seed=0)
    assert isinstance(info.value, ValueError)
    assert "rows 0 to 49" in str(info.value)
    assert SHAPE_CALLS == [50], "a shape bug must not be retried (bisection or one draw at a time)"
    with pytest.raises(SimulationError, match=rf"{got}.*expected shape \(50, 3\)"):
        bayesinv.simulate(_model_of(sim), 50, seed=0, chunk_size=50, progress=False)


def test_model_that_does_not_broadcast_still_falls_back_to_one_draw_at_a_time():
    @simulator(name="fine")
    def fine(x):
        return _decay_rows(x)

    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        u = fine(theta.reshape(2))  # reshape(2): only one draw at a time
        return pyro.sample("y", dist.Normal(u, 0.1).to_event(1), obs=y)

    batch = run_batch(trace_problem(model), 8, seed=0)
    assert batch.values["y"].shape == (8, 3) and bool(batch.valid.all())


# ------------------------------------------------------------------ bisection

BAD_ROWS = (17, 500, 933)  # three failing rows of a batch of 1000


def _bisection_batch():
    theta = np.random.default_rng(5).normal(size=(1000, 2))
    marked = theta.copy()
    marked[list(BAD_ROWS), 1] = 99.0  # the value that makes the solver fail
    return theta, marked


CALLS = []  # the batch sizes of the calls made in this process


def _fails_on_marked(x, fail=True):
    CALLS.append(len(x))
    if fail and np.any(x[:, 1] == 99.0):
        raise RuntimeError(f"solver diverged for {int(np.sum(x[:, 1] == 99.0))} of {len(x)} rows")
    return np.sin(x[:, :1]) * np.arange(1, 5)


@simulator(name="bisected")
def bisected(x):
    return _fails_on_marked(x)


@simulator(name="bisected_in_workers", workers=2)
def bisected_in_workers(x):
    return _fails_on_marked(x)


@pytest.mark.parametrize("sim", [bisected, bisected_in_workers], ids=["here", "workers"])
def test_bisection_isolates_few_failures_in_few_calls(sim):
    theta, marked = _bisection_batch()
    reference = simulator(lambda x: _fails_on_marked(x, fail=False), name="reference")(marked)
    calls_before, sim.num_failures = getattr(sim, "num_calls", None), 0
    sim.errors = []
    CALLS.clear()
    try:
        with run_context(RunContext(batch_size=1000)) as ctx:
            out = sim(marked)
    finally:
        sim.close()
    calls = len(CALLS) if sim.workers == 1 else sim.num_calls - calls_before  # workers call in other processes
    bound = 3 * 2 * math.log2(1000) + sim.workers  # ~2 calls per level per failure, plus the first calls
    assert calls <= bound, (calls, bound)
    assert sim.num_calls - calls_before == calls
    failed = np.isnan(out).any(axis=1)
    assert np.flatnonzero(failed).tolist() == list(BAD_ROWS) and np.isnan(out[failed]).all()
    assert np.array_equal(out[~failed], reference[~failed]), "good rows must be what a failure-free run gives"
    assert ctx.failures == 3 == sim.num_failures
    assert [e.split(":")[0] for e in ctx.errors] == [f"row {r}" for r in BAD_ROWS]
    assert "RuntimeError: solver diverged for 1 of 1 rows" in ctx.errors[0]


def test_rows_strategy_costs_one_call_per_row_of_a_failing_chunk():
    _, marked = _bisection_batch()
    rows = simulator(_fails_on_marked, name="rows", isolate="rows", batch_size=500)
    out = rows(marked)
    assert rows.num_calls == 2 + 1000 and np.isnan(out).any(axis=1).sum() == 3
    assert np.array_equal(out, bisected(marked), equal_nan=True)


# ------------------------------------------------------------------- timeouts

HANG = 1000.0  # a row whose first parameter is HANG sleeps 30 s


def _hangs(x):
    if np.any(x[:, 0] == HANG):
        time.sleep(30)
    return 2 * x


@simulator(name="sleepy", timeout=0.5)
def sleepy(x):
    return _hangs(x)


@simulator(name="sleepy_workers", timeout=0.5, workers=2)
def sleepy_workers(x):
    return _hangs(x)


@pytest.mark.parametrize("sim", [sleepy, sleepy_workers], ids=["workers=1", "workers=2"])
def test_hanging_row_times_out_and_is_excluded(sim):
    x = np.random.default_rng(6).random((8, 2))
    x[3, 0] = HANG
    sim.num_failures, sim.errors = 0, []
    try:
        sim(np.ones((2, 2)))  # starts the workers
        pids = sim.worker_pids
        begin = time.monotonic()
        with run_context(RunContext(batch_size=8)) as ctx:
            out = sim(x)
        elapsed = time.monotonic() - begin
        assert elapsed < 8, f"one hanging row took {elapsed:.1f} s with timeout=0.5"
        assert np.isnan(out[3]).all() and np.array_equal(np.delete(out, 3, axis=0), 2 * np.delete(x, 3, axis=0))
        assert ctx.failures == 1 == sim.num_failures
        assert ctx.errors == [f"row 3: TimeoutError: simulator {sim.name!r} timed out after 0.5 s"]
        hung = [pid for pid in pids if pid not in sim.worker_pids]
        assert hung and len(sim.worker_pids) == sim.workers, "the hung worker is killed and replaced"
        assert all(not _alive(pid) for pid in hung)
        assert np.array_equal(sim(x[:3]), 2 * x[:3])  # the replacement works
    finally:
        sim.close()


@simulator(name="sleepy_model_sim", timeout=0.5)
def sleepy_model_sim(x):
    if np.any(x[:, 0] > 2.5):  # about 0.6 % of the prior draws hang
        time.sleep(30)
    return x


def _sleepy_model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(sleepy_model_sim(theta), 0.1).to_event(1), obs=y)


def test_simulate_does_not_hang_on_a_hanging_row():
    begin = time.monotonic()
    try:
        with pytest.warns(SimulationWarning, match=r"simulations failed.*timed out after 0.5 s"):
            ds = bayesinv.simulate(_sleepy_model, 300, seed=0, chunk_size=300, progress=False)
    finally:
        sleepy_model_sim.close()
    assert time.monotonic() - begin < 30
    assert ds.sizes["draw"] == 300 and np.isfinite(ds["y"].values).all()
    assert (ds["theta"].values[:, 0] <= 2.5).all(), "timed-out draws must be excluded"
    assert ds.attrs["num_failed"] >= 1 and "timed out after 0.5 s" in ds.attrs["errors"][0]


# --------------------------------------------------------------- parent death


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - reused by another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return sys.platform.startswith("linux") is False
    return True


PARENT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from bayesinv import simulator

    def record(kind):
        open(os.path.join(sys.argv[1], f"{kind}-{os.getpid()}"), "w").close()

    @simulator(workers=2)
    def idle(x):
        record("idle")
        return x

    @simulator(workers=2)
    def busy(x):
        record("busy")
        time.sleep(60)
        return x

    if __name__ == "__main__":
        if sys.argv[2] == "watchdog":  # not Linux for bayesinv: no prctl, only the portable watchdog thread
            sys.platform = "bayesinv-test"
        idle(np.ones((2, 1)))  # two workers left waiting for work
        busy(np.ones((2, 1)))  # two workers in a 60 s call
    """
)


@pytest.mark.parametrize("mechanism", ["prctl", "watchdog"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, mechanism):
    if mechanism == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(pids_dir), mechanism], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while sum(p.name.startswith("busy") for p in pids_dir.iterdir()) < 2:
            assert parent.poll() is None, parent.stderr.read().decode()
            assert time.monotonic() < deadline, "the parent did not start its workers"
            time.sleep(0.05)
        pids = {int(p.name.split("-")[1]) for p in pids_dir.iterdir()}
        assert len(pids) >= 3 and all(_alive(pid) for pid in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = sorted(pid for pid in pids if _alive(pid))
        assert not left, f"workers {left} survived the death of their parent"
    finally:
        parent.kill()
        for path in pids_dir.iterdir():  # never leave a process behind, even when the test fails
            try:
                os.kill(int(path.name.split("-")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_nonfinite_rows_fail_without_retry_unless_every_row_is_nonfinite():
    sizes = []

    @simulator(name="partly_nan")
    def partly_nan(x):
        sizes.append(len(x))
        out = x.copy()
        out[x[:, 0] < 0] = np.nan
        return out

    x = np.array([[1.0], [-1.0], [2.0], [-3.0], [4.0], [5.0]])
    out = partly_nan(x)
    assert sizes == [6], "the finite rows of a call are kept, its non-finite rows fail: no retry"
    assert np.array_equal(np.isnan(out[:, 0]), x[:, 0] < 0) and partly_nan.num_failures == 2

    sizes.clear()
    out = partly_nan(-np.ones((4, 1)))  # no finite row: bisected like an exception, NaN rows returned
    assert sizes == [4, 2, 1, 1, 2, 1, 1] and np.isnan(out).all() and partly_nan.num_failures == 6


def test_workers_started_by_a_thread_that_ended_are_replaced_without_failures():
    import threading

    x = np.random.default_rng(7).normal(size=(50, 2))
    failures = decay_parallel.num_failures
    try:
        thread = threading.Thread(target=decay_parallel, args=(x,))
        thread.start()
        thread.join()
        pids = decay_parallel.worker_pids
        deadline = time.monotonic() + 5  # on Linux they got SIGKILL with their thread (PR_SET_PDEATHSIG)
        while sys.platform.startswith("linux") and any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert np.array_equal(decay_parallel(x), decay(x))
        assert decay_parallel.num_failures == failures and len(decay_parallel.worker_pids) == 2
    finally:
        decay_parallel.close()
