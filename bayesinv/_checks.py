r"""Argument checks shared by every public entry point: one rule for counts, seeds and observations.

Each check raises :class:`~bayesinv.errors.ProblemError` (or :class:`OptionError`) with a
message that names the argument, the value received and what is allowed.

Seeds follow one rule everywhere: an ``int`` in ``[0, 2**63)`` is used as given; ``None``
draws a fresh seed from the operating system's entropy (so two calls differ), and the seed
drawn is what the result records (``attrs["seed"]``), so any run can be repeated.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Any

import numpy as np
import torch

from bayesinv.errors import OptionError, ProblemError

__all__ = ["check_count", "check_seed", "check_real", "as_observation", "MAX_SEED"]

MAX_SEED = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value: Any, *, minimum: int = 1, error: type[Exception] = ProblemError) -> int:
    r"""``value`` as an ``int`` of at least ``minimum``; refuses floats, strings and booleans.

    Example:
        >>> check_count("num_samples", 2.5)
        Traceback (most recent call last):
        ...
        bayesinv.errors.ProblemError: num_samples must be an integer >= 1, got 2.5 (float)
    """
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        value = int(value)
    if not _is_int(value) or int(value) < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    return int(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    r"""The one seed rule: an ``int`` in ``[0, 2**63)`` as given, ``None`` → a fresh random seed."""
    if seed is None:
        return secrets.randbits(63)
    if not _is_int(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise ProblemError(f"{name} must be None or an integer in [0, 2**63), got {seed!r} ({type(seed).__name__})")
    return int(seed)


def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, error: type[Exception] = OptionError) -> float:
    r"""``value`` as a finite ``float`` in the stated interval (a clear error otherwise)."""
    ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else float("nan")
    if not ok or not np.isfinite(v):
        raise error(f"{name} must be a finite number, got {value!r} ({type(value).__name__})")
    if low is not None and (v < low or (low_open and v == low)):
        raise error(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise error(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def as_observation(value: Any, site: str) -> torch.Tensor:
    r"""An observation for ``site`` as a real tensor (detached, float32 unless float64 was given).

    Refuses, naming the site: ``None``, strings and bytes, ragged nested lists, object and
    complex arrays (a complex y is never cut to its real part), boolean arrays and empty
    arrays. Non-finite values are checked where the site's shape is known.
    """
    if value is None:
        raise ProblemError(f"the observation for site {site!r} is None; pass an array (or leave the site unobserved)")
    if isinstance(value, (str, bytes)):
        raise ProblemError(f"the observation for site {site!r} is a {type(value).__name__} ({value[:40]!r}); pass a numeric array")
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_complex():
            raise ProblemError(
                f"the observation for site {site!r} is complex ({t.dtype}); bayesinv works with real data — pass the real"
                " and imaginary parts as two channels (torch.view_as_real) if both are measured"
            )
        if t.dtype == torch.bool:
            raise ProblemError(f"the observation for site {site!r} is boolean; pass numbers (e.g. y.float())")
        if t.numel() == 0:
            raise ProblemError(f"the observation for site {site!r} is empty (shape {tuple(t.shape)})")
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return t.cpu()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ProblemError(f"the observation for site {site!r} cannot be read as an array (ragged nested lists?): {exc}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ProblemError(
            f"the observation for site {site!r} is not a numeric array (dtype {arr.dtype}"
            + (", ragged nested lists?" if arr.dtype == object else "")
            + ")"
        )
    if arr.dtype.kind == "c":
        raise ProblemError(
            f"the observation for site {site!r} is complex ({arr.dtype}); bayesinv works with real data — pass the real"
            " and imaginary parts as two channels (np.stack([y.real, y.imag])) if both are measured"
        )
    if arr.dtype.kind == "b":
        raise ProblemError(f"the observation for site {site!r} is boolean; pass numbers (e.g. y.astype(float))")
    if arr.size == 0:
        raise ProblemError(f"the observation for site {site!r} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":  # integer data (counts, labels) keep their dtype
        arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32)
    return torch.as_tensor(np.ascontiguousarray(arr).reshape(arr.shape))  # keeps a scalar 0-d
