r"""The error types bayesinv raises for a user's mistake or a broken input.

Every error that a bad argument, a bad observation, a broken file or a failing simulator
can cause is one of these (all derive from :class:`BayesinvError`), and its message names
what is wrong: the site, the option, the shape or the value, and what is allowed. Anything
else escaping a public function is a bug in bayesinv.

=========================  =============================================================
``ProblemError``           a model, an observation or an argument bayesinv cannot use
``OptionError``            an unknown option, or an option value outside what is allowed
``StoreError``             a simulation store that cannot be opened, resumed or replaced
``StoreLockedError``       a simulation store held by another live writer
``CheckpointError``        a training checkpoint that does not belong to this run
``PosteriorFileError``     a saved posterior that is corrupted, hostile or of another format
``SimulationError``        a simulator whose every draw failed, or whose output has a wrong shape
``LikelihoodFreeError``    a likelihood asked of an observation that has none
=========================  =============================================================
"""

from __future__ import annotations

__all__ = [
    "BayesinvError",
    "ProblemError",
    "OptionError",
    "StoreError",
    "StoreLockedError",
    "CheckpointError",
    "PosteriorFileError",
    "SimulationError",
    "LikelihoodFreeError",
]


class BayesinvError(Exception):
    r"""Base class of every error bayesinv raises on purpose."""


class ProblemError(BayesinvError, ValueError):
    r"""A model, an observation or an argument that bayesinv cannot work with."""


class OptionError(ProblemError):
    r"""An unknown option, or an option value outside what is allowed (the message lists them)."""


class StoreError(ProblemError):
    r"""A simulation store that cannot be opened, resumed or replaced as asked."""


class StoreLockedError(StoreError):
    r"""Another live process holds the simulation store (the message names it)."""


class CheckpointError(BayesinvError, ValueError):
    r"""A training checkpoint that does not belong to this run (the message says what differs)."""


class PosteriorFileError(BayesinvError, ValueError):
    r"""A posterior file that is corrupted, hostile, of another format or of an unsupported version."""


class SimulationError(BayesinvError, RuntimeError):
    r"""A simulator whose every draw failed, or whose output has the wrong shape."""


class LikelihoodFreeError(BayesinvError, NotImplementedError):
    r"""Raised when a method asks an :class:`~bayesinv.distributions.Implicit` observation for a likelihood."""
