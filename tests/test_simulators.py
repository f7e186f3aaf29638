import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from bayesinv._context import RunContext, run_context
from bayesinv.simulators import SimulationError, Simulator, external, python_script, simulator


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


def make_flaky(threshold, calls=None):
    @simulator(name="flaky")
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


def test_all_rows_failing_raises():
    calls = []
    flaky = make_flaky(-np.inf, calls)
    with pytest.raises(SimulationError, match="row 0: RuntimeError: solver diverged"):
        flaky(np.ones((4, 2)))
    assert calls == [4, 1, 1, 1, 1]
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
        assert decay_chunked._pool is not None
    assert decay_parallel._pool is None and decay_chunked._pool is None


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
