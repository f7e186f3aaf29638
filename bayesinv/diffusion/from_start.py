r"""A reverse process entered from given starting points (CSD*, SDEdit), as small pure functions.

Of a K-step reverse process from t = 1, each start :math:`x_s` is diffused to the time t′ of
step K′ (:func:`insert_time`), :math:`x_{t'} = m(t') x_s + \sigma(t') z`, and the last K′
predictor–corrector steps run from there (:func:`~bayesinv.diffusion.samplers.reverse_from`).

Example:
    >>> x, stats = sample_from_start(score, starts, VE(), 10, insert_step=60, steps=100, t_min=1e-5)
    >>> x.shape, stats["nfe"]          # (B, 10, D), K' (1 + corrector steps) + 1
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesinv.diffusion.samplers import ScoreFn, reverse_from, step_time
from bayesinv.diffusion.sde import Process
from bayesinv.errors import ProblemError

__all__ = ["insert_time", "sample_from_start"]


def insert_time(insert_step: int, steps: int, t_min: float) -> float:
    r"""The time t′ of step K′ of the K-step grid (:func:`~bayesinv.diffusion.samplers.step_time`); refuses K′ outside 1..K."""
    if not 0 < insert_step <= steps:
        raise ProblemError(f"insert_step K' must lie in 1..K = {steps}, got {insert_step}")
    return step_time(insert_step, steps, t_min)


def sample_from_start(score_fn: ScoreFn, x_start: Tensor, process: Process, n: int, *, insert_step: int, steps: int, t_min: float,
                      corrector_steps: int = 1, snr: float = 0.16, denoise: bool = True, generator: torch.Generator | None = None,
                      chunk_size: int | None = None) -> tuple[Tensor, dict]:  # fmt: skip
    r"""``n`` draws from each start: the last K′ of K predictor–corrector steps from the diffused start.

    Arguments:
        score_fn: The score :math:`s(x, t)`.
        x_start: The starts ``(B, D)``.
        process: The forward process.
        n: Draws per start.
        insert_step, steps, t_min: K′, K and the final time.
        corrector_steps, snr, denoise, generator, chunk_size: As for :func:`~bayesinv.diffusion.samplers.reverse_from`.

    Returns:
        The draws ``(B, n, D)`` and their stats (``sampler``, ``insert_step``, ``steps``, ``t_insert``, ``nfe``,
        ``sigma_insert``).
    """
    insert_step, steps, t_min = int(insert_step), int(steps), float(t_min)
    t_start = insert_time(insert_step, steps, t_min)
    res = reverse_from(score_fn, x_start.repeat_interleave(n, 0), process, insert_step=insert_step, steps=steps, t_min=t_min,
                       corrector_steps=int(corrector_steps), snr=float(snr), denoise=bool(denoise), generator=generator,
                       chunk_size=chunk_size)  # fmt: skip
    stats = {"sampler": "pc", "insert_step": insert_step, "steps": steps, "t_insert": t_start, "nfe": res.nfe,
             "sigma_insert": float(process.sigma(torch.tensor(t_start)))}  # fmt: skip
    return res.x.reshape(x_start.shape[0], n, *x_start.shape[1:]), stats
