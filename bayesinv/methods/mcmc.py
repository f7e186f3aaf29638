r"""Gradient-free MCMC: adaptive random-walk Metropolis for low-dimensional black-box models.

All latent sites are mapped to one unconstrained vector u (``biject_to(support)``); the
chains move together, so each step is one vectorised model run of ``num_chains`` draws
(one batched simulator call). During warm-up the proposal covariance follows Haario et
al. (2001): (2.38² / D) · (pooled empirical covariance + εI), and a global scale is tuned
by Robbins–Monro towards an acceptance rate of 0.234; after warm-up it is frozen, so
the chains are a valid Metropolis–Hastings sampler. ``sample_stats`` record per-draw
acceptance, log density and proposal scale; ``attrs`` the worst R-hat and smallest ESS,
and the number of separate modes the chains sit in (``num_modes``, ``mode_of_chain``): a
random walk does not cross between well-separated modes, so chains started in different
modes stay there, and the warning says so instead of advising a longer run.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from torch.distributions import biject_to

from bayesinv._arviz import az
from bayesinv._checks import check_count, check_real, check_seed
from bayesinv.errors import OptionError
from bayesinv.methods._mcmc_util import complete_draws, convergence
from bayesinv.methods._util import chunk_seed, progress_bar
from bayesinv.problem import Problem, ProblemError, run_batch
from bayesinv.registry import Draws, register_method

__all__ = ["mcmc"]

_log = logging.getLogger("bayesinv")


class _Layout:
    r"""Maps latent sites to slices of one unconstrained vector."""

    def __init__(self, problem: Problem, example: dict[str, torch.Tensor]):
        self.names = problem.latent
        self.transforms = {n: biject_to(problem.sites[n].support) for n in self.names}
        self.shapes, self.slices = {}, {}
        start = 0
        for n in self.names:
            unc = self.transforms[n].inv(example[n][:1].double())
            self.shapes[n] = tuple(unc.shape[1:])
            size = int(np.prod(self.shapes[n], dtype=np.int64))
            self.slices[n] = slice(start, start + size)
            start += size
        self.dim = start

    def to_unconstrained(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.transforms[n].inv(values[n].double()).reshape(values[n].shape[0], -1) for n in self.names]
        return torch.cat(parts, -1)

    def to_constrained(self, u: torch.Tensor, problem: Problem) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        values, log_jac = {}, torch.zeros(u.shape[0], dtype=torch.float64)
        for n in self.names:
            unc = u[:, self.slices[n]].reshape(u.shape[0], *self.shapes[n])
            t = self.transforms[n]
            x = t(unc)
            lj = t.log_abs_det_jacobian(unc, x)
            log_jac = log_jac + lj.reshape(u.shape[0], -1).sum(-1)
            values[n] = x.to(problem.sites[n].dtype)
        return values, log_jac


def _log_density(problem, y, layout, u, seed) -> tuple[torch.Tensor, int]:
    values, log_jac = layout.to_constrained(u, problem)
    batch = run_batch(problem, u.shape[0], y=y, fixed=values, seed=seed, log_prior=True)
    lp = batch.log_lik + batch.log_prior + log_jac
    ok = batch.valid & torch.isfinite(lp)
    return torch.where(ok, lp, torch.tensor(-math.inf, dtype=torch.float64)), int((~batch.valid).sum())


def _auto_thin(history: list[torch.Tensor]) -> int:
    r"""The rounded integrated autocorrelation time (largest over coordinates) of warm-up states, in [1, 10]."""
    if len(history) < 20:
        return 1
    draws = torch.stack(history, 1).numpy()  # (chain, step, D)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ess = np.asarray(az.ess(az.convert_to_dataset({"u": draws}))["u"].values).reshape(-1)
    ess = ess[np.isfinite(ess) & (ess > 0)]
    if ess.size == 0:
        return 10
    tau = draws.shape[0] * draws.shape[1] / float(ess.min())
    return int(min(10, max(1, round(tau))))


@register_method("mcmc")
def mcmc(
    problem: Problem,
    y: dict[str, torch.Tensor],
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    target: tuple[str, ...] = (),
    progress: bool | None = None,
    num_chains: int = 4,
    warmup_steps: int | None = None,
    thin: int | None = None,
    initial_scale: float = 0.1,
    target_accept: float = 0.234,
) -> Draws:
    r"""Adaptive random-walk Metropolis (gradient-free), vectorised over chains.

    Arguments:
        problem: The traced problem (black-box simulators allowed).
        y: The validated observation.
        num_samples: Draws kept per chain.
        seed: The seed: an ``int`` in ``[0, 2**63)``, or ``None`` for a fresh one (recorded
            in ``attrs["seed"]``).
        target: Sites to return.
        progress: Show a progress bar (``None``: on a terminal; without one, the run's
            size, progress and time left are logged to logger ``bayesinv``).
        num_chains: The number of chains (run together as one batch).
        warmup_steps: Adaptation steps per chain, discarded (default ``2 * num_samples``).
        thin: Keep every ``thin``-th step after warm-up; ``None`` (default) sizes it from the
            run itself: the integrated autocorrelation time of the last quarter of the
            warm-up, rounded, between 1 and 10, so the kept draws are close to independent
            and an easy problem's R-hat does not warn for lack of effective draws.
        initial_scale: Initial proposal standard deviation in unconstrained space.
        target_accept: Acceptance rate the warm-up tunes the proposal scale towards.

    Returns:
        :class:`Draws` with ``num_chains`` chains.
    """
    problem.require_likelihood("mcmc")
    discrete = [n for n in problem.latent if problem.sites[n].discrete]
    if discrete:
        raise ProblemError(f"method 'mcmc' moves continuous latent sites only; {discrete} are discrete")
    num_samples = check_count("num_samples", num_samples, error=OptionError)
    num_chains = check_count("num_chains", num_chains, error=OptionError)
    thin = None if thin is None else check_count("thin", thin, error=OptionError)
    seed = check_seed(seed)
    warmup = 2 * num_samples if warmup_steps is None else check_count("warmup_steps", warmup_steps, minimum=0, error=OptionError)
    initial_scale = check_real("initial_scale", initial_scale, low=0.0, low_open=True)
    target_accept = check_real("target_accept", target_accept, low=0.0, high=1.0, low_open=True, high_open=True)
    _log.info(
        "mcmc: %d chain(s) moved together, %s warm-up + %s x thin %s steps = %s model runs of %d draws%s",
        num_chains, f"{warmup:,}", f"{num_samples:,}", thin or "(auto, 1-10)",
        f"{warmup + num_samples * (thin or 1):,}" + ("" if thin else " or more"), num_chains,
        " (warm-up defaults to 2 * num_samples)" if warmup_steps is None else "",
    )
    gen = torch.Generator().manual_seed(chunk_seed(seed, -7))
    init = run_batch(problem, num_chains, seed=chunk_seed(seed, -3))
    layout = _Layout(problem, init.values)
    u = layout.to_unconstrained({n: init.values[n] for n in problem.latent})
    lp, _ = _log_density(problem, y, layout, u, chunk_seed(seed, -2))
    for attempt in range(20):  # re-draw chains that start where the likelihood is zero
        bad = ~torch.isfinite(lp)
        if not bad.any():
            break
        redraw = run_batch(problem, int(bad.sum()), seed=chunk_seed(seed, -100 - attempt))
        u[bad] = layout.to_unconstrained({n: redraw.values[n] for n in problem.latent})
        lp[bad], _ = _log_density(problem, y, layout, u[bad], chunk_seed(seed, -200 - attempt))
    if not torch.isfinite(lp).all():
        raise ProblemError("mcmc could not find starting points with a finite log density in 20 prior draws per chain")
    D = layout.dim
    chol = torch.eye(D, dtype=torch.float64) * initial_scale
    log_scale = 0.0
    history: list[torch.Tensor] = []
    kept_u, kept_acc, kept_lp, kept_scale = [], [], [], []
    failures = 0
    bar = progress_bar(warmup + num_samples * (thin or 1), "mcmc", progress, unit="steps")
    step = -1
    while len(kept_u) < num_samples:
        step += 1
        if step == warmup and thin is None:
            thin = _auto_thin(history[-max(1, warmup // 4) :])
            bar.total = warmup + num_samples * thin
            _log.info("mcmc: thin %d (autocorrelation time of the warm-up's last quarter)", thin)
        z = torch.randn(num_chains, D, generator=gen, dtype=torch.float64)
        proposal = u + math.exp(log_scale) * z @ chol.T
        lp_new, failed = _log_density(problem, y, layout, proposal, chunk_seed(seed, step))
        failures += failed
        log_alpha = lp_new - lp
        accept = torch.log(torch.rand(num_chains, generator=gen, dtype=torch.float64)) < log_alpha
        u = torch.where(accept[:, None], proposal, u)
        lp = torch.where(accept, lp_new, lp)
        if step < warmup:
            history.append(u.clone())
            rate = float(torch.exp(torch.clamp(log_alpha, max=0.0)).nan_to_num(0.0).mean())
            log_scale += (rate - target_accept) / math.sqrt(step + 1.0)
            if step >= 50 and step % 25 == 0:
                samples = torch.cat(history[len(history) // 2 :])
                cov = torch.cov(samples.T).reshape(D, D) if D > 1 else samples.var().reshape(1, 1)
                cov = (2.38**2 / D) * (cov + 1e-8 * torch.eye(D, dtype=torch.float64))
                chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(D, dtype=torch.float64))
                log_scale = 0.0 if step == 50 else log_scale
        elif (step - warmup) % thin == thin - 1 or thin == 1:
            kept_u.append(u.clone())
            kept_acc.append(accept.clone())
            kept_lp.append(lp.clone())
            kept_scale.append(torch.full((num_chains,), math.exp(log_scale), dtype=torch.float64))
        bar.update(1)
    bar.close()
    U = torch.stack(kept_u, 1)  # (chain, draw, D)
    values, _ = layout.to_constrained(U.reshape(-1, D), problem)
    latents = {n: v.reshape(num_chains, num_samples, *v.shape[1:]).numpy() for n, v in values.items()}
    posterior = complete_draws(problem, y, latents, target)
    diag = convergence(posterior, "mcmc")  # on the sites asked for
    if failures:
        warnings.warn(f"mcmc: {failures} proposals failed to simulate and were rejected", RuntimeWarning, stacklevel=3)
    accept_rate = float(torch.stack(kept_acc).double().mean())
    return Draws(
        posterior=posterior,
        sample_stats={
            "accepted": torch.stack(kept_acc, 1).numpy(),
            "lp": torch.stack(kept_lp, 1).numpy(),
            "proposal_scale": torch.stack(kept_scale, 1).numpy(),
        },
        attrs={
            **diag,
            "acceptance_rate": accept_rate,
            "num_chains": num_chains,
            "warmup_steps": warmup,
            "thin": thin,
            "num_failed": failures,
            "seed": seed,
        },
    )
