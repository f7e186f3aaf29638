r"""Compare a posterior with a reference posterior (and optionally with the truth).

:func:`compare` returns a tidy table (a :class:`Comparison`, which is a
:class:`pandas.DataFrame`), one row per variable and metric, so tables from several
methods concatenate and pivot::

    table = pd.concat([compare(idata, ref).assign(method=name) for name, idata in runs])
    table.pivot_table(index=["variable", "metric"], columns="method", values="value")

Printed, it is a compact grid (a row per variable, a column per metric) that reads in a
terminal. Only metrics that apply appear: no row is NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bayesinv.errors import OptionError

from . import metrics as _metrics

__all__ = [
    "compare",
    "Comparison",
    "SAMPLE_METRICS",
    "TWO_SAMPLE_METRICS",
    "JOINT_METRICS",
    "TRUTH_METRICS",
    "IMAGE_METRICS",
    "posterior_samples",
]

#: Default metrics between the two posteriors, per variable.
SAMPLE_METRICS = ("rmse_mean", "rmse_std", "c2st", "sinkhorn", "mmd")
#: Two-sample metrics (on draws): usable per variable (``metrics=``) and jointly (``joint_metrics=``).
TWO_SAMPLE_METRICS = ("c2st", "sinkhorn", "w2", "mmd")
#: Default metrics of the joint comparison over several sites.
JOINT_METRICS = ("c2st", "mmd", "sinkhorn", "w2")
#: Metrics between the posterior mean and the truth (with ``truth=``).
TRUTH_METRICS = ("mse", "psnr", "ssim", "relative_l1", "absolute_l1", "dynamic_range")
#: Truth metrics computed only for fields (sites with at least 2 dims; SSIM: exactly 2).
IMAGE_METRICS = ("psnr", "ssim", "dynamic_range")

_TWO_SAMPLE = {
    "c2st": _metrics.c2st,
    "sinkhorn": _metrics.sinkhorn_distance,
    "w2": _metrics.wasserstein2,
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


class Comparison(pd.DataFrame):
    r"""The table :func:`compare` returns: a tidy :class:`pandas.DataFrame` with a compact print.

    Columns ``variable``, ``metric``, ``value``, ``n_samples``, ``n_reference``, ``note``;
    a joint comparison's rows have ``variable`` ``"theta+E"`` (the sites joined by ``+``).
    ``attrs`` hold ``n_draws`` and ``n_reference_draws`` (draws of each posterior),
    ``shapes`` (variable → its shape, printed) and ``skipped``: what was not computed,
    for which variables and why (``"c2st, sinkhorn, mmd for E (400 entries > max_dim=64)"``).

    ``print(table)`` shows one line per variable and one column per metric, the
    posterior-vs-reference metrics first, the metrics against the truth below; anything
    derived from it (a selection, ``assign``, ``pd.concat``) is a plain DataFrame.
    """

    @property
    def _constructor(self):
        return pd.DataFrame

    def __repr__(self) -> str:
        return self.to_text()

    __str__ = __repr__

    def to_text(self, digits: int = 4) -> str:
        r"""The compact form: a line per variable, a column per metric (``digits`` significant digits)."""
        frame = pd.DataFrame(self)
        n, n_ref = self.attrs.get("n_draws"), self.attrs.get("n_reference_draws")
        head = "compare"
        if n is not None and n_ref is not None:
            head += f": {n:,} draws vs {n_ref:,} reference draws"
        lines = [head]
        order = list(dict.fromkeys(frame["variable"]))
        shapes = self.attrs.get("shapes", {})
        label_of = {v: f"{v} {shapes[v]}" if v in shapes else str(v) for v in order}
        first = max([len("vs reference")] + [len(label) for label in label_of.values()])
        for title, names in (("vs reference", SAMPLE_METRICS + ("w2",)), ("vs truth", TRUTH_METRICS)):
            part = frame[frame["metric"].isin(names)]
            if part.empty:
                continue
            metrics = [m for m in names if m in set(part["metric"])]
            rows = [v for v in order if v in set(part["variable"])]
            labels = [label_of[v] for v in rows]
            values = part.set_index(["variable", "metric"])["value"]
            cells = [[f"{values[(v, m)]:.{digits}g}" if (v, m) in values.index else "" for m in metrics] for v in rows]
            widths = [max(len(m), *(len(row[j]) for row in cells)) for j, m in enumerate(metrics)]
            lines.append(title.ljust(first) + "".join(f"  {m:>{w}}" for m, w in zip(metrics, widths)))
            for label, row in zip(labels, cells):
                lines.append((label.ljust(first) + "".join(f"  {c:>{w}}" for c, w in zip(row, widths))).rstrip())
        if frame.empty:
            lines.append("(no metric applies)")
        lines.extend(f"not computed: {entry}" for entry in self.attrs.get("skipped", []))
        return "\n".join(lines)


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


def _shape_label(shape: tuple[int, ...]) -> str:
    return "(" + "×".join(str(s) for s in shape) + ")" if shape else "()"


def _two_sample(
    name: str, metric: str, sub: np.ndarray, sub_ref: np.ndarray, options: dict[str, Any],
    skipped: list[str], note: str = "",
) -> dict[str, Any] | None:
    r"""One two-sample metric row, or ``None`` (with a warning and an entry in ``skipped``) when it fails."""
    used, used_ref = len(sub), len(sub_ref)
    if metric == "c2st":
        used = used_ref = min(used, used_ref, options.get("max_samples") or used)
    elif metric in ("sinkhorn", "w2"):
        cap = options.get("max_samples", 1000)
        used, used_ref = min(used, cap), min(used_ref, cap)
    try:
        value = _TWO_SAMPLE[metric](sub, sub_ref, **options)
    except ValueError as error:
        warnings.warn(f"compare: {metric} for {name!r} failed: {error}", stacklevel=3)
        skipped.append((name, metric, f"failed: {error}"))
        return None
    return _row(name, metric, value, used, used_ref, note)


def _check_metrics(option: str, given: Sequence[str], allowed: Sequence[str]) -> list[str]:
    if isinstance(given, str):
        given = [given]
    unknown = [m for m in given if m not in allowed]
    if unknown:
        raise OptionError(f"{option}: unknown metrics {unknown}; available: {list(allowed)}")
    return list(given)


def compare(
    idata: Source,
    reference: Source,
    var_names: str | Sequence[str] | None = None,
    *,
    truth: Mapping[str, Any] | None = None,
    metrics: Sequence[str] = SAMPLE_METRICS,
    truth_metrics: Sequence[str] = TRUTH_METRICS,
    joint: bool | Sequence[str] = False,
    joint_metrics: Sequence[str] = JOINT_METRICS,
    max_samples: int = 2000,
    max_dim: int = 64,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> Comparison:
    r"""Compare the posterior of ``idata`` with a reference posterior.

    Per variable (flattened over its site dims):

    - ``rmse_mean`` / ``rmse_std``: :math:`\sqrt{\frac{1}{P} \sum_p (\bar u_p -
      \bar u^{\mathrm{ref}}_p)^2}` between the pixel-wise posterior means, resp.
      the pixel-wise standard deviations (ddof=1), over the :math:`P` entries;
      computed from all draws.
    - ``c2st``, ``sinkhorn``, ``mmd`` (and ``w2`` when asked for):
      :func:`~bayesinv.diagnostics.metrics.c2st`,
      :func:`~bayesinv.diagnostics.metrics.sinkhorn_distance` (entropic OT,
      Euclidean cost, reg 0.01), :func:`~bayesinv.diagnostics.metrics.mmd` and
      :func:`~bayesinv.diagnostics.metrics.wasserstein2` on the flattened draws, after
      subsampling each set to ``max_samples``. For variables with more than
      ``max_dim`` entries they are skipped with a warning.

    With ``joint=``, the draws of several sites are compared together: each site is
    flattened, the sites are stacked side by side into one vector per draw (a draw of
    every site comes from the same joint draw), and every coordinate is standardised
    by the reference's mean and standard deviation, so sites in different units weigh
    alike; then the ``joint_metrics`` (C2ST, MMD, Sinkhorn, W2 by default) compare the
    two sets of vectors. The row's ``variable`` is the sites joined by ``+``. C2ST of a
    joint comparison sees dependence between sites that the per-variable rows miss.

    With ``truth=``, for each variable in it, the posterior mean of ``idata`` is
    compared with the true value: MSE, relative L1 and absolute L1 (per entry) for
    every site; PSNR and dynamic range for fields (at least 2 dims) and SSIM for 2-D
    fields (see :mod:`bayesinv.diagnostics.metrics`; data range = truth max − min).

    Only metrics that apply are in the table, never a NaN row: image metrics of a
    vector site, metrics of a constant truth (no data range) or of an all-zero truth
    (relative L1), and two-sample metrics above ``max_dim`` are left out, and
    ``table.attrs["skipped"]`` says which and why (printed under the table).

    Arguments:
        idata: The posterior to assess: InferenceData, xarray Dataset with dims
            ``(chain, draw, ...)``, or dict name → samples ``(N, *shape)``.
        reference: The reference posterior, in the same forms.
        var_names: Variables to compare; default those present in both.
        truth: Optional dict name → true value, shape ``shape`` of the variable.
        metrics: Posterior-vs-reference metrics per variable, from
            :data:`SAMPLE_METRICS` and ``"w2"``.
        truth_metrics: Metrics against ``truth``, a subset of :data:`TRUTH_METRICS`.
        joint: ``True`` compares all of ``var_names`` jointly too; a list of site names
            compares those jointly; ``False`` (default): per variable only.
        joint_metrics: Metrics of the joint comparison, a subset of
            :data:`TWO_SAMPLE_METRICS`.
        max_samples: Draws per set used by the two-sample metrics.
        max_dim: Largest flattened dimension for the two-sample metrics (per variable,
            and of the stacked joint vector).
        metric_kwargs: Extra keyword arguments per metric, e.g.
            ``{"c2st": {"classifier": "rf"}, "sinkhorn": {"reg": 0.05}}``.
        seed: Seed of subsampling and of the metrics.

    Returns:
        A :class:`Comparison` (a DataFrame) with columns ``variable``, ``metric``,
        ``value``, ``n_samples`` (draws of ``idata`` used), ``n_reference`` (draws of the
        reference used, NA for truth metrics) and ``note``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = {"theta": rng.normal(size=(400, 2)), "s": rng.normal(size=400)}
        >>> b = {"theta": rng.normal(size=(400, 2)), "s": rng.normal(size=400)}
        >>> table = compare(a, b, metrics=("rmse_mean",), joint=True, joint_metrics=("mmd",))
        >>> list(zip(table.variable, table.metric))
        [('theta', 'rmse_mean'), ('s', 'rmse_mean'), ('theta+s', 'mmd')]
    """
    metrics = _check_metrics("metrics", metrics, SAMPLE_METRICS + ("w2",))
    truth_metrics = _check_metrics("truth_metrics", truth_metrics, TRUTH_METRICS)
    joint_metrics = _check_metrics("joint_metrics", joint_metrics, TWO_SAMPLE_METRICS)
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
    var_names = list(var_names)
    if joint is True:
        joint_names = list(var_names)
    elif joint is False or joint is None:
        joint_names = []
    elif isinstance(joint, str):
        joint_names = [joint]
    else:
        joint_names = list(joint)
    for name in dict.fromkeys(var_names + joint_names):
        if name not in names:
            raise KeyError(f"variable {name!r} not in idata; available variables: {names}")
        if name not in ref_names:
            raise KeyError(
                f"variable {name!r} not in reference; available variables: {ref_names}"
            )
    if joint_names and len(set(joint_names)) < 2:
        raise OptionError(
            f"joint={joint!r}: a joint comparison needs at least two distinct sites (one site is its per-variable row)"
        )
    shapes: dict[str, str] = {}
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def draws_of(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache:
            draws, ref = posterior_samples(idata, name), posterior_samples(reference, name)
            if draws.shape[1:] != ref.shape[1:]:
                raise ValueError(
                    f"variable {name!r}: shape {draws.shape[1:]} in idata but "
                    f"{ref.shape[1:]} in reference"
                )
            cache[name] = draws, ref
            shapes[name] = _shape_label(draws.shape[1:])
        return cache[name]

    truth = dict(truth or {})
    for name in truth:
        if name not in var_names:
            raise KeyError(f"truth variable {name!r} not compared; var_names: {list(var_names)}")

    if joint_names:  # checked before any metric runs
        sizes = {name: int(np.prod(draws_of(name)[0].shape[1:], dtype=np.int64)) for name in joint_names}
        if sum(sizes.values()) > max_dim:
            raise OptionError(
                f"joint={joint_names}: the stacked draws have {sum(sizes.values())} entries ({sizes}) > "
                f"max_dim={max_dim}; compare fewer or smaller sites jointly, or pass max_dim="
            )

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str, str]] = []

    for name in var_names:
        draws, ref = draws_of(name)
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
            skipped.append((name, ", ".join(two_sample), f"{dim} entries > max_dim={max_dim}"))
        sub = _subsample(flat, max_samples, rng)
        sub_ref = _subsample(flat_ref, max_samples, rng)

        for metric in metrics:
            if metric == "rmse_mean":
                diff = flat.mean(0) - flat_ref.mean(0)
                rows.append(_row(name, metric, np.sqrt(np.mean(diff**2)), n, n_ref))
            elif metric == "rmse_std":
                diff = flat.std(0, ddof=1) - flat_ref.std(0, ddof=1)
                rows.append(_row(name, metric, np.sqrt(np.mean(diff**2)), n, n_ref))
            elif dim <= max_dim:
                row = _two_sample(name, metric, sub, sub_ref, {"seed": seed, **kwargs.get(metric, {})}, skipped)
                if row is not None:
                    rows.append(row)

        if name not in truth:
            continue
        true = np.asarray(truth[name], dtype=np.float64)
        if true.shape != draws.shape[1:]:
            raise ValueError(
                f"variable {name!r}: truth has shape {true.shape} but the posterior "
                f"has {draws.shape[1:]}"
            )
        mean = draws.mean(0)
        constant = true.size < 2 or float(true.max() - true.min()) <= 0
        why: dict[str, list[str]] = {}
        for metric in truth_metrics:
            options = kwargs.get(metric, {})
            if (metric == "ssim" and true.ndim != 2) or (metric in IMAGE_METRICS and true.ndim < 2):
                why.setdefault("not a 2-D field", []).append(metric)
                continue
            if metric in ("psnr", "ssim", "dynamic_range") and constant and options.get("data_range") is None:
                why.setdefault("truth is constant", []).append(metric)
                continue
            if metric == "relative_l1" and not np.any(true):
                why.setdefault("truth is zero", []).append(metric)
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    value = _FIELD[metric](mean, true, **options)
            except ValueError as error:
                why.setdefault(f"failed: {error}", []).append(metric)
                continue
            if np.isnan(value):
                why.setdefault("undefined", []).append(metric)
                continue
            rows.append(_row(name, metric, value, n, None))
        skipped.extend((name, ", ".join(ms), reason) for reason, ms in why.items())

    if joint_names:
        rows.extend(_joint(joint_names, draws_of, joint_metrics, kwargs, max_samples, rng, seed, skipped))
        label = "+".join(joint_names)
        total = sum(int(np.prod(draws_of(n)[0].shape[1:], dtype=np.int64)) for n in joint_names)
        shapes[label] = f"({total})"

    table = Comparison(pd.DataFrame(rows, columns=_COLUMNS))
    table["n_samples"] = table["n_samples"].astype("Int64")
    table["n_reference"] = table["n_reference"].astype("Int64")
    if cache:
        first = next(iter(cache.values()))
        table.attrs.update(n_draws=len(first[0]), n_reference_draws=len(first[1]))
    groups: dict[tuple[str, str], list[str]] = {}
    for name, which, reason in skipped:  # one entry per (metrics, reason), naming its variables
        groups.setdefault((which, reason), []).append(name)
    table.attrs.update(skipped=[f"{which} for {', '.join(vs)} ({reason})" for (which, reason), vs in groups.items()],
                       shapes=shapes)  # fmt: skip
    return table


def _joint(
    names: list[str], draws_of, joint_metrics: list[str], kwargs: dict, max_samples: int,
    rng: np.random.Generator, seed: int, skipped: list[str],
) -> list[dict[str, Any]]:
    r"""The rows of the joint comparison of ``names``: stacked, standardised draws."""
    label = "+".join(names)
    parts = [draws_of(name) for name in names]
    dim = sum(int(np.prod(d.shape[1:], dtype=np.int64)) for d, _ in parts)
    for which, index in (("idata", 0), ("reference", 1)):
        counts = {name: len(p[index]) for name, p in zip(names, parts)}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"joint={names}: the sites have different numbers of draws in {which} ({counts}); "
                "a joint comparison needs the sites of the same joint draws"
            )
    flat = np.concatenate([d.reshape(len(d), -1) for d, _ in parts], axis=1)
    flat_ref = np.concatenate([r.reshape(len(r), -1) for _, r in parts], axis=1)
    center, scale = flat_ref.mean(0), flat_ref.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    flat, flat_ref = (flat - center) / scale, (flat_ref - center) / scale
    sub, sub_ref = _subsample(flat, max_samples, rng), _subsample(flat_ref, max_samples, rng)
    note = f"joint over {', '.join(names)}: {dim} entries, standardised by the reference"
    rows = []
    for metric in joint_metrics:
        row = _two_sample(label, metric, sub, sub_ref, {"seed": seed, **kwargs.get(metric, {})}, skipped, note)
        if row is not None:
            rows.append(row)
    return rows
