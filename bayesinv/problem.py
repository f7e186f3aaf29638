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
import logging
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

from bayesinv._checks import as_observation, check_count, check_seed
from bayesinv._context import RunContext, run_context
from bayesinv.simulators import _OutputShapeError

__all__ = [
    "Site",
    "Problem",
    "Batch",
    "ProblemError",
    "trace_problem",
    "run_batch",
    "replay_deterministic",
    "as_problem",
]

SiteKind = Literal["latent", "deterministic", "observed"]
_BATCH_PLATE = "_bayesinv_draws"


from bayesinv.errors import ProblemError, SimulationError  # noqa: E402  (re-exported here, where it always lived)

_log = logging.getLogger("bayesinv")


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
        name: The model's name.
        transformed_observed: Observed sites whose value is not the observation itself but
            a transform of it (the model observes ``y * 2``, ``y.reshape(...)``): found when
            tracing, for methods that learn from simulated site values.
        language: ``"pyro"`` or ``"numpyro"``: what the model is written in (detected).
    """

    model: Callable
    sites: dict[str, Site]
    simulators: tuple[str, ...] = ()
    obs_keys: dict[str, str | None] = field(default_factory=dict)
    fixed_observed: tuple[str, ...] = ()
    batch_ndim: int = 0
    name: str = ""
    transformed_observed: tuple[str, ...] = ()
    language: str = "pyro"

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
            t = as_observation(value, name)
            dtype = site.dtype if site.dtype.is_floating_point else t.dtype
            t = t.to(dtype)
            shape = tuple(t.shape)
            nd = len(site.shape)
            if len(shape) < nd or shape[len(shape) - nd:] != site.shape or (not allow_batch and len(shape) != nd):
                raise ProblemError(
                    f"observation for site {name!r} has shape {shape}, but the model's observed site {name!r}"
                    f" has shape {site.shape}"
                    + (" (a batch of observations goes in leading dims)" if allow_batch else "")
                    + (f"; the model observes a transform of y at site {name!r}: pass y with the site's shape"
                       if name in self.transformed_observed else "")
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


_TRACE_ATTEMPTS = 10


def _attempt_seed(seed: int, attempt: int) -> int:
    r"""The seed of tracing attempt ``attempt`` (attempt 0 uses ``seed`` itself)."""
    if attempt == 0:
        return seed
    state = np.random.SeedSequence([seed, attempt, 7]).generate_state(1, dtype=np.uint64)[0]
    return int(state % np.uint64(2**63))


def _sample_nodes(trace) -> dict[str, dict]:
    return {name: node for name, node in trace.nodes.items() if node["type"] == "sample"}


def _numpyro_model(model: Callable) -> bool:
    r"""Whether ``model`` is written in NumPyro (its code refers to numpyro, not pyro), when NumPyro is installed."""
    try:
        import numpyro  # noqa: F401
    except ImportError:
        return False
    from bayesinv._numpyro import is_numpyro_model

    return is_numpyro_model(model)


def trace_problem(model: Callable, *, observed: list[str] | tuple[str, ...] | str | None = None, seed: int | None = 0) -> Problem:
    r"""Traces ``model`` and describes its sites.

    The model first runs once without an observation (``model()``), drawing its latent
    sites from the prior. A model that fails for some prior draws (a solver that
    diverges for ~5 % of parameters) is traced again with other draws, up to 10 in all;
    only when every draw fails is the error raised, with the first draw's error.

    The observed sites are found by running the model again with the same latent values
    and an observation: first a marker object standing in for ``y`` (it finds the sites
    that receive ``obs=y`` or ``obs=y["key"]`` and under which key); when the model
    cannot use the marker (it transforms ``y`` before observing it: ``y.reshape(...)``,
    ``y * 2``, ``torch.as_tensor(y)``), with each sample site's own simulated value as
    ``y`` (then a dict of them): the observed sites are those that receive ``obs=``
    only when an observation is given.

    Arguments:
        model: A Pyro or NumPyro model ``model(y=None)`` (the language is detected from its
            code, see :func:`bayesinv._numpyro.is_numpyro_model`) whose observed sites receive ``obs=y``
            (or ``obs=y["name"]`` for several observed sites), possibly transformed.
        observed: Names of the observed sites, for models whose observation cannot be
            found automatically.
        seed: Seed of the first tracing run (the one seed rule: an ``int`` in
            ``[0, 2**63)``, or ``None`` for a fresh random seed).

    Returns:
        A :class:`Problem`.

    Example:
        >>> def model(y=None):
        ...     theta = pyro.sample("theta", dist.Normal(torch.zeros(4), 1.0).to_event(1))
        ...     obs = None if y is None else torch.as_tensor(y).reshape(4)
        ...     return pyro.sample("y", dist.Normal(theta, 0.1).to_event(1), obs=obs)
        >>> trace_problem(model).observed
        ('y',)
    """
    if not callable(model):
        raise ProblemError(f"model must be a callable Pyro or NumPyro model, got {type(model).__name__}")
    if isinstance(observed, str):
        observed = (observed,)
    if observed is not None:
        observed = tuple(observed)
        bad = [n for n in observed if not isinstance(n, str)]
        if bad or not observed:
            raise ProblemError(f"observed= must name at least one site (a list of strings), got {list(observed)!r}")
    if _numpyro_model(model):
        from bayesinv import _numpyro

        return _numpyro.trace_numpyro(model, observed=observed, seed=0 if seed is None else check_seed(seed))
    seed = check_seed(seed)
    trace, ctx, used_seed = _trace_prior(model, seed)
    if observed is not None:
        unknown = [n for n in observed if n not in trace.nodes]
        if unknown:
            raise ProblemError(f"observed= names {unknown} are not sites of the model ({list(trace.nodes)})")
        obs_keys: dict[str, str | None] = {n: None for n in observed}
        transformed: tuple[str, ...] = ()
    else:
        obs_keys, transformed = _find_observed(model, trace, ctx, used_seed)
    sites: dict[str, Site] = {}
    fixed: list[str] = []
    batch_ndim = 0
    for name, node in _sample_nodes(trace).items():
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
        transformed_observed=transformed,
    )


def _trace_prior(model: Callable, seed: int):
    r"""Runs ``model()`` on up to :data:`_TRACE_ATTEMPTS` prior draws; the first that succeeds."""
    failures: list[tuple[int, Exception, RunContext]] = []
    for attempt in range(_TRACE_ATTEMPTS):
        s = _attempt_seed(seed, attempt)
        ctx = RunContext(batch_size=None)
        try:
            with _rng(s), run_context(ctx), poutine.trace() as tracer:
                model()
        except Exception as exc:  # noqa: BLE001 - retried with another prior draw, then reported
            failures.append((s, exc, ctx))
            continue
        if failures:
            _log.info(
                "tracing model %s: %d prior draw(s) failed before one succeeded (first error: %s: %s)",
                getattr(model, "__name__", "model"), len(failures), type(failures[0][1]).__name__, failures[0][1],
            )
        return tracer.trace, ctx, s
    raise _tracing_error(model, failures)


def _tracing_error(model: Callable, failures: list[tuple[int, Exception, RunContext]]) -> Exception:
    r"""The error when every tracing draw failed: names a simulator whose output was never finite."""
    name = getattr(model, "__name__", type(model).__name__)
    first = failures[0][1]
    k = len(failures)
    nonfinite: set[str] | None = None
    for _, _, ctx in failures:
        bad = {key for key, out in ctx.outputs.items() if out.is_floating_point() and not torch.isfinite(out).any()}
        nonfinite = bad if nonfinite is None else nonfinite & bad
    if nonfinite:
        sims = sorted(nonfinite)
        err: Exception = SimulationError(
            f"simulator(s) {sims} of model {name!r} returned only non-finite values (NaN/inf) on each of the {k}"
            f" prior draws tried while tracing the model, so the distribution it feeds cannot be built"
            f" (the model then failed with {type(first).__name__}: {_short(first)}); check the simulator's output"
        )
    else:
        err = ProblemError(
            f"running model {name!r} to trace it failed on each of the {k} prior draws tried;"
            f" the first failed with {type(first).__name__}: {_short(first)}"
        )
    err.__cause__ = first
    return err


def _short(exc: BaseException, limit: int = 500) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + " ..."


def _find_observed(model: Callable, trace, ctx: RunContext, seed: int) -> tuple[dict[str, str | None], tuple[str, ...]]:
    r"""The observed sites of a model traced without observation (``trace``), and their keys.

    Returns:
        Observed site → key in a dict observation (``None`` for a plain argument), and the
        observed sites whose value differs from the observation given (transformed ``y``).
    """
    nodes = _sample_nodes(trace)
    latents = {n: node["value"] for n, node in nodes.items() if not node["is_observed"] and not _is_deterministic(node)}
    fixed_before = {n for n, node in nodes.items() if node["is_observed"]}
    replay = {k: v for k, v in ctx.outputs.items()}

    def run(arg: Any, finder: Messenger | None = None):
        run_ctx = RunContext(batch_size=None, replay=dict(replay))
        with _rng(seed), run_context(run_ctx), poutine.trace() as tracer, _FixLatents(latents):
            with finder if finder is not None else contextlib.nullcontext():
                model(arg)
        return _sample_nodes(tracer.trace)

    finder = _ObsFinder()
    marker_error: Exception | None = None
    try:
        run(_ObsMarker(), finder)
    except Exception as exc:  # noqa: BLE001 - the model transforms y: look for the sites another way
        marker_error = exc
    else:
        if finder.found:
            return dict(finder.found), ()

    def newly_observed(after: dict[str, dict]) -> list[str]:
        return [n for n, node in after.items() if node["is_observed"] and n not in fixed_before and not _is_deterministic(node)]

    candidates = [n for n in reversed(list(latents))]
    fallback: tuple[dict[str, str | None], tuple[str, ...]] | None = None
    for name in candidates:
        value = torch.as_tensor(latents[name]).detach()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                after = run(value.clone())
        except Exception:  # noqa: BLE001 - not the observed site (or a dict observation)
            continue
        found = newly_observed(after)
        if not found:
            continue
        transformed = tuple(
            n for n in found if not (n == name and _same(after[n]["value"], value))
        )
        result = ({n: None for n in found}, transformed)
        if name in found:
            return result
        fallback = fallback or result
    if fallback is not None:
        return fallback
    as_dict = {n: torch.as_tensor(latents[n]).detach().clone() for n in candidates}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            after = run(as_dict)
    except Exception:  # noqa: BLE001
        after = {}
    found = newly_observed(after)
    if found:
        transformed = tuple(n for n in found if not _same(after[n]["value"], as_dict.get(n)))
        return {n: n for n in found}, transformed
    if marker_error is not None:
        raise ProblemError(
            f"cannot find the observed site(s) of model {getattr(model, '__name__', 'model')!r}: with an observation"
            f" it failed with {type(marker_error).__name__}: {_short(marker_error)}, and no site received obs="
            " when given a simulated value as y; pass observed=[site names]"
        ) from marker_error
    return {}, ()


def _same(value: Any, given: torch.Tensor | None) -> bool:
    if given is None or not isinstance(value, torch.Tensor):
        return False
    return tuple(value.shape) == tuple(given.shape) and bool(torch.equal(value.detach().to(given.dtype), given))


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
    n = check_count("n", n)
    if seed is not None:
        seed = check_seed(seed)
    if y is not None and not _is_checked(problem, y):
        y, batch_shape = problem.check_y(y)
    if problem.language == "numpyro":
        from bayesinv import _numpyro

        return _numpyro.run_batch(problem, n, y=y, fixed=fixed, replay_sims=replay_sims, seed=seed,
                                  log_prior=log_prior, vectorize=vectorize)  # fmt: skip
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if vectorize is not False and _vectorizable(problem) is not False:
            with _rng(seed):
                batch = _run_vectorized(problem, n, y, fixed, replay_sims, log_prior)
            if batch is not None:
                return batch
            if vectorize:
                raise ProblemError(
                    f"model {problem.name!r} does not broadcast over a batch plate; use vectorize=False"
                )
        # seeded afresh: a failed vectorised attempt has drawn random numbers, and the draws of a
        # batch must not depend on whether this process had tried one before
        with _rng(seed):
            return _run_loop(problem, n, y, fixed, replay_sims, log_prior)


_VECTORIZABLE: dict[int, bool] = {}


def _is_checked(problem: Problem, y: Any) -> bool:
    r"""Whether ``y`` is already a validated observation: a dict of tensors, one per observed site."""
    return (
        isinstance(y, Mapping)
        and set(y) == set(problem.observed)
        and all(isinstance(v, torch.Tensor) and not v.requires_grad and tuple(v.shape) == problem.sites[k].shape for k, v in y.items())
    )


def _check_observed_shapes(problem: Problem, trace, batch: tuple[int, ...]) -> None:
    r"""Raises when an observed site's distribution no longer has the shape it had when traced."""
    why = _observed_shape_change(problem, trace, batch)
    if why is not None:
        raise ProblemError(why)


def _observed_shape_change(problem: Problem, trace, batch: tuple[int, ...]) -> str | None:
    for name in problem.observed:
        node = trace.nodes.get(name)
        fn = None if node is None else node["fn"]
        if fn is None or not hasattr(fn, "batch_shape"):
            continue
        shape = tuple(fn.batch_shape) + tuple(getattr(fn, "event_shape", ()))
        want = problem.sites[name].shape
        nd = len(want)
        if len(shape) < nd or shape[len(shape) - nd :] != want:
            return (
                f"the model's observed site {name!r} has shape {shape[len(batch):]} in this run, but it had shape"
                f" {want} when the model was traced (and the observation has shape {want}); an observed site"
                " must keep its shape from call to call"
            )
    return None


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


class StopModel(Exception):
    r"""Raised by :class:`StopAfter` once every wanted site has a value."""


class StopAfter(Messenger):
    r"""Records the values of the sample (and deterministic) sites ``names`` and stops the model run
    (raises :class:`StopModel`) after the last of them: what comes later in the model — a simulator,
    the observation — is not run."""

    def __init__(self, names: Any):
        super().__init__()
        self.names = set(names)
        self.values: dict[str, torch.Tensor] = {}

    def _postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.names:
            self.values[msg["name"]] = torch.as_tensor(msg["value"]).detach()
            if set(self.values) == self.names:
                raise StopModel


def replay_deterministic(
    problem: Problem,
    names: Any,
    fixed: Mapping[str, torch.Tensor],
    n: int,
    *,
    y: dict[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    r"""The deterministic sites ``names`` of ``n`` runs of the model with the latent sites before them fixed, each run
    stopped as soon as they are all computed: a simulator (or anything else) that comes later in the model is
    not run. The push-forward of latent draws to the fields they define (as Pyro's ``Predictive``, without
    its cost when the simulator follows the field).

    Arguments:
        problem: The traced problem.
        names: Deterministic site names.
        fixed: Latent site → values ``(n, *shape)``: every latent site the model visits before the last of ``names``.
        n: The number of runs.
        y: A validated observation, for deterministic sites that follow an observed site.
        seed: Seed of the runs (``None``: the global RNG).

    Returns:
        Site → values ``(n, *shape)``.
    """
    names = list(names)
    if problem.language == "numpyro":
        return {k: run_batch(problem, n, y=y, fixed=fixed, seed=seed).values[k] for k in names}
    if y is not None and not _is_checked(problem, y):
        y, _ = problem.check_y(y)
    arg = problem.model_argument(y)

    def run(fix: Mapping[str, torch.Tensor], batch: int | None) -> dict[str, torch.Tensor]:
        stopper = StopAfter(names)
        with run_context(RunContext(batch_size=batch, replay=None)), _FixLatents(fix), stopper:
            try:
                if batch is None:
                    problem.model(arg)
                else:
                    with pyro.plate(_BATCH_PLATE, batch, dim=-(problem.batch_ndim + 1)):
                        problem.model(arg)
            except StopModel:
                pass
        missing = sorted(set(names) - set(stopper.values))
        if missing:
            raise ProblemError(f"the model finished without visiting the deterministic site(s) {missing}")
        return stopper.values

    with pyro.validation_enabled(False), warnings.catch_warnings(), _rng(seed):
        warnings.simplefilter("ignore", RuntimeWarning)
        if _vectorizable(problem) is not False:
            try:
                out = run(fixed, n)
                if all(tuple(v.shape) == (n, *problem.sites[k].shape) for k, v in out.items()):
                    return out
            except Exception:  # noqa: BLE001 - a model that does not broadcast runs row by row below
                pass
        rows = [run({k: v[i] for k, v in fixed.items()}, None) for i in range(n)]
    return {k: torch.stack([r[k] for r in rows]) for k in names}


def _run_vectorized(problem, n, y, fixed, replay_sims, want_prior) -> Batch | None:
    ctx = RunContext(batch_size=n, replay=dict(replay_sims) if replay_sims is not None else None)
    dim = -(problem.batch_ndim + 1)
    try:
        with run_context(ctx), poutine.trace() as tracer, _FixLatents(fixed or {}):
            with pyro.plate(_BATCH_PLATE, n, dim=dim):
                problem.model(problem.model_argument(y))
    except Exception as exc:  # noqa: BLE001
        # a simulator's wrong output shape is its bug, never a model that does not broadcast
        if _VECTORIZABLE.get(id(problem.model)) is True or isinstance(exc, _OutputShapeError):
            raise
        _VECTORIZABLE[id(problem.model)] = False
        _debug_fallback(problem, exc)
        return None
    trace = tracer.trace
    if y is not None:
        changed = _observed_shape_change(problem, trace, (n,))
        if changed is not None:  # the row-by-row run raises the error if the shape really changed
            return _not_vectorizable(problem, changed)
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
        if y is not None:
            _check_observed_shapes(problem, trace, ())
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
