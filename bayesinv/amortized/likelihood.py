r"""The model's own likelihood, differentiable, for the learned-prior methods.

``score_prior`` (DPS guidance) and ``latent_prior`` (inversion through a flow) learn only the
prior of the target and bring the observation in through the likelihood the model states.
This module runs the model with its target sites set to given values and returns the summed
log-densities of its observation sites, whatever their law, with the graph to the values kept.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.distributions.util import scale_and_mask
from torch import Tensor

from bayesinv._context import RunContext, run_context
from bayesinv.errors import ProblemError
from bayesinv.problem import Problem

__all__ = ["model_log_likelihood", "check_likelihood"]

_PLATE = "_bayesinv_draws"  # the batch plate of bayesinv.problem.run_batch


class _SetSites(Messenger):
    r"""Sets latent and deterministic sites to given values; the model continues from them."""

    def __init__(self, values: Mapping[str, Tensor]):
        super().__init__()
        self.values = values

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


def _rows(lp: Tensor, n: int | None) -> Tensor:
    r"""A site's log-density summed to one value per row (``n`` rows, or one run)."""
    lp = torch.as_tensor(lp)
    if n is None:
        return lp.sum()
    if lp.dim() == 0:
        return lp.expand(n)
    if lp.shape[0] != n:
        lp = lp.expand(n, *lp.shape[1:]) if lp.shape[0] == 1 else lp.sum().expand(n) / n
    return lp.reshape(n, -1).sum(-1)


def _run(problem: Problem, values: Mapping[str, Tensor], y: Mapping[str, Tensor], n: int | None) -> Tensor:
    with run_context(RunContext(batch_size=n)), poutine.trace() as tracer, _SetSites(values):
        with pyro.plate(_PLATE, n, dim=-(problem.batch_ndim + 1)) if n is not None else contextlib.nullcontext():
            problem.model(problem.model_argument(dict(y)))
    total = torch.zeros(() if n is None else (n,))
    for name in (*problem.observed, *problem.fixed_observed):
        site = tracer.trace.nodes[name]
        total = total + _rows(scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]), n)
    return total


def model_log_likelihood(problem: Problem, values: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Tensor:
    r"""The model's log-likelihood :math:`\log p(y \mid x)` of each row of target values, differentiable.

    The model runs (vectorised under a batch plate, else row by row) with its target sites
    set to ``values`` and its observed sites conditioned on ``y``; the summed log-densities
    of the observation sites are returned, with the graph to ``values`` kept.

    Arguments:
        problem: The traced (Pyro) problem.
        values: Target site → values ``(R, *shape)`` (latent or deterministic sites).
        y: Observed site → one observation (the site's shape).

    Returns:
        ``(R,)`` log-likelihoods.
    """
    n = next(iter(values.values())).shape[0]
    with pyro.validation_enabled(False):
        try:
            out = _run(problem, values, y, n)
            if out.shape == (n,):
                return out
        except ProblemError:
            raise
        except Exception:  # noqa: BLE001 - the model does not broadcast: row by row
            pass
        return torch.stack([_run(problem, {k: v[i] for k, v in values.items()}, y, None) for i in range(n)])


def check_likelihood(problem: Problem, target: Sequence[str], method: str, instead: str) -> None:
    r"""Refuses, before any work, a model whose likelihood cannot be differentiated with the target set.

    A black-box simulator (no gradient), an implicit observation (no density), a NumPyro
    model, or a latent site after the target (the likelihood would draw it at random).

    Arguments:
        problem: The traced problem.
        target: The target sites.
        method: What is refused, for the message (e.g. ``"score_prior with guidance='dps'"``).
        instead: What to use instead, for the message.
    """
    if problem.simulators:
        raise ProblemError(
            f"{method} differentiates the model's likelihood, but the model calls the black-box simulator(s)"
            f" {list(problem.simulators)}, which have no gradient; use {instead}"
        )
    if problem.implicit:
        raise ProblemError(
            f"{method} needs the likelihood of the observed site(s) {list(problem.implicit)}, whose distribution"
            " is Implicit (it can be simulated, not scored); use method='cond_score'"
        )
    if problem.language != "pyro":
        raise ProblemError(f"{method} differentiates Pyro models; write the model in Pyro")
    order = list(problem.sites)
    first = min(order.index(n) for n in target)
    late = [n for n in problem.latent if n not in target and order.index(n) > first]
    if late:
        raise ProblemError(
            f"the latent site(s) {late} come after the target {list(target)} in the model, so the likelihood would"
            " draw them at random: add them to target= (the prior then covers them) or fix them in the model"
        )
