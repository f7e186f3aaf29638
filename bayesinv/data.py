r"""Joint training sets: :func:`simulate` draws (latents, deterministics, observations).

Draws are made in chunks; chunk ``i`` is always generated from the same seed, so a run
written to zarr and interrupted resumes where it stopped and ends with exactly the draws
an uninterrupted run would have made — nothing lost, nothing duplicated. Draws whose
simulation failed (the simulator raised or returned non-finite values) are excluded
and counted; more chunks are drawn until ``n`` good draws exist.

The dataset has one variable per site, with dims ``("draw", *site dims)``, plus the
noise-free output of every black-box simulator as ``_sim_<name>`` (reused by
``infer(..., method="importance", data=ds)``).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import xarray as xr

from bayesinv._version import __version__
from bayesinv.methods._util import chunk_seed, progress_bar
from bayesinv.problem import Problem, ProblemError, as_problem, run_batch

__all__ = ["simulate", "SimulationWarning"]

_ATTR = "bayesinv_simulate"


class SimulationWarning(UserWarning):
    r"""Some simulations failed and were excluded from the dataset."""


def _site_dims(name: str, shape: tuple[int, ...], dims: Mapping[str, list[str]]) -> list[str]:
    if name in dims:
        names = list(dims[name])
        if len(names) != len(shape):
            raise ProblemError(f"dims for {name!r} name {len(names)} dim(s) {names}, but the site has shape {shape}")
        return names
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def _chunk_dataset(values: Mapping[str, torch.Tensor], dims: Mapping[str, list[str]]) -> xr.Dataset:
    data = {}
    for name, v in values.items():
        arr = v.detach().cpu().numpy()
        data[name] = (["draw", *_site_dims(name, arr.shape[1:], dims)], arr)
    return xr.Dataset(data)


def _config(problem: Problem, n: int, seed: int, chunk_size: int) -> dict[str, Any]:
    return {
        "model": problem.name,
        "n": int(n),
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "sites": {k: s.kind for k, s in problem.sites.items()},
    }


def _read_state(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store (yet)
        return None
    raw = group.attrs.get(_ATTR)
    return json.loads(raw) if isinstance(raw, str) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    group.attrs[_ATTR] = json.dumps(state)


def _truncate(path: Path, n_done: int) -> None:
    r"""Cuts every draw-indexed array back to ``n_done`` rows (undoes a half-written chunk)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    for name, arr in group.arrays():
        dims = arr.metadata.dimension_names if hasattr(arr.metadata, "dimension_names") else None
        dims = dims or arr.attrs.get("_ARRAY_DIMENSIONS")
        if dims and dims[0] == "draw" and arr.shape[0] != n_done:
            arr.resize((n_done, *arr.shape[1:]))


def simulate(
    model: Callable | Problem,
    n: int,
    *,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    chunk_size: int = 1000,
    dims: Mapping[str, list[str]] | None = None,
    observed: list[str] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    vectorize: bool | None = None,
) -> xr.Dataset:
    r"""Draws ``n`` samples from the model's joint distribution.

    Arguments:
        model: A Pyro model ``model(y=None)`` (or a traced problem).
        n: The number of (successful) draws.
        seed: The seed; the same seed gives the same dataset.
        path: A zarr store to write chunk by chunk. If it already holds an unfinished
            run with the same configuration, the run resumes.
        chunk_size: Draws per chunk (one vectorised model run each); the last chunks
            are smaller, so no more simulations run than needed.
        dims: Site name → dim names (default ``{site}_dim_{i}``).
        observed: Observed site names, for models where they cannot be found automatically.
        overwrite: Replace an existing store with another configuration.
        progress: Show a progress bar (``None``: on a terminal).
        vectorize: Force or forbid the vectorised model run.

    Returns:
        An :class:`xarray.Dataset` with dim ``draw`` of size ``n`` (lazily backed by the
        zarr store when ``path`` is given). ``attrs`` hold the seed, the number of
        failed simulations and the first errors.

    Example:
        >>> ds = bayesinv.simulate(model, 10_000, seed=0, path="train.zarr")
        >>> ds["theta"].shape
        (10000, 2)
    """
    problem = as_problem(model, observed=observed)
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ProblemError(f"n must be a positive integer, got {n!r}")
    if chunk_size <= 0:
        raise ProblemError(f"chunk_size must be positive, got {chunk_size}")
    dims = dict(dims or {})
    config = _config(problem, n, seed, chunk_size)
    state = {"config": config, "n_done": 0, "chunks_done": 0, "num_failed": 0, "errors": []}
    store = Path(path) if path is not None else None
    if store is not None and store.exists():
        old = _read_state(store)
        if old is None and any(store.iterdir()):
            if not overwrite:
                raise ProblemError(f"{store} exists and is not a bayesinv simulation store; pass overwrite=True to replace it")
        elif old is not None and old["config"] != config:
            if not overwrite:
                raise ProblemError(
                    f"{store} holds a simulation with another configuration {old['config']}; pass overwrite=True"
                    " to replace it, or another path"
                )
        elif old is not None:
            state = old
            _truncate(store, state["n_done"])
        if overwrite and (old is None or old["config"] != config):
            import shutil

            shutil.rmtree(store)
    parts: list[xr.Dataset] = []
    bar = progress_bar(n, "simulate", progress, unit="draws")
    bar.update(state["n_done"])
    while state["n_done"] < n:
        index = state["chunks_done"]
        size = min(chunk_size, n - state["n_done"])
        batch = run_batch(problem, size, seed=chunk_seed(seed, index), vectorize=vectorize)
        keep = batch.valid
        values = {k: v[keep] for k, v in batch.values.items()}
        values.update({f"_sim_{k}": v[keep] for k, v in batch.sim_outputs.items()})
        room = n - state["n_done"]
        values = {k: v[:room] for k, v in values.items()}
        got = int(next(iter(values.values())).shape[0]) if values else 0
        state["num_failed"] += batch.num_failed
        state["errors"] = (state["errors"] + batch.errors)[:5]
        if batch.num_failed == size:
            raise ProblemError(
                f"all {size} simulations of chunk {index} failed; first error: "
                + (batch.errors[0] if batch.errors else "non-finite values")
            )
        if got:
            chunk = _chunk_dataset(values, dims)
            if store is not None:
                if state["n_done"] == 0:
                    chunk.to_zarr(store, mode="w", consolidated=False, encoding={k: {"chunks": (chunk_size,) + chunk[k].shape[1:]} for k in chunk.data_vars})
                else:
                    chunk.to_zarr(store, append_dim="draw", consolidated=False)
            else:
                parts.append(chunk)
        state["n_done"] += got
        state["chunks_done"] = index + 1
        if store is not None:
            _write_state(store, state)
        bar.update(got)
    bar.close()
    if state["num_failed"]:
        total = state["num_failed"] + n
        warnings.warn(
            f"{state['num_failed']} of {total} simulations failed ({100 * state['num_failed'] / total:.1f}%)"
            f" and were excluded; first error: {state['errors'][0] if state['errors'] else 'non-finite values'}",
            SimulationWarning,
            stacklevel=2,
        )
    attrs = {
        "model": problem.name,
        "seed": int(seed),
        "num_failed": int(state["num_failed"]),
        "errors": json.dumps(state["errors"]),
        "site_kinds": json.dumps(config["sites"]),
        "bayesinv_version": __version__,
    }
    if store is not None:
        ds = xr.open_zarr(store, consolidated=False)
    else:
        ds = xr.concat(parts, dim="draw") if len(parts) > 1 else parts[0]
    ds.attrs.update(attrs)
    return ds
