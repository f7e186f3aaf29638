r"""Saving and loading amortized posteriors without unpickling arbitrary objects.

A ``.bayesinv`` file is a zip archive with two members:

- ``meta.json``: the format name and version, the bayesinv version, the method name and
  everything needed to rebuild the posterior (site layouts, network configuration,
  normalisation, training summary) as plain JSON;
- ``tensors.pt``: a dict of tensors written by :func:`torch.save` and read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.

:func:`load` checks the format version and reports a corrupted or foreign file clearly.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from bayesinv._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "PosteriorFileError", "write_posterior", "read_posterior", "load"]

FORMAT = "bayesinv-posterior"
FORMAT_VERSION = 1


from bayesinv.errors import PosteriorFileError  # noqa: E402  (re-exported)


def write_posterior(path: str | os.PathLike, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    r"""Writes ``meta`` (JSON) and ``tensors`` to ``path`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "bayesinv_version": __version__}
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.json", json.dumps(meta, indent=1, sort_keys=True))
        zf.writestr("tensors.pt", buffer.getvalue())
    os.replace(tmp, path)
    return path


def read_posterior(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    r"""Reads a posterior file: returns ``(meta, tensors)`` after checking its format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no posterior file at {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            raw = zf.read("tensors.pt")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise PosteriorFileError(f"{path} is not a readable bayesinv posterior file ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise PosteriorFileError(f"{path} is not a bayesinv posterior file (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise PosteriorFileError(
            f"{path} has posterior format version {version}, written by bayesinv {meta.get('bayesinv_version')};"
            f" this bayesinv ({__version__}) reads version {FORMAT_VERSION}"
        )
    try:
        tensors = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupted payload
        raise PosteriorFileError(f"{path}: the weights cannot be read ({type(exc).__name__}: {exc})") from exc
    return meta, tensors


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    r"""Loads an amortized posterior saved with ``posterior.save(path)``.

    Arguments:
        path: The ``.bayesinv`` file.
        device: Where to put the network (``"auto"``: CUDA when available).

    Returns:
        The posterior object of the method that wrote the file.

    Example:
        >>> post = bayesinv.load("elasto.bayesinv")
        >>> idata = post.infer(y_obs, num_samples=1000)
    """
    from bayesinv.registry import get_method

    meta, tensors = read_posterior(path)
    spec = get_method(meta["method"])
    if spec.loader is None:
        raise PosteriorFileError(f"method {meta['method']!r} cannot load saved posteriors")
    return spec.loader(meta, tensors, device=device)
