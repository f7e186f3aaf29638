r"""What every amortized posterior shares: layouts, normalisation, sampling API, save/load.

A learned method (cond_score, flow, vae) trains a network q(x | c) on flat, normalised
vectors: x the target sites, c the conditioning sites (the observation, plus e.g. a
sensor mask), both flattened by a :class:`Layout` and scaled by a :class:`Normalizer`.
The method subclasses :class:`AmortizedPosterior` and implements ``_sample`` (and, with a
density, ``_log_prob``); this module turns that into the user-facing object:

- ``post.sample(y, n)`` → dict of site → draws ``(n, *shape)`` (or ``(*B, n, *shape)``
  for a batch of observations, all sampled in one call);
- ``post.infer(y, num_samples=..., seed=...)`` → :class:`arviz.InferenceData`;
- ``post(y)`` → a Pyro guide that samples the target sites;
- ``post.save(path)`` / :func:`bayesinv.load`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesinv.idata import to_inference_data
from bayesinv.io import write_posterior
from bayesinv.problem import Problem, ProblemError

__all__ = ["Layout", "Normalizer", "AmortizedPosterior", "training_data", "resolve_device"]

TRANSFORMS = ("log", "log10")


def resolve_device(device: str | torch.device | None) -> torch.device:
    r"""``"auto"``/``None`` → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        """
        x = x.float()
        dim = x.shape[-1]
        if kind == "none":
            return cls(torch.zeros(dim), torch.ones(dim))
        sizes = list(groups) if groups is not None else [1] * dim
        shift, scale = torch.empty(dim), torch.empty(dim)
        start = 0
        for size in sizes:
            block = x[:, start : start + size]
            if kind == "minmax":
                lo, hi = block.min(), block.max()
                s, sc = lo, hi - lo
            elif kind == "standard":
                s, sc = block.mean(), block.std()
            else:
                raise ValueError(f"normalisation {kind!r} is not one of 'minmax', 'standard', 'none'")
            shift[start : start + size] = s
            scale[start : start + size] = sc if sc > 1e-12 else 1.0
            start += size
        return cls(shift, scale)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def _apply_transforms(values: dict[str, Tensor], transforms: Mapping[str, Any], inverse: bool = False) -> dict[str, Tensor]:
    out = dict(values)
    for name, spec in transforms.items():
        kind, ref = (spec, 1.0) if isinstance(spec, str) else (spec[0], float(spec[1]))
        if kind not in TRANSFORMS:
            raise ProblemError(f"transform {spec!r} for site {name!r} is not one of {TRANSFORMS} (or (name, reference))")
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


def training_data(
    problem: Problem,
    target: tuple[str, ...],
    condition: tuple[str, ...],
    *,
    num_simulations: int | None,
    data: Any,
    seed: int | None,
    progress: bool | None,
) -> tuple[dict[str, Tensor], int]:
    r"""The training pairs: simulated now (``num_simulations``) or read from ``data``.

    Returns:
        Site name → tensor ``(N, *shape)`` for every target and conditioning site, and N.
    """
    import xarray as xr

    from bayesinv.data import simulate

    if data is None:
        if num_simulations is None:
            raise ProblemError("give num_simulations= (simulate now) or data= (a dataset from bayesinv.simulate)")
        data = simulate(problem, int(num_simulations), seed=0 if seed is None else seed, progress=progress, chunk_size=min(int(num_simulations), 5000))
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        data = xr.open_zarr(data, consolidated=False)
    if isinstance(data, xr.Dataset):
        missing = [n for n in (*target, *condition) if n not in data]
        if missing:
            raise ProblemError(f"data= lacks the site(s) {missing}; it holds {sorted(map(str, data.data_vars))}")
        arrays = {n: torch.as_tensor(np.asarray(data[n].values)) for n in (*target, *condition)}
    elif isinstance(data, Mapping):
        missing = [n for n in (*target, *condition) if n not in data]
        if missing:
            raise ProblemError(f"data= lacks the site(s) {missing}; it holds {sorted(data)}")
        arrays = {n: torch.as_tensor(np.asarray(data[n])) for n in (*target, *condition)}
    else:
        raise ProblemError(f"data= must be an xarray.Dataset, a zarr path or a dict of arrays, got {type(data).__name__}")
    sizes = {n: v.shape[0] for n, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ProblemError(f"data= sites have different numbers of draws: {sizes}")
    for n, v in arrays.items():
        expected = problem.sites[n].shape
        if tuple(v.shape[1:]) != expected:
            raise ProblemError(f"data= site {n!r} has draws of shape {tuple(v.shape[1:])}, the model's site has shape {expected}")
    n = next(iter(sizes.values()))
    if num_simulations is not None and n > num_simulations:
        arrays = {k: v[:num_simulations] for k, v in arrays.items()}
        n = int(num_simulations)
    return arrays, n


class AmortizedPosterior:
    r"""Base class of learned posteriors q(target | condition).

    Subclasses set ``method`` and implement ``_sample(c, n, generator, **options) ->
    (x (B, n, D), stats)`` on normalised flat tensors, ``_config()`` (JSON-able network
    settings) and ``build_net(config)``; a method with a density also implements
    ``_log_prob(x, c)``.

    Arguments:
        net: The trained network (EMA weights).
        target: Layout of the target sites.
        condition: Layout of the conditioning sites (observed sites first).
        x_norm, c_norm: Normalisers of target and condition vectors.
        transforms: Site → ``"log"``/``"log10"`` or ``(kind, reference)`` applied to
            the target before normalisation.
        obs_keys: For dict observations, the model's key of each observed site.
        config: The method's settings (JSON-able).
        info: Training summary (num_simulations, fit time, losses).
    """

    method: str = ""

    def __init__(
        self,
        net: nn.Module,
        *,
        target: Layout,
        condition: Layout,
        x_norm: Normalizer,
        c_norm: Normalizer,
        transforms: Mapping[str, Any] | None = None,
        observed: Sequence[str] = (),
        obs_keys: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
        device: str | torch.device | None = "cpu",
    ):
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.target = target
        self.condition = condition
        self.x_norm = x_norm.to(self.device)
        self.c_norm = c_norm.to(self.device)
        self.transforms = dict(transforms or {})
        self.observed = tuple(observed) or condition.names[:1]
        self.obs_keys = dict(obs_keys or {})
        self.config = dict(config or {})
        self.info = dict(info or {})

    # -- to implement -----------------------------------------------------------------
    def _sample(self, c: Tensor, n: int, generator: torch.Generator | None, **options) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        raise NotImplementedError(f"method {self.method!r} has no density: it can be sampled, not scored")

    def _config(self) -> dict:
        return dict(self.config)

    # -- conditioning -----------------------------------------------------------------
    def _condition_tensor(self, y: Any) -> tuple[Tensor, tuple[int, ...]]:
        if isinstance(y, Mapping):
            by_key = {k: n for n, k in self.obs_keys.items() if k is not None}
            values = {by_key.get(k, k): v for k, v in y.items()}
        elif len(self.condition.names) == 1:
            values = {self.condition.names[0]: y}
        else:
            raise ProblemError(
                f"this posterior conditions on {list(self.condition.names)}: pass y as a dict keyed by site name"
            )
        missing = [n for n in self.condition.names if n not in values]
        if missing:
            raise ProblemError(f"missing conditioning value(s) for {missing}; this posterior conditions on {list(self.condition.names)}")
        batch: tuple[int, ...] | None = None
        tensors = {}
        for name, shape in zip(self.condition.names, self.condition.shapes):
            v = values[name]
            t = v.detach() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
            t = t.float()
            if tuple(t.shape[t.dim() - len(shape) :]) != shape or t.dim() < len(shape):
                raise ProblemError(
                    f"observation for site {name!r} has shape {tuple(t.shape)}, but the posterior was trained on"
                    f" site {name!r} with shape {shape} (a batch of observations goes in leading dims)"
                )
            if not torch.isfinite(t).all():
                bad = (~torch.isfinite(t)).nonzero()[0].tolist()
                raise ProblemError(f"observation for site {name!r} contains NaN/inf values, first at index {tuple(bad)}")
            b = tuple(t.shape[: t.dim() - len(shape)])
            if batch is not None and b != batch:
                raise ProblemError(f"conditioning sites have different batch shapes {batch} and {b}")
            batch = b
            tensors[name] = t
        c = self.condition.flatten(tensors).reshape(-1, self.condition.dim).to(self.device)
        return self.c_norm(c), batch or ()

    # -- public API -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, y: Any, n: int = 1000, *, seed: int | None = None, **options) -> dict[str, Tensor]:
        r"""Draws ``n`` posterior samples of every target site for each observation.

        Arguments:
            y: One observation (the observed site's shape) or a batch (leading dims), or a
                dict keyed by conditioning site name.
            n: Draws per observation.
            seed: The seed (``None``: the global RNG).
            options: Sampler options of the method.

        Returns:
            Site name → draws ``(n, *shape)``, or ``(*B, n, *shape)`` for a batch.
        """
        return self._sample_with_stats(y, n, seed=seed, **options)[0]

    def _sample_with_stats(self, y: Any, n: int, *, seed: int | None, **options) -> tuple[dict[str, Tensor], dict]:
        if n <= 0:
            raise ProblemError(f"number of draws must be positive, got {n}")
        c, batch = self._condition_tensor(y)
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
        x, stats = self._sample(c, n, gen, **options)
        x = self.x_norm.inverse(x).cpu()
        values = _apply_transforms(self.target.unflatten(x), self.transforms, inverse=True)
        values = {k: v.reshape(*batch, n, *v.shape[2:]) for k, v in values.items()}
        return values, stats

    def infer(
        self,
        y: Any,
        num_samples: int = 1000,
        *,
        seed: int | None = 0,
        dims: Mapping[str, list[str]] | None = None,
        coords: Mapping[str, Any] | None = None,
        **options,
    ):
        r"""Posterior draws for ``y`` as :class:`arviz.InferenceData` (a list for a batch of observations)."""
        t0 = time.perf_counter()
        values, stats = self._sample_with_stats(y, num_samples, seed=seed, **options)
        elapsed = time.perf_counter() - t0
        _, batch = self._condition_tensor(y)
        attrs = {
            "sample_time_s": elapsed,
            "fit_time_s": self.info.get("fit_time_s"),
            "num_simulations": self.info.get("num_simulations"),
        }
        stats_scalars = {k: np.asarray(v) for k, v in stats.items() if np.ndim(v) == 0}

        def one(vals: dict[str, Tensor], obs: Any) -> Any:
            return to_inference_data(
                {k: v.unsqueeze(0) for k, v in vals.items()},
                observed=obs,
                sample_stats=stats_scalars,
                method=self.method,
                options={**self.config, **options, "num_samples": num_samples},
                seed=seed,
                dims=dims,
                coords=coords,
                attrs=attrs,
            )

        def observed_of(index: tuple[int, ...]) -> dict:
            if isinstance(y, Mapping):
                return {k: np.asarray(v)[index] for k, v in y.items()}
            return {self.condition.names[0]: np.asarray(y.cpu() if isinstance(y, Tensor) else y)[index]}

        if not batch:
            return one(values, observed_of(()))
        out = []
        for index in np.ndindex(*batch):
            out.append(one({k: v[index] for k, v in values.items()}, observed_of(index)))
        return out

    def log_prob(self, values: Mapping[str, Any], y: Any) -> Tensor:
        r"""log q(target | y) for target values ``(*B, *shape)`` (methods with a density only)."""
        if self.transforms:
            raise NotImplementedError("log_prob with target transforms is not supported")
        c, batch = self._condition_tensor(y)
        vals = _apply_transforms({k: torch.as_tensor(np.asarray(v)).float() for k, v in values.items()}, self.transforms)
        x = self.x_norm(self.target.flatten(vals).to(self.device))
        lead = x.shape[:-1]
        x = x.reshape(-1, self.target.dim)
        if c.shape[0] == 1 and x.shape[0] > 1:
            c = c.expand(x.shape[0], -1)
        lp = self._log_prob(x, c) - torch.log(torch.abs(self.x_norm.scale)).sum()
        return lp.reshape(lead).cpu()

    def sample_and_log_prob(self, y: Any, n: int) -> tuple[dict[str, Tensor], Tensor]:
        r"""``n`` draws and their log-density (a proposal for importance sampling)."""
        values = self.sample(y, n)
        return values, self.log_prob(values, y).double()

    def __call__(self, y: Any = None) -> dict[str, Tensor]:
        r"""The Pyro guide: samples every target site from q(· | y)."""
        if y is None:
            raise ProblemError("the amortized posterior guide needs the observation y")
        plates = [f for f in pyro.poutine.runtime._PYRO_STACK if getattr(f, "name", None) == "_bayesinv_draws"]
        n = plates[0].size if plates else 1
        values = self.sample(y, n)
        out = {}
        for name, v in values.items():
            v = v if plates else v[0]
            event = len(self.target.shapes[self.target.names.index(name)])
            out[name] = pyro.sample(name, dist.Delta(v, event_dim=event))
        return out

    # -- persistence ------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, Tensor]]:
        meta = {
            "method": self.method,
            "target": self.target.to_json(),
            "condition": self.condition.to_json(),
            "transforms": self.transforms,
            "observed": list(self.observed),
            "obs_keys": self.obs_keys,
            "config": self._config(),
            "info": self.info,
        }
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({f"x_norm.{k}": v for k, v in self.x_norm.state_dict().items()})
        tensors.update({f"c_norm.{k}": v for k, v in self.c_norm.state_dict().items()})
        return meta, tensors

    def save(self, path) -> Any:
        r"""Saves the posterior (weights as tensors, settings as JSON); read it with :func:`bayesinv.load`."""
        meta, tensors = self.state()
        return write_posterior(path, meta, tensors)

    @classmethod
    def build_net(cls, config: Mapping[str, Any]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict[str, Tensor], *, device="cpu") -> "AmortizedPosterior":
        r"""Rebuilds a saved posterior (used by :func:`bayesinv.load`)."""
        net = cls.build_net(meta["config"])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        x_norm = Normalizer(tensors["x_norm.shift"], tensors["x_norm.scale"])
        c_norm = Normalizer(tensors["c_norm.shift"], tensors["c_norm.scale"])
        return cls(
            net,
            target=Layout.from_json(meta["target"]),
            condition=Layout.from_json(meta["condition"]),
            x_norm=x_norm,
            c_norm=c_norm,
            transforms=meta.get("transforms"),
            observed=meta.get("observed", ()),
            obs_keys=meta.get("obs_keys"),
            config=meta["config"],
            info=meta.get("info"),
            device=device,
        )

    def __repr__(self) -> str:
        t = ", ".join(f"{n}{list(s)}" for n, s in zip(self.target.names, self.target.shapes))
        c = ", ".join(f"{n}{list(s)}" for n, s in zip(self.condition.names, self.condition.shapes))
        sims = self.info.get("num_simulations")
        return f"{type(self).__name__}(q({t} | {c}), method={self.method!r}, num_simulations={sims}, device={self.device})"
