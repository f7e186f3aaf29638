r"""Building ArviZ InferenceData that follows bayesinv's conventions.

- ``posterior``: one variable per target site, dims ``(chain, draw, *site dims)``, site
  dims named from ``dims=`` / ``coords=`` when given.
- ``observed_data``: the observation.
- ``sample_stats``: what the method knows per draw.
- ``attrs``: method, its options (JSON), num_simulations, fit and sample wall times,
  seed, bayesinv version — all netCDF-friendly so a save/load round trip is exact.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Mapping

from bayesinv._arviz import az
import numpy as np
import torch

from bayesinv._version import __version__

__all__ = ["to_inference_data", "json_options"]


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
        An :class:`arviz.InferenceData`.
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
    for group in idata.groups():
        idata[group].attrs.update(cleaned)
    return idata
