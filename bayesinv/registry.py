r"""The method registry: ``infer(..., method="name")`` dispatches through it.

A sampling method is a function ``run(problem, y, *, num_samples, seed, target,
progress, **options) -> Draws``. An amortized method is a function
``fit(problem, *, target, seed, progress, **options) -> posterior`` whose result has
``infer(y, num_samples=..., seed=...)``; it is registered with ``amortized=True``. The
learned methods of bayesinv are :class:`~bayesinv.amortized.method.AmortizedMethod`
records registered with :func:`~bayesinv.amortized.method.register_amortized`, which
records them here with ``amortized_method=``: their options are the fields of their
config dataclasses, not of a signature.

Example:
    >>> @register_method("my_sampler")
    ... def my_sampler(problem, y, *, num_samples, seed, target, progress, step=0.1):
    ...     ...
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Draws", "MethodSpec", "register_method", "get_method", "available_methods"]


@dataclass
class Draws:
    r"""What a sampling method returns.

    Attributes:
        posterior: Site name → array ``(chain, draw, *shape)``.
        sample_stats: Name → array ``(chain, draw, ...)``: what the method knows per draw.
        attrs: Extra attributes (numbers or strings) for the InferenceData.
    """

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    r"""A registered method."""

    name: str
    fn: Callable
    amortized: bool = False
    needs_likelihood: bool = True
    needs_gradients: bool = False
    loader: Callable | None = None
    amortized_method: Any = None

    @property
    def option_names(self) -> tuple[str, ...]:
        if self.amortized_method is not None:
            return tuple(self.amortized_method.fit_options)
        skip = {"problem", "y", "num_samples", "seed", "target", "progress"}
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.name not in skip and p.kind is not p.VAR_KEYWORD)

    @property
    def accepts_any_option(self) -> bool:
        if self.amortized_method is not None:
            return False
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())


_REGISTRY: dict[str, MethodSpec] = {}
_BUILTIN = ("importance", "nuts", "mcmc", "cond_score", "flow", "flow_matching", "vae", "gauss_newton", "csd_star", "score_prior", "latent_prior")


def register_method(
    name: str,
    *,
    amortized: bool = False,
    needs_likelihood: bool | None = None,
    needs_gradients: bool = False,
    loader: Callable | None = None,
    overwrite: bool = False,
    amortized_method: Any = None,
) -> Callable[[Callable], Callable]:
    r"""Registers a method under ``name``.

    Arguments:
        name: The name users pass as ``method=``.
        amortized: Whether the function fits an amortized posterior (see module docs).
        needs_likelihood: Whether the method scores observations (default: not amortized).
        needs_gradients: Whether the method differentiates the model.
        loader: For amortized methods, ``loader(meta, tensors) -> posterior`` used by
            :func:`bayesinv.load`.
        overwrite: Allow replacing an existing registration.
        amortized_method: The :class:`~bayesinv.amortized.method.AmortizedMethod` record of a
            learned method on the amortized layer (options from its config dataclasses).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and not overwrite and _REGISTRY[name].fn is not fn:
            raise ValueError(f"method {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = MethodSpec(
            name=name,
            fn=fn,
            amortized=amortized,
            needs_likelihood=(not amortized) if needs_likelihood is None else needs_likelihood,
            needs_gradients=needs_gradients,
            loader=loader,
            amortized_method=amortized_method,
        )
        return fn

    return decorator


def _load_builtins() -> None:
    for mod in _BUILTIN:
        try:
            importlib.import_module(f"bayesinv.methods.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bayesinv.methods.{mod}":
                raise


def get_method(name: str) -> MethodSpec:
    r"""Returns the method registered as ``name`` (a clear error lists the known ones)."""
    if name not in _REGISTRY:
        _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    r"""Names of every registered method."""
    _load_builtins()
    return sorted(_REGISTRY)
