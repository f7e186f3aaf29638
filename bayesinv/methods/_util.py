r"""Small helpers shared by the method files: chunk seeds and progress reports.

Every long run reports its progress in one place, :func:`progress_bar`: a tqdm bar on a
terminal, otherwise lines on the ``bayesinv`` logger (level INFO) — one at the start with
the run's size, then one about every 10 % of the work or every 30 s, whichever comes first,
with the rate and an estimate of the remaining time, and one at the end. Without a
terminal, show them with ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np

__all__ = ["chunk_seed", "progress_bar", "LogProgress"]

_log = logging.getLogger("bayesinv")


def chunk_seed(seed: int | None, index: int) -> int:
    r"""A reproducible, well-mixed seed for chunk ``index`` of a run seeded with ``seed``."""
    entropy = [0 if seed is None else int(seed) % (2**63), int(index) % (2**63), 0 if index >= 0 else 1]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] % (2**63))


def _format_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
    r"""A progress report through :mod:`logging`, with the interface of a tqdm bar.

    Logs ``desc: <total> <unit>`` at the start, then (about every ``every_fraction`` of the
    total or every ``every_seconds``) the count done, the rate and the estimated time
    left, and the elapsed time at :meth:`close`.

    Arguments:
        total: The size of the run (in ``unit``).
        desc: What runs (``"importance"``, ``"mcmc"``, ...).
        unit: The unit of ``total``.
        initial: Work already done (a resumed run); not counted in the rate.
        logger: The logger (default: ``logging.getLogger("bayesinv")``).
        every_fraction: Report after this fraction of the total.
        every_seconds: Report at least this often while the run lasts.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        logger: logging.Logger | None = None,
        every_fraction: float = 0.1,
        every_seconds: float = 30.0,
    ):
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self.logger = logger or _log
        self.every_fraction = every_fraction
        self.every_seconds = every_seconds
        self.postfix = ""
        self._start = time.perf_counter()
        self._initial = int(initial)
        self._last_time = self._start
        self._next_mark = self._mark_after(self.n)
        self._closed = False
        self.logger.info(
            "%s: starting, %s %s%s", desc, f"{self.total:,}", unit, f" ({self.n:,} already done)" if self.n else ""
        )

    def _mark_after(self, n: int) -> int:
        step = max(1, int(np.ceil(self.total * self.every_fraction)))
        return (n // step + 1) * step

    def update(self, n: int = 1) -> None:
        r"""Counts ``n`` more units of work; logs when a report is due."""
        self.n += int(n)
        now = time.perf_counter()
        if self.n >= self._next_mark or now - self._last_time >= self.every_seconds:
            if self.n < self.total:
                self._report(now)
            self._next_mark = self._mark_after(self.n)
            self._last_time = now

    def _report(self, now: float) -> None:
        elapsed = now - self._start
        done = self.n - self._initial
        rate = done / elapsed if elapsed > 0 else float("inf")
        left = (self.total - self.n) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.n / self.total if self.total else 100.0
        self.logger.info(
            "%s: %s/%s %s (%.0f%%), %.3g %s/s, elapsed %s, ETA %s%s",
            self.desc, f"{self.n:,}", f"{self.total:,}", self.unit, pct, rate, self.unit,
            _format_seconds(elapsed), _format_seconds(left), f" ({self.postfix})" if self.postfix else "",
        )

    def set_postfix(self, **values: Any) -> None:
        r"""Extra values (a loss, an acceptance rate) shown in the next report."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        r"""Logs the end of the run and its elapsed time (once)."""
        if self._closed:
            return
        self._closed = True
        elapsed = time.perf_counter() - self._start
        self.logger.info(
            "%s: done, %s %s in %s", self.desc, f"{self.n:,}", self.unit, _format_seconds(elapsed)
        )

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _on_terminal() -> bool:
    stream = sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "it", *, initial: int = 0):
    r"""Progress of a run of ``total`` units: a tqdm bar on a terminal, log lines otherwise.

    Arguments:
        total: The size of the run.
        desc: What runs.
        enabled: ``None``: a bar on a terminal, log lines (logger ``bayesinv``, INFO)
            otherwise; ``True``: a bar; ``False``: no bar, log lines only.
        unit: The unit of ``total``.
        initial: Work already done (a resumed run).

    Returns:
        An object with ``update(n)``, ``set_postfix(**values)`` and ``close()``.
    """
    if enabled is True or (enabled is None and _on_terminal()):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False)
    return LogProgress(total, desc, unit, initial=initial)
