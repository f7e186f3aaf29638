r"""The ``bayesinv`` command line: simulate, fit, sample, compare and inspect from batch jobs.

::

    bayesinv simulate MODULE:MODEL -n N --out joint.zarr [--workers K | --scheduler ADDR] [--seed S]
    bayesinv fit MODULE:MODEL --method M --data joint.zarr --out post.bayesinv [--checkpoint run.pt --resume]
                 [--option key=value ...]
    bayesinv sample post.bayesinv --y obs.npy -n 1000 --out draws.nc
    bayesinv compare a.nc b.nc [--var NAME ...]
    bayesinv info post.bayesinv

``MODULE:MODEL`` names a model as ``package.module:name`` (importable) or
``path/to/file.py:name``; ``name`` may be dotted (``module:obj.model``) and end in ``()``
to call a factory without arguments (``bayesinv.models.eit:make_model()``).

Exit codes: 0 success, 1 a user error (a :class:`~bayesinv.errors.BayesinvError`, a
missing or unreadable file: printed as one line, without a traceback), 2 a usage error
(an unknown option, a missing argument), 130 interrupted. Heavy modules (torch, Pyro,
ArviZ, xarray) are imported inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

__all__ = ["app", "main", "load_model", "parse_options"]

app = typer.Typer(
    name="bayesinv",
    help="Bayesian inverse problems from the command line: simulate a joint training set, fit an amortized"
    " posterior, sample it for an observation, compare posteriors, inspect a saved posterior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class UserError(Exception):
    r"""A mistake on the command line that is not a usage error (a bad ``MODULE:MODEL``, an unreadable file)."""


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"bayesinv: error: {message}", err=True)
    raise typer.Exit(code)


def _user_errors(command: Callable[..., None]) -> Callable[..., None]:
    r"""Runs a command; a user's mistake becomes one line on stderr and exit code 1 (Ctrl-C: 130)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        from bayesinv.errors import BayesinvError

        try:
            command(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted (a simulation store keeps its committed chunks: run the same command to resume)", 130)
        except (BayesinvError, UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            _fail(str(exc) if not isinstance(exc, OSError) or not exc.filename else f"{exc.strerror}: {exc.filename}")

    return run


# ------------------------------------------------------------------------------ helpers


def load_model(spec: str) -> Any:
    r"""The object named by ``MODULE:NAME`` or ``path/to/file.py:NAME`` (``NAME()`` calls it).

    A file's folder is put first on ``sys.path`` and the file imported under its stem, so
    that worker processes (``--workers``) import the model the same way.

    Raises:
        UserError: The spec is malformed, the module or file cannot be imported, or it has no such name.
    """
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise UserError(f"expected MODULE:MODEL or path/to/file.py:MODEL, got {spec!r}")
    call = name.endswith("()")
    name = name[:-2] if call else name
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        file = Path(module_part).resolve()
        if not file.is_file():
            raise UserError(f"{spec}: no such file {module_part!r}")
        folder, stem = str(file.parent), file.stem
        if folder not in sys.path:
            sys.path.insert(0, folder)
        loaded = sys.modules.get(stem)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != file:
            raise UserError(f"{spec}: a module named {stem!r} is already imported from {loaded.__file__}; rename the file")
        module_name = stem
    else:
        module_name = module_part
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder are found
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"{spec}: no module named {module_name!r}") from None
        raise UserError(f"{spec}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise UserError(f"{spec}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{spec}: {module_name!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    if call:
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{spec}: calling {name}() failed: {type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise UserError(f"{spec}: {name!r} is a {type(obj).__name__}, not a model (a callable model(y=None))")
    return obj


def parse_options(pairs: List[str] | None) -> dict[str, Any]:
    r"""``["key=value", ...]`` → ``{key: value}``; values are Python literals (``3``, ``1e-3``, ``(64, 64)``,
    ``True``, ``None``) or else strings.

    Raises:
        UserError: An entry without ``=`` or with an empty key.
    """
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UserError(f"--option takes key=value (key a Python name), got {pair!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key] = value
    return options


def _check_output(path: Path, what: str) -> None:
    if path.exists() and path.is_dir():
        raise UserError(f"--out {path} is a folder; {what} is written to a file")
    if not path.parent.exists():
        raise UserError(f"--out {path}: the folder {path.parent} does not exist")


def _atomic_netcdf(idata: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        idata.to_netcdf(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_observation(path: Path) -> Any:
    import numpy as np

    if not path.is_file():
        raise UserError(f"--y {path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"--y {path}: not a .npy or .npz file NumPy reads without pickle ({exc})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {key: loaded[key] for key in loaded.files}  # .npz: one array per observed site


def _open_idata(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    from bayesinv._arviz import az

    try:
        return az.from_netcdf(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: not an InferenceData netCDF file ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- commands

_PROGRESS = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal).")


@app.command()
@_user_errors
def simulate(
    model: str = typer.Argument(..., metavar="MODULE:MODEL", help="The model: package.module:name or file.py:name."),
    n: int = typer.Option(..., "-n", "--num", min=1, help="Number of (successful) draws."),
    out: Path = typer.Option(..., "--out", "-o", help="The zarr store (a folder) to write; an unfinished run there resumes."),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", min=1, help="Run the chunks on a local Dask cluster of K worker processes."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the chunks on the Dask scheduler at ADDR (tcp://host:8786)."),
    seed: int = typer.Option(0, "--seed", min=0, help="The seed (same seed, same dataset)."),
    chunk_size: int = typer.Option(1000, "--chunk-size", min=1, help="Draws per chunk (the unit of commit and of work)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store of another configuration (only a bayesinv store)."),
    progress: Optional[bool] = _PROGRESS,
) -> None:
    r"""Draw N samples of the model's joint distribution into a resumable zarr store."""
    if workers is not None and scheduler is not None:
        raise typer.BadParameter("give --workers or --scheduler, not both", param_hint="'--workers' / '--scheduler'")
    fn = load_model(model)
    import bayesinv

    client = cluster = None
    try:
        if workers is not None or scheduler is not None:
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise UserError("--workers and --scheduler need Dask: pip install 'bayesinv[dask]'") from None
            if workers is not None:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)  # fmt: skip
                client = Client(cluster)
            else:
                try:
                    client = Client(scheduler, timeout="30s")
                except (OSError, TimeoutError, ValueError) as exc:
                    raise UserError(f"--scheduler {scheduler}: cannot reach it ({type(exc).__name__}: {exc})") from None
        ds = bayesinv.simulate(fn, n, seed=seed, path=out, chunk_size=chunk_size, overwrite=overwrite,
                               progress=progress, client=client)  # fmt: skip
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    failed = ds.attrs.get("num_failed", 0)
    typer.echo(f"{out}: {ds.sizes['draw']:,} draws of {model} (seed {ds.attrs.get('seed')}, {failed:,} failed simulations)")


@app.command()
@_user_errors
def fit(
    model: str = typer.Argument(..., metavar="MODULE:MODEL", help="The model: package.module:name or file.py:name."),
    method: str = typer.Option(..., "--method", "-m", help="An amortized method (cond_score, flow, flow_matching, vae, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="The posterior file to write (.bayesinv)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="A store written by `bayesinv simulate` to train on."),
    num_simulations: Optional[int] = typer.Option(None, "--num-simulations", min=1, help="Simulate this many pairs instead of --data."),
    target: Optional[List[str]] = typer.Option(None, "--target", help="A site to learn (repeat for several; default every latent site)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Save training checkpoints here."),
    resume: bool = typer.Option(False, "--resume", help="Resume training from --checkpoint."),
    seed: int = typer.Option(0, "--seed", min=0, help="The seed."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-O", metavar="KEY=VALUE",
                                               help="A method option (repeatable): max_epochs=50, hidden=(64,64)."),
    progress: Optional[bool] = _PROGRESS,
) -> None:
    r"""Train an amortized posterior on simulations of the model and save it."""
    if resume and checkpoint is None:
        raise typer.BadParameter("--resume needs --checkpoint", param_hint="'--resume'")
    if data is not None and num_simulations is not None:
        raise typer.BadParameter("give --data or --num-simulations, not both", param_hint="'--data'")
    options = parse_options(option)
    _check_output(out, "the posterior")
    if data is not None and not data.exists():
        raise UserError(f"--data {data}: no such store")
    from bayesinv.registry import available_methods

    if method not in available_methods():
        raise UserError(f"--method {method!r} is not a method; available: {', '.join(available_methods())}")
    fn = load_model(model)
    import bayesinv
    for key, value in (("data", data), ("num_simulations", num_simulations), ("checkpoint", checkpoint)):
        if value is not None:
            options[key] = os.fspath(value) if isinstance(value, Path) else value
    if resume:
        options["resume"] = True
    post = bayesinv.fit(fn, method=method, target=list(target) if target else None, seed=seed, progress=progress, **options)
    post.save(out)
    info = getattr(post, "info", {}) or {}
    loss = info.get("best_val_loss")
    typer.echo(
        f"{out}: {method} posterior of {model} trained on {info.get('num_simulations', '?')} simulations"
        + (f" in {info['fit_time_s']:.1f} s" if isinstance(info.get("fit_time_s"), (int, float)) else "")
        + (f", best validation loss {loss:.4g}" if isinstance(loss, (int, float)) else "")
    )


@app.command()
@_user_errors
def sample(
    posterior: Path = typer.Argument(..., metavar="POSTERIOR", help="A posterior file written by `bayesinv fit`."),
    y: Path = typer.Option(..., "--y", help="The observation: a .npy array (or a .npz with one array per observed site)."),
    n: int = typer.Option(1000, "-n", "--num", min=1, help="Number of posterior draws."),
    out: Path = typer.Option(..., "--out", "-o", help="The InferenceData netCDF file to write (.nc)."),
    seed: int = typer.Option(0, "--seed", min=0, help="The seed."),
    model: Optional[str] = typer.Option(None, "--model", metavar="MODULE:MODEL",
                                        help="The model, to add its deterministic sites to the draws."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-O", metavar="KEY=VALUE", help="A sampling option (repeatable)."),
) -> None:
    r"""Draw from a saved posterior for one observation; write InferenceData (netCDF)."""
    options = parse_options(option)
    _check_output(out, "the draws")
    if not posterior.is_file():
        raise UserError(f"{posterior}: no such posterior file")
    observation = _load_observation(y)
    fn = load_model(model) if model is not None else None
    import bayesinv

    post = bayesinv.load(posterior)
    idata = post.infer(observation, num_samples=n, seed=seed, model=fn, **options)
    if isinstance(idata, list):
        raise UserError(f"--y {y} holds a batch of {len(idata)} observations; sample takes one")
    _atomic_netcdf(idata, out)
    typer.echo(f"{out}: {n:,} draws of {', '.join(idata.posterior.data_vars)} from {posterior}")


@app.command()
@_user_errors
def compare(
    draws: Path = typer.Argument(..., metavar="A.nc", help="Posterior draws (InferenceData netCDF)."),
    reference: Path = typer.Argument(..., metavar="B.nc", help="Reference draws (InferenceData netCDF)."),
    var: Optional[List[str]] = typer.Option(None, "--var", help="A variable to compare (repeatable; default the shared ones)."),
    seed: int = typer.Option(0, "--seed", min=0, help="The seed of the subsampling and of C2ST."),
) -> None:
    r"""Compare posterior draws A with reference draws B (per variable: RMSE of mean/std, C2ST, Sinkhorn, MMD)."""
    a, b = _open_idata(draws), _open_idata(reference)
    import bayesinv

    table = bayesinv.compare(a, b, var_names=list(var) if var else None, seed=seed)
    typer.echo(str(table))


@app.command()
@_user_errors
def info(
    posterior: Path = typer.Argument(..., metavar="POSTERIOR", help="A posterior file written by `bayesinv fit`."),
) -> None:
    r"""Show what a saved posterior is: method, target and observation shapes, training record, format version."""
    if not posterior.is_file():
        raise UserError(f"{posterior}: no such posterior file")
    from bayesinv.io import read_posterior

    meta, tensors = read_posterior(posterior)
    lines = [f"{posterior}", f"  method          {meta.get('method')}",
             f"  format          {meta.get('format')} version {meta.get('format_version')}"
             f" (written by bayesinv {meta.get('bayesinv_version')})"]  # fmt: skip
    for label, key in (("target", "target"), ("condition", "condition")):
        layout = meta.get(key) or {}
        sites = ", ".join(f"{name} {tuple(shape)}" for name, shape in zip(layout.get("names", []), layout.get("shapes", [])))
        lines.append(f"  {label:<15} {sites or '-'}")
    lines.append(f"  weights         {sum(int(t.numel()) for t in tensors.values()):,} numbers in {len(tensors)} tensors")
    record = meta.get("info") or {}
    if record:
        lines.append("  training")
        for key in sorted(record):
            value = record[key]
            text = f"{value:.6g}" if isinstance(value, float) else str(value)
            lines.append(f"    {key:<20} {text}")
    typer.echo("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    r"""The ``bayesinv`` entry point (``[project.scripts]``); exits with the command's code."""
    app(args=argv, prog_name="bayesinv")


if __name__ == "__main__":  # python -m bayesinv.cli
    main()
