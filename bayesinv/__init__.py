r"""bayesinv: Bayesian inverse problems in physics and imaging.

Write the inverse problem as a Pyro model ``model(y=None)`` and call

>>> idata = bayesinv.infer(model, y, method="importance")   # -> arviz.InferenceData

``import bayesinv`` is light: the public names below, and the submodules
(``bayesinv.data``, ``bayesinv.diagnostics``, ...), are imported on first use, so that
torch, Pyro, ArviZ, SciPy, matplotlib, xarray and zarr load only when something needs
them (the ``bayesinv`` command line answers ``--help`` without any of them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bayesinv._version import __version__
from bayesinv import errors
from bayesinv.errors import BayesinvError, OptionError, PosteriorFileError, StoreError, StoreLockedError

#: Public name → the module that defines it (imported on first access).
_LAZY = {
    "infer": "bayesinv.api",
    "fit": "bayesinv.api",
    "load": "bayesinv.io",
    "simulate": "bayesinv.data",
    "compare": "bayesinv.diagnostics",
    "register_method": "bayesinv.registry",
    "available_methods": "bayesinv.registry",
    "Draws": "bayesinv.registry",
    "trace_problem": "bayesinv.problem",
    "Problem": "bayesinv.problem",
    "ProblemError": "bayesinv.errors",
    "simulator": "bayesinv.simulators",
    "external": "bayesinv.simulators",
    "python_script": "bayesinv.simulators",
    "Simulator": "bayesinv.simulators",
    "SimulationError": "bayesinv.errors",
}

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ imports these on first use
    from bayesinv.api import fit, infer
    from bayesinv.data import simulate
    from bayesinv.diagnostics import compare
    from bayesinv.errors import ProblemError, SimulationError
    from bayesinv.io import load
    from bayesinv.problem import Problem, trace_problem
    from bayesinv.registry import Draws, available_methods, register_method
    from bayesinv.simulators import Simulator, external, python_script, simulator

__all__ = [
    "__version__",
    "infer",
    "fit",
    "load",
    "simulate",
    "compare",
    "register_method",
    "available_methods",
    "trace_problem",
    "Problem",
    "ProblemError",
    "Draws",
    "simulator",
    "external",
    "python_script",
    "SimulationError",
    "errors",
    "BayesinvError",
    "OptionError",
    "PosteriorFileError",
    "StoreError",
    "StoreLockedError",
]


def __getattr__(name: str) -> Any:
    r"""Imports a public name, or a submodule (``bayesinv.data``), on first access."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next access is an ordinary attribute
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"bayesinv.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bayesinv.{name}":  # the submodule exists but one of its imports is missing
                raise
    raise AttributeError(f"module 'bayesinv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
