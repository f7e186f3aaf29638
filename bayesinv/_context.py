r"""The run context shared by model tracing and black-box simulators.

When bayesinv runs a model it opens a :class:`RunContext`. Every
:func:`bayesinv.simulator` called inside the model consults it:

- ``batch_size``: ``None`` when the model runs for a single draw (the simulator then
  adds a leading batch axis of 1 before calling the NumPy function and removes it
  afterwards), or ``n`` when the model runs vectorised over ``n`` draws (inputs
  already carry a leading batch axis of size ``n``).
- ``calls``: the simulator appends its key (``name``, then ``name_1``, ``name_2``
  for repeated calls within one run) so tracing knows which black boxes a model uses.
- ``outputs``: the simulator stores its (batched) output under its key, so
  :func:`bayesinv.simulate` can save noise-free simulator outputs.
- ``replay``: when given, the simulator returns ``replay[key]`` instead of running,
  so importance sampling can reuse a simulated dataset (``data=``).
- ``failures`` / ``errors``: the number of draws whose simulation raised or returned
  non-finite values (their outputs are NaN rows) and the first few error messages.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator

import torch

__all__ = ["RunContext", "run_context", "current_context"]


@dataclass
class RunContext:
    batch_size: int | None = None
    replay: dict[str, torch.Tensor] | None = None
    calls: list[str] = field(default_factory=list)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def next_key(self, name: str) -> str:
        r"""Registers a call of simulator ``name`` and returns its unique key."""
        count = self._counts.get(name, 0)
        self._counts[name] = count + 1
        key = name if count == 0 else f"{name}_{count}"
        self.calls.append(key)
        return key


_CURRENT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "bayesinv_run_context", default=None
)


def current_context() -> RunContext | None:
    r"""Returns the innermost active :class:`RunContext`, or ``None``."""
    return _CURRENT.get()


@contextlib.contextmanager
def run_context(ctx: RunContext | None = None) -> Iterator[RunContext]:
    r"""Activates ``ctx`` (a fresh context when ``None``) for the duration of the block."""
    ctx = RunContext() if ctx is None else ctx
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)
