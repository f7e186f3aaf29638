r"""NumPyro models: language detection, tracing, and batched runs in JAX.

A model written with ``numpyro.sample`` / ``numpyro.deterministic`` / ``numpyro.plate`` is
traced into the same :class:`~bayesinv.problem.Problem` as a Pyro model (its
``language`` is ``"numpyro"``), so every method sees the same sites, shapes and errors.
:func:`run_batch` runs ``n`` draws of the joint in one ``jax.jit(jax.vmap(...))`` call
(a Python loop when the model cannot be traced by JAX, e.g. data-dependent control flow),
with latent values fixed, observations conditioned, and per-draw log-densities, then
hands the arrays to torch at the boundary: the simulation store, importance sampling and
the amortized methods work on them unchanged. ``method="nuts"`` runs NumPyro's NUTS
(:mod:`bayesinv.methods.nuts`).

Seeds: a batch seeded with ``seed`` uses ``jax.random.PRNGKey(seed % 2**32)`` folded
with the high bits, split into one key per draw, so a chunk is reproducible.
"""

from __future__ import annotations

import builtins
import dis
import inspect
import logging
import math
import types
from typing import Any, Callable, Mapping

import numpy as np
import torch

from bayesinv.errors import ProblemError

__all__ = ["is_numpyro_model", "trace_numpyro", "run_batch", "to_jax", "torch_constraint", "simulator_call", "is_jax"]

_log = logging.getLogger("bayesinv")
_MAX_TRACE_ATTEMPTS = 10


# -- language detection -------------------------------------------------------------------
def _function_of(model: Any) -> Any:
    fn = inspect.unwrap(model) if callable(model) else model
    fn = getattr(fn, "__func__", fn)
    if not hasattr(fn, "__code__") and callable(fn):
        fn = getattr(type(fn).__call__, "__func__", type(fn).__call__)
    return fn


def _referenced_roots(fn: Any, depth: int = 2, seen: set[int] | None = None) -> set[str]:
    r"""Top-level module names of the globals (and closure values) ``fn``'s code refers to."""
    seen = set() if seen is None else seen
    fn = _function_of(fn)
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen:
        return set()
    seen.add(id(code))
    names: set[str] = set()
    roots: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        roots.update(i.argval.split(".")[0] for i in dis.get_instructions(c) if i.opname == "IMPORT_NAME")
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    scope = dict(getattr(fn, "__globals__", {}))
    for cell_name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        try:
            scope[cell_name] = cell.cell_contents
            names.add(cell_name)
        except ValueError:  # an empty cell
            pass
    for name in names:
        obj = scope.get(name, getattr(builtins, name, None))
        if obj is None:
            continue
        if isinstance(obj, types.ModuleType):
            roots.add(obj.__name__.split(".")[0])
            continue
        module = getattr(obj, "__module__", None) or ""
        roots.add(module.split(".")[0])
        if depth > 0 and isinstance(obj, types.FunctionType) and module == getattr(fn, "__module__", None):
            roots |= _referenced_roots(obj, depth - 1, seen)
    return roots


def is_numpyro_model(model: Callable) -> bool:
    r"""Whether ``model`` is written in NumPyro (it refers to ``numpyro`` and not to ``pyro``).

    The model's code is inspected (its globals, imports, closure and same-module helpers);
    it is not run. A model that refers to both is taken for a Pyro model.
    """
    roots = _referenced_roots(model)
    return "numpyro" in roots and "pyro" not in roots


# -- conversions ----------------------------------------------------------------------------
def to_jax(value: Any) -> Any:
    r"""Torch tensors (also inside dicts) → JAX arrays; everything else unchanged."""
    import jax.numpy as jnp

    if isinstance(value, Mapping):
        return {k: to_jax(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return jnp.asarray(value.detach().cpu().numpy())
    return value


def _to_torch(value: Any) -> torch.Tensor:
    arr = np.array(value)  # a writeable copy
    if arr.dtype.kind == "f" and arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float32, "bfloat16": torch.float32,
           "int32": torch.int64, "int64": torch.int64, "int8": torch.int64, "uint8": torch.int64, "bool": torch.bool}  # fmt: skip


def torch_constraint(c: Any) -> Any:
    r"""The torch constraint equal to a NumPyro constraint (``None`` when there is none)."""
    from numpyro.distributions import constraints as nc
    from torch.distributions import constraints as tc

    if c is None:
        return None
    name = type(c).__name__.lstrip("_")
    if isinstance(c, nc._IndependentConstraint):
        base = torch_constraint(c.base_constraint)
        return None if base is None else tc.independent(base, c.reinterpreted_batch_ndims)
    simple = {"Real": tc.real, "Positive": tc.positive, "UnitInterval": tc.unit_interval, "Simplex": tc.simplex,
              "Boolean": tc.boolean, "Nonnegative": tc.nonnegative, "NonnegativeInteger": tc.nonnegative_integer,
              "PositiveInteger": tc.positive_integer, "RealVector": tc.real_vector, "Circular": tc.interval(-math.pi, math.pi),
              "LowerCholesky": tc.lower_cholesky, "PositiveDefinite": tc.positive_definite,
              "CorrCholesky": tc.corr_cholesky}  # fmt: skip
    if name in simple:
        return simple[name]
    lo, hi = getattr(c, "lower_bound", None), getattr(c, "upper_bound", None)
    as_float = lambda v: float(np.asarray(v)) if np.ndim(v) == 0 else torch.as_tensor(np.asarray(v))
    if name in ("Interval", "OpenInterval"):
        return tc.interval(as_float(lo), as_float(hi))
    if name == "GreaterThan":
        return tc.greater_than(as_float(lo))
    if name == "GreaterThanEq":
        return tc.greater_than_eq(as_float(lo))
    if name == "LessThan":
        return tc.less_than(as_float(hi))
    if name == "IntegerInterval":
        return tc.integer_interval(int(lo), int(hi))
    if name == "IntegerGreaterThan":
        return tc.integer_interval(int(lo), 2**62)
    return None


# -- black-box simulators in NumPyro models ---------------------------------------------
_RECORDING: list[set[str]] = []  # simulator names seen by the tracing run in progress
_COLLECTORS: list[Any] = []  # failure counts and messages of the batch run in progress


def _collector() -> Any:
    return _COLLECTORS[-1] if _COLLECTORS else None


def is_jax(value: Any) -> bool:
    r"""Whether ``value`` is a JAX array or tracer."""
    return type(value).__module__.split(".")[0] in ("jax", "jaxlib")


def simulator_call(sim: Any, args: tuple) -> Any:
    r"""Calls a :func:`bayesinv.simulator` black box from JAX code (a NumPyro model).

    With concrete arrays (the tracing run, a draw-by-draw run) the simulator runs at once
    on a batch of one and the output shape per input shapes is remembered; inside
    ``jax.jit``/``jax.vmap`` it runs through :func:`jax.pure_callback` with
    ``vmap_method="broadcast_all"``, so a vmapped batch of draws is one batched simulator
    call (workers, timeouts and failure isolation as for Pyro models). Failed rows are
    NaN and are excluded like any failed draw. There is no gradient: ``nuts`` refuses the
    model by the simulator's name.
    """
    import jax
    import jax.numpy as jnp

    from bayesinv.errors import SimulationError

    for seen in _RECORDING:
        seen.add(sim.name)
    per_draw = tuple(tuple(np.shape(a)) for a in args)
    shapes = sim.__dict__.setdefault("_jax_shapes", {})

    def host(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        batched = arrays[0].ndim > len(per_draw[0])
        if not batched:
            arrays = [a[None] for a in arrays]
        n = arrays[0].shape[0]
        try:
            out = np.asarray(sim._run(arrays, _collector()), dtype=np.float32)
        except SimulationError:  # every row failed: NaN rows, excluded downstream
            out = np.full((n, *shapes[per_draw]), np.nan, dtype=np.float32)
        return out if batched else out[0]

    if not any(isinstance(a, jax.core.Tracer) for a in args):
        out = np.asarray(sim._run([np.asarray(a)[None] for a in args], _collector()), dtype=np.float32)
        shapes[per_draw] = out.shape[1:]
        return jnp.asarray(out[0])
    if per_draw not in shapes:
        raise SimulationError(
            f"simulator {sim.name!r} was first called inside a JAX transformation (input shapes {per_draw}), so"
            " its output shape is unknown: trace the model first (bayesinv.trace_problem) or call it once eagerly"
        )
    return jax.pure_callback(host, jax.ShapeDtypeStruct(shapes[per_draw], jnp.float32), *args, vmap_method="broadcast_all")


# -- tracing --------------------------------------------------------------------------------
def _key(seed: int):
    import jax

    seed = int(seed) % (2**63)
    return jax.random.fold_in(jax.random.PRNGKey(seed % (2**32)), seed >> 32)


def _trace(model: Callable, seed: int, arg: Any, data: Mapping[str, Any] | None = None):
    from numpyro import handlers

    fn = handlers.condition(model, data=data) if data else model
    return handlers.trace(handlers.seed(fn, rng_seed=_key(seed))).get_trace(arg)


def _sites(tr) -> dict[str, dict]:
    return {k: s for k, s in tr.items() if s["type"] in ("sample", "deterministic")}


def _find_observed(model: Callable, tr0, seed: int, observed: tuple[str, ...] | None) -> tuple[dict[str, str | None], tuple[str, ...]]:
    r"""Observed site → the key the model reads it under (``None``: the argument itself), and fixed observations."""
    fixed = tuple(k for k, s in _sites(tr0).items() if s["type"] == "sample" and s.get("is_observed"))
    samples = [k for k, s in _sites(tr0).items() if s["type"] == "sample" and not s.get("is_observed")]
    if observed is not None:
        unknown = [n for n in observed if n not in samples]
        if unknown:
            raise ProblemError(f"observed= names {unknown}, which are not sample sites of the model {samples}")
        if len(observed) == 1:
            return {observed[0]: None}, fixed
        return {n: n for n in observed}, fixed
    order = sorted(samples, key=lambda k: (k != "y", samples.index(k)))
    for name in order:  # pass one site's simulated value as y: the site(s) it conditions are observed
        try:
            tr = _trace(model, seed, tr0[name]["value"])
        except Exception:  # noqa: BLE001 - that site's value is not what the model expects as y
            continue
        got = tuple(k for k, s in _sites(tr).items() if s["type"] == "sample" and s.get("is_observed") and k not in fixed)
        if got:
            return {k: None for k in got}, fixed
    try:  # a dict observation keyed by site name
        tr = _trace(model, seed, {k: tr0[k]["value"] for k in samples})
        got = tuple(k for k, s in _sites(tr).items() if s["type"] == "sample" and s.get("is_observed") and k not in fixed)
        if got:
            return {k: k for k in got}, fixed
    except Exception:  # noqa: BLE001
        pass
    raise ProblemError(
        "no observed site found in the NumPyro model: pass the observation as numpyro.sample(name, dist, obs=y),"
        " or name the observed site(s) with observed=[...]"
    )


def trace_numpyro(model: Callable, *, observed: tuple[str, ...] | None = None, seed: int = 0):
    r"""Traces a NumPyro model into a :class:`~bayesinv.problem.Problem` (``language="numpyro"``).

    Tracing runs the model with ``y=None`` under NumPyro's ``seed`` and ``trace`` handlers,
    retrying other prior draws when one raises, and finds the observed sites by passing a
    simulated value as ``y`` (no marker object: models may transform ``y``).

    Arguments:
        model: A NumPyro model ``model(y=None)``.
        observed: Observed site names, when they cannot be found automatically.
        seed: Seed of the tracing draw.

    Returns:
        The traced problem.
    """
    from bayesinv.problem import Problem, Site

    failures = []
    seen: set[str] = set()
    _RECORDING.append(seen)
    try:
        tr0 = None
        for attempt in range(_MAX_TRACE_ATTEMPTS):
            try:
                tr0 = _trace(model, seed + attempt, None)
                break
            except Exception as exc:  # noqa: BLE001 - a failing prior draw: try another
                failures.append(exc)
    finally:
        _RECORDING.remove(seen)
    if tr0 is None:
        exc = failures[0]
        raise ProblemError(
            f"the NumPyro model {getattr(model, '__name__', model)!r} failed on {_MAX_TRACE_ATTEMPTS} prior draws;"
            f" first error: {type(exc).__name__}: {exc}"
        ) from exc
    obs_keys, fixed = _find_observed(model, tr0, seed + len(failures), tuple(observed) if observed is not None else None)
    sites: dict[str, Site] = {}
    batch_ndim = 0
    for name, s in _sites(tr0).items():
        value = np.asarray(s["value"])
        kind = "deterministic" if s["type"] == "deterministic" else "observed" if (name in obs_keys or name in fixed) else "latent"
        fn = s.get("fn")
        event_dim = int(getattr(fn, "event_dim", value.ndim)) if fn is not None else value.ndim
        if fn is not None:
            batch_ndim = max(batch_ndim, len(getattr(fn, "batch_shape", ())))
        support = None
        if kind != "deterministic":
            support = torch_constraint(getattr(fn, "support", None))
            if support is None:
                raise ProblemError(f"site {name!r}: NumPyro support {getattr(fn, 'support', None)!r} has no torch counterpart")
        sites[name] = Site(
            name=name, kind=kind, shape=tuple(value.shape), event_dim=event_dim, support=support,
            dtype=_DTYPES.get(str(value.dtype), torch.float32), implicit=False,
            distribution=type(fn).__name__ if fn is not None else "",
        )  # fmt: skip
    return Problem(
        model=model, sites=sites, simulators=tuple(sorted(seen)), obs_keys=obs_keys, fixed_observed=fixed, batch_ndim=batch_ndim,
        name=getattr(model, "__name__", type(model).__name__), language="numpyro",
    )  # fmt: skip


# -- batched runs ---------------------------------------------------------------------------
_COMPILED: dict[tuple, Callable] = {}


def _runner(problem, has_fixed: bool, has_y: bool, want_prior: bool) -> Callable:
    r"""``(keys, fixed, y) -> (values, log_prior, log_lik)`` for one draw per key."""
    import jax.numpy as jnp

    latent, observed = problem.latent, problem.observed
    names = tuple(problem.sites)

    def one(key, fixed, y):
        from numpyro import handlers

        fn = handlers.condition(problem.model, data=fixed) if has_fixed else problem.model
        tr = handlers.trace(handlers.seed(fn, rng_seed=key)).get_trace(y)
        values = {n: tr[n]["value"] for n in names}
        lp = sum(jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"])) for n in latent) if want_prior else jnp.zeros(())
        ll = sum(jnp.sum(tr[n]["fn"].log_prob(tr[n]["value"])) for n in observed) if has_y else jnp.zeros(())
        return values, jnp.asarray(lp, jnp.float32) + 0.0, jnp.asarray(ll, jnp.float32) + 0.0

    return one


def _compiled(problem, has_fixed: bool, has_y: bool, want_prior: bool) -> Callable:
    import jax

    key = (id(problem.model), tuple(problem.sites), has_fixed, has_y, want_prior)
    if key not in _COMPILED:
        one = _runner(problem, has_fixed, has_y, want_prior)
        _COMPILED[key] = jax.jit(jax.vmap(one, in_axes=(0, 0 if has_fixed else None, None)))
        while len(_COMPILED) > 32:
            _COMPILED.pop(next(iter(_COMPILED)))
    return _COMPILED[key]


def run_batch(problem, n: int, *, y=None, fixed=None, replay_sims=None, seed: int | None = None,
              log_prior: bool = False, vectorize: bool | None = None):
    r"""Runs a NumPyro problem for ``n`` draws (see :func:`bayesinv.problem.run_batch`).

    Returns:
        A :class:`~bayesinv.problem.Batch` of torch tensors.
    """
    import jax

    from bayesinv.problem import Batch

    if replay_sims:
        raise ProblemError("replaying stored simulator outputs is not supported for NumPyro models")
    seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] % (2**63)) if seed is None else seed
    keys = jax.random.split(_key(seed), n)
    arg = None if y is None else to_jax(problem.model_argument(y))
    fixed_j = None if not fixed else {k: to_jax(torch.as_tensor(v)) for k, v in fixed.items()}
    collector = types.SimpleNamespace(failures=0, errors=[])
    _COLLECTORS.append(collector)
    try:
        out = _run(problem, n, keys, fixed_j, arg, y is not None, log_prior, vectorize)
    finally:
        _COLLECTORS.remove(collector)
    values, lp, ll = out
    values = {k: _to_torch(v) for k, v in values.items()}
    valid = torch.ones(n, dtype=torch.bool)
    for v in values.values():
        if v.is_floating_point():
            valid &= torch.isfinite(v.reshape(n, -1)).all(1)
    log_lik = _to_torch(ll).double() if y is not None else None
    if log_lik is not None:
        valid &= ~torch.isnan(log_lik)
    errors = list(collector.errors)
    if not bool(valid.all()) and not errors:
        errors.append(f"{int((~valid).sum())} draw(s) of the NumPyro model had non-finite values")
    return Batch(values, {}, _to_torch(lp).double() if log_prior else None, log_lik, valid, errors)


def _run(problem, n, keys, fixed_j, arg, has_y: bool, log_prior: bool, vectorize: bool | None):
    import jax

    out = None
    if vectorize is not False:
        try:
            out = _compiled(problem, fixed_j is not None, has_y, log_prior)(keys, fixed_j, arg)
        except Exception as exc:  # noqa: BLE001 - JAX cannot trace the model: run it draw by draw
            if vectorize:
                raise ProblemError(f"the NumPyro model {problem.name!r} cannot be vectorised with jax.vmap: {exc}") from exc
            _log.debug("numpyro model %s: jax.vmap failed (%s); running draw by draw", problem.name, exc)
    if out is None:
        one = _runner(problem, fixed_j is not None, has_y, log_prior)
        rows = []
        for i in range(n):
            row_fixed = None if fixed_j is None else {k: v[i] for k, v in fixed_j.items()}
            rows.append(one(keys[i], row_fixed, arg))
        out = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *rows)
    return out


# -- NUTS -----------------------------------------------------------------------------------
_MCMC: dict[tuple, Any] = {}  # compiled NUTS runs, most recently used last

def default_chain_method(num_chains: int) -> str:
    r"""``"parallel"`` when JAX sees a device per chain, else ``"vectorized"`` (all chains in one
    vmapped program: measured faster than ``"sequential"`` on CPU, docs/benchmarks.md)."""
    import jax

    return "parallel" if num_chains > 1 and jax.local_device_count() >= num_chains else "vectorized"


def nuts(
    problem,
    y: dict[str, torch.Tensor],
    *,
    num_samples: int,
    num_chains: int,
    warmup_steps: int,
    seed: int,
    target_accept_prob: float,
    max_tree_depth: int,
    dense_mass: bool = False,
    init_strategy: str = "uniform",
    chain_method: str | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    r"""NumPyro's NUTS on a NumPyro problem: latent draws ``(chain, draw, *shape)``, sample stats
    named as :func:`arviz.from_numpyro` names them, and run attributes."""
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_sample, init_to_uniform

    inits = {"uniform": init_to_uniform, "median": init_to_median, "sample": init_to_sample}
    method = chain_method or default_chain_method(num_chains)
    key = (id(problem.model), tuple(problem.sites), num_samples, num_chains, warmup_steps, target_accept_prob,
           max_tree_depth, dense_mass, init_strategy, method, bool(progress))  # fmt: skip
    mcmc = _MCMC.pop(key, None)
    if mcmc is None:  # compiled once per model and settings; y is an argument (jit_model_args), not a constant
        kernel = NUTS(problem.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
                      dense_mass=dense_mass, init_strategy=inits[init_strategy]())  # fmt: skip
        mcmc = MCMC(kernel, num_warmup=warmup_steps, num_samples=num_samples, num_chains=num_chains,
                    chain_method=method, progress_bar=bool(progress), jit_model_args=True)  # fmt: skip
    _MCMC[key] = mcmc
    while len(_MCMC) > 8:
        _MCMC.pop(next(iter(_MCMC)))
    fields = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy", "adapt_state.step_size")
    mcmc.run(_key(seed), to_jax(problem.model_argument(y)), extra_fields=fields)
    samples = mcmc.get_samples(group_by_chain=True)
    latents = {n: np.array(samples[n]) for n in problem.latent}  # writeable copies
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "n_steps": extra["num_steps"],
        "tree_depth": np.log2(np.maximum(extra["num_steps"], 1)).astype(int) + 1,
        "acceptance_rate": extra["accept_prob"],
        "energy": extra["energy"],
        "lp": -extra["potential_energy"],
        "step_size": extra["adapt_state.step_size"],
    }
    attrs = {"engine": "numpyro", "chain_method": method, "jax_backend": jax.default_backend()}
    return latents, stats, attrs
