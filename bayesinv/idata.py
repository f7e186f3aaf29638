r"""Building ArviZ InferenceData that follows bayesinv's conventions.

- ``posterior``: one variable per target site, dims ``(chain, draw, *site dims)``, site
  dims named from ``dims=`` / ``coords=`` when given.
- ``observed_data``: the observation.
- ``sample_stats``: what the method knows per draw.
- ``attrs``: method, its options (JSON), num_simulations, fit and sample wall times,
  seed, bayesinv version — all netCDF-friendly so a save/load round trip is exact. They are
  set on the InferenceData itself (``idata.attrs``, saved by ``to_netcdf``) and on every
  group (``idata.posterior.attrs``, ...).

Weighted methods (importance sampling) return a multinomial resample of weighted
proposals; :func:`resampled_layout` lays those draws out so that ArviZ's diagnostics see
the repeats (see its docstring) and records the importance ESS beside them.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Mapping

from bayesinv._arviz import az
import numpy as np
import torch

from bayesinv._version import __version__

__all__ = ["to_inference_data", "json_options", "resampled_layout", "resampled_chains"]


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def json_options(options: Mapping[str, Any]) -> str:
    r"""Serialises method options to JSON (non-JSON values by their repr)."""

    def default(o: Any) -> Any:
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        if isinstance(o, (np.ndarray, torch.Tensor)):
            return f"<array shape={tuple(o.shape)}>"
        return repr(o)

    return json.dumps(dict(options), default=default, sort_keys=True)


def _clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, bool | np.bool_):
            out[k] = int(v)
        elif isinstance(v, (int, float, str, np.integer, np.floating)):
            out[k] = v.item() if isinstance(v, np.generic) else v
        else:
            out[k] = json.dumps(v, default=repr)
    return out


def to_inference_data(
    posterior: Mapping[str, Any],
    *,
    observed: Mapping[str, Any] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    method: str,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    dims: Mapping[str, list[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    r"""Builds an InferenceData from posterior draws ``(chain, draw, *shape)``.

    Arguments:
        posterior: Site name → draws ``(chain, draw, *shape)``.
        observed: Observed site name → observation (without chain/draw dims).
        sample_stats: Name → per-draw statistics ``(chain, draw, ...)``.
        method: The method name.
        options: The method's options (stored as JSON in ``attrs["options"]``).
        seed: The seed.
        dims: Site name → names of its dims (without chain/draw).
        coords: Dim name → coordinate values.
        attrs: Further attributes (fit/sample times, num_simulations, ...).

    Returns:
        An :class:`arviz.InferenceData` whose top-level ``attrs`` and every group's ``attrs``
        hold ``method``, ``options``, ``seed``, ``bayesinv_version``, ``created_at_bayesinv``
        and ``attrs`` (``None`` values left out).
    """
    post = {k: _to_numpy(v) for k, v in posterior.items()}
    for k, v in post.items():
        if v.ndim < 2:
            raise ValueError(f"posterior draws of {k!r} must have shape (chain, draw, ...), got {v.shape}")
    dims = {k: list(v) for k, v in (dims or {}).items()}
    for name, names in dims.items():
        value = post.get(name)
        if value is None and observed is not None and name in observed:
            value = _to_numpy(observed[name])[None, None]
        if value is not None and len(names) != value.ndim - 2:
            raise ValueError(
                f"dims for {name!r} name {len(names)} dim(s) {names}, but the site has shape {value.shape[2:]}"
            )
    all_attrs = {
        "method": method,
        "options": json_options(options or {}),
        "seed": seed,
        "bayesinv_version": __version__,
        "created_at_bayesinv": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    all_attrs.update(attrs or {})
    stats = {k: _to_numpy(v) for k, v in (sample_stats or {}).items()}
    scalars = {k: v for k, v in stats.items() if v.ndim == 0}
    stats = {k: v for k, v in stats.items() if v.ndim > 0}
    if scalars and not stats:
        chain, draw = next(iter(post.values())).shape[:2]
        stats = {"draw_index": np.broadcast_to(np.arange(draw), (chain, draw)).copy()}
    obs = {k: _to_numpy(v) for k, v in (observed or {}).items()}
    idata = az.from_dict(
        posterior=post,
        sample_stats=stats or None,
        observed_data=obs or None,
        dims=dims or None,
        coords=dict(coords) if coords else None,
    )
    for k, v in scalars.items():
        idata.sample_stats[k] = ((), v)
    cleaned = _clean_attrs(all_attrs)
    idata.attrs.update(cleaned)
    for group in idata.groups():
        idata[group].attrs.update(cleaned)
    return idata


def resampled_chains(num_draws: int, num_chains: int = 4) -> int:
    r"""The number of chains resampled draws are split into: the largest of ``num_chains``, ..., 2
    that divides ``num_draws`` into chains of at least 4 draws (ArviZ's minimum for R-hat), else
    the smallest such divisor up to ``2 * num_chains + 2``, else 1 (e.g. a prime number of draws).

    Example:
        >>> resampled_chains(4000), resampled_chains(999), resampled_chains(1001), resampled_chains(7)
        (4, 3, 7, 1)
    """
    candidates = list(range(num_chains, 1, -1)) + list(range(num_chains + 1, 2 * num_chains + 3))
    for chains in candidates:
        if num_draws % chains == 0 and num_draws // chains >= 4:
            return chains
    return 1


def resampled_layout(
    values: Mapping[str, Any],
    log_weight: Any,
    *,
    ess: float,
    num_proposals: int,
    seed: int,
    num_chains: int = 4,
    method: str = "importance",
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    r"""Lays out resampled draws so that ArviZ's ESS and R-hat see the repeats.

    A multinomial resample of :math:`N` draws from weighted proposals repeats a proposal
    :math:`n_i` times; shuffled, the repeats look independent and ArviZ reports
    ``ess_bulk`` close to :math:`N` whatever the importance ESS
    :math:`(\sum w)^2 / \sum w^2` was. Here identical draws are put next to each other
    (the groups in a random order) and the sequence is split into chains, so ArviZ
    sees each repeat as a run of a sticky chain: its ESS estimates
    :math:`N^2 / \sum_i n_i^2`, the ESS of the resample, which is close to the importance
    ESS when that is below :math:`N` (and at most :math:`N`), and R-hat exceeds 1 when
    few proposals carry the weight. The draws themselves (their multiset) are unchanged.

    Arguments:
        values: Site name → resampled draws ``(N, *shape)`` (NumPy or torch).
        log_weight: Each draw's normalised log importance weight, shape ``(N,)``.
        ess: The importance ESS of the run.
        num_proposals: The number of weighted proposals.
        seed: Seed of the order of the groups of identical draws.
        num_chains: The most chains to split into (see :func:`resampled_chains`).
        method: The method's name, for the note.

    Returns:
        The posterior (site → ``(chain, draw, *shape)``), the log weights ``(chain, draw)``
        and attrs: ``ess``, ``num_proposals``, ``num_distinct_draws``, ``draws_layout``
        (``"resampled"``) and ``draws_note``, a sentence saying what ArviZ's numbers mean
        for these draws and where the importance ESS is.

    Example:
        >>> post, lw, attrs = resampled_layout({"theta": np.array([[0.], [1.], [0.], [1.]])},
        ...                                    np.log(np.full(4, 0.25)), ess=2.0, num_proposals=10, seed=0)
        >>> post["theta"][0, :, 0].tolist(), attrs["num_distinct_draws"]
        ([0.0, 0.0, 1.0, 1.0], 2)
    """
    arrays = {k: _to_numpy(v) for k, v in values.items()}
    log_w = _to_numpy(log_weight).reshape(-1)
    n = len(log_w)
    for name, array in arrays.items():
        if array.shape[:1] != (n,):
            raise ValueError(f"resampled draws of {name!r} have shape {array.shape}, expected ({n}, ...)")
    # one row of bytes per draw: identical draws (repeats of one proposal) have identical rows
    rows = np.concatenate([np.ascontiguousarray(a.reshape(n, -1)).view(np.uint8).reshape(n, -1) for a in arrays.values()]
                          + [np.ascontiguousarray(log_w).view(np.uint8).reshape(n, -1)], axis=1)  # fmt: skip
    keys = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).reshape(n)
    _, group = np.unique(keys, return_inverse=True)
    group = group.reshape(-1)
    num_groups = int(group.max()) + 1 if n else 0
    rank = np.random.default_rng(seed).permutation(num_groups)  # the groups in a random order
    order = np.argsort(rank[group], kind="stable")
    chains = resampled_chains(n, num_chains)
    posterior = {k: a[order].reshape(chains, n // chains, *a.shape[1:]) for k, a in arrays.items()}
    note = (
        f"{method}: the {n:,} draws are a multinomial resample of {num_proposals:,} weighted proposals"
        f" ({num_groups:,} distinct; importance ESS {ess:,.1f}). Repeated draws are laid out consecutively and"
        f" split into {chains} chain(s), so ArviZ's ess_bulk, ess_tail, mcse and r_hat (az.summary) count"
        " the repeats: they estimate the ESS of the resample, not of independent draws. The importance ESS"
        " is sample_stats['ess'] and attrs['ess']; sample_stats['log_weight'] holds each draw's log weight."
    )
    attrs = {
        "ess": float(ess),
        "num_proposals": int(num_proposals),
        "num_distinct_draws": num_groups,
        "draws_layout": "resampled",
        "draws_note": note,
    }
    return posterior, log_w[order].reshape(chains, n // chains), attrs
