r"""The posterior object of every learned method: q(target | y) behind one user-facing API.

- ``post.sample(y, n, seed=...)`` → dict of site → draws ``(n, *shape)`` (or ``(*B, n, *shape)``
  for a batch of observations, all sampled in one call);
- ``post.infer(y, num_samples=..., seed=...)`` → :class:`arviz.InferenceData`;
- ``post(y)`` → a Pyro guide that samples the target sites;
- ``post.log_prob(values, y)`` for methods with a density;
- ``post.save(path)`` / :func:`bayesinv.load`.

The method (an :class:`~bayesinv.amortized.method.AmortizedMethod`) supplies the sampler
on normalised flat tensors; this class does conditioning, seeding, option validation,
normalisation and transforms, batching and the InferenceData layout.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesinv._checks import as_observation, check_count, check_seed
from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms, resolve_device
from bayesinv.amortized.method import AmortizedMethod, make_sampler_config
from bayesinv.errors import ProblemError
from bayesinv.idata import to_inference_data

__all__ = ["AmortizedPosterior"]


class AmortizedPosterior:
    r"""A learned posterior q(target | condition), parametrised by its method.

    Arguments:
        method: The :class:`AmortizedMethod`.
        net: The trained network (EMA weights).
        target: Layout of the target sites.
        condition: Layout of the conditioning sites (observed sites first).
        x_norm, c_norm: Normalisers of target and condition vectors.
        transforms: Site → ``"log"``/``"log10"`` or ``(kind, reference)`` applied to
            the target before normalisation.
        observed: The observed sites.
        obs_keys: For dict observations, the model's key of each observed site.
        config: The method's saved settings (JSON-able; the network is rebuilt from them).
        info: The training record (:data:`bayesinv.amortized.fit.INFO_KEYS`).
        device: Where the network lives.
        saveable: ``False`` for a network injected with ``build=`` (it has no saved recipe).
    """

    def __init__(
        self,
        method: AmortizedMethod,
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
        saveable: bool = True,
    ):
        self.spec = method
        self.method = method.name
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
        self.saveable = saveable

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
            t = as_observation(values[name], name).float()
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

    def sampler_config(self, **options: Any) -> Any:
        r"""The validated sampler config of ``options`` (unknown names and bad values refused, naming the valid ones)."""
        scfg = make_sampler_config(self.spec, options)
        if self.spec.check_sample is not None:
            self.spec.check_sample(self.config, scfg, set(options))
        return scfg

    # -- public API -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, y: Any, n: int = 1000, *, seed: int | None = None, **options: Any) -> dict[str, Tensor]:
        r"""Draws ``n`` posterior samples of every target site for each observation.

        Arguments:
            y: One observation (the observed site's shape) or a batch (leading dims), or a
                dict keyed by conditioning site name.
            n: Draws per observation.
            seed: An integer in ``[0, 2**63)``, or ``None`` for a fresh random seed.
            options: Sampling options of the method (fields of its sampler config).

        Returns:
            Site name → draws ``(n, *shape)``, or ``(*B, n, *shape)`` for a batch.

        Example:
            >>> post.sample(y_obs, 1000, seed=0)["theta"].shape
            torch.Size([1000, 2])
        """
        return self._sample_with_stats(y, n, seed=check_seed(seed), scfg=self.sampler_config(**options))[0]

    def _sample_with_stats(self, y: Any, n: int, *, seed: int, scfg: Any) -> tuple[dict[str, Tensor], dict]:
        n = check_count("number of draws", n)
        c, batch = self._condition_tensor(y)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        x, stats = self.spec.sample(self, c, n, gen, scfg)
        x = self.x_norm.inverse(x).cpu()
        values = apply_transforms(self.target.unflatten(x), self.transforms, inverse=True)
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
        **options: Any,
    ):
        r"""Posterior draws for ``y`` as :class:`arviz.InferenceData` (a list for a batch of observations).

        Arguments:
            y: One observation or a batch (leading dims), or a dict keyed by site.
            num_samples: Draws per observation.
            seed: An integer in ``[0, 2**63)``, or ``None`` for a fresh one (recorded in ``attrs``).
            dims, coords: ArviZ dims and coordinates of the sites.
            options: Sampling options of the method.

        Returns:
            An InferenceData with ``posterior`` (chain, draw, *site dims), ``observed_data``,
            ``sample_stats`` and ``attrs`` (method, options, seed, times).
        """
        seed = check_seed(seed)
        scfg = self.sampler_config(**options)
        t0 = time.perf_counter()
        values, stats = self._sample_with_stats(y, num_samples, seed=seed, scfg=scfg)
        elapsed = time.perf_counter() - t0
        _, batch = self._condition_tensor(y)
        attrs = {
            "sample_time_s": elapsed,
            "fit_time_s": self.info.get("fit_time_s"),
            "num_simulations": self.info.get("num_simulations"),
            "fit_seed": self.info.get("seed"),
        }
        attrs = {k: v for k, v in attrs.items() if v is not None}
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
                return {k: as_observation(v, k).numpy()[index] for k, v in y.items()}
            return {self.condition.names[0]: as_observation(y, self.condition.names[0]).numpy()[index]}

        if not batch:
            return one(values, observed_of(()))
        return [one({k: v[index] for k, v in values.items()}, observed_of(index)) for index in np.ndindex(*batch)]

    @torch.no_grad()
    def log_prob(self, values: Mapping[str, Any], y: Any) -> Tensor:
        r"""log q(target | y) in site units for target values ``(*B, *shape)`` (methods with a density only).

        Arguments:
            values: Site → values.
            y: The observation (one, broadcast over ``values``, or one per value).

        Returns:
            ``(*B,)`` log-densities.
        """
        if self.spec.log_prob is None:
            raise ProblemError(self.spec.no_density or f"method {self.method!r} has no density: it can be sampled, not scored")
        if self.transforms:
            raise NotImplementedError("log_prob with target transforms is not supported")
        c, batch = self._condition_tensor(y)
        vals = {k: torch.as_tensor(np.asarray(v)).float() for k, v in values.items()}
        x = self.x_norm(self.target.flatten(vals).to(self.device))
        lead = x.shape[:-1]
        x = x.reshape(-1, self.target.dim)
        if c.shape[0] == 1 and x.shape[0] > 1:
            c = c.expand(x.shape[0], -1)
        lp = self.spec.log_prob(self, x, c) - torch.log(torch.abs(self.x_norm.scale)).sum()
        return lp.reshape(lead).cpu()

    def sample_and_log_prob(self, y: Any, n: int) -> tuple[dict[str, Tensor], Tensor]:
        r"""``n`` draws and their log-density (a proposal for importance sampling)."""
        if self.spec.log_prob is None:
            raise ProblemError(self.spec.no_density or f"method {self.method!r} has no density")
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
    def save(self, path: Any) -> Any:
        r"""Saves the posterior (weights as tensors, settings as JSON); read it with :func:`bayesinv.load`.

        Arguments:
            path: The ``.bayesinv`` file (its folder is created).

        Returns:
            The path written.
        """
        from bayesinv.amortized.files import save_posterior

        return save_posterior(self, path)

    def __repr__(self) -> str:
        t = ", ".join(f"{n}{list(s)}" for n, s in zip(self.target.names, self.target.shapes))
        c = ", ".join(f"{n}{list(s)}" for n, s in zip(self.condition.names, self.condition.shapes))
        sims = self.info.get("num_simulations")
        return f"{type(self).__name__}(q({t} | {c}), method={self.method!r}, num_simulations={sims}, device={self.device})"
