r"""The posterior object of every learned method: q(target | y) behind one user-facing API.

- ``post.sample(y, n, seed=...)`` → dict of site → draws ``(n, *shape)`` (or ``(*B, n, *shape)``
  for a batch of observations, all sampled in one call);
- ``post.infer(y, num_samples=..., seed=...)`` → :class:`arviz.InferenceData`;
- ``post(y)`` → a Pyro guide that samples the target sites;
- ``post.log_prob(values, y)`` for methods with a density (flow, and the ODE posteriors
  cond_score and flow_matching: the density of the ODE sampler's draws);
- ``post.save(path)`` / :func:`bayesinv.load`.

Fields from latent draws: a posterior whose target holds every latent sample site of the
model returns the model's deterministic sites too (a field ``mu`` computed from an inclusion
centre), by replaying the model with the drawn latents (as Pyro's ``Predictive``; see
:func:`bayesinv.problem.replay_deterministic`: each replay stops once those sites are computed, so a
simulator later in the model is not run): ``post.infer`` and the guide do it by default,
``post.sample`` with ``deterministic=True``. The fit keeps the traced model; a file does not
hold it, so after :func:`bayesinv.load` call ``post.attach(model)`` (or pass ``model=`` to
``post.infer``) first.

The method (an :class:`~bayesinv.amortized.method.AmortizedMethod`) supplies the sampler
on normalised flat tensors; this class does conditioning, seeding, option validation,
normalisation and transforms, batching and the InferenceData layout.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from bayesinv._checks import as_observation, check_count, check_seed
from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms, resolve_device, transform_log_det
from bayesinv.amortized.method import AmortizedMethod, make_sampler_config
from bayesinv.errors import ProblemError
from bayesinv.idata import to_inference_data
from bayesinv.problem import Problem, as_problem, replay_deterministic

__all__ = ["AmortizedPosterior"]


@contextlib.contextmanager
def _outside_pyro():
    r"""Runs a nested model (the guide's replay) as at top level: Pyro's handler stack and plate dims
    are set aside for the block (the caller's plates would collide with the replay's) and restored after it."""
    from pyro.poutine import runtime

    stack, dims = runtime._PYRO_STACK[:], runtime._DIM_ALLOCATOR._stack[:]
    runtime._PYRO_STACK.clear()
    runtime._DIM_ALLOCATOR._stack.clear()
    try:
        yield
    finally:
        runtime._PYRO_STACK[:] = stack
        runtime._DIM_ALLOCATOR._stack[:] = dims


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
        saveable: ``False`` for a network injected with ``build=``: only its registered classes
            (:func:`~bayesinv.amortized.custom.saveable_network`) let ``save`` rebuild it.
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
        self.problem: Problem | None = None

    # -- the model, for deterministic sites -------------------------------------------
    def attach(self, model: Any, *, observed: Sequence[str] | None = None) -> "AmortizedPosterior":
        r"""Keeps ``model`` (a Pyro/NumPyro model or a traced :class:`~bayesinv.problem.Problem`) to
        compute its deterministic sites from the drawn latents; :func:`bayesinv.fit` does it.

        Arguments:
            model: The model the posterior was fitted on (its target sites with the same shapes).
            observed: Its observed site names, for models where they cannot be found automatically.

        Returns:
            The posterior itself.

        Example:
            >>> post = bayesinv.load("lg.bayesinv").attach(model)
            >>> post.sample(y_obs, 100, deterministic=True)["mean_y"].shape
        """
        problem = as_problem(model, observed=None if observed is None else list(observed))
        for name, shape in zip(self.target.names, self.target.shapes):
            site = problem.sites.get(name)
            if site is None or tuple(site.shape) != tuple(shape):
                found = None if site is None else tuple(site.shape)
                raise ProblemError(f"the model does not fit this posterior: target site {name!r} has shape {found} in it, {tuple(shape)} here")
        self.problem = problem
        return self

    def deterministic_sites(self) -> tuple[str, ...]:
        r"""The model's deterministic sites this posterior can compute (``()`` without a model).

        A deterministic site is computed by replaying the model with the drawn latents, so it is
        available when every latent site the model visits before it is a target: one that comes
        after a latent this posterior does not draw (e.g. a modelling-error site sampled after the
        field) might depend on it and is left out, rather than filled with a prior draw.
        """
        if self.problem is None:
            return ()
        targets = set(self.target.names)
        names = []
        for name, site in self.problem.sites.items():  # in the order the model visits them
            if site.kind == "latent" and name not in targets:
                break
            if site.kind == "deterministic" and name not in targets:
                names.append(name)
        return tuple(names)

    def _replay(self, values: dict[str, Tensor], y: Any, batch: tuple[int, ...], n: int, seed: int) -> dict[str, Tensor]:
        r"""``values`` with the model's deterministic sites computed from them, per observation."""
        if self.problem is None:
            raise ProblemError(
                "deterministic sites need the model, which a saved file does not hold: call post.attach(model)"
                " after bayesinv.load, or pass model= to post.infer"
            )
        names = self.deterministic_sites()
        deterministic = [n for n in self.problem.deterministic if n not in self.target.names]
        if deterministic and not names:
            missing = [n for n in self.problem.latent if n not in self.target.names]
            raise ProblemError(
                f"deterministic sites are computed by replaying the model with the drawn latents, but this posterior"
                f" does not draw the latent site(s) {missing}, which the model visits before any of {deterministic}:"
                f" fit with target= those latent sites too"
            )
        if not names:
            return values
        problem = self.problem
        # the observation conditions the replay where it is the model's (not for implicit laws or extra conditions)
        ys = None
        if set(self.condition.names) == set(problem.observed) and not problem.implicit:
            ys, _ = problem.check_y(y, allow_batch=True)
        out: dict[str, list[Tensor]] = {k: [] for k in names}
        for index in np.ndindex(*batch):
            fixed = {k: values[k][index] for k in problem.latent if k in values}
            obs = None if ys is None else {k: v[index] for k, v in ys.items()}
            run = replay_deterministic(problem, names, fixed, n, y=obs, seed=seed)  # stops before a later simulator
            for k in names:
                out[k].append(run[k])
        full = dict(values)
        for k in names:
            v = torch.stack(out[k])
            full[k] = v.reshape(*batch, *v.shape[1:])
        return full

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
    def sample(self, y: Any, n: int = 1000, *, seed: int | None = None, deterministic: bool = False,
               **options: Any) -> dict[str, Tensor]:  # fmt: skip
        r"""Draws ``n`` posterior samples of every target site for each observation.

        Arguments:
            y: One observation (the observed site's shape) or a batch (leading dims), or a
                dict keyed by conditioning site name.
            n: Draws per observation.
            seed: An integer in ``[0, 2**63)``, or ``None`` for a fresh random seed.
            deterministic: Also return the model's deterministic sites, computed by replaying the
                model with the drawn latents (needs the model: see :meth:`attach`).
            options: Sampling options of the method (fields of its sampler config).

        Returns:
            Site name → draws ``(n, *shape)``, or ``(*B, n, *shape)`` for a batch.

        Example:
            >>> post.sample(y_obs, 1000, seed=0)["theta"].shape
            torch.Size([1000, 2])
        """
        seed = check_seed(seed)
        values = self._sample_with_stats(y, n, seed=seed, scfg=self.sampler_config(**options))[0]
        if deterministic:
            values = self._replay(values, y, self._condition_tensor(y)[1], n, seed)
        return values

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
        model: Any = None,
        deterministic: bool | None = None,
        **options: Any,
    ):
        r"""Posterior draws for ``y`` as :class:`arviz.InferenceData` (a list for a batch of observations).

        Arguments:
            y: One observation or a batch (leading dims), or a dict keyed by site.
            num_samples: Draws per observation.
            seed: An integer in ``[0, 2**63)``, or ``None`` for a fresh one (recorded in ``attrs``).
            dims, coords: ArviZ dims and coordinates of the sites.
            model: The model, attached first (:meth:`attach`; for a loaded posterior).
            deterministic: Add the model's deterministic sites to ``posterior``: ``None`` (default)
                whenever the model is known and it computes some (:meth:`deterministic_sites`); ``True``
                insists (an error says why it cannot); ``False`` never.
            options: Sampling options of the method.

        Returns:
            An InferenceData with ``posterior`` (chain, draw, site dims...), ``observed_data``,
            ``sample_stats`` and ``attrs`` (method, options, seed, times).
        """
        seed = check_seed(seed)
        scfg = self.sampler_config(**options)
        t0 = time.perf_counter()
        if model is not None:
            self.attach(model)
        values, stats = self._sample_with_stats(y, num_samples, seed=seed, scfg=scfg)
        _, batch = self._condition_tensor(y)
        if deterministic or (deterministic is None and self.deterministic_sites()):
            values = self._replay(values, y, batch, num_samples, seed)
        elapsed = time.perf_counter() - t0
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

    def _density_config(self, options: Mapping[str, Any]) -> Any:
        r"""The sampler config whose draws ``log_prob`` scores (the method's density options, then ``options``)."""
        if self.spec.log_prob is None:
            raise ProblemError(self.spec.no_density or f"method {self.method!r} has no density: it can be sampled, not scored")
        base = {} if self.spec.density is None else self.spec.density(self.config)
        return self.sampler_config(**{**base, **options})

    @torch.no_grad()
    def log_prob(self, values: Mapping[str, Any], y: Any, *, seed: int = 0, with_error: bool = False,
                 **options: Any) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
        r"""log q(target | y) in site units for target values ``(*B, *shape)`` (methods with a density only).

        For an ODE posterior (cond_score, flow_matching) this is the density of the draws of
        ``post.sample(y, **options)`` under the same sampling options (for cond_score the
        probability-flow ODE without the final denoising step: ``sampler="ode", denoise=False``
        are the defaults here), by the instantaneous change of variables: exact divergence for
        small targets, else Hutchinson's estimator with ``num_probes`` probes, whose standard
        error ``with_error=True`` returns.

        Arguments:
            values: Site → values (other sites, e.g. deterministic ones, are ignored).
            y: The observation (one, broadcast over ``values``, or one per value).
            seed: Seed of the Hutchinson probes.
            with_error: Also return the standard error of each log-density (zeros when exact).
            options: Sampling options of the method that define the sampler's law.

        Returns:
            ``(*B,)`` log-densities (and their standard errors with ``with_error``).
        """
        scfg = self._density_config(options)
        c, batch = self._condition_tensor(y)
        vals = {k: torch.as_tensor(np.asarray(values[k])).float() for k in self.target.names}
        log_det = None
        if self.transforms:  # the density of the transformed target, moved to site units by the Jacobian
            log_det = transform_log_det(vals, self.transforms, self.target)
            vals = apply_transforms(vals, self.transforms)
        x = self.x_norm(self.target.flatten(vals).to(self.device))
        lead = x.shape[:-1]
        x = x.reshape(-1, self.target.dim)
        if c.shape[0] == 1 and x.shape[0] > 1:
            c = c.expand(x.shape[0], -1)
        if self.spec.density is None:
            lp, se = self.spec.log_prob(self, x, c), torch.zeros(x.shape[0], device=x.device)
        else:
            gen = torch.Generator(device=self.device).manual_seed(check_seed(seed))
            lp, se = self.spec.log_prob(self, x, c, scfg, gen)
        lp = lp - torch.log(torch.abs(self.x_norm.scale)).sum()
        if log_det is not None:
            lp = lp + log_det.reshape(-1).to(lp)
        if with_error:
            return lp.reshape(lead).cpu(), se.reshape(lead).cpu()
        return lp.reshape(lead).cpu()

    def sample_and_log_prob(self, y: Any, n: int, *, seed: int | None = None, **options: Any) -> tuple[dict[str, Tensor], Tensor]:
        r"""``n`` draws and their log-density, under the same sampling options (a proposal for importance sampling)."""
        self._density_config(options)
        if self.spec.density is not None:
            options = {**self.spec.density(self.config), **options}
        if seed is None:  # from torch's global RNG, so a seeded caller (importance) is reproducible
            seed = int(torch.randint(0, 2**62, (1,)))
        values = self.sample(y, n, seed=seed, **options)
        return values, self.log_prob(values, y, **options).double()

    def __call__(self, y: Any = None) -> dict[str, Tensor]:
        r"""The Pyro guide: samples every target site from q(· | y) (seeded from torch's global RNG),
        and records the model's deterministic sites, replayed, when it can (:meth:`deterministic_sites`)."""
        if y is None:
            raise ProblemError("the amortized posterior guide needs the observation y")
        plates = [f for f in pyro.poutine.runtime._PYRO_STACK if getattr(f, "name", None) == "_bayesinv_draws"]
        n = plates[0].size if plates else 1
        seed = int(torch.randint(0, 2**62, (1,)))
        values = self.sample(y, n, seed=seed)
        out = {}
        for name, v in values.items():
            event = len(self.target.shapes[self.target.names.index(name)])
            out[name] = pyro.sample(name, dist.Delta(v if plates else v[0], event_dim=event))
        if self.deterministic_sites():
            with _outside_pyro():  # the replay's own sites stay out of the caller's trace
                full = self._replay(values, y, (), n, seed)
            for name in self.deterministic_sites():
                v = full[name]
                out[name] = pyro.deterministic(name, v if plates else v[0], event_dim=v.dim() - 1)
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

    def summary(self) -> Any:
        r"""What was trained (method, target and condition shapes), on what (simulations, pairs,
        data if recorded) and how well (losses, steps, why training stopped, times, calibration
        if recorded): a :class:`~bayesinv.diagnostics.posterior_summary.PosteriorSummary`,
        printed as a few lines (``print(post.summary())``; ``.as_dict()`` for a dict)."""
        from bayesinv.diagnostics.posterior_summary import summarize_posterior

        return summarize_posterior(self)

    def __repr__(self) -> str:
        t = ", ".join(f"{n}{list(s)}" for n, s in zip(self.target.names, self.target.shapes))
        c = ", ".join(f"{n}{list(s)}" for n, s in zip(self.condition.names, self.condition.shapes))
        sims = self.info.get("num_simulations")
        return f"{type(self).__name__}(q({t} | {c}), method={self.method!r}, num_simulations={sims}, device={self.device})"
