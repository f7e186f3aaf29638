r"""Flat layouts of named sites, affine normalisers and target transforms.

A learned method works on flat vectors: the target sites concatenated by a
:class:`Layout`, scaled by a :class:`Normalizer`, after an optional log transform
(:func:`apply_transforms`).

Example:
    >>> layout = Layout(("theta", "E"), ((2,), (4, 4)))
    >>> layout.dim
    18
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bayesinv.errors import OptionError, ProblemError

__all__ = [
    "Layout", "Normalizer", "TRANSFORMS", "NORMALIZATIONS", "apply_transforms", "check_transforms", "resolve_device", "to_normalised",
    "from_normalised", "saved_layout",
]  # fmt: skip

TRANSFORMS = ("log", "log10")
NORMALIZATIONS = ("minmax", "standard", "none")


def resolve_device(device: str | torch.device | None) -> torch.device:
    r"""``"auto"``/``None`` → CUDA when available, else CPU.

    Arguments:
        device: ``"auto"``, ``None``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Returns:
        The :class:`torch.device`.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}") from exc


@dataclass(frozen=True)
class Layout:
    r"""How named sites map to one flat vector: ``names[i]`` takes ``prod(shapes[i])`` entries."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(math.prod(s)) for s in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def flatten(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""Site values ``(*B, *shape)`` → ``(*B, dim)``."""
        parts = []
        for name, shape in zip(self.names, self.shapes):
            v = torch.as_tensor(values[name])
            batch = v.shape[: v.dim() - len(shape)]
            parts.append(v.reshape(*batch, -1).float())
        return torch.cat(parts, -1)

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        r"""``(*B, dim)`` → site values ``(*B, *shape)``."""
        out, start = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = x[..., start : start + size].reshape(*x.shape[:-1], *shape)
            start += size
        return out

    def groups(self) -> list[int]:
        r"""Normaliser groups: a field (≥ 2 dims) as a whole, vector entries one by one."""
        out: list[int] = []
        for shape, size in zip(self.shapes, self.sizes):
            out += [size] if len(shape) >= 2 else [1] * size
        return out

    def to_json(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))


class Normalizer(nn.Module):
    r"""An affine map ``(x − shift) / scale`` fitted by min-max (to [0, 1]) or standardisation.

    Arguments:
        shift: ``(dim,)``.
        scale: ``(dim,)``.
    """

    def __init__(self, shift: Tensor, scale: Tensor):
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    @classmethod
    def fit(cls, x: Tensor, *, kind: str = "minmax", groups: Sequence[int] | None = None) -> "Normalizer":
        r"""Fits to data ``(N, dim)``.

        Arguments:
            x: The data.
            kind: ``"minmax"`` (to [0, 1]), ``"standard"`` (zero mean, unit variance) or ``"none"``.
            groups: Sizes of blocks sharing one shift/scale (a field is normalised as a
                whole, not pixel by pixel); default: every feature on its own.

        Returns:
            The fitted normaliser.
        """
        x = x.float()
        dim = x.shape[-1]
        if kind == "none":
            return cls(torch.zeros(dim), torch.ones(dim))
        if kind not in NORMALIZATIONS:
            raise OptionError(f"normalization must be one of {NORMALIZATIONS}, got {kind!r}")
        sizes = list(groups) if groups is not None else [1] * dim
        shift, scale = torch.empty(dim), torch.empty(dim)
        start = 0
        for size in sizes:
            block = x[:, start : start + size]
            s, sc = (block.min(), block.max() - block.min()) if kind == "minmax" else (block.mean(), block.std())
            shift[start : start + size] = s
            scale[start : start + size] = sc if sc > 1e-12 else 1.0
            start += size
        return cls(shift, scale)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _parse(name: str, spec: Any) -> tuple[str, float]:
    kind, ref = (spec, 1.0) if isinstance(spec, str) else (tuple(spec) + (None, None))[:2]
    if kind not in TRANSFORMS or not isinstance(ref, (int, float)) or isinstance(ref, bool) or not ref > 0:
        raise OptionError(f"transform {spec!r} for site {name!r} is not one of {TRANSFORMS} (or (kind, reference > 0))")
    return kind, float(ref)


def check_transforms(transforms: Any, target: Sequence[str] | None = None) -> dict[str, Any]:
    r"""Validates ``transforms=`` (site → ``"log"``/``"log10"``/``(kind, reference)``) before any work.

    Arguments:
        transforms: The option value (``None``: no transform).
        target: The target sites, when known (a transform of another site is refused).

    Returns:
        The transforms as a dict.
    """
    if transforms is None:
        return {}
    if not isinstance(transforms, Mapping):
        raise OptionError(f"transforms must be a dict site -> 'log'/'log10'/(kind, reference), got {transforms!r}")
    for name, spec in transforms.items():
        _parse(name, spec)
        if target is not None and name not in target:
            raise OptionError(f"transforms= names {name!r}, which is not a target site {list(target)}")
    return dict(transforms)


def apply_transforms(values: dict[str, Tensor], transforms: Mapping[str, Any], inverse: bool = False) -> dict[str, Tensor]:
    r"""Applies (or inverts) the target transforms to the sites of ``values`` that have one.

    Arguments:
        values: Site → tensor.
        transforms: Site → ``"log"``/``"log10"`` or ``(kind, reference)``.
        inverse: Map back to site units.

    Returns:
        A new dict.
    """
    out = dict(values)
    for name, spec in transforms.items():
        kind, ref = _parse(name, spec)
        if name not in out:
            continue
        v = out[name]
        if not inverse:
            if (v <= 0).any():
                raise ProblemError(f"transform {kind!r} of site {name!r} needs positive values; found {float(v.min())}")
            out[name] = torch.log(v / ref) if kind == "log" else torch.log10(v / ref)
        else:
            out[name] = ref * (torch.exp(v) if kind == "log" else torch.pow(10.0, v))
    return out


def transform_log_det(values: Mapping[str, Tensor], transforms: Mapping[str, Any], layout: Layout) -> Tensor:
    r"""log |d t(x) / d x| of the target transforms t, summed over each site's event: ``(*B,)``.

    With it a density of the transformed target becomes one in site units,
    log q(x) = log q'(t(x)) + log |t'(x)|: −log(x) per element for ``"log"``,
    −log(x) − log(ln 10) for ``"log10"`` (the reference scale cancels).

    Arguments:
        values: Site → values ``(*B, *shape)`` in site units (positive where transformed).
        transforms: Site → ``"log"``/``"log10"`` or ``(kind, reference)``.
        layout: The target layout (the event shape of each site).
    """
    total: Tensor | None = None
    for name, spec in transforms.items():
        if name not in values:
            continue
        kind, _ = _parse(name, spec)
        v = torch.as_tensor(values[name]).double()
        event = len(layout.shapes[layout.names.index(name)])
        term = -torch.log(v) - (math.log(math.log(10.0)) if kind == "log10" else 0.0)
        term = term.sum(tuple(range(-event, 0))) if event else term
        total = term if total is None else total + term
    if total is None:
        raise ValueError("transform_log_det: no transformed site among the values")
    return total


def to_normalised(values: Mapping[str, Any], layout: Layout, transforms: Mapping[str, Any], x_norm: nn.Module,
                  device: torch.device | str = "cpu") -> Tensor:  # fmt: skip
    r"""Site values ``(*B, *shape)`` in site units → the normalised flat ``(B, D)`` a network sees
    (transforms, layout and normaliser as for the training targets)."""
    v = {n: torch.as_tensor(np.asarray(values[n])).float().reshape(-1, *s) for n, s in zip(layout.names, layout.shapes)}
    return x_norm(layout.flatten(apply_transforms(v, transforms)).to(device))


def from_normalised(x: Tensor, layout: Layout, transforms: Mapping[str, Any], x_norm: nn.Module) -> dict[str, Tensor]:
    r"""The inverse of :func:`to_normalised`: normalised flat ``(*B, D)`` → site values ``(*B, *shape)`` on the CPU."""
    return apply_transforms(layout.unflatten(x_norm.inverse(x).cpu()), transforms, inverse=True)


def saved_layout(settings: Mapping[str, Any], key: str = "condition_layout") -> Layout | None:
    r"""The layout saved under ``key`` in a posterior's settings (``None`` when absent)."""
    saved = settings.get(key)
    return Layout.from_json(saved) if saved else None
