r"""Matplotlib figures for posterior fields and calibration.

Every function creates its figure through :class:`matplotlib.figure.Figure` (no
pyplot state, safe under the Agg backend and in threads) and returns it; save it
with ``fig.savefig(path)``. For posterior diagnostics of InferenceData (trace, rank,
pair, ESS plots) use ArviZ directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from bayesinv.errors import OptionError

from .calibration import sbc_bins

__all__ = ["plot_field_panels", "plot_coverage", "plot_sbc_ranks"]


def _image(fig: Figure, ax: Axes, field: np.ndarray, title: str, **imshow: Any) -> None:
    im = ax.imshow(field, origin="lower", **imshow)
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_title(title)
    ax.set_xlabel("column")
    ax.set_ylabel("row")


def plot_field_panels(
    truth: Any = None,
    measurement: Any = None,
    draws: Any = None,
    mean: Any = None,
    std: Any = None,
    *,
    titles: dict[str, str] | None = None,
    cmap: str = "viridis",
    std_cmap: str = "magma",
    error_cmap: str = "inferno",
    measurement_cmap: str = "cividis",
    ncols: int | None = None,
    panel_size: float = 3.2,
    suptitle: str | None = None,
    idata: Any = None,
    var_name: str | None = None,
    y: Any = None,
    num_draws: int = 3,
) -> Figure:
    r"""Panels of 2-D fields: truth, measurement, posterior draws, mean, std, error.

    Two forms: arrays (``truth=``, ``measurement=``, ``draws=``, ``mean=``, ``std=``), or
    an InferenceData: ``plot_field_panels(idata=idata, var_name="E", truth=E_true)``
    takes ``num_draws`` draws (spread over the run), the posterior mean and standard
    deviation of ``var_name`` from ``idata.posterior``, and the measurement from ``y=``
    (default: ``idata.observed_data`` when it holds one variable).

    Panels appear in that order, each with its own colour bar; absent inputs are left
    out. Truth, draws and mean share one colour scale (so they can be compared by
    eye); the measurement, the standard deviation and the error
    :math:`|\bar u - u|` (shown when both ``mean`` and ``truth`` are given) each have
    their own. A 1-D measurement is drawn as a line plot.

    Arguments:
        truth: True field, shape ``(H, W)``.
        measurement: Observation, shape ``(H', W')`` or ``(M,)``.
        draws: Posterior draws, shape ``(k, H, W)``.
        mean: Posterior mean, shape ``(H, W)``.
        std: Posterior standard deviation, shape ``(H, W)``.
        titles: Panel titles by key (``"truth"``, ``"measurement"``, ``"draw"`` —
            formatted with ``{i}`` —, ``"mean"``, ``"std"``, ``"error"``).
        cmap: Colour map of truth, draws and mean.
        std_cmap: Colour map of the standard deviation.
        error_cmap: Colour map of the error.
        measurement_cmap: Colour map of a 2-D measurement.
        ncols: Panels per row (default: all in one row, at most 5).
        panel_size: Width and height of a panel in inches.
        suptitle: Figure title (InferenceData form: default ``"<var_name> (<method>)"``).
        idata: An InferenceData (or anything with a ``posterior`` group) to take the
            draws, mean and std from, instead of ``draws=``, ``mean=``, ``std=``.
        var_name: The 2-D field site of ``idata`` (default: its only site with 2 dims).
        y: The observation shown as the measurement panel (InferenceData form;
            ``measurement=`` in the array form).
        num_draws: Draws shown in the InferenceData form (0 for none).

    Returns:
        The figure; ``fig.axes`` holds each panel followed by its colour bar.

    Example:
        >>> field = np.random.default_rng(0).normal(size=(3, 16, 16))
        >>> fig = plot_field_panels(truth=field[0], draws=field[1:], mean=field[1])
        >>> [ax.get_title() for ax in fig.axes[::2]]
        ['truth', 'draw 1', 'draw 2', 'posterior mean', '|mean − truth|']
        >>> fig = plot_field_panels(idata=idata, var_name="E", truth=E_true)  # doctest: +SKIP
    """
    if idata is not None:
        draws, mean, std, measurement, suptitle = _from_idata(
            idata, var_name, y=y, measurement=measurement, draws=draws, mean=mean, std=std,
            num_draws=num_draws, suptitle=suptitle,
        )
    elif var_name is not None or y is not None:
        raise OptionError("var_name= and y= belong to the InferenceData form: pass idata= too (or measurement= for an array)")
    text = {
        "truth": "truth",
        "measurement": "measurement",
        "draw": "draw {i}",
        "mean": "posterior mean",
        "std": "posterior std",
        "error": "|mean − truth|",
        **(titles or {}),
    }
    shared = [np.asarray(f, dtype=float) for f in (truth, mean) if f is not None]
    draws = None if draws is None else np.asarray(draws, dtype=float)
    if draws is not None:
        if draws.ndim == 2:
            draws = draws[None]
        shared += list(draws)
    if shared:
        vmin = min(float(np.nanmin(f)) for f in shared)
        vmax = max(float(np.nanmax(f)) for f in shared)
    else:
        vmin = vmax = None

    panels: list[tuple[str, Any, dict[str, Any]]] = []
    scale = {"cmap": cmap, "vmin": vmin, "vmax": vmax}
    if truth is not None:
        panels.append((text["truth"], np.asarray(truth, dtype=float), scale))
    if measurement is not None:
        panels.append((text["measurement"], np.asarray(measurement, dtype=float),
                       {"cmap": measurement_cmap}))
    if draws is not None:
        for i, draw in enumerate(draws, start=1):
            panels.append((text["draw"].format(i=i), draw, scale))
    if mean is not None:
        panels.append((text["mean"], np.asarray(mean, dtype=float), scale))
    if std is not None:
        panels.append((text["std"], np.asarray(std, dtype=float), {"cmap": std_cmap}))
    if mean is not None and truth is not None:
        error = np.abs(np.asarray(mean, dtype=float) - np.asarray(truth, dtype=float))
        panels.append((text["error"], error, {"cmap": error_cmap, "vmin": 0.0}))
    if not panels:
        raise ValueError("plot_field_panels needs at least one field")

    ncols = min(len(panels), 5) if ncols is None else ncols
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(panel_size * 1.25 * ncols, panel_size * nrows), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    for index, (title, field, options) in enumerate(panels):
        ax = fig.add_subplot(grid[index // ncols, index % ncols])
        if field.ndim == 1:
            ax.plot(field)
            ax.set_title(title)
            ax.set_xlabel("index")
            ax.set_ylabel("value")
        elif field.ndim == 2:
            _image(fig, ax, field, title, **options)
        else:
            raise ValueError(f"panel {title!r}: expected a 2-D field, got shape {field.shape}")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def _from_idata(idata: Any, var_name: str | None, *, y: Any, measurement: Any, draws: Any, mean: Any, std: Any,
                num_draws: int, suptitle: str | None) -> tuple[Any, Any, Any, Any, str | None]:
    r"""Draws, mean, std, measurement and title of ``var_name`` in ``idata`` (the InferenceData form)."""
    from .compare import posterior_samples

    given = [name for name, v in (("draws", draws), ("mean", mean), ("std", std), ("measurement", measurement))
             if v is not None]  # fmt: skip
    if given:
        raise OptionError(f"plot_field_panels: give idata= or the arrays {given}, not both (the observation is y=)")
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 0:
        raise OptionError(f"num_draws must be an integer >= 0, got {num_draws!r}")
    posterior = getattr(idata, "posterior", None)
    if posterior is None:
        raise OptionError(f"idata= must be an arviz.InferenceData with a posterior group, got {type(idata).__name__}")
    shapes = {str(k): tuple(v.shape[2:]) for k, v in posterior.data_vars.items()}
    if var_name is None:
        fields = [k for k, shape in shapes.items() if len(shape) == 2]
        if len(fields) != 1:
            raise OptionError(
                f"pass var_name=: the posterior has {len(fields) or 'no'} 2-D field site(s) {fields}; its sites: {shapes}"
            )
        var_name = fields[0]
    if var_name not in shapes:
        raise OptionError(f"var_name={var_name!r} is not in the posterior; its sites: {shapes}")
    if len(shapes[var_name]) != 2:
        raise OptionError(f"plot_field_panels shows 2-D fields; site {var_name!r} has shape {shapes[var_name]}")
    samples = posterior_samples(idata, var_name)
    picks = np.unique(np.linspace(0, len(samples) - 1, min(num_draws, len(samples))).round().astype(int))
    if y is None:
        observed = getattr(idata, "observed_data", None)
        if observed is not None and len(observed.data_vars) == 1:
            y = next(iter(observed.data_vars.values())).values
    method = getattr(posterior, "attrs", {}).get("method")
    title = suptitle if suptitle is not None else (f"{var_name} ({method})" if method else var_name)
    std = samples.std(0, ddof=1) if len(samples) > 1 else None
    return (samples[picks] if len(picks) else None), samples.mean(0), std, y, title


def plot_coverage(
    alpha: Any,
    ecp: Any,
    *,
    ax: Axes | None = None,
    label: str | None = None,
    title: str = "TARP expected coverage",
) -> Figure:
    r"""Expected coverage probability against credibility level, with the diagonal.

    Arguments:
        alpha: Credibility levels, shape ``(A,)`` (from
            :func:`~bayesinv.diagnostics.calibration.tarp_coverage`).
        ecp: Expected coverage, shape ``(A,)``.
        ax: Axes to draw into (to overlay several methods); default a new figure.
        label: Legend label of the curve.
        title: Axes title.

    Returns:
        The figure.

    Example:
        >>> alpha = np.linspace(0, 1, 11)
        >>> plot_coverage(alpha, alpha).axes[0].get_xlabel()
        'credibility level α'
    """
    if ax is None:
        fig = Figure(figsize=(4.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    else:
        fig = ax.figure
    ax.plot(np.asarray(alpha), np.asarray(ecp), lw=2, label=label or "posterior")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return fig


def plot_sbc_ranks(
    ranks: Any,
    n_draws: int,
    *,
    num_bins: int | None = None,
    names: Sequence[str] | None = None,
    confidence: float = 0.99,
    ncols: int | None = None,
) -> Figure:
    r"""Histograms of SBC ranks, one panel per parameter, with the uniform band.

    The grey band is the central ``confidence`` interval of each bin count under
    uniform ranks (binomial with the bin's probability); bins outside it flag
    miscalibration.

    Arguments:
        ranks: Ranks from :func:`~bayesinv.diagnostics.calibration.sbc_ranks`,
            shape ``(P, D)`` (or ``(P,)``).
        n_draws: :math:`K`, the number of posterior draws per pair.
        num_bins: Number of bins (default :math:`\min(20, K + 1)`).
        names: Parameter names for the titles (default ``θ[j]``).
        confidence: Coverage of the uniform band.
        ncols: Panels per row (default at most 4).

    Returns:
        The figure, one axes per parameter.

    Example:
        >>> ranks = np.random.default_rng(0).integers(0, 51, size=(200, 2))
        >>> len(plot_sbc_ranks(ranks, 50).axes)
        2
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    num_pairs, dim = ranks.shape
    names = [f"θ[{j}]" for j in range(dim)] if names is None else list(names)
    bin_of_rank, prob = sbc_bins(n_draws, num_bins)
    edges = np.searchsorted(bin_of_rank, np.arange(len(prob) + 1)) - 0.5  # first rank of bin
    tail = (1.0 - confidence) / 2.0
    low = stats.binom.ppf(tail, num_pairs, prob)
    high = stats.binom.ppf(1.0 - tail, num_pairs, prob)

    ncols = min(dim, 4) if ncols is None else ncols
    nrows = -(-dim // ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for j, ax in enumerate(axes):
        if j >= dim:
            fig.delaxes(ax)
            continue
        counts = np.bincount(bin_of_rank[ranks[:, j]], minlength=len(prob))
        ax.fill_between(edges, np.append(low, low[-1]), np.append(high, high[-1]),
                        step="post", color="0.85", label=f"{confidence:.0%} uniform band")
        ax.stairs(counts, edges, fill=True, alpha=0.8, label="ranks")
        ax.stairs(num_pairs * prob, edges, color="0.4", lw=0.8)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"SBC ranks {names[j]}")
        ax.set_xlabel(f"rank (of {n_draws} draws)")
        ax.set_ylabel("count")
    axes[0].legend(loc="upper center", fontsize="small")
    return fig
