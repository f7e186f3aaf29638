r"""Noise levels for annealed Langevin dynamics (NCSN) and the rules that choose them.

Following Song & Ermon (NCSN v2, "Improved techniques for training score-based
generative models") as used by the cSDM paper (Section 3.3):

* :math:`\sigma_1` at least the largest Euclidean distance between two training targets;
* :math:`\sigma_i` a geometric progression from :math:`\sigma_1` down to a small
  :math:`\sigma_L`, ratio :math:`\gamma = \sigma_{i-1} / \sigma_i`;
* :math:`L` such that consecutive smoothed laws overlap (eq. 17):
  :math:`\Phi(\sqrt{2n}(\gamma - 1) + 3\gamma) - \Phi(\sqrt{2n}(\gamma - 1) - 3\gamma)
  \approx 0.5`, with :math:`n` the data dimension;
* :math:`\epsilon` such that :math:`T` Langevin steps per level bring a particle from
  level :math:`i-1` to the steady state of level :math:`i` (eq. 18, see
  :func:`choose_step_size`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor

__all__ = [
    "geometric_sigmas",
    "choose_sigma_1",
    "overlap",
    "choose_num_levels",
    "langevin_variance_ratio",
    "choose_step_size",
    "ncsn_levels",
]


def geometric_sigmas(sigma_1: float, sigma_L: float, L: int, **kwargs) -> Tensor:
    r"""Geometric noise levels :math:`\sigma_1 > \dots > \sigma_L`.

    Arguments:
        sigma_1: The largest level.
        sigma_L: The smallest level.
        L: The number of levels (:math:`\ge 2`).
        kwargs: ``dtype`` and ``device`` of the result.

    Returns:
        The levels, with shape ``(L,)``, decreasing, with constant ratio
        :math:`\gamma = (\sigma_1 / \sigma_L)^{1 / (L - 1)}`.

    Example:
        >>> geometric_sigmas(20.0, 0.01, 128)[[0, -1]]
        tensor([2.0000e+01, 1.0000e-02])
    """
    if not sigma_1 > sigma_L > 0 or L < 2:
        raise ValueError("geometric_sigmas needs sigma_1 > sigma_L > 0 and L >= 2")
    return torch.logspace(math.log10(sigma_1), math.log10(sigma_L), L, **kwargs)


def choose_sigma_1(
    targets: Tensor,
    max_points: int = 2048,
    generator: torch.Generator | None = None,
) -> float:
    r"""The largest pairwise Euclidean distance among training targets.

    Song & Ermon choose :math:`\sigma_1` at least this large, so that sampling starts
    from a nearly unimodal Gaussian. Above ``max_points`` targets a random subset is
    used (the result is then a slight underestimate; round it up).

    Arguments:
        targets: Training targets, with shape ``(N, *event)``.
        max_points: The size of the subset used for large ``N``.
        generator: The random generator of the subset.

    Returns:
        :math:`\max_{i,j} \|x_i - x_j\|_2`.

    Example:
        >>> choose_sigma_1(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]))
        5.0
    """
    x = targets.reshape(targets.shape[0], -1).double()
    if x.shape[0] > max_points:
        idx = torch.randperm(x.shape[0], generator=generator)[:max_points]
        x = x[idx.to(x.device)]
    best = 0.0
    for chunk in x.split(512):
        best = max(best, torch.cdist(chunk, x).max().item())
    return best


def overlap(gamma: float, dim: int) -> float:
    r"""Song & Ermon's overlap between consecutive noise levels (eq. 17).

    :math:`\Phi(\sqrt{2n}(\gamma - 1) + 3\gamma) - \Phi(\sqrt{2n}(\gamma - 1) - 3\gamma)`,
    the probability mass that level :math:`i` gives to the high-density shell of level
    :math:`i-1`. It decreases from about 1 at :math:`\gamma = 1`.

    Arguments:
        gamma: The ratio :math:`\sigma_{i-1} / \sigma_i > 1`.
        dim: The data dimension :math:`n`.
    """
    a = math.sqrt(2 * dim) * (gamma - 1)
    return float(norm.cdf(a + 3 * gamma) - norm.cdf(a - 3 * gamma))


def choose_num_levels(
    dim: int, sigma_1: float, sigma_L: float, target: float = 0.5, max_levels: int = 100_000
) -> int:
    r"""The smallest number of geometric levels whose ratio satisfies eq. 17.

    Returns the least :math:`L` for which :func:`overlap` of
    :math:`\gamma = (\sigma_1/\sigma_L)^{1/(L-1)}` is at least ``target``. For
    :math:`n \le 4` the overlap stays near 1 for every γ and the rule gives 2.

    Arguments:
        dim: The data dimension :math:`n`.
        sigma_1: The largest level.
        sigma_L: The smallest level.
        target: The overlap to reach, 0.5 in NCSN v2.
        max_levels: The largest :math:`L` considered.

    Example:
        >>> choose_num_levels(56 * 56, 20.0, 0.01)
        198
    """
    L = np.arange(2, max_levels + 1)
    gamma = (sigma_1 / sigma_L) ** (1.0 / (L - 1))
    a = math.sqrt(2 * dim) * (gamma - 1)
    ok = norm.cdf(a + 3 * gamma) - norm.cdf(a - 3 * gamma) >= target
    if not ok.any():
        raise ValueError(f"choose_num_levels: no L <= {max_levels} reaches an overlap of {target}")
    return int(L[np.argmax(ok)])


def langevin_variance_ratio(eps: float | np.ndarray, sigma_L: float, gamma: float, steps_per_level: int):
    r"""Variance after one level of annealed Langevin dynamics, relative to the target.

    For the update of :func:`~bayesinv.diffusion.samplers.annealed_langevin`,
    :math:`x \leftarrow x + \tfrac{\alpha_i}{2} s + \sqrt{\alpha_i} z` with
    :math:`\alpha_i = \epsilon \sigma_i^2 / \sigma_L^2`, on the score of a point mass
    smoothed to :math:`\mathcal{N}(0, \sigma_i^2)`, a particle started with variance
    :math:`\gamma^2 \sigma_i^2` has after :math:`T` steps the variance ratio

    .. math:: a^{2T} (\gamma^2 - r) + r, \quad a = 1 - \frac{\epsilon}{2\sigma_L^2},
              \quad r = \frac{\epsilon / \sigma_L^2}{1 - a^2} .

    This is eq. 18 (NCSN v2) with its :math:`\epsilon` replaced by :math:`\epsilon/2`:
    NCSN v2 writes the step as :math:`x + \alpha s + \sqrt{2\alpha} z`.
    """
    e = np.asarray(eps, dtype=float) / sigma_L**2
    a = 1.0 - e / 2
    r = e / (1.0 - a**2)
    return a ** (2 * steps_per_level) * (gamma**2 - r) + r


def choose_step_size(sigma_1: float, sigma_L: float, L: int, steps_per_level: int) -> float:
    r"""Song & Ermon's step size rule (eq. 18) for annealed Langevin dynamics.

    Grid-searches :math:`\epsilon` so that :func:`langevin_variance_ratio` is closest to
    1, with :math:`\gamma = (\sigma_1/\sigma_L)^{1/(L-1)}`. The result is for this
    package's update :math:`x + \tfrac{\alpha}{2} s + \sqrt{\alpha} z` (Algorithm 1);
    divide by 2 to get NCSN v2's :math:`\epsilon`.

    Arguments:
        sigma_1: The largest level.
        sigma_L: The smallest level.
        L: The number of levels.
        steps_per_level: :math:`T`, the Langevin steps per level.

    Returns:
        :math:`\epsilon`, used as :math:`\alpha_i = \epsilon \sigma_i^2 / \sigma_L^2`.

    Example:
        >>> eps = choose_step_size(20.0, 0.01, 128, 5)
    """
    gamma = (sigma_1 / sigma_L) ** (1.0 / (L - 1))
    e = np.logspace(-8, math.log10(1.999), 20001)  # eps / sigma_L^2, stable for < 2
    ratio = langevin_variance_ratio(e * sigma_L**2, sigma_L, gamma, steps_per_level)
    return float(e[np.argmin(np.abs(ratio - 1.0))] * sigma_L**2)


def ncsn_levels(
    x: Tensor,
    *,
    sigma_1: float | None,
    sigma_L: float,
    num_levels: int | None,
    min_levels: int,
    steps_per_level: int,
    eps: float | None,
    seed: int,
) -> dict:
    r"""The NCSN process spec of training targets ``x`` ``(N, D)``: levels and step size by the rules above where not given.

    Arguments:
        x: The (normalised, flat) training targets.
        sigma_1: The largest level (``None``: :func:`choose_sigma_1` on a seeded subset, raised 5 %).
        sigma_L: The smallest level.
        num_levels: :math:`L` (``None``: :func:`choose_num_levels`, at least ``min_levels``).
        min_levels: The smallest :math:`L` the rule may give.
        steps_per_level: :math:`T`, the Langevin steps per level.
        eps: The step size (``None``: :func:`choose_step_size`).
        seed: Seed of the subset that estimates :math:`\sigma_1`.

    Returns:
        ``{"kind": "ncsn", "sigmas", "eps", "steps_per_level"}`` (JSON-able).
    """
    if sigma_1 is None:
        sigma_1 = choose_sigma_1(x, generator=torch.Generator().manual_seed(seed))
        sigma_1 = max(1.05 * sigma_1, 2 * sigma_L)  # the subset slightly underestimates it
    L = num_levels or max(min_levels, choose_num_levels(x.shape[-1], sigma_1, sigma_L))
    eps = eps if eps is not None else choose_step_size(sigma_1, sigma_L, L, steps_per_level)
    sigmas = geometric_sigmas(sigma_1, sigma_L, L, dtype=torch.float64).tolist()
    return {"kind": "ncsn", "sigmas": sigmas, "eps": eps, "steps_per_level": steps_per_level}
