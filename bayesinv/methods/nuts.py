r"""The No-U-Turn sampler for models whose forward map is differentiable.

A NumPyro model runs on NumPyro's NUTS (JIT-compiled JAX; GPU when JAX sees one; chains
vectorised on one device, in parallel across devices); a Pyro model on Pyro's NUTS, its
chains one after another with independent seeds. ``sample_stats`` records, per draw,
``diverging``, ``step_size`` and ``acceptance_rate`` (NumPyro adds ``energy``, ``lp``,
``n_steps`` and ``tree_depth``, named as :func:`arviz.from_numpyro` names them);
``attrs`` record the worst R-hat and the smallest bulk ESS over the sites asked for
(``target``). Black-box simulators have no gradient: the method refuses them.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import init_to_median, init_to_sample, init_to_uniform

from bayesinv._checks import check_count, check_real, check_seed
from bayesinv.errors import OptionError
from bayesinv.methods._mcmc_util import complete_draws, convergence
from bayesinv.methods._util import chunk_seed, progress_bar
from bayesinv.problem import Problem
from bayesinv.registry import Draws, register_method

__all__ = ["nuts"]

_log = logging.getLogger("bayesinv")
_INITS = {"uniform": init_to_uniform, "median": init_to_median, "sample": init_to_sample}


class _Recorder:
    def __init__(self, num_samples: int, bar: Any = None):
        self.step_size = np.zeros(num_samples)
        self.accept = np.zeros(num_samples)
        self._prev_mean = 0.0
        self.bar = bar

    def __call__(self, kernel, samples, stage, i):
        if self.bar is not None:
            self.bar.update(1)
        if stage != "Sample":
            return
        n = i + 1
        mean = float(kernel._mean_accept_prob)
        self.accept[i] = np.clip(n * mean - (n - 1) * self._prev_mean, 0.0, 1.0)
        self._prev_mean = mean
        self.step_size[i] = float(kernel.step_size)


@register_method("nuts", needs_gradients=True)
def nuts(
    problem: Problem,
    y: dict[str, torch.Tensor],
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    target: tuple[str, ...] = (),
    progress: bool | None = None,
    num_chains: int = 4,
    warmup_steps: int | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    jit_compile: bool = False,
    dense_mass: bool = False,
    init_strategy: str = "uniform",
    chain_method: str | None = None,
) -> Draws:
    r"""Draws from the posterior with NUTS.

    Arguments:
        problem: The traced problem (its forward map must be differentiable torch code).
        y: The validated observation.
        num_samples: Draws per chain after warm-up.
        seed: The seed (chain ``c`` uses a seed derived from it): an ``int`` in
            ``[0, 2**63)``, or ``None`` for a fresh one (recorded in ``attrs["seed"]``).
        target: Sites to return (deterministic sites are computed from the draws).
        progress: Show a progress bar (``None``: on a terminal; without one, the run's
            size, progress and time left are logged to logger ``bayesinv``).
        num_chains: The number of chains.
        warmup_steps: Warm-up (adaptation) steps per chain (default ``num_samples``).
        target_accept_prob: NUTS' target acceptance probability.
        max_tree_depth: NUTS' maximum tree depth.
        jit_compile: JIT-compile the potential (Pyro models; NumPyro always compiles).
        dense_mass: Adapt a dense mass matrix (Pyro's ``full_mass``) instead of a diagonal one.
        init_strategy: Initial point of each chain: ``"uniform"`` (uniform in (-2, 2) on the
            unconstrained scale), ``"median"`` (prior median) or ``"sample"`` (a prior draw).
        chain_method: NumPyro models: ``"vectorized"``, ``"parallel"`` or ``"sequential"``
            (default: ``"parallel"`` with a device per chain, else ``"vectorized"``).

    Returns:
        :class:`Draws` with ``num_chains`` chains.
    """
    problem.require_differentiable("nuts")
    problem.require_likelihood("nuts")
    num_samples = check_count("num_samples", num_samples, error=OptionError)
    num_chains = check_count("num_chains", num_chains, error=OptionError)
    seed = check_seed(seed)
    warmup = num_samples if warmup_steps is None else check_count("warmup_steps", warmup_steps, minimum=0, error=OptionError)
    target_accept_prob = check_real("target_accept_prob", target_accept_prob, low=0.0, high=1.0, low_open=True, high_open=True)
    max_tree_depth = check_count("max_tree_depth", max_tree_depth, error=OptionError)
    for name, flag in (("jit_compile", jit_compile), ("dense_mass", dense_mass)):
        if not isinstance(flag, (bool, np.bool_)):
            raise OptionError(f"{name} must be True or False, got {flag!r}")
    if init_strategy not in _INITS:
        raise OptionError(f"init_strategy must be one of {sorted(_INITS)}, got {init_strategy!r}")
    if chain_method not in (None, "vectorized", "parallel", "sequential"):
        raise OptionError(f"chain_method must be None, 'vectorized', 'parallel' or 'sequential', got {chain_method!r}")
    if problem.language == "numpyro":
        return _nuts_numpyro(problem, y, num_samples=num_samples, num_chains=num_chains, warmup=warmup, seed=seed,
                             target=target, progress=progress, target_accept_prob=target_accept_prob,
                             max_tree_depth=max_tree_depth, dense_mass=bool(dense_mass), init_strategy=init_strategy,
                             chain_method=chain_method, warmup_default=warmup_steps is None)  # fmt: skip
    if chain_method not in (None, "sequential"):
        raise OptionError(f"chain_method={chain_method!r} needs a NumPyro model; Pyro's chains run one after another")
    arg = problem.model_argument(y)
    chains: list[dict[str, np.ndarray]] = []
    stats = {"diverging": [], "step_size": [], "acceptance_rate": []}
    total = num_chains * (warmup + num_samples)
    _log.info(
        "nuts: %d chain(s) x (%s warm-up + %s draws) = %s steps%s",
        num_chains, f"{warmup:,}", f"{num_samples:,}", f"{total:,}",
        " (warm-up defaults to num_samples)" if warmup_steps is None else "",
    )
    bar = progress_bar(total, "nuts", progress, unit="steps")
    for c in range(num_chains):
        recorder = _Recorder(num_samples, bar)
        with torch.random.fork_rng(devices=[]):
            pyro.set_rng_seed(chunk_seed(seed, c) % (2**32))
            kernel = NUTS(
                problem.model,
                target_accept_prob=target_accept_prob,
                max_tree_depth=max_tree_depth,
                jit_compile=jit_compile,
                ignore_jit_warnings=True,
                full_mass=bool(dense_mass),
                init_strategy=_INITS[init_strategy](),
            )
            mcmc = MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                num_chains=1,
                hook_fn=recorder,
                disable_progbar=True,  # progress goes through progress_bar (a bar on a terminal, logging otherwise)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                mcmc.run(arg)
        samples = mcmc.get_samples()
        chains.append({n: v.detach().numpy() for n, v in samples.items() if n in problem.latent})
        diverging = np.zeros(num_samples, dtype=bool)
        idx = [d for d in kernel._divergences if 0 <= d < num_samples]
        diverging[idx] = True
        stats["diverging"].append(diverging)
        stats["step_size"].append(recorder.step_size)
        stats["acceptance_rate"].append(recorder.accept)
    bar.close()
    latents = {n: np.stack([ch[n] for ch in chains]) for n in problem.latent}
    posterior = complete_draws(problem, y, latents, target)
    diag = convergence(posterior, "nuts")  # on the sites asked for, not internal latents
    num_div = int(np.sum(stats["diverging"]))
    if num_div:
        warnings.warn(
            f"nuts: {num_div} divergent transitions; increase target_accept_prob or reparameterise the model",
            RuntimeWarning,
            stacklevel=3,
        )
    return Draws(
        posterior=posterior,
        sample_stats={k: np.stack(v) for k, v in stats.items()},
        attrs={**diag, "num_divergences": num_div, "num_chains": num_chains, "warmup_steps": warmup, "seed": seed},
    )


def _nuts_numpyro(problem, y, *, num_samples, num_chains, warmup, seed, target, progress, warmup_default, **options) -> Draws:
    r"""NUTS on a NumPyro model (:func:`bayesinv._numpyro.nuts`), with the same Draws layout."""
    from bayesinv import _numpyro

    _log.info(
        "nuts (numpyro): %d chain(s) x (%s warm-up + %s draws)%s", num_chains, f"{warmup:,}", f"{num_samples:,}",
        " (warm-up defaults to num_samples)" if warmup_default else "",
    )  # fmt: skip
    latents, stats, attrs = _numpyro.nuts(problem, y, num_samples=num_samples, num_chains=num_chains,
                                          warmup_steps=warmup, seed=seed, progress=sys.stderr.isatty() if progress is None else bool(progress),
                                          **options)  # fmt: skip
    posterior = complete_draws(problem, y, latents, target)
    diag = convergence(posterior, "nuts")
    num_div = int(stats["diverging"].sum())
    if num_div:
        warnings.warn(
            f"nuts: {num_div} divergent transitions; increase target_accept_prob or reparameterise the model",
            RuntimeWarning,
            stacklevel=3,
        )
    return Draws(posterior=posterior, sample_stats=stats,
                 attrs={**diag, **attrs, "num_divergences": num_div, "num_chains": num_chains, "warmup_steps": warmup,
                        "seed": seed})  # fmt: skip
