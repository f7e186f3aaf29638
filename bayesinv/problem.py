r"""Problem tracing: what a Pyro model samples, computes and observes.

A bayesinv model is an ordinary Pyro model ``model(y=None)``. The observed sites are the
ones that receive ``obs=`` from the model's argument. :func:`trace_problem` runs the model
once with a marker in place of ``y`` to find them, and records every site's kind, shape
and support in a :class:`Problem`. :func:`run_batch` then runs the model for many draws at
once (vectorised under a :class:`pyro.plate` when the model broadcasts, a loop otherwise),
optionally conditioned on an observation, with latent values fixed from a proposal or a
dataset, returning values and log-densities per draw.

Example:
    >>> problem = trace_problem(model)
    >>> problem.latent, problem.observed
    (('theta',), ('y',))
    >>> batch = run_batch(problem, 1000, seed=0)
    >>> batch.values["theta"].shape
    torch.Size([1000, 10])
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger

from bayesinv._context import RunContext, run_context

__all__ = [
    "Site",
    "Problem",
    "Batch",
    "ProblemError",
    "trace_problem",
    "run_batch",
    "as_problem",
]

SiteKind = Literal["latent", "deterministic", "observed"]
_BATCH_PLATE = "_bayesinv_draws"


from bayesinv.errors import ProblemError  # noqa: E402  (re-exported here, where it always lived)


@dataclass(frozen=True)
class Site:
    r"""One named site of a model.

    Attributes:
        name: The site name.
        kind: ``"latent"`` (an unobserved sample site), ``"deterministic"`` or ``"observed"``.
        shape: The shape of one draw of the site (batch and event dims of a single run).
        event_dim: The number of rightmost dims that form one event.
        support: The distribution's support (``None`` for deterministic sites).
        dtype: The value's dtype.
        implicit: Whether the site's distribution is likelihood-free (:class:`bayesinv.distributions.Implicit`).
        distribution: The distribution's class name.
    """

    name: str
    kind: SiteKind
    shape: tuple[int, ...]
    event_dim: int
    support: Any
    dtype: torch.dtype
    implicit: bool = False
    distribution: str = ""

    @property
    def discrete(self) -> bool:
        return bool(getattr(self.support, "is_discrete", False))

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


@dataclass(frozen=True)
class Problem:
    r"""A traced model: its sites and how to call it.

    Attributes:
        model: The Pyro model ``model(y=None)``.
        sites: Every site, in the order the model visits them.
        simulators: Keys of the black-box simulators the model calls.
        obs_keys: For each observed site, the key under which the model reads it from
            a dict observation, or ``None`` when the model passes its argument directly.
        fixed_observed: Observed sites whose value is fixed inside the model (not from ``y``).
        batch_ndim: The largest number of batch dims of any sample site (plates).
    """

    model: Callable
    sites: dict[str, Site]
    simulators: tuple[str, ...] = ()
    obs_keys: dict[str, str | None] = field(default_factory=dict)
    fixed_observed: tuple[str, ...] = ()
    batch_ndim: int = 0
    name: str = ""

    # -- site groups -------------------------------------------------------------------
    @property
    def latent(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.sites.items() if s.kind == "latent")

    @property
    def deterministic(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.sites.items() if s.kind == "deterministic")

    @property
    def observed(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.sites.items() if s.kind == "observed")

    @property
    def implicit(self) -> tuple[str, ...]:
        return tuple(n for n, s in self.sites.items() if s.implicit)

    def __repr__(self) -> str:
        def fmt(kind: str) -> str:
            return ", ".join(f"{n}{list(s.shape)}" for n, s in self.sites.items() if s.kind == kind)

        lines = [
            f"Problem({self.name or 'model'}",
            f"  latent:        {fmt('latent') or '-'}",
            f"  deterministic: {fmt('deterministic') or '-'}",
            f"  observed:      {fmt('observed') or '-'}",
        ]
        if self.simulators:
            lines.append(f"  simulators:    {', '.join(self.simulators)}")
        return "\n".join(lines) + ")"

    # -- names -------------------------------------------------------------------------
    def resolve_target(self, target: str | list[str] | tuple[str, ...] | None, *, default: str = "latent") -> tuple[str, ...]:
        r"""Validates ``target`` names and returns them as a tuple.

        Arguments:
            target: A site name, a list of names, or ``None`` for the default.
            default: ``"latent"`` (every latent site) or ``"all"`` (latent and deterministic).
        """
        if target is None:
            names = self.latent if default == "latent" else self.latent + self.deterministic
            return tuple(n for n in self.sites if n in names)
        names = (target,) if isinstance(target, str) else tuple(target)
        if not names:
            raise ProblemError("target= is empty: name at least one site")
        for name in names:
            if name not in self.sites:
                raise ProblemError(
                    f"unknown target site {name!r}; the model has latent sites {list(self.latent)}"
                    f" and deterministic sites {list(self.deterministic)}"
                )
            if self.sites[name].kind == "observed":
                raise ProblemError(f"target site {name!r} is the observed site; name a latent or deterministic site")
        return names

    def require_likelihood(self, method: str) -> None:
        r"""Raises a clear error when a likelihood-based ``method`` meets an implicit observation."""
        for name in self.observed:
            if self.sites[name].implicit:
                raise ProblemError(
                    f"method {method!r} needs the likelihood of observed site {name!r}, but its distribution"
                    " is Implicit (it can be simulated, not scored); use an amortized method such as"
                    " method='cond_score', 'flow' or 'vae'"
                )

    def require_differentiable(self, method: str) -> None:
        r"""Raises a clear error when a gradient-based ``method`` meets a black-box simulator."""
        if self.simulators:
            raise ProblemError(
                f"method {method!r} needs gradients of the model, but it calls the black-box simulator(s)"
                f" {list(self.simulators)}, which are not differentiable; use method='mcmc' (gradient-free),"
                " 'importance', or an amortized method"
            )
        for name in self.latent:
            if self.sites[name].discrete:
                raise ProblemError(f"method {method!r} cannot sample the discrete latent site {name!r}")

    # -- observations ------------------------------------------------------------------
    def check_y(self, y: Any, *, allow_batch: bool = False) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        r"""Validates an observation against the observed sites.

        Arguments:
            y: A tensor/array (one observed site) or a mapping from site name to value.
            allow_batch: Whether leading batch dims (several observations) are allowed.

        Returns:
            The observation as a dict of tensors and the batch shape (``()`` for one observation).
        """
        observed = self.observed
        if not observed:
            raise ProblemError("the model has no observed site: pass the observation with obs= to pyro.sample")
        if y is None:
            raise ProblemError(f"no observation given for observed site(s) {list(observed)}")
        if isinstance(y, Mapping):
            values = dict(y)
            by_key = {k: n for n, k in self.obs_keys.items() if k is not None}
            values = {by_key.get(k, k): v for k, v in values.items()}
            missing = [n for n in observed if n not in values]
            extra = [k for k in values if k not in observed]
            if missing or extra:
                raise ProblemError(
                    f"observation keys {sorted(values)} do not match the observed sites {list(observed)}"
                    + (f" (missing {missing})" if missing else "")
                    + (f" (unknown {extra})" if extra else "")
                )
        elif len(observed) == 1:
            values = {observed[0]: y}
        else:
            raise ProblemError(
                f"the model has {len(observed)} observed sites {list(observed)}: pass y as a dict keyed by site name"
            )
        out: dict[str, torch.Tensor] = {}
        batch_shape: tuple[int, ...] | None = None
        for name, value in values.items():
            site = self.sites[name]
            t = _as_tensor(value, name)
            dtype = site.dtype if site.dtype.is_floating_point else t.dtype
            t = t.to(dtype)
            shape = tuple(t.shape)
            nd = len(site.shape)
            if shape[len(shape) - nd:] != site.shape or (not allow_batch and len(shape) != nd):
                raise ProblemError(
                    f"observation for site {name!r} has shape {shape}, but the model's observed site {name!r}"
                    f" has shape {site.shape}"
                    + (" (a batch of observations goes in leading dims)" if allow_batch else "")
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = (~torch.isfinite(t)).nonzero()
                raise ProblemError(
                    f"observation for site {name!r} contains {len(bad)} NaN/inf value(s),"
                    f" first at index {tuple(bad[0].tolist())}"
                )
            this_batch = shape[: len(shape) - nd]
            if batch_shape is not None and this_batch != batch_shape:
                raise ProblemError(
                    f"observed sites have different batch shapes: {batch_shape} and {this_batch} (site {name!r})"
                )
            batch_shape = this_batch
            out[name] = t
        return out, batch_shape or ()

    def model_argument(self, y: dict[str, torch.Tensor] | None) -> Any:
        r"""What to pass to ``model`` to condition it on the (validated) observation ``y``."""
        if y is None:
            return None
        keys = [self.obs_keys.get(n) for n in self.observed]
        if len(keys) == 1 and keys[0] is None:
            return y[self.observed[0]]
        return {self.obs_keys.get(n) or n: v for n, v in y.items()}


def as_problem(model_or_problem: Callable | Problem, *, observed: list[str] | tuple[str, ...] | None = None) -> Problem:
    r"""Returns a traced :class:`Problem` for a model (or the problem itself).

    The traced problems of the 64 most recently used models are cached, so the model
    (and any expensive simulator in it) runs once for tracing, not at every call.
    """
    if isinstance(model_or_problem, Problem):
        return model_or_problem
    key = (model_or_problem, tuple(observed) if observed is not None else None)
    try:
        cached = _PROBLEMS.pop(key, None)
    except TypeError:  # an unhashable callable: trace every time
        return trace_problem(model_or_problem, observed=observed)
    problem = cached if cached is not None else trace_problem(model_or_problem, observed=observed)
    _PROBLEMS[key] = problem  # most recently used last
    while len(_PROBLEMS) > 64:
        _PROBLEMS.pop(next(iter(_PROBLEMS)))
    return problem


# Traced problems of recently used models, so that simulate() followed by infer() traces
# (and so runs an expensive simulator) once.
_PROBLEMS: dict[tuple, Problem] = {}


# ---------------------------------------------------------------------------------------
# tracing


class _ObsMarker:
    r"""Stands in for ``y`` while tracing to find the sites that observe it."""

    def __init__(self, key: str | None = None):
        self.key = key

    def __getitem__(self, key: str) -> "_ObsMarker":
        return _ObsMarker(str(key))

    def get(self, key: str, default: Any = None) -> "_ObsMarker":
        return _ObsMarker(str(key))

    def __repr__(self) -> str:
        return f"<bayesinv observation marker {self.key or ''}>"


class _ObsFinder(Messenger):
    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str | None] = {}

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and isinstance(msg["value"], _ObsMarker):
            self.found[msg["name"]] = msg["value"].key
            msg["value"] = None
            msg["is_observed"] = False


class _FixLatents(Messenger):
    r"""Fixes unobserved sample sites to given values (like replay, without a trace)."""

    def __init__(self, values: Mapping[str, torch.Tensor]):
        super().__init__()
        self.values = values

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]


def _is_implicit(fn: Any) -> bool:
    while fn is not None:
        if getattr(fn, "is_implicit", False):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def trace_problem(model: Callable, *, observed: list[str] | tuple[str, ...] | None = None, seed: int = 0) -> Problem:
    r"""Traces ``model`` once and describes its sites.

    Arguments:
        model: A Pyro model ``model(y=None)`` whose observed sites receive ``obs=y``
            (or ``obs=y["name"]`` for several observed sites).
        observed: Names of the observed sites, for models whose observation cannot be
            found automatically (e.g. the model inspects ``y`` before observing it).
        seed: Seed of the tracing run.

    Returns:
        A :class:`Problem`.
    """
    if not callable(model):
        raise ProblemError(f"model must be a callable Pyro model, got {type(model).__name__}")
    finder = _ObsFinder()
    ctx = RunContext(batch_size=None)
    with _rng(seed), run_context(ctx):
        try:
            if observed is None:
                with poutine.trace() as tracer, finder:
                    model(_ObsMarker())
            else:
                with poutine.trace() as tracer:
                    model()
        except Exception as exc:  # noqa: BLE001 - we add context and re-raise
            raise ProblemError(
                f"running the model once to trace it failed with {type(exc).__name__}: {exc}"
                + ("" if observed else "; if the model inspects y before observing it, pass observed=[site names]")
            ) from exc
    trace = tracer.trace
    obs_keys = dict(finder.found) if observed is None else {n: None for n in observed}
    if observed is not None:
        unknown = [n for n in observed if n not in trace.nodes]
        if unknown:
            raise ProblemError(f"observed= names {unknown} are not sites of the model ({list(trace.nodes)})")
    sites: dict[str, Site] = {}
    fixed: list[str] = []
    batch_ndim = 0
    for name, node in trace.nodes.items():
        if node["type"] != "sample":
            continue
        fn = node["fn"]
        value = node["value"]
        if _is_deterministic(node):
            kind: SiteKind = "deterministic"
        elif name in obs_keys:
            kind = "observed"
        elif node["is_observed"]:
            fixed.append(name)
            continue
        else:
            kind = "latent"
        if kind != "deterministic":
            batch_ndim = max(batch_ndim, len(getattr(fn, "batch_shape", ())))
        value = torch.as_tensor(value)
        event_dim = len(getattr(fn, "event_shape", ())) if kind != "deterministic" else value.dim()
        sites[name] = Site(
            name=name,
            kind=kind,
            shape=tuple(value.shape),
            event_dim=event_dim,
            support=None if kind == "deterministic" else getattr(fn, "support", None),
            dtype=value.dtype,
            implicit=_is_implicit(fn),
            distribution="Deterministic" if kind == "deterministic" else type(fn).__name__,
        )
    if not any(s.kind == "observed" for s in sites.values()):
        raise ProblemError(
            "the model has no observed site: a bayesinv model takes the observation as its argument and"
            " passes it to pyro.sample(..., obs=y)"
            + (f" (sites found: {list(sites)})" if sites else "")
        )
    return Problem(
        model=model,
        sites=sites,
        simulators=tuple(ctx._counts),
        obs_keys=obs_keys,
        fixed_observed=tuple(fixed),
        batch_ndim=batch_ndim,
        name=getattr(model, "__name__", type(model).__name__),
    )


# ---------------------------------------------------------------------------------------
# batched runs


@dataclass
class Batch:
    r"""The result of running a model for ``n`` draws.

    Attributes:
        values: Site name → tensor ``(n, *shape)`` for every latent, deterministic and
            observed site.
        sim_outputs: Simulator key → noise-free simulator output ``(n, ...)``.
        log_prior: ``(n,)`` summed log-density of the latent sites (when requested).
        log_lik: ``(n,)`` summed log-density of the observed sites (when conditioned).
        valid: ``(n,)`` boolean mask: draws whose simulation succeeded and whose values are finite.
        errors: The first few simulation error messages.
    """

    values: dict[str, torch.Tensor]
    sim_outputs: dict[str, torch.Tensor]
    log_prior: torch.Tensor | None
    log_lik: torch.Tensor | None
    valid: torch.Tensor
    errors: list[str]

    @property
    def num_failed(self) -> int:
        return int((~self.valid).sum())


@contextlib.contextmanager
def _rng(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) % (2**63))
        yield


def run_batch(
    problem: Problem,
    n: int,
    *,
    y: dict[str, torch.Tensor] | None = None,
    fixed: Mapping[str, torch.Tensor] | None = None,
    replay_sims: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
    log_prior: bool = False,
    vectorize: bool | None = None,
) -> Batch:
    r"""Runs the model for ``n`` draws.

    Arguments:
        problem: The traced problem.
        n: The number of draws.
        y: A validated observation (see :meth:`Problem.check_y`): conditions the observed
            sites and computes ``log_lik``. Without it, observations are simulated.
        fixed: Latent site → values ``(n, *shape)`` to use instead of sampling (a proposal,
            a dataset, an MCMC state).
        replay_sims: Simulator key → outputs ``(n, ...)`` that replace simulator calls.
        seed: Seed for this batch (``None`` uses the global RNG).
        log_prior: Whether to compute the latent log-density per draw.
        vectorize: Force the vectorised (``True``) or looped (``False``) run; by default
            the vectorised run is used when the model broadcasts over a batch plate.

    Returns:
        A :class:`Batch`.
    """
    if n <= 0:
        raise ProblemError(f"number of draws must be positive, got {n}")
    with _rng(seed), pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if vectorize is not False and _vectorizable(problem) is not False:
            batch = _run_vectorized(problem, n, y, fixed, replay_sims, log_prior)
            if batch is not None:
                return batch
            if vectorize:
                raise ProblemError(
                    f"model {problem.name!r} does not broadcast over a batch plate; use vectorize=False"
                )
        return _run_loop(problem, n, y, fixed, replay_sims, log_prior)


_VECTORIZABLE: dict[int, bool] = {}


def _vectorizable(problem: Problem) -> bool | None:
    return _VECTORIZABLE.get(id(problem.model))


def _sum_right(t: torch.Tensor, n: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() == 0:
        return t.expand(n).clone()
    t = t.expand((n,) + tuple(t.shape[1:])) if t.shape[0] == 1 and n != 1 else t
    return t.reshape(n, -1).sum(-1)


def _log_density(trace, names, n: int, dtype: torch.dtype) -> torch.Tensor:
    total = torch.zeros(n, dtype=dtype)
    for name in names:
        site = trace.nodes[name]
        lp = site["fn"].log_prob(site["value"])
        lp = scale_and_mask(lp, site["scale"], site["mask"])
        total = total + _sum_right(lp, n).to(dtype)
    return total


def _row_valid(values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    valid = torch.ones(n, dtype=torch.bool)
    for v in values.values():
        if v.is_floating_point() or v.is_complex():
            valid &= torch.isfinite(v.reshape(n, -1)).all(-1)
    return valid


def _run_vectorized(problem, n, y, fixed, replay_sims, want_prior) -> Batch | None:
    ctx = RunContext(batch_size=n, replay=dict(replay_sims) if replay_sims is not None else None)
    dim = -(problem.batch_ndim + 1)
    try:
        with run_context(ctx), poutine.trace() as tracer, _FixLatents(fixed or {}):
            with pyro.plate(_BATCH_PLATE, n, dim=dim):
                problem.model(problem.model_argument(y))
    except Exception as exc:  # noqa: BLE001
        if _VECTORIZABLE.get(id(problem.model)) is True:
            raise
        _VECTORIZABLE[id(problem.model)] = False
        _debug_fallback(problem, exc)
        return None
    trace = tracer.trace
    values: dict[str, torch.Tensor] = {}
    for name, site in problem.sites.items():
        node = trace.nodes.get(name)
        if node is None:
            return _not_vectorizable(problem, f"site {name!r} missing")
        v = torch.as_tensor(node["value"])
        if site.kind == "observed" and y is not None:
            values[name] = v
            continue
        if tuple(v.shape) != (n, *site.shape):
            return _not_vectorizable(problem, f"site {name!r} has shape {tuple(v.shape)}")
        values[name] = v
    _VECTORIZABLE[id(problem.model)] = True
    if y is not None:
        values = {k: v for k, v in values.items() if problem.sites[k].kind != "observed"}
    log_lik = None
    if y is not None:
        lik_names = list(problem.observed) + list(problem.fixed_observed)
        log_lik = _log_density(trace, lik_names, n, torch.float64)
    lp = _log_density(trace, problem.latent, n, torch.float64) if want_prior else None
    sims = {k: torch.as_tensor(v) for k, v in ctx.outputs.items()}
    valid = _row_valid({**values, **sims}, n)
    if log_lik is not None:
        valid &= ~torch.isnan(log_lik)
    return Batch(values, sims, lp, log_lik, valid, list(ctx.errors))


def _not_vectorizable(problem: Problem, why: str) -> None:
    _VECTORIZABLE[id(problem.model)] = False
    _debug_fallback(problem, why)
    return None


def _debug_fallback(problem: Problem, why: Any) -> None:
    import logging

    logging.getLogger("bayesinv").info(
        "model %s does not broadcast over a batch plate (%s); running draws one at a time", problem.name, why
    )


def _run_loop(problem, n, y, fixed, replay_sims, want_prior) -> Batch:
    rows: list[dict[str, torch.Tensor] | None] = []
    sim_rows: list[dict[str, torch.Tensor]] = []
    log_liks, log_priors, errors = [], [], []
    arg = problem.model_argument(y)
    for i in range(n):
        ctx = RunContext(
            batch_size=None,
            replay={k: v[i : i + 1] for k, v in replay_sims.items()} if replay_sims is not None else None,
        )
        fix_i = {k: v[i] for k, v in (fixed or {}).items()}
        try:
            with run_context(ctx), poutine.trace() as tracer, _FixLatents(fix_i):
                problem.model(arg)
        except Exception as exc:  # noqa: BLE001 - a failed draw is counted, not fatal
            if len(errors) < 5:
                errors.append(f"draw {i}: {type(exc).__name__}: {exc}")
            if i >= 9 and all(r is None for r in rows):
                raise ProblemError(f"the first {i + 1} runs of the model all failed; first error: {errors[0]}") from exc
            rows.append(None)
            sim_rows.append({})
            log_liks.append(float("nan"))
            log_priors.append(float("nan"))
            continue
        errors.extend(ctx.errors[: max(0, 5 - len(errors))])
        trace = tracer.trace
        row = {}
        for name, site in problem.sites.items():
            if y is not None and site.kind == "observed":
                continue
            row[name] = torch.as_tensor(trace.nodes[name]["value"]).detach()
        rows.append(row)
        sim_rows.append({k: torch.as_tensor(v)[0] for k, v in ctx.outputs.items()})
        if y is not None:
            names = list(problem.observed) + list(problem.fixed_observed)
            log_liks.append(float(_log_density(trace, names, 1, torch.float64)[0]))
        if want_prior:
            log_priors.append(float(_log_density(trace, problem.latent, 1, torch.float64)[0]))
    ok = [r for r in rows if r is not None]
    if not ok:
        raise ProblemError(f"all {n} runs of the model failed; first error: {errors[0] if errors else '?'}")
    template = ok[0]
    sim_template = next(s for s, r in zip(sim_rows, rows) if r is not None)
    values = {
        k: torch.stack([r[k] if r is not None else torch.full_like(t, float("nan")) if t.is_floating_point() else torch.zeros_like(t) for r in rows])
        for k, t in template.items()
    }
    sims = {
        k: torch.stack([s.get(k, torch.full_like(t, float("nan"))) for s in sim_rows]) for k, t in sim_template.items()
    }
    valid = torch.tensor([r is not None for r in rows]) & _row_valid({**values, **sims}, n)
    log_lik = torch.tensor(log_liks, dtype=torch.float64) if y is not None else None
    if log_lik is not None:
        valid &= ~torch.isnan(log_lik)
    lp = torch.tensor(log_priors, dtype=torch.float64) if want_prior else None
    return Batch(values, sims, lp, log_lik, valid, errors)


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001
        raise ProblemError(f"observation for site {name!r} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object:
        raise ProblemError(f"observation for site {name!r} is not numeric (dtype object)")
    if arr.dtype.kind == "f" and arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    return torch.as_tensor(arr)
