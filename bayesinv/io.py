r"""Saving and loading amortized posteriors without unpickling arbitrary objects.

A ``.bayesinv`` file is a zip archive with exactly two members:

- ``meta.json``: the format name and version, the bayesinv version, the method name and
  everything needed to rebuild the posterior (site layouts, network configuration,
  normalisation, training summary) as plain JSON (UTF-8, at most :data:`MAX_META_BYTES`);
- ``tensors.pt``: a dict of tensors written by :func:`torch.save` and read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.

:func:`read_posterior` caps every member's size before reading it (by its declared size,
its compression ratio, and while inflating — a declared size can lie), checks that the
meta is a UTF-8 JSON object of this format and of a version it reads (1 or 2), and reports
any problem as :class:`PosteriorFileError`. :func:`load` then checks the settings against
the stored tensors before building anything (:mod:`bayesinv.amortized.files`).

Version 2 (written since the amortized layer) has the same members and keys as version 1;
its info record has the keys of :data:`bayesinv.amortized.fit.INFO_KEYS`.
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
from bayesinv.errors import PosteriorFileError

__all__ = ["FORMAT", "FORMAT_VERSION", "READS_VERSIONS", "MAX_META_BYTES", "MAX_TENSOR_BYTES", "PosteriorFileError",
           "write_posterior", "read_posterior", "load"]  # fmt: skip

FORMAT = "bayesinv-posterior"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
MAX_META_BYTES = 4 * 2**20
MAX_TENSOR_BYTES = 8 * 2**30
#: A member this much larger than its compressed size is refused (weights compress by ~1.1x, not 100x).
MAX_RATIO = 50
_MEMBERS = ("meta.json", "tensors.pt")


def write_posterior(path: str | os.PathLike, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    r"""Writes ``meta`` (JSON) and ``tensors`` to ``path`` atomically (creating its folder); returns the path.

    Arguments:
        path: The file.
        meta: JSON-able settings.
        tensors: Name → tensor.

    Returns:
        The path.
    """
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


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise PosteriorFileError(f"{path}: member {name} declares {info.file_size} bytes, more than the {limit} allowed")
    if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise PosteriorFileError(
            f"{path}: member {name} inflates {info.compress_size} bytes to {info.file_size} (ratio over {MAX_RATIO}): refused"
        )
    with zf.open(info) as fh:
        data = fh.read(min(limit, info.file_size) + 1)
    if len(data) > info.file_size:
        raise PosteriorFileError(f"{path}: member {name} holds more bytes than its declared size {info.file_size}")
    return data


def read_posterior(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    r"""Reads a posterior file: returns ``(meta, tensors)`` after checking its format.

    Arguments:
        path: The file.

    Returns:
        The meta (a dict) and the tensors (name → tensor).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no posterior file at {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(zf.namelist())
            if names != sorted(_MEMBERS):
                raise PosteriorFileError(f"{path} is not a readable bayesinv posterior file (members {names[:5]}, expected {list(_MEMBERS)})")
            raw_meta = _read_member(zf, "meta.json", MAX_META_BYTES, path)
            raw = _read_member(zf, "tensors.pt", MAX_TENSOR_BYTES, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        if isinstance(exc, PosteriorFileError):
            raise
        raise PosteriorFileError(f"{path} is not a readable bayesinv posterior file ({type(exc).__name__}: {exc})") from None
    try:
        meta = json.loads(raw_meta.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PosteriorFileError(f"{path}: meta.json is not UTF-8 text ({exc})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PosteriorFileError(f"{path} is not a readable bayesinv posterior file: meta.json is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise PosteriorFileError(f"{path}: meta.json must hold a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise PosteriorFileError(f"{path} is not a bayesinv posterior file (format {meta.get('format')!r:.80})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PosteriorFileError(f"{path}: format_version must be an integer, got {version!r:.40} ({type(version).__name__})")
    if version not in READS_VERSIONS:
        raise PosteriorFileError(
            f"{path} has posterior format version {version}, written by bayesinv {meta.get('bayesinv_version')!r:.40};"
            f" this bayesinv ({__version__}) reads versions {list(READS_VERSIONS)}"
        )
    try:
        tensors = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupted payload
        raise PosteriorFileError(f"{path}: the weights cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(tensors, dict):
        raise PosteriorFileError(f"{path}: the weights must be a dict of tensors, got {type(tensors).__name__}")
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
    name = meta.get("method")
    if not isinstance(name, str):
        raise PosteriorFileError(f"{path}: meta key 'method' is missing or not a string (got {name!r:.80})")
    try:
        spec = get_method(name)
    except ValueError:
        raise PosteriorFileError(f"{path}: meta names an unknown method {name!r:.80}") from None
    if spec.loader is None:
        raise PosteriorFileError(f"method {name!r} cannot load saved posteriors")
    try:
        return spec.loader(meta, tensors, device=device)
    except PosteriorFileError as exc:
        raise PosteriorFileError(f"{path}: {exc}") from None
