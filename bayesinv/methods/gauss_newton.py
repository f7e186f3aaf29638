r"""Gauss–Newton / Levenberg–Marquardt point estimates as a one-draw posterior.

A regularised Gauss–Newton reconstruction is a classical baseline, not a sampler: the
method returns it as a posterior with one chain and one draw, so that it sits beside
the sampled posteriors in :func:`bayesinv.compare` and the plots.

The physics (meshes, measurement protocol, reference data, Jacobians) stays with the
problem: ``solver=`` is any object with a method ``gauss_newton(y, **options)`` that
returns the reconstruction — an array for the site named by its attribute
``gauss_newton_site`` (default ``"sigma"``), or a dict from site name to array. The EIT
problem of :mod:`bayesinv.models.eit` is such an object.

Example:
    >>> eit = bayesinv.models.eit.make_model(num_anomalies=2, snr_db=40)
    >>> idata = bayesinv.infer(eit.model, y, method="gauss_newton", solver=eit, target="sigma")
    >>> idata.posterior["sigma"].shape        # (chain, draw, 128, 128)
    (1, 1, 128, 128)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import Draws, register_method

__all__ = ["gauss_newton"]


@register_method("gauss_newton")
def gauss_newton(
    problem: Problem,
    y: dict[str, torch.Tensor],
    *,
    num_samples: int = 1,
    seed: int | None = 0,
    target: tuple[str, ...] = (),
    progress: bool | None = None,
    solver: Any = None,
    **options: Any,
) -> Draws:
    r"""A regularised Gauss–Newton reconstruction, returned as one draw.

    Arguments:
        problem: The traced problem.
        y: The validated observation (one observed site).
        num_samples: Ignored: a point estimate is one draw.
        seed: Unused (the reconstruction is deterministic).
        target: Sites to return; those the solver does not reconstruct are left out
            (an error if none is left).
        progress: Unused.
        solver: An object with ``gauss_newton(y, **options)`` (see the module docs).
        options: Passed on to ``solver.gauss_newton`` (e.g. ``lamb=``, ``p=``, ``maxiter=``).

    Returns:
        :class:`Draws` with posterior arrays of shape ``(1, 1, *site shape)``.
    """
    if solver is None or not callable(getattr(solver, "gauss_newton", None)):
        raise ProblemError(
            "method 'gauss_newton' needs solver=: an object with gauss_newton(y, **options), such as the"
            " problem from bayesinv.models.eit.make_model(...)"
        )
    if len(y) != 1:
        raise ProblemError(f"method 'gauss_newton' takes one observed site, the model has {sorted(y)}")
    y_obs = next(iter(y.values())).detach().cpu().numpy()
    result = solver.gauss_newton(y_obs, **options)
    if not isinstance(result, dict):
        result = {getattr(solver, "gauss_newton_site", "sigma"): result}
    fields = {name: np.asarray(value) for name, value in result.items() if name in target}
    if not fields:
        raise ProblemError(
            f"the solver reconstructs {sorted(result)}, none of the target sites {list(target)}; pass target="
            + repr(sorted(result)[0])
        )
    for name, value in fields.items():
        shape = problem.sites[name].shape
        if tuple(value.shape) != tuple(shape):
            raise ProblemError(f"the solver returned {name!r} of shape {value.shape}, the model's site has {shape}")
    return Draws(
        posterior={name: value[None, None] for name, value in fields.items()},
        attrs={"point_estimate": 1},
    )
