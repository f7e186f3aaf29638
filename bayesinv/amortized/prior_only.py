r"""Prior-only training data: draws of the target sites alone, for methods that learn a prior.

A learned *prior* (``method="score_prior"``, a flow prior inverted in latent space) is
trained on draws of the target x ~ p(x) only; the observation enters later through the
model's own likelihood. :func:`prior_draws` runs the model **only up to its target sites**:
the run stops as soon as every target site has a value, so nothing after them — black-box
simulators, forward operators, observation sites — is ever evaluated. A simulator that the
model calls *before* the last target site is refused (a target computed from a simulation
is not a prior draw): the run's simulator hook raises instead of simulating.

:func:`prepare_prior_pairs` is the prior-only counterpart of
:func:`~bayesinv.amortized.pairs.prepare_pairs` with the same signature: plug it into an
:class:`~bayesinv.amortized.method.AmortizedMethod` as ``pairs=prepare_prior_pairs`` and the
layer's fit uses it (same layouts, transforms, normalisers, seeding, training loop, info
record, posterior object and save/load). The condition layout holds the observed sites
(so ``post.sample(y)`` checks ``y``) but the condition tensor is empty ``(N, 0)`` and its
normaliser the identity: the sampler receives the raw flat observation.

Draws come from the model (``num_simulations=`` prior draws, no simulation: the info
record's ``num_simulations`` is 0) or from ``data=``: an array (one target site), a dict
of arrays keyed by site, an :class:`xarray.Dataset` or a bayesinv store path.

Example:
    >>> problem = bayesinv.problem.as_problem(model)
    >>> draws = prior_draws(problem, ("x",), 1000, seed=0)     # {"x": (1000, 32, 32)}
    >>> method = AmortizedMethod(..., conditional=False, pairs=prepare_prior_pairs)
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from bayesinv._checks import check_count, check_seed
from bayesinv._context import RunContext, run_context
from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms
from bayesinv.amortized.pairs import Pairs, split_sites, training_data
from bayesinv.errors import ProblemError
from bayesinv.problem import Problem, StopAfter, StopModel

__all__ = ["prior_draws", "prior_data", "prepare_prior_pairs"]

_PLATE = "_bayesinv_draws"  # the batch plate of bayesinv.problem.run_batch
_CHUNK = 10_000


class _NoSimulation(dict):
    r"""A simulator replay table that refuses every simulator call (see :class:`bayesinv.simulators.Simulator`)."""

    def __init__(self, target: tuple[str, ...]):
        super().__init__()
        self.target = target

    def __contains__(self, key: object) -> bool:
        raise ProblemError(
            f"prior-only training draws the target site(s) {list(self.target)} without simulating, but the model"
            f" calls the simulator {key!r} before the last of them: a target computed from a simulation is not a"
            " prior draw. Target the sites the simulator's input depends on, or pass data= (draws of the target)"
        )


def _run(problem: Problem, target: tuple[str, ...], n: int | None) -> dict[str, Tensor] | None:
    r"""One run of the model up to its target sites: vectorised over ``n`` draws, or one draw (``n=None``)."""
    stopper = StopAfter(target)
    ctx = RunContext(batch_size=n, replay=_NoSimulation(target))
    try:
        with run_context(ctx), stopper:
            if n is None:
                problem.model(None)
            else:
                with pyro.plate(_PLATE, n, dim=-(problem.batch_ndim + 1)):
                    problem.model(None)
    except StopModel:
        return stopper.values
    missing = sorted(set(target) - set(stopper.values))
    raise ProblemError(f"the model finished without visiting the target site(s) {missing}")


def prior_draws(problem: Problem, target: tuple[str, ...], n: int, *, seed: int = 0) -> dict[str, Tensor]:
    r"""``n`` draws of the target sites from the prior, running the model only up to them.

    The model runs vectorised under a batch plate when it broadcasts (in chunks of 10,000
    draws), else draw by draw. Observation sites, forward operators and simulators after the
    last target site are never run; a simulator called before it raises
    :class:`~bayesinv.errors.ProblemError`.

    Arguments:
        problem: The traced problem (a Pyro model).
        target: Latent or deterministic site names.
        n: The number of draws.
        seed: Seed of the draws.

    Returns:
        Site name → tensor ``(n, *shape)`` for every target site.

    Example:
        >>> prior_draws(as_problem(Deblurring(8).model), ("x",), 100)["x"].shape
        torch.Size([100, 8, 8])
    """
    n, seed = check_count("number of prior draws", n), check_seed(seed)
    if problem.language != "pyro":
        raise ProblemError(
            "prior-only draws run Pyro models; for a NumPyro model pass data= (draws of the target, e.g. from"
            " numpyro.infer.Predictive of its prior part)"
        )
    for name in target:
        if problem.sites[name].kind == "observed":
            raise ProblemError(f"target site {name!r} is an observed site; a prior is learned on latent or deterministic sites")
    shapes = {k: problem.sites[k].shape for k in target}
    out: dict[str, list[Tensor]] = {k: [] for k in target}
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", RuntimeWarning)
        torch.manual_seed(seed)
        done = 0
        vectorised = True
        while done < n:
            size = min(_CHUNK, n - done)
            values = None
            if vectorised:
                try:
                    values = _run(problem, target, size)
                except ProblemError:
                    raise
                except Exception:  # noqa: BLE001 - the model does not broadcast: draw by draw
                    values = None
                if values is not None and any(tuple(values[k].shape) != (size, *shapes[k]) for k in target):
                    values = None
                vectorised = values is not None
            if values is None:
                rows = [_run(problem, target, None) for _ in range(size)]
                values = {k: torch.stack([r[k] for r in rows]) for k in target}
            for k in target:
                out[k].append(values[k])
            done += size
    return {k: torch.cat(v) for k, v in out.items()}


def prior_data(
    problem: Problem,
    target: tuple[str, ...],
    *,
    num_simulations: int | None,
    data: Any,
    seed: int,
    progress: bool | None = None,
) -> tuple[dict[str, Tensor], int]:
    r"""Draws of the target sites: from the prior (``num_simulations`` draws) or read from ``data``.

    Arguments:
        problem: The traced problem.
        target: The target sites.
        num_simulations: Prior draws to make, or the most of ``data`` to use.
        data: ``None`` (draw from the model), an array/tensor ``(N, *shape)`` (one target
            site), a dict of arrays keyed by site, an :class:`xarray.Dataset` or a zarr path
            of a bayesinv store (only the target sites are read).
        seed: Seed of the draws.
        progress: Progress bars when reading a store.

    Returns:
        Site name → tensor ``(N, *shape)`` and the number of model runs made (0 for ``data=``).
    """
    if data is None:
        if num_simulations is None:
            raise ProblemError("give num_simulations= (prior draws of the target) or data= (a data set of targets)")
        return prior_draws(problem, target, int(num_simulations), seed=seed), 0
    if isinstance(data, (np.ndarray, Tensor)) or (hasattr(data, "__array__") and not isinstance(data, Mapping)
                                                   and not hasattr(data, "data_vars")):  # fmt: skip
        if len(target) != 1:
            raise ProblemError(f"data= as one array needs one target site; the target is {list(target)}: pass a dict keyed by site")
        data = {target[0]: np.asarray(data)}
    arrays, n = training_data(problem, target, (), num_simulations=num_simulations, data=data, seed=seed, progress=progress)
    return arrays, 0


def prepare_prior_pairs(
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
    conditional: bool = False,
) -> Pairs:
    r"""The :class:`~bayesinv.amortized.pairs.Pairs` of a prior: target draws, transforms, layout, normaliser.

    The same signature as :func:`~bayesinv.amortized.pairs.prepare_pairs` (the ``pairs=`` hook of
    :class:`~bayesinv.amortized.method.AmortizedMethod`). The condition layout holds the
    observed sites, the condition tensor is empty ``(N, 0)`` with an identity normaliser.

    Arguments:
        problem: The traced problem.
        target: The target sites.
        condition: Must be ``None``: a prior has no extra conditions.
        normalization: ``"minmax"``, ``"standard"`` or ``"none"`` of the targets.
        transforms: Validated target transforms (``"log"``, ...).
        num_simulations, data, seed, progress: See :func:`prior_data`.
        conditional: Must be ``False``.

    Returns:
        The pairs (``num_simulations`` 0 for prior draws: no simulator ran).
    """
    if conditional:
        raise ProblemError("prepare_prior_pairs is for methods that learn the target alone (conditional=False)")
    if condition:
        raise ProblemError(f"a learned prior has no conditions; condition={condition!r} is not allowed")
    observed, cond, target = split_sites(problem, target, None)
    arrays, runs = prior_data(problem, target, num_simulations=num_simulations, data=data, seed=seed, progress=progress)
    arrays = apply_transforms({k: v.float() for k, v in arrays.items()}, transforms)
    t_layout = Layout(target, tuple(problem.sites[s].shape for s in target))
    c_layout = Layout(cond, tuple(problem.sites[s].shape for s in cond))
    x = t_layout.flatten(arrays)
    keep = torch.isfinite(x).all(-1)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} of {len(keep)} target draws hold NaN/inf and are left out", RuntimeWarning, stacklevel=3)
        x = x[keep]
    if len(x) < 10:
        raise ProblemError(f"only {len(x)} finite target draws: a learned prior needs more")
    x_norm = Normalizer.fit(x, kind=normalization, groups=t_layout.groups())
    c_norm = Normalizer(torch.zeros(c_layout.dim), torch.ones(c_layout.dim))  # the sampler reads the raw y
    return Pairs(
        target=t_layout, condition=c_layout, x_norm=x_norm, c_norm=c_norm, x=x_norm(x), c=x.new_zeros(len(x), 0),
        observed=observed, obs_keys={k: problem.obs_keys.get(k) for k in cond}, num_simulations=runs,
    )  # fmt: skip
