r"""bayesinv: Bayesian inverse problems in physics and imaging.

Write the inverse problem as a Pyro model ``model(y=None)`` and call

>>> idata = bayesinv.infer(model, y, method="importance")   # -> arviz.InferenceData
"""

from bayesinv._version import __version__
from bayesinv.api import fit, infer
from bayesinv.data import simulate
from bayesinv.diagnostics import compare
from bayesinv import errors
from bayesinv.errors import BayesinvError, OptionError, PosteriorFileError, StoreError, StoreLockedError
from bayesinv.io import load
from bayesinv.problem import Problem, ProblemError, trace_problem
from bayesinv.registry import Draws, available_methods, register_method
from bayesinv.simulators import SimulationError, external, python_script, simulator

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
