r"""Calibration checks for amortized posteriors over many simulated test pairs.

Given pairs :math:`(\theta_i, y_i)` drawn from the joint and posterior samples
:math:`\theta_{i,k} \sim q(\theta \mid y_i)`, a calibrated posterior makes

- the SBC rank of each true coordinate among its posterior draws uniform on
  :math:`\{0, \dots, K\}` (simulation-based calibration, Talts et al. 2018):
  :func:`sbc_ranks`, :func:`sbc_uniformity`;
- the expected coverage probability of TARP credible balls equal to their
  credibility level (Lemos et al. 2023): :func:`tarp_coverage`.

:func:`calibrate_posterior` runs both on fresh simulations for an amortized posterior and
records the result in ``post.info["calibration"]`` (shown by ``post.summary()``).

All functions take and return NumPy arrays; shapes are written ``(P, K, D)`` for
``P`` test pairs, ``K`` posterior draws per pair and ``D`` parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "SBCUniformity",
    "sbc_ranks",
    "sbc_uniformity",
    "sbc_bins",
    "tarp_coverage",
    "calibrate_posterior",
]


def _pairs(posterior_samples: Any, truths: Any) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(posterior_samples, dtype=np.float64)
    theta = np.asarray(truths, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples[..., None]
    if theta.ndim == 1:
        theta = theta[:, None]
    if samples.ndim != 3 or theta.ndim != 2:
        raise ValueError(
            "posterior_samples must have shape (P, K, D) and truths (P, D), got "
            f"{samples.shape} and {theta.shape}"
        )
    if samples.shape[0] != theta.shape[0] or samples.shape[2] != theta.shape[1]:
        raise ValueError(
            f"posterior_samples {samples.shape} and truths {theta.shape} disagree "
            "in the number of pairs P or parameters D"
        )
    return samples, theta


def sbc_ranks(posterior_samples: Any, truths: Any) -> np.ndarray:
    r"""Simulation-based calibration ranks.

    The rank of truth :math:`\theta_{i,j}` is the number of posterior draws below it,
    :math:`r_{ij} = \#\{k : \theta_{i,k,j} < \theta_{i,j}\} \in \{0, \dots, K\}`.

    Arguments:
        posterior_samples: Posterior draws, shape ``(P, K, D)`` (or ``(P, K)``).
        truths: True parameters, shape ``(P, D)`` (or ``(P,)``).

    Returns:
        Integer ranks, shape ``(P, D)``.

    Example:
        >>> sbc_ranks(np.zeros((3, 10, 1)), np.ones((3, 1)))[:, 0]
        array([10, 10, 10])
    """
    samples, theta = _pairs(posterior_samples, truths)
    return (samples < theta[:, None, :]).sum(axis=1)


def sbc_bins(num_draws: int, num_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Bin the possible ranks :math:`\{0, \dots, K\}` into near-equal groups.

    Rank :math:`r` goes to bin :math:`\lfloor r B / (K + 1) \rfloor`. The default
    number of bins is :math:`\min(20, K + 1)`.

    Arguments:
        num_draws: :math:`K`, the number of posterior draws per pair.
        num_bins: :math:`B`.

    Returns:
        ``(bin_of_rank, prob)``: the bin index of each rank 0..K, shape ``(K + 1,)``,
        and the probability of each bin under uniform ranks, shape ``(B,)``.
    """
    values = num_draws + 1
    num_bins = min(20, values) if num_bins is None else min(int(num_bins), values)
    bin_of_rank = (np.arange(values) * num_bins) // values
    prob = np.bincount(bin_of_rank, minlength=num_bins) / values
    return bin_of_rank, prob


@dataclass(frozen=True)
class SBCUniformity:
    r"""Uniformity tests of SBC ranks, one entry per parameter.

    Attributes:
        chi2_statistic: Pearson :math:`\chi^2` of the binned ranks, shape ``(D,)``.
        chi2_pvalue: Its p-value (``B - 1`` degrees of freedom), shape ``(D,)``.
        ks_pvalue: Kolmogorov–Smirnov p-value of the jittered normalised ranks
            :math:`(r + u) / (K + 1)`, :math:`u \sim U(0, 1)`, against
            :math:`U(0, 1)`, shape ``(D,)``.
        num_bins: :math:`B`.
    """

    chi2_statistic: np.ndarray
    chi2_pvalue: np.ndarray
    ks_pvalue: np.ndarray
    num_bins: int


def sbc_uniformity(
    ranks: Any, num_draws: int, *, num_bins: int | None = None, seed: int = 0
) -> SBCUniformity:
    r"""Test SBC ranks for uniformity (χ² on binned ranks and Kolmogorov–Smirnov).

    Small p-values flag miscalibration: a U-shaped rank histogram (overconfident
    posterior), a hump (underconfident) or a slope (biased).

    Arguments:
        ranks: Ranks from :func:`sbc_ranks`, shape ``(P, D)`` (or ``(P,)``).
        num_draws: :math:`K`, the number of posterior draws per pair.
        num_bins: Number of χ² bins (default :math:`\min(20, K + 1)`).
        seed: Seed of the jitter of the KS test.

    Returns:
        An :class:`SBCUniformity` with per-parameter statistics and p-values.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> result = sbc_uniformity(rng.integers(0, 101, size=(500, 2)), 100)
        >>> bool((result.chi2_pvalue > 1e-3).all())
        True
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    if ranks.min() < 0 or ranks.max() > num_draws:
        raise ValueError(f"ranks must lie in [0, num_draws={num_draws}]")
    bin_of_rank, prob = sbc_bins(num_draws, num_bins)
    rng = np.random.default_rng(seed)
    chi2, chi2_p, ks_p = [], [], []
    for column in ranks.T:
        counts = np.bincount(bin_of_rank[column], minlength=len(prob))
        stat, p = stats.chisquare(counts, prob * len(column))
        chi2.append(stat)
        chi2_p.append(p)
        jittered = (column + rng.uniform(size=len(column))) / (num_draws + 1)
        ks_p.append(stats.kstest(jittered, "uniform").pvalue)
    return SBCUniformity(np.array(chi2), np.array(chi2_p), np.array(ks_p), len(prob))


def tarp_coverage(
    posterior_samples: Any,
    truths: Any,
    *,
    num_alphas: int = 101,
    references: Any = None,
    normalize: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Expected coverage probability of TARP credible regions (Lemos et al. 2023).

    For each pair :math:`i` a reference point :math:`\theta^r_i` is drawn; the
    credible region of level :math:`\alpha` is the ball around :math:`\theta^r_i`
    holding a fraction :math:`\alpha` of the posterior draws. With
    :math:`f_i = \frac{1}{K} \#\{k : \lVert \theta_{i,k} - \theta^r_i \rVert <
    \lVert \theta_i - \theta^r_i \rVert\}` (the fraction of draws closer to the
    reference than the truth), the truth lies in the level-:math:`\alpha` region
    when :math:`f_i < \alpha`, and the expected coverage probability is
    :math:`\mathrm{ECP}(\alpha) = \frac{1}{P} \sum_i 1[f_i < \alpha]`. A calibrated
    posterior gives :math:`\mathrm{ECP}(\alpha) \approx \alpha`. An overconfident
    posterior piles :math:`f_i` up near 0 and 1, so its curve is flatter than the
    diagonal (above it at small :math:`\alpha`, below at large); an underconfident
    one piles :math:`f_i` up in the middle and gives a steeper curve.

    As in the reference implementation (``tarp``), with ``normalize=True`` samples
    and truths are rescaled to :math:`[0, 1]^D` by the per-parameter minimum and
    maximum of the truths, and default references are uniform on that box.

    Arguments:
        posterior_samples: Posterior draws, shape ``(P, K, D)`` (or ``(P, K)``).
        truths: True parameters, shape ``(P, D)`` (or ``(P,)``).
        num_alphas: Number of credibility levels, evenly spaced on [0, 1].
        references: Reference points, shape ``(P, D)`` or ``(D,)``, in the same
            (normalised when ``normalize``) space; default uniform on the box.
        normalize: Rescale by the range of the truths first.
        seed: Seed of the random references.

    Returns:
        ``(alpha, ecp)``, both of shape ``(num_alphas,)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(300, 2))
        >>> draws = theta[:, None] + rng.normal(size=(300, 200, 2))  # too wide
        >>> alpha, ecp = tarp_coverage(draws, theta)
        >>> bool(ecp[50] > 0.5)
        True
    """
    samples, theta = _pairs(posterior_samples, truths)
    num_pairs, _, dim = samples.shape
    if normalize:
        lo = theta.min(axis=0)
        scale = theta.max(axis=0) - lo
        scale = np.where(scale > 0, scale, 1.0)
        samples = (samples - lo) / scale
        theta = (theta - lo) / scale
    if references is None:
        rng = np.random.default_rng(seed)
        if normalize:
            low, high = np.zeros(dim), np.ones(dim)
        else:
            low, high = theta.min(axis=0), theta.max(axis=0)
        refs = rng.uniform(low, high, size=(num_pairs, dim))
    else:
        refs = np.broadcast_to(np.asarray(references, dtype=np.float64), (num_pairs, dim))
    sample_dist = np.linalg.norm(samples - refs[:, None, :], axis=-1)  # (P, K)
    truth_dist = np.linalg.norm(theta - refs, axis=-1)  # (P,)
    f = (sample_dist < truth_dist[:, None]).mean(axis=1)
    alpha = np.linspace(0.0, 1.0, num_alphas)
    ecp = (f[None, :] < alpha[:, None]).mean(axis=1)
    return alpha, ecp


def calibrate_posterior(
    post: Any,
    model: Any = None,
    *,
    num_pairs: int = 200,
    num_draws: int = 100,
    seed: int = 0,
    record: bool = True,
) -> dict[str, Any]:
    r"""SBC and TARP of an amortized posterior on fresh simulated pairs, recorded in its info.

    Draws ``num_pairs`` pairs :math:`(\theta_i, y_i)` from the model's joint
    (:func:`bayesinv.simulate` with ``seed``), ``num_draws`` posterior draws for each
    :math:`y_i` (one batched ``post.sample`` call), and summarises calibration over the
    flattened target sites: the smallest SBC uniformity p-value (χ² and KS, over all
    coordinates) and the largest distance of the TARP expected coverage from the diagonal.

    Arguments:
        post: An amortized posterior (``bayesinv.fit``), conditioned on observed sites.
        model: The model (default: the one attached to ``post``; a loaded posterior needs it).
        num_pairs: Simulated test pairs :math:`P`.
        num_draws: Posterior draws per pair :math:`K`.
        seed: Seed of the simulations and the draws.
        record: Store the result in ``post.info["calibration"]`` (saved with the posterior).

    Returns:
        ``num_pairs``, ``num_draws``, ``seed``, ``sbc_min_pvalue`` (small: miscalibrated
        ranks), ``tarp_max_deviation`` (max over α of :math:`|\mathrm{ECP}(\alpha) - \alpha|`;
        about :math:`1/\sqrt{P}` for a calibrated posterior).

    Example:
        >>> post = bayesinv.fit(model, method="flow", num_simulations=5000)  # doctest: +SKIP
        >>> calibrate_posterior(post)["tarp_max_deviation"]  # doctest: +SKIP
        0.06
    """
    from bayesinv._checks import check_count, check_seed
    from bayesinv.data import simulate
    from bayesinv.errors import OptionError, ProblemError
    from bayesinv.problem import as_problem

    num_pairs = check_count("num_pairs", num_pairs, minimum=2, error=OptionError)
    num_draws = check_count("num_draws", num_draws, error=OptionError)
    seed = check_seed(seed)
    problem = getattr(post, "problem", None) if model is None else as_problem(model)
    if problem is None:
        raise ProblemError("calibrate_posterior needs the model: pass model= (a loaded posterior does not hold it)")
    targets, conditions = list(post.target.names), list(post.condition.names)
    pairs = simulate(problem, num_pairs, seed=seed, progress=False)
    missing = [n for n in targets + conditions if n not in pairs.data_vars]
    if missing:
        raise ProblemError(f"the model's simulations lack the posterior's site(s) {missing}; they hold {sorted(pairs.data_vars)}")
    y = {n: pairs[n].values for n in conditions} if len(conditions) > 1 else pairs[conditions[0]].values
    draws = post.sample(y, num_draws, seed=seed)
    samples = np.concatenate([np.asarray(draws[n]).reshape(num_pairs, num_draws, -1) for n in targets], axis=-1)
    truths = np.concatenate([pairs[n].values.reshape(num_pairs, -1) for n in targets], axis=-1)
    uniformity = sbc_uniformity(sbc_ranks(samples, truths), num_draws, seed=seed)
    alpha, ecp = tarp_coverage(samples, truths, seed=seed)
    result = {
        "num_pairs": num_pairs,
        "num_draws": num_draws,
        "seed": seed,
        "sbc_min_pvalue": float(min(uniformity.chi2_pvalue.min(), uniformity.ks_pvalue.min())),
        "tarp_max_deviation": float(np.max(np.abs(ecp - alpha))),
    }
    if record:
        post.info["calibration"] = result
    return result
