r"""The ``bayesinv`` command line, each command run in a subprocess (as a batch job runs it).

One small linear-Gaussian model in a file is simulated, fitted with a tiny flow, sampled
twice, compared and inspected; the error cases check the exit code (1 user error, 2 usage
error) and that the message is one line without a traceback. ``--help`` must not import
torch (it is measured in the same subprocess).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bayesinv._version import __version__

MODEL = '''
import pyro, pyro.distributions as dist, torch

def model(y=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(theta, 0.5).to_event(1), obs=y)
'''


def run(*args, cwd, check_code=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "bayesinv.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == check_code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def one_line_error(proc, *fragments):
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bayesinv: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "lg.py").write_text(MODEL)
    np.save(folder / "obs.npy", np.array([0.5, -0.2], dtype=np.float32))
    run("simulate", "lg.py:model", "-n", 400, "--out", "joint.zarr", "--chunk-size", 100, "--seed", 3, cwd=folder)
    run("fit", "lg.py:model", "--method", "flow", "--data", "joint.zarr", "--out", "post.bayesinv",
        "-O", "max_epochs=2", "-O", "hidden=(16, 16)", "-O", "num_transforms=1", "--no-progress", cwd=folder)
    run("sample", "post.bayesinv", "--y", "obs.npy", "-n", 300, "--out", "a.nc", cwd=folder)
    return folder


def test_simulate_writes_the_store_simulate_would(work):
    import bayesinv
    from bayesinv.data import open_data

    ds = open_data(work / "joint.zarr")
    assert ds.sizes["draw"] == 400 and ds.attrs["complete"] == 1 and ds.attrs["seed"] == 3
    sys.path.insert(0, str(work))
    try:
        from lg import model

        local = bayesinv.simulate(model, 400, seed=3, chunk_size=100)
    finally:
        sys.path.remove(str(work))
    np.testing.assert_array_equal(ds["theta"].values, local["theta"].values)


def test_fit_sample_compare_info(work):
    from bayesinv._arviz import az

    a = az.from_netcdf(str(work / "a.nc"))
    assert a.posterior["theta"].shape[-2:] == (300, 2)
    assert np.isfinite(a.posterior["theta"].values).all()
    table = run("compare", "a.nc", "a.nc", cwd=work).stdout  # the same draws: no difference of means
    assert "c2st" in table and "theta" in table
    assert float(table.splitlines()[2].split()[2]) == 0.0, table  # rmse_mean
    info = run("info", "post.bayesinv", cwd=work).stdout
    for fragment in ("method          flow", "version 2", "target          theta (2,)", "condition       y (2,)",
                     "num_simulations      400"):  # fmt: skip
        assert fragment in info, (fragment, info)


def test_user_errors_are_one_line_and_exit_1(work):
    one_line_error(run("info", "missing.bayesinv", cwd=work, check_code=1), "missing.bayesinv", "no such posterior file")
    (work / "light.py").write_text("x = 1\n")
    one_line_error(run("simulate", "light.py:nomodel", "-n", 4, "--out", "x.zarr", cwd=work, check_code=1), "no attribute 'nomodel'")
    one_line_error(run("simulate", "light.py:x", "-n", 4, "--out", "x.zarr", cwd=work, check_code=1), "not a model")
    one_line_error(run("simulate", "nofile.py:model", "-n", 4, "--out", "x.zarr", cwd=work, check_code=1), "no such file")
    one_line_error(run("simulate", "no_such_module_xyz:model", "-n", 4, "--out", "x.zarr", cwd=work, check_code=1),
                   "no module named 'no_such_module_xyz'")
    (work / "notastore").mkdir(exist_ok=True)
    (work / "notastore" / "keep.txt").write_text("user data")
    one_line_error(run("simulate", "lg.py:model", "-n", 4, "--out", "notastore", cwd=work, check_code=1),
                   "not a bayesinv simulation store")  # a StoreError
    assert (work / "notastore" / "keep.txt").read_text() == "user data"
    one_line_error(run("fit", "lg.py:model", "--method", "flow", "--data", "joint.zarr", "--out", "q.bayesinv",
                       "-O", "bogus=1", cwd=work, check_code=1), "bogus")  # an OptionError  # fmt: skip
    one_line_error(run("fit", "lg.py:model", "--method", "nosuch", "--data", "joint.zarr", "--out", "q.bayesinv",
                       cwd=work, check_code=1), "'nosuch' is not a method", "flow")  # fmt: skip
    (work / "bad.npy").write_bytes(b"not numpy")
    one_line_error(run("sample", "post.bayesinv", "--y", "bad.npy", "--out", "c.nc", cwd=work, check_code=1), "bad.npy")
    one_line_error(run("compare", "nothere.nc", "a.nc", cwd=work, check_code=1), "nothere.nc")
    assert not (work / "q.bayesinv").exists() and not (work / "c.nc").exists()


def test_usage_errors_exit_2(work):
    assert "Missing option" in run("simulate", "lg.py:model", "--out", "x.zarr", cwd=work, check_code=2).stderr
    both = run("simulate", "lg.py:model", "-n", 4, "--out", "x.zarr", "--workers", 2, "--scheduler", "tcp://h:1",
               cwd=work, check_code=2)  # fmt: skip
    assert "not both" in both.stderr
    assert "--checkpoint" in run("fit", "lg.py:model", "--method", "flow", "--out", "q.bayesinv", "--resume",
                                 cwd=work, check_code=2).stderr  # fmt: skip
    assert "No such command" in run("frobnicate", cwd=work, check_code=2).stderr
    assert not (work / "x.zarr").exists()


HELP_CHECK = """
import sys
from bayesinv.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "pyro", "arviz", "xarray", "zarr", "matplotlib", "scipy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code))
"""


@pytest.mark.parametrize("command", [[], ["simulate"], ["fit"], ["sample"], ["compare"], ["info"]])
def test_help_everywhere_without_heavy_imports(tmp_path, command):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", HELP_CHECK, *command, "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Usage: bayesinv" in proc.stdout
    assert proc.stdout.strip().endswith("HEAVY= CODE=0"), proc.stdout[-300:]


def test_import_bayesinv_is_light(tmp_path):
    code = ("import sys, bayesinv; loaded = [m for m in ('arviz', 'matplotlib', 'scipy.stats', 'xarray', 'zarr', 'torch')"
            " if m in sys.modules]; print(loaded); bayesinv.simulate; bayesinv.data.open_data; print(bayesinv.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, version = proc.stdout.split()
    assert first == "[]", proc.stdout  # nothing heavy until a name is used
    assert version == __version__
    proc = subprocess.run([sys.executable, "-c", "import bayesinv; bayesinv.no_such_name"], capture_output=True, text=True)
    assert proc.returncode == 1 and "has no attribute 'no_such_name'" in proc.stderr


def test_script_entry_point_is_declared():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"bayesinv": "bayesinv.cli:main"}
