r"""Helpers shared by the MCMC methods: deterministic sites and convergence summaries."""

from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from bayesinv._arviz import az
from bayesinv.problem import Problem, run_batch

__all__ = ["complete_draws", "convergence"]


def complete_draws(problem: Problem, y: dict, latents: dict[str, np.ndarray], target: tuple[str, ...]) -> dict[str, np.ndarray]:
    r"""Adds the deterministic sites named in ``target`` by rerunning the model on ``(chain, draw)`` latents."""
    out = {n: v for n, v in latents.items() if n in target}
    wanted = [n for n in target if n not in out]
    if not wanted:
        return out
    chains, draws = next(iter(latents.values())).shape[:2]
    flat = {n: torch.as_tensor(v.reshape(chains * draws, *v.shape[2:])) for n, v in latents.items()}
    batch = run_batch(problem, chains * draws, y=y, fixed=flat, seed=0)
    for n in wanted:
        v = batch.values[n].numpy()
        out[n] = v.reshape(chains, draws, *v.shape[1:])
    return out


def convergence(posterior: dict[str, np.ndarray], method: str) -> dict[str, float | str]:
    r"""Worst R-hat and smallest bulk ESS over every scalar component; warns when R-hat > 1.01."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = az.from_dict(posterior=posterior)
        rhat = az.rhat(data)
        ess = az.ess(data)
    per_site = {}
    worst_rhat, min_ess = 0.0, float("inf")
    for name in posterior:
        r = float(np.nanmax(rhat[name].values)) if rhat[name].size else float("nan")
        e = float(np.nanmin(ess[name].values)) if ess[name].size else float("nan")
        per_site[name] = {"max_rhat": r, "min_ess_bulk": e}
        worst_rhat = max(worst_rhat, r) if np.isfinite(r) else worst_rhat
        min_ess = min(min_ess, e) if np.isfinite(e) else min_ess
    chains = next(iter(posterior.values())).shape[0]
    if chains > 1 and worst_rhat > 1.01:
        warnings.warn(
            f"{method}: R-hat up to {worst_rhat:.3f} (> 1.01): the chains have not converged; run longer"
            " (num_samples, warmup_steps) or check the model",
            RuntimeWarning,
            stacklevel=4,
        )
    return {"max_rhat": worst_rhat, "min_ess_bulk": min_ess, "convergence": json.dumps(per_site)}
