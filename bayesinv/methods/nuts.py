r"""The No-U-Turn sampler (Pyro's NUTS) for models whose forward map is differentiable torch code.

Chains run one after another with independent seeds. ``sample_stats`` records, per draw,
``diverging``, ``step_size`` and ``acceptance_rate``; ``attrs`` record the worst R-hat and
the smallest bulk ESS. Black-box simulators have no gradient: the method refuses them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from bayesinv.methods._mcmc_util import complete_draws, convergence
from bayesinv.methods._util import chunk_seed
from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import Draws, register_method

__all__ = ["nuts"]


class _Recorder:
    def __init__(self, num_samples: int):
        self.step_size = np.zeros(num_samples)
        self.accept = np.zeros(num_samples)
        self._prev_mean = 0.0

    def __call__(self, kernel, samples, stage, i):
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
) -> Draws:
    r"""Draws from the posterior with NUTS.

    Arguments:
        problem: The traced problem (its forward map must be differentiable torch code).
        y: The validated observation.
        num_samples: Draws per chain after warm-up.
        seed: The seed (chain ``c`` uses a seed derived from it).
        target: Sites to return (deterministic sites are computed from the draws).
        progress: Show Pyro's progress bar (``None``: on a terminal).
        num_chains: The number of chains.
        warmup_steps: Warm-up (adaptation) steps per chain (default ``num_samples``).
        target_accept_prob: NUTS' target acceptance probability.
        max_tree_depth: NUTS' maximum tree depth.
        jit_compile: JIT-compile the potential (faster for long runs of small models).

    Returns:
        :class:`Draws` with ``num_chains`` chains.
    """
    problem.require_differentiable("nuts")
    problem.require_likelihood("nuts")
    if num_samples <= 0 or num_chains <= 0:
        raise ProblemError(f"num_samples and num_chains must be positive, got {num_samples} and {num_chains}")
    warmup = num_samples if warmup_steps is None else int(warmup_steps)
    arg = problem.model_argument(y)
    chains: list[dict[str, np.ndarray]] = []
    stats = {"diverging": [], "step_size": [], "acceptance_rate": []}
    show = bool(progress) if progress is not None else None
    for c in range(num_chains):
        recorder = _Recorder(num_samples)
        with torch.random.fork_rng(devices=[]):
            pyro.set_rng_seed(chunk_seed(seed, c) % (2**32))
            kernel = NUTS(
                problem.model,
                target_accept_prob=target_accept_prob,
                max_tree_depth=max_tree_depth,
                jit_compile=jit_compile,
                ignore_jit_warnings=True,
            )
            mcmc = MCMC(
                kernel,
                num_samples=num_samples,
                warmup_steps=warmup,
                num_chains=1,
                hook_fn=recorder,
                disable_progbar=not (show if show is not None else _isatty()),
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
    latents = {n: np.stack([ch[n] for ch in chains]) for n in problem.latent}
    posterior = complete_draws(problem, y, latents, target)
    diag = convergence({n: latents[n] for n in problem.latent}, "nuts")
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
        attrs={**diag, "num_divergences": num_div, "num_chains": num_chains, "warmup_steps": warmup},
    )


def _isatty() -> bool:
    import sys

    return sys.stderr.isatty()
