r"""What an amortized posterior is: what was trained, on what, and how well.

:func:`summarize_posterior` (``post.summary()``) reads the posterior's layouts and its
training record (``post.info``) and returns a :class:`PosteriorSummary`, a small frozen
dataclass whose ``str`` is a few lines for a terminal::

    flow posterior q(theta (2,) | y (2,))
      trained on: 200 simulations (200 training pairs)
      training: 20 steps in 0.49 s, fit 9.2 s, ran its whole budget (max_epochs / max_steps)
      loss: best validation 2.701, final training 3.09
      calibration: not computed
      seed 4, device cpu
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PosteriorSummary", "summarize_posterior"]

#: Training-record keys shown in their own fields (the rest go to ``extras``).
_KNOWN = ("num_simulations", "num_train_pairs", "seed", "fit_time_s", "train_time_s", "train_cpu_s", "train_steps",
          "best_val_loss", "final_train_loss", "stopped_early", "epochs", "stop_reason", "calibration", "data", "data_path",
          "data_digest", "data_hash")  # fmt: skip


@dataclass(frozen=True)
class PosteriorSummary:
    r"""The training summary of an amortized posterior (``post.summary()``).

    Attributes:
        method: The method's name.
        target: Target site → shape (what the posterior draws).
        condition: Conditioning site → shape (what it is conditioned on).
        num_simulations: Simulations of the joint it was trained on.
        num_train_pairs: Training pairs (after exclusions and the validation split, as recorded).
        data: Where the pairs came from (a store path or a data digest), when recorded.
        train_steps: Optimiser steps.
        epochs: Epochs, when recorded.
        best_val_loss: The best validation loss (``None`` without validation data).
        final_train_loss: The last recorded training loss.
        stopping: Why training ended.
        fit_time_s: Wall time of the whole fit (simulation included), seconds.
        train_time_s: Wall time of the training loop, seconds.
        train_cpu_s: Process CPU time of the training loop, seconds (``None`` when not recorded).
        calibration: A calibration record, when one was computed
            (:func:`~bayesinv.diagnostics.calibration.calibrate_posterior`).
        seed: The fit's seed.
        device: Where the network lives.
        extras: Further entries of the training record (method specific).
    """

    method: str
    target: dict[str, tuple[int, ...]]
    condition: dict[str, tuple[int, ...]]
    num_simulations: int | None = None
    num_train_pairs: int | None = None
    data: str | None = None
    train_steps: int | None = None
    epochs: int | None = None
    best_val_loss: float | None = None
    final_train_loss: float | None = None
    stopping: str = "not recorded"
    fit_time_s: float | None = None
    train_time_s: float | None = None
    train_cpu_s: float | None = None
    calibration: Any = None
    seed: int | None = None
    device: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        r"""The fields as a plain dict."""
        return asdict(self)

    def __str__(self) -> str:
        def sites(layout: dict[str, tuple[int, ...]]) -> str:
            return ", ".join(f"{name} {tuple(shape)}" for name, shape in layout.items())

        lines = [f"{self.method} posterior q({sites(self.target)} | {sites(self.condition)})"]
        trained = f"{self.num_simulations:,} simulations" if self.num_simulations is not None else "(not recorded)"
        if self.num_train_pairs is not None:
            trained += f" ({self.num_train_pairs:,} training pairs)"
        if self.data:
            trained += f", data {self.data}"
        lines.append(f"  trained on: {trained}")
        steps = f"{self.train_steps:,} steps" if self.train_steps is not None else ""
        if self.epochs is not None:
            steps += f" ({self.epochs:,} epochs)"
        if self.train_time_s is not None:
            steps += f" in {_seconds(self.train_time_s)}"
            if self.train_cpu_s is not None:
                steps += f" ({_seconds(self.train_cpu_s)} CPU)"
        fit = f"fit {_seconds(self.fit_time_s)}" if self.fit_time_s is not None else ""
        lines.append("  training: " + ", ".join(p.strip() for p in (steps, fit, self.stopping) if p.strip()))
        loss = []
        if self.best_val_loss is not None:
            loss.append(f"best validation {self.best_val_loss:.4g}")
        if self.final_train_loss is not None:
            loss.append(f"final training {self.final_train_loss:.4g}")
        lines.append("  loss: " + (", ".join(loss) if loss else "not recorded"))
        lines.append(f"  calibration: {_calibration(self.calibration)}")
        tail = [f"seed {self.seed}" if self.seed is not None else "", f"device {self.device}" if self.device else ""]
        if any(tail):
            lines.append("  " + ", ".join(t for t in tail if t))
        if self.extras:
            lines.append("  also: " + ", ".join(f"{k}={_short(v)}" for k, v in self.extras.items()))
        return "\n".join(lines)

    __repr__ = __str__


def _seconds(value: float) -> str:
    return f"{value:.2g} s" if value < 10 else f"{value:,.0f} s"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _calibration(record: Any) -> str:
    if record is None:
        return "not computed"
    if isinstance(record, dict) and "sbc_min_pvalue" in record and "tarp_max_deviation" in record:  # calibrate_posterior
        where = f" ({record['num_pairs']} pairs x {record['num_draws']} draws)" if "num_pairs" in record else ""
        return (f"SBC min p-value {record['sbc_min_pvalue']:.3g}, TARP max |ECP - alpha| "
                f"{record['tarp_max_deviation']:.3g}{where}")  # fmt: skip
    if isinstance(record, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in record.items())
    return _short(record)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize_posterior(post: Any) -> PosteriorSummary:
    r"""The :class:`PosteriorSummary` of an amortized posterior (what ``post.summary()`` returns).

    Arguments:
        post: An :class:`~bayesinv.amortized.posterior.AmortizedPosterior` (anything with
            ``method``, ``target``/``condition`` layouts, ``info`` and ``device``).

    Returns:
        The summary: what was trained (method, target and condition sites with their
        shapes), on what (simulations, training pairs, data when recorded) and how well
        (losses, steps, why training stopped, times, calibration when recorded).
    """
    info = dict(getattr(post, "info", {}) or {})
    target = {name: tuple(int(s) for s in shape) for name, shape in zip(post.target.names, post.target.shapes)}
    condition = {name: tuple(int(s) for s in shape) for name, shape in zip(post.condition.names, post.condition.shapes)}
    if info.get("stop_reason"):
        stopping = str(info["stop_reason"])
    elif info.get("stopped_early"):
        stopping = "stopped early (the validation loss stopped improving)"
    elif "stopped_early" in info:
        stopping = "ran its whole budget (max_epochs / max_steps)"
    else:
        stopping = "not recorded"
    data = next((str(info[k]) for k in ("data_path", "data", "data_digest", "data_hash") if info.get(k)), None)
    counts = {k: int(info[k]) if info.get(k) is not None else None
              for k in ("num_simulations", "num_train_pairs", "train_steps", "epochs", "seed")}  # fmt: skip
    return PosteriorSummary(
        method=str(post.method),
        target=target,
        condition=condition,
        data=data,
        best_val_loss=_finite(info.get("best_val_loss")),
        final_train_loss=_finite(info.get("final_train_loss")),
        stopping=stopping,
        fit_time_s=_finite(info.get("fit_time_s")),
        train_time_s=_finite(info.get("train_time_s")),
        train_cpu_s=_finite(info.get("train_cpu_s")),
        calibration=info.get("calibration"),
        device=str(post.device) if getattr(post, "device", None) is not None else None,
        extras={k: v for k, v in info.items() if k not in _KNOWN},
        **counts,
    )
