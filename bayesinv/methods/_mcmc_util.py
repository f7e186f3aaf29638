r"""Helpers shared by the MCMC methods: deterministic sites, convergence summaries and separated modes."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import torch

from bayesinv._arviz import az
from bayesinv.problem import Problem, run_batch

__all__ = ["complete_draws", "convergence", "separated_modes"]


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


def separated_modes(
    posterior: dict[str, np.ndarray], *, min_separation: float = 4.0, min_chain_ess: float = 30.0
) -> tuple[list[list[int]], str]:
    r"""Groups chains that sit in the same mode; chains in different groups never meet.

    Two chains are *separated* in a scalar parameter when their central 98 % intervals do
    not overlap and their means differ by more than ``min_separation`` times their pooled
    within-chain standard deviation. Only parameters that every chain has explored on
    its own (a per-chain bulk ESS of at least ``min_chain_ess``) are compared: chains that
    are still drifting towards the bulk are not modes, they need a longer run. Chains
    separated in no parameter belong together; the groups are the connected components
    of that relation. One group: no separation.

    Arguments:
        posterior: Site name → draws ``(chain, draw, *shape)``.
        min_separation: Distance of two chain means, in within-chain standard deviations.
        min_chain_ess: Smallest per-chain effective sample size of a parameter compared.

    Returns:
        The groups (lists of chain indices, sorted) and a short description of the most
        separated parameter (``""`` for a single group).
    """
    chains = next(iter(posterior.values())).shape[0]
    together = np.ones((chains, chains), dtype=bool)
    best, detail = 0.0, ""
    for name, draws in posterior.items():
        flat = np.asarray(draws, dtype=np.float64).reshape(chains, draws.shape[1], -1)
        if flat.shape[1] < 2:
            continue
        mean = flat.mean(1)
        sd = flat.std(1)
        lo, hi = np.quantile(flat, 0.01, axis=1), np.quantile(flat, 0.99, axis=1)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            # each chain as its own one-chain run: ess[c, k] of chain c, component k
            per_chain = az.convert_to_dataset({"v": np.moveaxis(flat, 0, 1)[None]})  # (1, draw, chain, K)
            chain_ess = np.asarray(az.ess(per_chain)["v"].values).reshape(chains, -1)
        for k in range(flat.shape[2]):
            if not np.all(np.isfinite(mean[:, k])) or np.any(sd[:, k] <= 0):
                continue  # a chain that does not move is not a mode
            if not np.all(np.nan_to_num(chain_ess[:, k]) >= min_chain_ess):
                continue  # a chain that has not explored its own region yet: run longer
            for i in range(chains):
                for j in range(i + 1, chains):
                    pooled = math.sqrt(0.5 * (sd[i, k] ** 2 + sd[j, k] ** 2))
                    dist = abs(mean[i, k] - mean[j, k]) / pooled
                    disjoint = hi[i, k] < lo[j, k] or hi[j, k] < lo[i, k]
                    if disjoint and dist > min_separation:
                        together[i, j] = together[j, i] = False
                        if dist > best:
                            best = dist
                            label = name if flat.shape[2] == 1 else f"{name}[{k}]"
                            detail = (
                                f"{label}: chain means " + ", ".join(f"{m:.4g}" for m in mean[:, k])
                                + f", within-chain sd up to {sd[:, k].max():.3g}"
                            )
    groups: list[list[int]] = []
    seen: set[int] = set()
    for start in range(chains):
        if start in seen:
            continue
        group, stack = [], [start]
        seen.add(start)
        while stack:
            c = stack.pop()
            group.append(c)
            for other in np.flatnonzero(together[c]).tolist():
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        groups.append(sorted(group))
    return groups, (detail if len(groups) > 1 else "")


def convergence(posterior: dict[str, np.ndarray], method: str) -> dict[str, float | str | int]:
    r"""Worst R-hat, smallest bulk ESS and the chains' modes; warns when R-hat > 1.01.

    With one chain R-hat is undefined: ``max_rhat`` is NaN (``None`` per site) and no
    R-hat is computed (so neither NumPy nor ArviZ warns).

    When the chains sit in separate modes (:func:`separated_modes`), the warning says so
    (running longer does not join them) instead of advising a longer run.
    """
    chains = next(iter(posterior.values())).shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = az.from_dict(posterior=posterior)
        rhat = az.rhat(data) if chains > 1 else None  # R-hat needs two chains (one chain: NaN, and ArviZ logs a warning)
        ess = az.ess(data)

    def finite(values: np.ndarray, reduce) -> float:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(reduce(values)) if values.size else float("nan")

    per_site = {}
    for name in posterior:
        r = finite(rhat[name].values, np.max) if rhat is not None else float("nan")
        e = finite(ess[name].values, np.min)
        per_site[name] = {"max_rhat": r if np.isfinite(r) else None, "min_ess_bulk": e if np.isfinite(e) else None}
    worst_rhat = finite([v["max_rhat"] for v in per_site.values() if v["max_rhat"] is not None], np.max)
    min_ess = finite([v["min_ess_bulk"] for v in per_site.values() if v["min_ess_bulk"] is not None], np.min)
    groups, detail = separated_modes(posterior) if chains > 1 else ([[0]], "")
    if len(groups) > 1:
        warnings.warn(
            f"{method}: the chains sit in {len(groups)} separate modes (chains grouped as {groups}; {detail});"
            f" R-hat up to {worst_rhat:.3f} reflects modes that the chains do not cross, so running longer will"
            " not help: the posterior is multimodal (e.g. aliases of a periodic or wrapped likelihood). Each chain"
            " describes its own mode only; their relative weights are unknown — use method='importance' for the"
            " weights, or restrict the prior to one mode",
            RuntimeWarning,
            stacklevel=4,
        )
    elif chains > 1 and worst_rhat > 1.01:
        warnings.warn(
            f"{method}: R-hat up to {worst_rhat:.3f} (> 1.01): the chains have not converged; run longer"
            " (num_samples, warmup_steps) or check the model",
            RuntimeWarning,
            stacklevel=4,
        )
    mode_of_chain = [next(g for g, members in enumerate(groups) if c in members) for c in range(chains)]
    return {
        "max_rhat": worst_rhat,
        "min_ess_bulk": min_ess,
        "convergence": json.dumps(per_site),
        "num_modes": len(groups),
        "mode_of_chain": json.dumps(mode_of_chain),
    }
