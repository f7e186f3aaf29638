r"""Imports ArviZ without its refactoring FutureWarning (shown on every import otherwise)."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*")
    import arviz as az  # noqa: F401

__all__ = ["az"]
