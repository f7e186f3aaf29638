r"""Self-normalised importance sampling: the reference posterior for any likelihood.

With proposals θ_i ~ q (the prior by default), weights w_i = p(y | θ_i) p(θ_i) / q(θ_i)
and ESS = (Σ w)² / Σ w²; posterior draws are a multinomial resample of the proposals.

The run is chunked: proposals are drawn, weighted and resampled chunk by chunk with a
streaming multinomial resampler, so memory stays bounded for millions of proposals.
``data=`` reuses a dataset made by :func:`bayesinv.simulate` (its latent values and
noise-free simulator outputs), so an expensive simulator is not run again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any, Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from bayesinv._checks import check_count, check_real, check_seed
from bayesinv.errors import OptionError, SimulationError
from bayesinv.idata import resampled_layout
from bayesinv.methods._util import chunk_seed, progress_bar
from bayesinv.problem import Problem, ProblemError, run_batch
from bayesinv.registry import Draws, register_method

__all__ = ["importance", "ImportanceWarning", "DEFAULT_PROPOSALS_PER_SAMPLE", "MIN_DEFAULT_PROPOSALS"]

#: Without ``num_proposals=`` (and without ``data=``), importance draws
#: ``max(DEFAULT_PROPOSALS_PER_SAMPLE * num_samples, MIN_DEFAULT_PROPOSALS)`` proposals.
DEFAULT_PROPOSALS_PER_SAMPLE = 20
MIN_DEFAULT_PROPOSALS = 10_000

_log = logging.getLogger("bayesinv")


class ImportanceWarning(UserWarning):
    r"""The effective sample size is too small to trust the importance-sampling posterior."""


class _StreamingResampler:
    r"""Draws ``k`` multinomial resamples from a stream of weighted chunks."""

    def __init__(self, k: int, generator: torch.Generator):
        self.k = k
        self.gen = generator
        self.log_total = -math.inf
        self.values: dict[str, torch.Tensor] | None = None
        self.log_w = torch.full((k,), -math.inf, dtype=torch.float64)

    def update(self, values: dict[str, torch.Tensor], log_w: torch.Tensor) -> None:
        log_chunk = torch.logsumexp(log_w, 0).item()
        if log_chunk == -math.inf:
            return
        new_total = np.logaddexp(self.log_total, log_chunk)
        p_take = math.exp(log_chunk - new_total)
        take = torch.rand(self.k, generator=self.gen, dtype=torch.float64) < p_take
        probs = torch.softmax(log_w, 0)
        idx = torch.multinomial(probs, self.k, replacement=True, generator=self.gen)
        if self.values is None:
            self.values = {name: v[idx].clone() for name, v in values.items()}
        else:
            for name, v in values.items():
                mask = take.view(-1, *([1] * (v.dim() - 1)))
                self.values[name] = torch.where(mask, v[idx], self.values[name])
        self.log_w = torch.where(take, log_w[idx], self.log_w)
        self.log_total = new_total


def _proposal_draws(proposal: Any, problem: Problem, y: dict, m: int, seed: int) -> tuple[dict, torch.Tensor]:
    r"""Draws ``m`` latent values and their log-density from a proposal."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(proposal, "sample_and_log_prob"):
            values, log_q = proposal.sample_and_log_prob(problem.model_argument(y), m)
        else:
            with pyro.validation_enabled(False), poutine.trace() as tracer:
                with pyro.plate("_bayesinv_draws", m, dim=-(problem.batch_ndim + 1)):
                    proposal(problem.model_argument(y))
            trace = tracer.trace
            values, log_q = {}, torch.zeros(m, dtype=torch.float64)
            for name, node in trace.nodes.items():
                if node["type"] == "sample" and not node["is_observed"] and name in problem.latent:
                    values[name] = node["value"].detach()
                    lp = node["fn"].log_prob(node["value"])
                    log_q = log_q + lp.reshape(m, -1).sum(-1).double()
    missing = [n for n in problem.latent if n not in values]
    if missing:
        raise ProblemError(f"the proposal does not sample the latent site(s) {missing} of the model")
    for name, v in values.items():
        if tuple(v.shape) != (m, *problem.sites[name].shape):
            raise ProblemError(
                f"proposal draws of site {name!r} have shape {tuple(v.shape)}, expected {(m, *problem.sites[name].shape)}"
            )
    return values, log_q.double()


def _remote_batch(problem: Problem, m: int, y: dict, fixed: dict | None, seed: int, log_prior: bool,
                  target: tuple[str, ...]) -> Any:
    r"""One chunk's :func:`run_batch` on a Dask worker, cut to what the weighting reads.

    The target values, the densities and the validity mask travel back whole; of each
    simulator output only one finite entry (or none), which is all the finiteness check needs.
    """
    batch = run_batch(problem, m, y=y, fixed=fixed, seed=seed, log_prior=log_prior)

    def witness(out: torch.Tensor) -> torch.Tensor:
        flat = out.reshape(-1)
        return flat[:1] if not out.is_floating_point() else flat[torch.isfinite(flat)][:1]

    return dataclasses.replace(batch, values={n: batch.values[n] for n in target},
                               sim_outputs={k: witness(v) for k, v in batch.sim_outputs.items()})  # fmt: skip


def _open_data(data: Any):
    r"""``data=`` as an :class:`xarray.Dataset`, read by :func:`bayesinv.data.open_data` (checked before decoding)."""
    from bayesinv.data import open_data  # imported here: bayesinv.data imports the methods' helpers

    return open_data(data)


@register_method("importance")
def importance(
    problem: Problem,
    y: dict[str, torch.Tensor],
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    target: tuple[str, ...] = (),
    progress: bool | None = None,
    num_proposals: int | None = None,
    proposal: Callable | None = None,
    data: Any = None,
    chunk_size: int = 10_000,
    min_ess: float = 100.0,
    client: Any = None,
) -> Draws:
    r"""Self-normalised importance sampling.

    Arguments:
        problem: The traced problem.
        y: The validated observation.
        num_samples: The number of resampled posterior draws.
        seed: The seed: an ``int`` in ``[0, 2**63)``, or ``None`` for a fresh one (recorded
            in ``attrs["seed"]``).
        target: Sites to return.
        progress: Show a progress bar (``None``: on a terminal; without one, progress is
            logged).
        num_proposals: The number of proposals (default ``max(20 * num_samples, 10_000)``;
            with ``data=``, the dataset's size). The number chosen, and why, is logged
            (logger ``bayesinv``, INFO), and the run logs its progress and time left.
        proposal: A Pyro guide ``guide(y)`` sampling every latent site, or a learned
            posterior with ``sample_and_log_prob(y, n)``. Default: the prior.
        data: A dataset from :func:`bayesinv.simulate` (or its zarr path) whose latent
            values and noise-free simulator outputs are reused instead of simulating.
        chunk_size: Proposals per chunk (bounds memory).
        min_ess: Warn when the effective sample size falls below this.
        client: A ``dask.distributed`` Client: the chunks' simulations run on its workers
            (proposals are drawn here, the weights resampled here in chunk order), with the
            same draws as without it (see :func:`bayesinv.simulate`). Not with ``data=``,
            which simulates nothing.

    Returns:
        :class:`Draws`: the resampled draws with repeats laid out consecutively, split into
        chains (4 for a multiple of 4 draws; :func:`bayesinv.idata.resampled_layout`: ArviZ's ESS and R-hat then count
        the repeats); ``sample_stats`` holds each draw's normalised log weight and the run's
        ESS, ESS fraction, number of proposals and log evidence; ``attrs`` the ESS, the
        number of distinct draws and ``draws_note``, which says what ArviZ's numbers mean.
    """
    problem.require_likelihood("importance")
    num_samples = check_count("num_samples", num_samples, error=OptionError)
    seed = check_seed(seed)
    chunk_size = check_count("chunk_size", chunk_size, error=OptionError)
    if num_proposals is not None:
        num_proposals = check_count("num_proposals", num_proposals, error=OptionError)
    min_ess = check_real("min_ess", min_ess, low=0.0)
    if proposal is not None and not callable(proposal) and not hasattr(proposal, "sample_and_log_prob"):
        raise OptionError(
            f"proposal= must be a Pyro guide guide(y) or a posterior with sample_and_log_prob(y, n), got {type(proposal).__name__}"
        )
    if data is not None and proposal is not None:
        raise OptionError("give either data= or proposal=, not both")
    if client is not None:
        from bayesinv._dask import ChunkMap, check_client

        check_client(client, "importance")
        if data is not None:
            raise OptionError("give either data= (stored simulations, replayed) or client= (simulations on a Dask cluster), not both")
    ds = _open_data(data) if data is not None else None
    if ds is not None:
        missing = [n for n in problem.latent if n not in ds]
        if missing:
            raise ProblemError(f"data= lacks the latent site(s) {missing}; it holds {sorted(ds.data_vars)}")
        size = int(ds.sizes["draw"])
        total = size if num_proposals is None else min(num_proposals, size)
        why = (
            f"every draw of data= ({size:,})" if num_proposals is None
            else f"num_proposals={num_proposals:,}" + (f", capped at the {size:,} draws of data=" if num_proposals > size else "")
        )
    elif num_proposals is not None:
        total, why = num_proposals, f"num_proposals={num_proposals:,}"
    else:
        total = max(DEFAULT_PROPOSALS_PER_SAMPLE * num_samples, MIN_DEFAULT_PROPOSALS)
        why = (
            f"the default max({DEFAULT_PROPOSALS_PER_SAMPLE} * num_samples, {MIN_DEFAULT_PROPOSALS:,})"
            f" for num_samples={num_samples:,}; pass num_proposals= to choose"
        )
    source = "data=" if ds is not None else "proposal=" if proposal is not None else "the prior"
    _log.info(
        "importance: %s proposals from %s (%s), %s posterior draws, chunks of %s",
        f"{total:,}", source, why, f"{num_samples:,}", f"{min(chunk_size, total):,}",
    )
    gen = torch.Generator().manual_seed(chunk_seed(seed, -1))
    resampler = _StreamingResampler(num_samples, gen)
    sum_w = -math.inf
    sum_w2 = -math.inf
    n_failed = 0
    errors: list[str] = []
    seen_sims: set[str] = set()
    finite_sims: set[str] = set()
    bar = progress_bar(total, "importance", progress, unit="proposals")
    remote = None if client is None else ChunkMap(client, problem, _remote_batch, label="importance")
    drawn: dict[int, tuple[dict, torch.Tensor]] = {}  # proposals of the chunks sent ahead to the Dask workers

    def upcoming(index: int):
        for i in range(index + 1, -(-total // chunk_size)):
            m_i = min(chunk_size, total - i * chunk_size)
            if proposal is not None and i not in drawn:
                drawn[i] = _proposal_draws(proposal, problem, y, m_i, chunk_seed(seed, 10 * i + 1))
            fixed_i = drawn[i][0] if proposal is not None else None
            yield i, m_i, (m_i, y, fixed_i, chunk_seed(seed, 10 * i), proposal is not None, target)

    start = 0
    index = 0
    while start < total:
        m = min(chunk_size, total - start)
        fixed = replay = None
        log_q = None
        if ds is not None:
            chunk = ds.isel(draw=slice(start, start + m))
            fixed = {n: torch.as_tensor(np.asarray(chunk[n].values)) for n in problem.latent}
            replay = {
                v[len("_sim_") :]: torch.as_tensor(np.asarray(chunk[v].values))
                for v in chunk.data_vars
                if str(v).startswith("_sim_")
            }
        elif proposal is not None:
            fixed, log_q = drawn.pop(index, None) or _proposal_draws(proposal, problem, y, m, chunk_seed(seed, 10 * index + 1))
        if remote is not None:
            args = (m, y, fixed, chunk_seed(seed, 10 * index), log_q is not None, target)
            batch = remote.get(index, m, args, upcoming(index))
        else:
            batch = run_batch(
                problem,
                m,
                y=y,
                fixed=fixed,
                replay_sims=replay or None,
                seed=chunk_seed(seed, 10 * index),
                log_prior=log_q is not None,
            )
        log_w = batch.log_lik.clone()
        if log_q is not None:
            log_w = log_w + batch.log_prior - log_q
        log_w = torch.where(batch.valid & ~torch.isnan(log_w), log_w, torch.tensor(-math.inf, dtype=torch.float64))
        n_failed += batch.num_failed
        for key, out in batch.sim_outputs.items():
            if key not in finite_sims and (not out.is_floating_point() or torch.isfinite(out).any()):
                finite_sims.add(key)
            seen_sims.add(key)
        errors.extend(batch.errors[: max(0, 5 - len(errors))])
        values = {n: batch.values[n] for n in target}
        resampler.update(values, log_w)
        sum_w = np.logaddexp(sum_w, torch.logsumexp(log_w, 0).item())
        sum_w2 = np.logaddexp(sum_w2, torch.logsumexp(2 * log_w, 0).item())
        start += m
        index += 1
        bar.update(m)
    bar.close()
    if remote is not None:
        remote.close()
    never_finite = sorted(seen_sims - finite_sims)
    if resampler.values is None and never_finite:
        raise SimulationError(
            f"importance sampling failed: simulator(s) {never_finite} returned only non-finite values (NaN/inf)"
            f" for all {total:,} proposals" + (f"; first error: {errors[0]}" if errors else "")
        )
    if resampler.values is None:
        raise ProblemError(
            f"importance sampling failed: all {total} proposals have zero likelihood or failed to simulate"
            + (f"; first error: {errors[0]}" if errors else "")
        )
    if n_failed:
        warnings.warn(
            f"{n_failed} of {total} proposals failed to simulate and were excluded"
            + (f"; first error: {errors[0]}" if errors else ""),
            RuntimeWarning,
            stacklevel=3,
        )
    ess = math.exp(2 * sum_w - sum_w2)
    if ess < min(min_ess, total):
        warnings.warn(
            f"importance sampling ESS is {ess:.1f} out of {total} proposals: too few effective draws to trust"
            " the posterior; increase num_proposals or pass a better proposal=",
            ImportanceWarning,
            stacklevel=3,
        )
    log_evidence = sum_w - math.log(total)
    # repeats of a proposal laid out consecutively and split into chains: ArviZ's ESS/R-hat see them (idata.resampled_layout)
    posterior, log_w_norm, layout = resampled_layout(resampler.values, resampler.log_w - sum_w, ess=ess,
                                                     num_proposals=total, seed=chunk_seed(seed, -2))  # fmt: skip
    return Draws(
        posterior=posterior,
        sample_stats={
            "log_weight": log_w_norm,
            "ess": np.float64(ess),
            "ess_fraction": np.float64(ess / total),
            "num_proposals": np.int64(total),
            "num_failed": np.int64(n_failed),
            "log_evidence": np.float64(log_evidence),
        },
        attrs={**layout, "num_failed": n_failed, "seed": seed},
    )
