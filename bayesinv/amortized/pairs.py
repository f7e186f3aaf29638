r"""Training pairs of every learned method: simulated now or read from ``data=``, then flat and normalised.

:func:`training_data` returns the raw site arrays; :func:`prepare_pairs` turns them into
a :class:`Pairs` record: the target and condition :class:`~bayesinv.amortized.layout.Layout`,
their :class:`~bayesinv.amortized.layout.Normalizer` (the observed sites are normalised,
extra conditions such as a sensor mask enter unscaled) and the normalised flat tensors
``x (N, D)`` and ``c (N, C)``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms
from bayesinv.errors import ProblemError
from bayesinv.problem import Problem

__all__ = ["Pairs", "training_data", "split_sites", "prepare_pairs"]


def training_data(
    problem: Problem,
    target: tuple[str, ...],
    condition: tuple[str, ...],
    *,
    num_simulations: int | None,
    data: Any,
    seed: int,
    progress: bool | None,
) -> tuple[dict[str, Tensor], int]:
    r"""The training pairs: simulated now (``num_simulations``) or read from ``data``.

    Arguments:
        problem: The traced problem.
        target, condition: The sites to return.
        num_simulations: Joint draws to simulate, or the most of ``data`` to use.
        data: An :class:`xarray.Dataset`, a zarr path or a dict of arrays.
        seed: Seed of the simulation.
        progress: Show progress bars.

    Returns:
        Site name → tensor ``(N, *shape)`` for every target and conditioning site, and N.
    """
    import xarray as xr

    from bayesinv.data import open_data, simulate

    if data is None:
        if num_simulations is None:
            raise ProblemError("give num_simulations= (simulate now) or data= (a dataset from bayesinv.simulate)")
        data = simulate(problem, int(num_simulations), seed=seed, progress=progress, chunk_size=min(int(num_simulations), 5000))
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = open_data(data)  # checks the store's arrays and codecs before decoding anything
    if isinstance(data, xr.Dataset):
        held = sorted(map(str, data.data_vars))
        read = lambda n: np.asarray(data[n].values)  # noqa: E731
    elif isinstance(data, Mapping):
        held = sorted(map(str, data))
        read = lambda n: np.asarray(data[n])  # noqa: E731
    else:
        raise ProblemError(f"data= must be an xarray.Dataset, a zarr path or a dict of arrays, got {type(data).__name__}")
    missing = [n for n in (*target, *condition) if n not in held]
    if missing:
        raise ProblemError(f"data= lacks the site(s) {missing}; it holds {held}")
    arrays = {n: torch.as_tensor(read(n)) for n in (*target, *condition)}
    sizes = {n: v.shape[0] for n, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ProblemError(f"data= sites have different numbers of draws: {sizes}")
    for n, v in arrays.items():
        expected = problem.sites[n].shape
        if tuple(v.shape[1:]) != expected:
            raise ProblemError(f"data= site {n!r} has draws of shape {tuple(v.shape[1:])}, the model's site has shape {expected}")
    n = next(iter(sizes.values()))
    if num_simulations is not None and n > num_simulations:
        arrays = {k: v[:num_simulations] for k, v in arrays.items()}
        n = int(num_simulations)
    return arrays, n


def split_sites(problem: Problem, target: tuple[str, ...], condition: Any) -> tuple[tuple, tuple, tuple]:
    r"""The observed sites, the conditioning sites (observed first, then ``condition=`` extras) and the target.

    Arguments:
        problem: The traced problem.
        target: The requested target sites (conditioning sites are left out).
        condition: Extra conditioning site name(s) or ``None``.

    Returns:
        ``(observed, conditions, target)``.
    """
    extra = (condition,) if isinstance(condition, str) else tuple(condition or ())
    for name in extra:
        if name not in problem.sites:
            raise ProblemError(f"unknown condition site {name!r}; the model has sites {list(problem.sites)}")
    observed = tuple(n for n in problem.observed if n not in problem.fixed_observed)
    if not observed:
        raise ProblemError("the model has no observed site to condition on")
    cond = observed + tuple(n for n in extra if n not in observed)
    target = tuple(n for n in target if n not in cond)
    if not target:
        raise ProblemError("no target site left: every target is also a conditioning site")
    for name in target:
        site = problem.sites[name]
        if site.discrete or not site.dtype.is_floating_point:
            raise ProblemError(f"target site {name!r} is discrete; a learned posterior needs continuous targets (or pass it as condition=)")
    return observed, cond, target


@dataclass(frozen=True)
class Pairs:
    r"""Normalised flat training pairs and everything needed to map back to sites.

    Attributes:
        target, condition: Layouts (``condition``: observed sites first).
        x_norm, c_norm: Their normalisers.
        x: Normalised targets ``(N, D)``.
        c: Normalised conditions ``(N, C)`` (``(N, 0)`` for an unconditional method).
        observed: The observed sites.
        obs_keys: For dict observations, the model's key of each conditioning site.
        num_simulations: Draws simulated or read (before non-finite pairs are dropped).
    """

    target: Layout
    condition: Layout
    x_norm: Normalizer
    c_norm: Normalizer
    x: Tensor
    c: Tensor
    observed: tuple[str, ...]
    obs_keys: dict[str, str | None]
    num_simulations: int

    def digest(self) -> str:
        r"""SHA-256 of the training tensors: the data part of a checkpoint's fingerprint."""
        h = hashlib.sha256()
        for t in (self.x, self.c):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def prepare_pairs(
    problem: Problem,
    target: tuple[str, ...],
    condition: Any,
    *,
    normalization: str,
    transforms: Mapping[str, Any],
    num_simulations: int | None,
    data: Any,
    seed: int,
    progress: bool | None,
    conditional: bool = True,
) -> Pairs:
    r"""The one data path of every learned method: pairs → transforms → layouts → normalisers.

    Arguments:
        problem: The traced problem.
        target: The target sites.
        condition: Extra conditioning sites (``condition=``).
        normalization: ``"minmax"``, ``"standard"`` or ``"none"``.
        transforms: Validated target transforms.
        num_simulations, data, seed, progress: See :func:`training_data`.
        conditional: ``False`` for a method that learns the target alone (CSD*): the
            conditions are not read and their normaliser is the identity.

    Returns:
        The :class:`Pairs`.
    """
    observed, cond, target = split_sites(problem, target, condition)
    arrays, n = training_data(
        problem, target, cond if conditional else (), num_simulations=num_simulations, data=data, seed=seed, progress=progress
    )
    arrays = apply_transforms({k: v.float() for k, v in arrays.items()}, transforms)
    t_layout = Layout(target, tuple(problem.sites[s].shape for s in target))
    c_layout = Layout(cond, tuple(problem.sites[s].shape for s in cond))
    x = t_layout.flatten(arrays)
    c = c_layout.flatten(arrays) if conditional else x.new_zeros(len(x), 0)
    keep = torch.isfinite(x).all(-1) & torch.isfinite(c).all(-1)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} of {len(keep)} training pairs hold NaN/inf and are left out", RuntimeWarning, stacklevel=3)
        x, c = x[keep], c[keep]
    if len(x) < 10:
        raise ProblemError(f"only {len(x)} finite training pairs: a learned posterior needs more simulations")
    x_norm = Normalizer.fit(x, kind=normalization, groups=t_layout.groups())
    if conditional:
        o_layout = Layout(observed, c_layout.shapes[: len(observed)])
        obs_norm = Normalizer.fit(c[:, : o_layout.dim], kind=normalization, groups=o_layout.groups())
        n_extra = c.shape[1] - o_layout.dim  # extra conditions (masks) enter unscaled
        c_norm = Normalizer(torch.cat([obs_norm.shift, torch.zeros(n_extra)]), torch.cat([obs_norm.scale, torch.ones(n_extra)]))
        c = c_norm(c)
    else:
        c_norm = Normalizer(torch.zeros(c_layout.dim), torch.ones(c_layout.dim))  # raw y goes to e.g. a solver
    return Pairs(
        target=t_layout, condition=c_layout, x_norm=x_norm, c_norm=c_norm, x=x_norm(x), c=c,
        observed=observed, obs_keys={k: problem.obs_keys.get(k) for k in cond}, num_simulations=n,
    )  # fmt: skip
