r"""The public entry points: :func:`infer` and :func:`fit`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from bayesinv._checks import check_count, check_seed
from bayesinv.errors import OptionError
from bayesinv.problem import Problem, ProblemError, as_problem
from bayesinv.registry import MethodSpec, get_method

if TYPE_CHECKING:  # ArviZ (and SciPy, matplotlib through it) loads when infer() builds its result
    from bayesinv._arviz import az

__all__ = ["infer", "fit"]


def _check_options(spec: MethodSpec, options: Mapping[str, Any], fn: Callable | None = None) -> None:
    if spec.accepts_any_option and fn is None:
        return
    allowed = set(spec.option_names)
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise OptionError(
            f"method {spec.name!r} has no option(s) {unknown}; its options are {sorted(allowed)}"
        )


def _check_learned(spec: MethodSpec, options: Mapping[str, Any]) -> tuple[dict, dict]:
    r"""Splits and validates (names and values) the fit and sampling options of a learned method, before any work."""
    from bayesinv.amortized.fit import check_fit_options
    from bayesinv.amortized.method import make_sampler_config, split_options, to_json

    method = spec.amortized_method
    fit_options, sample_options = split_options(method, options)
    cfg, _ = check_fit_options(method, fit_options)
    scfg = make_sampler_config(method, sample_options)
    if method.check_sample is not None:
        method.check_sample(to_json(cfg), scfg, set(sample_options))
    return fit_options, sample_options


def infer(
    model: Callable | Problem,
    y: Any,
    method: str = "importance",
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    target: str | list[str] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    observed: list[str] | None = None,
    progress: bool | None = None,
    **options: Any,
) -> az.InferenceData:
    r"""Draws from the posterior of ``model`` given the observation ``y``.

    Arguments:
        model: A Pyro model ``model(y=None)`` whose observed site(s) receive ``obs=y``.
        y: The observation: an array/tensor for one observed site, or a dict keyed by
            observed site name.
        method: A registered method: ``"importance"``, ``"nuts"``, ``"mcmc"``, or an
            amortized method such as ``"cond_score"`` (fitted, then sampled).
        num_samples: Posterior draws (per chain for MCMC methods).
        seed: An integer in ``[0, 2**63)`` (the same seed gives the same draws), or ``None``
            for a fresh random seed (recorded in ``attrs["seed"]``).
        target: Site(s) to return. Default: every latent and deterministic site for
            sampling methods, every latent site for amortized methods.
        dims: Site name → names of its dims (ArviZ ``dims``).
        coords: Dim name → coordinate values.
        observed: Observed site names, for models where they cannot be found automatically.
        progress: Show progress bars (``None``: on a terminal).
        options: Options of the method (see its docstring). For a learned method they are
            the fields of its config (fit) and of its sampler config (sampling), split by
            name; both are validated before any simulation or training starts.

    Returns:
        An :class:`arviz.InferenceData` with groups ``posterior``, ``observed_data`` and
        ``sample_stats``; ``attrs`` record the method, its options, timings and the seed.

    Example:
        >>> idata = bayesinv.infer(model, y_obs, method="importance", num_samples=4000)
        >>> az.summary(idata)
    """
    spec = get_method(method)
    seed = check_seed(seed)
    num_samples = check_count("num_samples", num_samples)
    if spec.amortized_method is not None:
        fit_options, sample_options = _check_learned(spec, options)
    problem = as_problem(model, observed=observed)
    y_checked, batch_shape = problem.check_y(y, allow_batch=True)
    if batch_shape:
        raise ProblemError(
            f"infer() takes one observation; got a batch of shape {batch_shape}. Use"
            " fit(...).infer(y) of an amortized method for many observations"
        )
    if spec.needs_likelihood:
        problem.require_likelihood(method)
    if spec.needs_gradients:
        problem.require_differentiable(method)
    if spec.amortized:
        if spec.amortized_method is None:  # a user's amortized function: its signature names its fit options
            fit_names = set(spec.option_names)
            fit_options = {k: v for k, v in options.items() if k in fit_names}
            sample_options = {k: v for k, v in options.items() if k not in fit_names}
        t0 = time.perf_counter()
        posterior = spec.fn(problem, target=problem.resolve_target(target), seed=seed, progress=progress, **fit_options)
        fit_time = time.perf_counter() - t0
        idata = posterior.infer(y, num_samples=num_samples, seed=seed, dims=dims, coords=coords, **sample_options)
        idata.attrs["fit_time_s"] = fit_time  # the top-level attrs as every group's
        for group in idata.groups():
            idata[group].attrs["fit_time_s"] = fit_time
        return idata
    _check_options(spec, options)
    names = problem.resolve_target(target, default="all")
    t0 = time.perf_counter()
    draws = spec.fn(problem, y_checked, num_samples=num_samples, seed=seed, target=names, progress=progress, **options)
    sample_time = time.perf_counter() - t0
    attrs = {"sample_time_s": sample_time, "fit_time_s": 0.0, "num_simulations": 0}
    attrs.update(draws.attrs)
    from bayesinv.idata import to_inference_data

    return to_inference_data(
        draws.posterior,
        observed={k: v for k, v in y_checked.items()},
        sample_stats=draws.sample_stats,
        method=method,
        options={"num_samples": num_samples, **options},
        seed=seed,
        dims=dims,
        coords=coords,
        attrs=attrs,
    )


def fit(
    model: Callable | Problem,
    method: str = "cond_score",
    *,
    target: str | list[str] | None = None,
    seed: int | None = 0,
    observed: list[str] | None = None,
    progress: bool | None = None,
    **options: Any,
):
    r"""Trains an amortized posterior q(target | y) on simulations of ``model``.

    Arguments:
        model: A Pyro model ``model(y=None)``.
        method: An amortized method (``"cond_score"``, ``"flow"``, ``"vae"``, ...).
        target: Site(s) the posterior learns (default: every latent site).
        seed: An integer in ``[0, 2**63)``, or ``None`` for a fresh one (recorded in ``post.info["seed"]``).
        observed: Observed site names, for models where they cannot be found automatically.
        progress: Show progress bars (``None``: on a terminal).
        options: Options of the method: the fields of its config dataclass (e.g.
            ``max_epochs=``, ``hidden=``), ``config=`` (the dataclass or a dict; keywords
            override it) and ``num_simulations``, ``data``, ``transforms``, ``condition``,
            ``checkpoint``, ``resume``, ``device``, ``build``. Validated before any work.

    Returns:
        A posterior object with ``sample(y, n)``, ``infer(y, ...)`` and ``save(path)``.

    Example:
        >>> post = bayesinv.fit(model, method="flow", num_simulations=5000, hidden=(64, 64))
    """
    spec = get_method(method)
    seed = check_seed(seed)
    if spec.amortized_method is not None:
        from bayesinv.amortized.fit import check_fit_options

        check_fit_options(spec.amortized_method, options)
    problem = as_problem(model, observed=observed)
    if not spec.amortized:
        raise ProblemError(
            f"method {method!r} is not amortized: use infer(model, y, method={method!r}) instead of fit()"
        )
    _check_options(spec, options)
    return spec.fn(problem, target=problem.resolve_target(target), seed=seed, progress=progress, **options)
