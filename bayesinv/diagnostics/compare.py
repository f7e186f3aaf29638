r"""Compare a posterior with a reference posterior (and optionally with the truth).

:func:`compare` returns a tidy :class:`pandas.DataFrame`, one row per variable and
metric, so tables from several methods concatenate and pivot::

    table = pd.concat([compare(idata, ref).assign(method=name) for name, idata in runs])
    table.pivot_table(index=["variable", "metric"], columns="method", values="value")
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import metrics as _metrics

__all__ = ["compare", "SAMPLE_METRICS", "TRUTH_METRICS", "posterior_samples"]

#: Metrics between the two posteriors.
SAMPLE_METRICS = ("rmse_mean", "rmse_std", "c2st", "sinkhorn", "mmd")
#: Metrics between the posterior mean and the truth (with ``truth=``).
TRUTH_METRICS = ("mse", "psnr", "ssim", "relative_l1", "absolute_l1", "dynamic_range")

_TWO_SAMPLE = {
    "c2st": _metrics.c2st,
    "sinkhorn": _metrics.sinkhorn_distance,
    "mmd": _metrics.mmd,
}
_FIELD = {
    "mse": _metrics.mse,
    "psnr": _metrics.psnr,
    "ssim": _metrics.ssim,
    "relative_l1": _metrics.relative_l1,
    "absolute_l1": _metrics.absolute_l1,
    "dynamic_range": _metrics.dynamic_range,
}
_COLUMNS = ["variable", "metric", "value", "n_samples", "n_reference", "note"]

Source = Any  # arviz.InferenceData | xarray.Dataset | Mapping[str, array (N, *shape)]


def _dataset(source: Source) -> xr.Dataset | Mapping[str, Any]:
    posterior = getattr(source, "posterior", None)  # InferenceData
    if posterior is not None:
        return posterior
    if isinstance(source, (xr.Dataset, Mapping)):
        return source
    raise TypeError(
        "expected an arviz.InferenceData, an xarray.Dataset or a dict name -> samples, "
        f"got {type(source).__name__}"
    )


def _names(source: Source) -> list[str]:
    data = _dataset(source)
    return list(data.data_vars) if isinstance(data, xr.Dataset) else list(data)


def posterior_samples(source: Source, name: str) -> np.ndarray:
    r"""The draws of one variable as an array of shape ``(N, *shape)``.

    Arguments:
        source: An InferenceData (its ``posterior`` group, dims ``(chain, draw,
            *shape)``; chains are concatenated), an xarray Dataset with the same
            layout, or a dict name → array of shape ``(N, *shape)``.
        name: The variable.

    Returns:
        The samples, float64.

    Example:
        >>> posterior_samples({"theta": np.zeros((10, 2))}, "theta").shape
        (10, 2)
    """
    data = _dataset(source)
    names = _names(source)
    if name not in names:
        raise KeyError(f"variable {name!r} not found; available variables: {names}")
    value = data[name]
    if isinstance(value, xr.DataArray) and value.dims[:2] == ("chain", "draw"):
        array = value.values
        return array.reshape(-1, *array.shape[2:]).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def _row(
    variable: str, metric: str, value: float, n: int, n_ref: int | None, note: str = ""
) -> dict[str, Any]:
    return {
        "variable": variable,
        "metric": metric,
        "value": float(value),
        "n_samples": n,
        "n_reference": n_ref,
        "note": note,
    }


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), size=n, replace=False)]


def compare(
    idata: Source,
    reference: Source,
    var_names: str | Sequence[str] | None = None,
    *,
    truth: Mapping[str, Any] | None = None,
    metrics: Sequence[str] = SAMPLE_METRICS,
    truth_metrics: Sequence[str] = TRUTH_METRICS,
    max_samples: int = 2000,
    max_dim: int = 64,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Compare the posterior of ``idata`` with a reference posterior.

    Per variable (flattened over its site dims):

    - ``rmse_mean`` / ``rmse_std``: :math:`\sqrt{\frac{1}{P} \sum_p (\bar u_p -
      \bar u^{\mathrm{ref}}_p)^2}` between the pixel-wise posterior means, resp.
      the pixel-wise standard deviations (ddof=1), over the :math:`P` entries;
      computed from all draws.
    - ``c2st``, ``sinkhorn``, ``mmd``: :func:`~bayesinv.diagnostics.metrics.c2st`,
      :func:`~bayesinv.diagnostics.metrics.sinkhorn_distance` (entropic OT,
      Euclidean cost, reg 0.01) and :func:`~bayesinv.diagnostics.metrics.mmd` on
      the flattened draws, after subsampling each set to ``max_samples``. For
      variables with more than ``max_dim`` entries they are skipped with a warning
      (value NaN, the reason in ``note``).

    With ``truth=``, for each variable in it, the posterior mean of ``idata`` is
    compared with the true field: MSE, PSNR, SSIM (2-D fields only; NaN with a note
    otherwise), relative L1, absolute L1 (per entry) and dynamic range (see
    :mod:`bayesinv.diagnostics.metrics`; data range = truth max − min).

    Arguments:
        idata: The posterior to assess: InferenceData, xarray Dataset with dims
            ``(chain, draw, ...)``, or dict name → samples ``(N, *shape)``.
        reference: The reference posterior, in the same forms.
        var_names: Variables to compare; default those present in both.
        truth: Optional dict name → true value, shape ``shape`` of the variable.
        metrics: Posterior-vs-reference metrics, a subset of :data:`SAMPLE_METRICS`.
        truth_metrics: Metrics against ``truth``, a subset of :data:`TRUTH_METRICS`.
        max_samples: Draws per set used by the two-sample metrics.
        max_dim: Largest flattened dimension for the two-sample metrics.
        metric_kwargs: Extra keyword arguments per metric, e.g.
            ``{"c2st": {"classifier": "rf"}, "sinkhorn": {"reg": 0.05}}``.
        seed: Seed of subsampling and of the metrics.

    Returns:
        A DataFrame with columns ``variable``, ``metric``, ``value``, ``n_samples``
        (draws of ``idata`` used), ``n_reference`` (draws of the reference used, NA
        for truth metrics) and ``note``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> table = compare({"theta": rng.normal(size=(400, 2))},
        ...                 {"theta": rng.normal(size=(400, 2))},
        ...                 metrics=("rmse_mean", "mmd"))
        >>> list(table.metric)
        ['rmse_mean', 'mmd']
    """
    unknown = [m for m in metrics if m not in SAMPLE_METRICS]
    unknown += [m for m in truth_metrics if m not in TRUTH_METRICS]
    if unknown:
        raise ValueError(
            f"unknown metrics {unknown}; available: {list(SAMPLE_METRICS + TRUTH_METRICS)}"
        )
    kwargs = {name: dict(value) for name, value in (metric_kwargs or {}).items()}
    names, ref_names = _names(idata), _names(reference)
    if var_names is None:
        var_names = [name for name in names if name in ref_names]
        if not var_names:
            raise KeyError(
                f"no variable in common: idata has {names}, reference has {ref_names}"
            )
    elif isinstance(var_names, str):
        var_names = [var_names]
    for name in var_names:
        if name not in names:
            raise KeyError(f"variable {name!r} not in idata; available variables: {names}")
        if name not in ref_names:
            raise KeyError(
                f"variable {name!r} not in reference; available variables: {ref_names}"
            )
    truth = dict(truth or {})
    for name in truth:
        if name not in var_names:
            raise KeyError(f"truth variable {name!r} not compared; var_names: {list(var_names)}")

    rng = np.random.default_rng(seed)
    rows = []
    for name in var_names:
        draws, ref = posterior_samples(idata, name), posterior_samples(reference, name)
        if draws.shape[1:] != ref.shape[1:]:
            raise ValueError(
                f"variable {name!r}: shape {draws.shape[1:]} in idata but "
                f"{ref.shape[1:]} in reference"
            )
        n, n_ref = len(draws), len(ref)
        flat, flat_ref = draws.reshape(n, -1), ref.reshape(n_ref, -1)
        dim = flat.shape[1]
        two_sample = [m for m in metrics if m in _TWO_SAMPLE]
        if two_sample and dim > max_dim:
            warnings.warn(
                f"compare: skipping {', '.join(two_sample)} for variable {name!r}: it has "
                f"{dim} entries > max_dim={max_dim} (pass max_dim= to compute them)",
                stacklevel=2,
            )
        sub = _subsample(flat, max_samples, rng)
        sub_ref = _subsample(flat_ref, max_samples, rng)

        for metric in metrics:
            if metric == "rmse_mean":
                diff = flat.mean(0) - flat_ref.mean(0)
                rows.append(_row(name, metric, np.sqrt(np.mean(diff**2)), n, n_ref))
            elif metric == "rmse_std":
                diff = flat.std(0, ddof=1) - flat_ref.std(0, ddof=1)
                rows.append(_row(name, metric, np.sqrt(np.mean(diff**2)), n, n_ref))
            elif dim > max_dim:
                note = f"skipped: {dim} entries > max_dim={max_dim}"
                rows.append(_row(name, metric, np.nan, len(sub), len(sub_ref), note))
            else:
                options = {"seed": seed, **kwargs.get(metric, {})}
                used, used_ref = len(sub), len(sub_ref)
                if metric == "c2st":
                    used = used_ref = min(used, used_ref)
                elif metric == "sinkhorn":
                    cap = options.get("max_samples", 1000)
                    used, used_ref = min(used, cap), min(used_ref, cap)
                try:
                    value, note = _TWO_SAMPLE[metric](sub, sub_ref, **options), ""
                except ValueError as error:
                    value, note = np.nan, f"failed: {error}"
                rows.append(_row(name, metric, value, used, used_ref, note))

        if name not in truth:
            continue
        true = np.asarray(truth[name], dtype=np.float64)
        if true.shape != draws.shape[1:]:
            raise ValueError(
                f"variable {name!r}: truth has shape {true.shape} but the posterior "
                f"has {draws.shape[1:]}"
            )
        mean = draws.mean(0)
        for metric in truth_metrics:
            if metric == "ssim" and true.ndim != 2:
                note = f"ssim needs a 2-D field, got shape {true.shape}"
                rows.append(_row(name, metric, np.nan, n, None, note))
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    value = _FIELD[metric](mean, true, **kwargs.get(metric, {}))
                note = ""
            except ValueError as error:
                value, note = np.nan, f"failed: {error}"
            rows.append(_row(name, metric, value, n, None, note))

    table = pd.DataFrame(rows, columns=_COLUMNS)
    table["n_samples"] = table["n_samples"].astype("Int64")
    table["n_reference"] = table["n_reference"].astype("Int64")
    return table
