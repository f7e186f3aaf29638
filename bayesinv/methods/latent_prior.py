r"""A flow prior inverted in its latent space: ``method="latent_prior"``.

A normalizing flow :math:`x = G(z)`, :math:`z \sim N(0, I)`, learns the **prior** of the
target from its draws alone (:mod:`bayesinv.amortized.prior_only`: the model runs up to the
target sites, no simulator call), by maximum likelihood,

.. math:: \min_\phi \; -\frac{1}{N} \sum_i \log p_\phi(x_i), \qquad x_i \sim p(x),

— a Glow-like multi-scale flow (:class:`~bayesinv.nets.multiscale_flow.MultiscaleFlow`) for one
field target, a RealNVP-style affine coupling flow for vectors. The observation enters only
at inference, through the **model's own likelihood** :math:`\log p(y \mid x)`: the model runs
with its target set to :math:`G(z)` and its observation sites scored by whatever law they
state (Gaussian, Poisson, ``WrappedPhase``, ...), differentiated by autograd. So one trained
prior serves every forward operator and noise level the model can be given.

**MAP** (:meth:`LatentPriorPosterior.map`): Adam on the latent, from
:math:`z_0 = \tau\,\varepsilon` (``init_scale`` τ), with ``reparam`` =

- ``"none"``: :math:`\min_z -\log p(y \mid G(z))` (plain latent inversion, Bora et al. 2017);
- ``"beta"``: :math:`\min_z -\log p(y \mid G(z)) + \beta \lVert z \rVert^2` (β = ½ is the mode of
  the latent posterior);
- ``"gaussianize"``: :math:`z = \Gamma(v)`, :math:`\min_v -\log p(y \mid G(\Gamma(v)))`, Γ the
  differentiable Gaussianization layers of :mod:`bayesinv.nets.gaussianization` (whitening,
  Lambert W × F_X, Yeo–Johnson, standardization, fitted to the latent at every step), which keep
  the latent a standard-Gaussian-looking tensor whatever the data push it to.

**Posterior draws** (``post.sample`` / ``post.infer``): since :math:`x = G(z)` with
:math:`z \sim N(0, I)` *is* the prior, the posterior of the latent is exactly
:math:`p(z \mid y) \propto p(y \mid G(z))\, N(z; 0, I)` — a density whose prior part is a
standard Gaussian and whose gradient autograd gives. It is sampled by the Metropolis-adjusted
Langevin algorithm (MALA): the Langevin proposal uses the gradient (cheap here: one backward pass
through G and the model), the Metropolis correction makes the chain exact for this target
whatever the step size (unadjusted Langevin would be biased by it), and it needs no trajectory
length or mass-matrix tuning, unlike HMC/NUTS — only a step size, adapted by dual averaging
(Hoffman & Gelman, 2014) during warm-up to ``target_accept`` (0.574, MALA's optimum) and then
frozen. Chains start at the MAP of the chosen ``reparam``; with ``reparam="beta"`` the chains
target :math:`p(y \mid G(z)) e^{-\beta \lVert z \rVert^2}` (the same posterior at β = ½), with
``"none"`` and ``"gaussianize"`` the exact latent posterior. The draws are :math:`G(z)`.

It needs a differentiable model: a black-box simulator, an implicit observation or a NumPyro
model is refused (naming it) before any work.

Options: the fields of :class:`LatentPriorConfig` (fit) and :class:`LatentPriorSampler` (MAP and
sampling).

Example:
    >>> problem = bayesinv.models.deblurring.Deblurring(size=16)
    >>> post = bayesinv.fit(problem.model, method="latent_prior", target="x", num_simulations=4000)
    >>> x_map = post.map(y_obs, reparam="gaussianize")["x"]          # (16, 16)
    >>> idata = post.infer(y_obs, num_samples=500)                   # MALA draws of x
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn


from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms
from bayesinv.amortized.likelihood import check_likelihood, model_log_likelihood
from bayesinv.amortized.method import AmortizedMethod, check_choice, check_float, check_int, register_amortized, to_json, train_options
from bayesinv.amortized.posterior import AmortizedPosterior
from bayesinv.amortized.prior_only import prepare_prior_pairs
from bayesinv.errors import OptionError, ProblemError
from bayesinv.nets.gaussianization import LAYERS, Gaussianization
from bayesinv.problem import Problem

__all__ = ["LatentPriorConfig", "LatentPriorSampler", "LatentPriorPosterior", "LATENT_PRIOR", "REPARAMS", "mala", "check_differentiable",
           "model_log_likelihood"]

REPARAMS = ("none", "beta", "gaussianize")
#: Latents of at most this many entries get the Hessian preconditioner with ``precondition="auto"``.
PRECONDITION_MAX_DIM = 4096
FLOWS = ("auto", "multiscale", "realnvp")

#: Training defaults of ``method="latent_prior"`` (they replace TrainOptions' class defaults; the user's options override them).
TRAIN_DEFAULTS = dict(
    max_epochs=200,
    max_steps=None,
    batch_size=128,
    lr=1e-3,
    lr_schedule=None,
    patience=20,
    ema_decay=0.999,
    val_fraction=0.1,
    grad_clip=10.0,
    weight_decay=0.0,
    normalization="standard",
    precision="float32",
)


@dataclass(frozen=True)
class LatentPriorConfig(train_options(TRAIN_DEFAULTS)):
    r"""Fit options of ``method="latent_prior"`` (with the training fields of :class:`~bayesinv.amortized.method.TrainOptions`).

    Arguments:
        flow: ``"auto"`` (multi-scale for one field target whose sides ``2**scales`` divides,
            else RealNVP), ``"multiscale"`` or ``"realnvp"``.
        num_transforms: Flow steps per scale (multiscale) or coupling transformations (RealNVP).
        hidden: Hidden sizes of the RealNVP couplings; the first is the coupling CNN width (multiscale).
        scales: Number of scales (multiscale).
        normalization: ``"standard"`` (default), ``"minmax"`` or ``"none"`` of the target.
    """

    flow: str = "auto"
    num_transforms: int = 4
    hidden: tuple[int, ...] = (64, 64)
    scales: int = 2

    def __post_init__(self):
        self.check_training()
        check_choice(self, "flow", FLOWS)
        if not isinstance(self.hidden, tuple) or not self.hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden):
            raise OptionError(f"LatentPriorConfig: option hidden={self.hidden!r} must be a non-empty tuple of integers >= 1")
        check_int(self, "num_transforms")
        check_int(self, "scales")


@dataclass(frozen=True)
class LatentPriorSampler:
    r"""MAP and sampling options of ``method="latent_prior"``.

    Arguments:
        reparam: ``"none"``, ``"beta"`` or ``"gaussianize"`` (see the module docs).
        beta: The weight β of ``reparam="beta"`` (½: the latent posterior's mode).
        layers, block: The Gaussianization layers of ``reparam="gaussianize"`` and the whitening block.
        map_steps, map_lr: Adam steps and learning rate of the MAP.
        init_scale: τ of the start :math:`z_0 = \tau \varepsilon` (> 0 for ``"gaussianize"``).
        chains: MALA chains per observation (run in one batch).
        warmup: Warm-up steps per chain (step-size adaptation; discarded).
        thin: Keep every ``thin``-th draw after warm-up.
        step_size: The first MALA step size ε (proposal :math:`z + \varepsilon \nabla \log \pi + \sqrt{2\varepsilon}\,\xi`).
        target_accept: The acceptance rate the warm-up adapts ε to.
        precondition: ``"hessian"``: MALA moves in :math:`u`, :math:`z = z^* + L u` with
            :math:`L L^T` the inverse negative Hessian of the log posterior at the MAP (eigenvalues
            floored at the prior's curvature; D backward passes, a D × D matrix); ``"none"``: in z;
            ``"auto"``: ``"hessian"`` up to 4096 latent entries.
    """

    reparam: str = "none"
    beta: float = 0.5
    layers: tuple[str, ...] = LAYERS
    block: int = 4
    map_steps: int = 500
    map_lr: float = 0.05
    init_scale: float = 0.7
    chains: int = 4
    warmup: int = 500
    thin: int = 1
    step_size: float = 0.01
    target_accept: float = 0.574
    precondition: str = "auto"

    def __post_init__(self):
        check_choice(self, "reparam", REPARAMS)
        check_choice(self, "precondition", ("auto", "hessian", "none"))
        check_float(self, "beta", low=0.0, open_low=True)
        if not isinstance(self.layers, tuple) or not self.layers or any(n not in LAYERS for n in self.layers):
            raise OptionError(f"LatentPriorSampler: option layers={self.layers!r} must be a non-empty tuple of names from {list(LAYERS)}")
        for name in ("block", "map_steps", "chains", "thin"):
            check_int(self, name)
        check_int(self, "warmup", minimum=0)
        check_float(self, "map_lr", low=0.0, open_low=True)
        check_float(self, "init_scale", low=0.0)
        check_float(self, "step_size", low=0.0, open_low=True)
        check_float(self, "target_accept", low=0.0, high=0.99, open_low=True)
        if self.reparam == "gaussianize" and self.init_scale == 0:
            raise OptionError("LatentPriorSampler: reparam='gaussianize' needs init_scale > 0 (a constant latent cannot be Gaussianized)")


def check_sample(settings: Mapping[str, Any], scfg: LatentPriorSampler, given: set) -> None:
    r"""Refuses sampling options that do not fit: β without ``reparam="beta"``, layer options without
    ``"gaussianize"``, and Gaussianization of a latent too small for it."""
    if "beta" in given and scfg.reparam != "beta":
        raise OptionError(f"option beta= is the weight of reparam='beta'; reparam={scfg.reparam!r} does not use it")
    for name in ("layers", "block"):
        if name in given and scfg.reparam != "gaussianize":
            raise OptionError(f"option {name}= belongs to reparam='gaussianize'; reparam={scfg.reparam!r} does not use it")
    dim = int(settings.get("dim", 0))
    if scfg.reparam == "gaussianize":
        if dim < 16:
            raise OptionError(
                f"reparam='gaussianize' treats the {dim} latent entries as a sample to Gaussianize; it needs 16 or more"
                " (use reparam='beta' for a small target)"
            )
        if "whiten" in scfg.layers and (dim % scfg.block or dim // scfg.block <= scfg.block):
            raise OptionError(f"block={scfg.block} does not fit the latent of {dim} entries (a divisor with dim / block > block)")


# -- the network ---------------------------------------------------------------------------------
def rebuild(settings: Mapping[str, Any]) -> nn.Module:
    r"""The flow prior of saved settings (``architecture``)."""
    from bayesinv.nets.multiscale_flow import MultiscaleFlow, VectorFlowPrior

    arch = dict(settings["architecture"])
    kind = arch.pop("flow")
    return MultiscaleFlow(**arch) if kind == "multiscale" else VectorFlowPrior(**arch)


def _field_fits(layout: Any, scales: int) -> bool:
    if len(layout.names) != 1 or len(layout.shapes[0]) not in (2, 3):
        return False
    h, w = layout.shapes[0][-2:]
    return h % 2**scales == 0 and w % 2**scales == 0


def build(cfg: LatentPriorConfig, pairs: Any, seed: int) -> tuple[nn.Module, dict]:
    r"""The flow prior of ``cfg`` for the target layout (actnorms initialised on the draws), and its settings."""
    from bayesinv.nets.coupling import field_shape

    layout = pairs.target
    kind = cfg.flow if cfg.flow != "auto" else ("multiscale" if _field_fits(layout, cfg.scales) else "realnvp")
    if kind == "multiscale":
        arch = dict(flow="multiscale", x_shape=field_shape(layout), scales=cfg.scales, steps=cfg.num_transforms, hidden=cfg.hidden[0])
    else:
        arch = dict(flow="realnvp", dim=layout.dim, transforms=cfg.num_transforms, hidden=list(cfg.hidden))
    settings = {**to_json(cfg), "architecture": arch, "dim": int(layout.dim)}
    net = rebuild(settings)
    net.initialize(pairs.x[:1024])
    return net, settings


def loss(cfg: LatentPriorConfig, net: nn.Module, settings: Mapping[str, Any]):
    r"""``loss_fn(module, x, c)``: the negative log-likelihood of the prior draws per dimension."""
    return lambda module, x, c: module.loss(x)


# -- the likelihood --------------------------------------------------------------------------------
def check_differentiable(problem: Problem, target: tuple[str, ...]) -> None:
    r"""Refuses, before any work, a model whose likelihood latent_prior cannot differentiate.

    Arguments:
        problem: The traced problem.
        target: The target sites.
    """
    check_likelihood(problem, target, "method 'latent_prior'", "an amortized method trained on simulations"
                     " (method='cond_score', 'flow' or 'flow_matching'), or 'mcmc' / 'importance'")


def _pairs(problem: Problem, target: tuple[str, ...], condition: Any, **options: Any):
    r"""The prior-only pairs, after the model is checked to be differentiable."""
    check_differentiable(problem, tuple(n for n in target if n not in problem.observed))
    return prepare_prior_pairs(problem, target, condition, **options)


class _Objective:
    r"""log p(y | G(z)) for flat normalised latents ``(R, D)`` of one observation, through the model."""

    def __init__(self, post: "LatentPriorPosterior", y_flat: Tensor):
        self.post, self.loglik = post, model_log_likelihood
        y = post.condition.unflatten(y_flat)
        self.y = {k: v.to(post.problem.sites[k].dtype) if post.problem.sites[k].dtype.is_floating_point else v for k, v in y.items()}
        self.calls = 0

    def site_values(self, x: Tensor) -> dict[str, Tensor]:
        values = self.post.target.unflatten(self.post.x_norm.inverse(x))
        return apply_transforms(values, self.post.transforms, inverse=True)

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(log p(y | G(z)) (R,), G(z) (R, D))``."""
        x = self.post.net.generate(z)
        self.calls += z.shape[0]
        return self.loglik(self.post.problem, self.site_values(x), self.y).to(z.dtype), x


# -- MAP and MALA ----------------------------------------------------------------------------------
def _map(objective: _Objective, dim: int, scfg: LatentPriorSampler, generator: torch.Generator, device) -> tuple[Tensor, dict]:
    r"""The MAP latent ``(1, D)`` of ``scfg.reparam`` and its record (final log-likelihood, ‖z‖²/D)."""
    start = torch.randn(1, dim, generator=generator, device=device) * scfg.init_scale
    gauss = Gaussianization(scfg.layers, block=scfg.block) if scfg.reparam == "gaussianize" else None
    v = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=scfg.map_lr)
    params = None  # the Gaussianization parameters of the previous step: a warm start of their fits
    with torch.enable_grad():
        for _ in range(scfg.map_steps):
            z, params = gauss.forward_with_params(v, params) if gauss is not None else (v, None)
            ll, _ = objective(z)
            loss = -ll.sum()
            if scfg.reparam == "beta":
                loss = loss + scfg.beta * z.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        z = gauss.forward_with_params(v.detach(), params)[0] if gauss is not None else v.detach()
        ll, _ = objective(z)
    if not torch.isfinite(z).all() or not torch.isfinite(ll).all():
        raise ProblemError(f"latent_prior: the MAP with reparam={scfg.reparam!r} diverged (non-finite latent); lower map_lr={scfg.map_lr}")
    return z.detach(), {"map_log_lik": float(ll.sum()), "map_latent_norm2_per_dim": float(z.square().mean())}


def mala(
    log_prob: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    num_draws: int,
    warmup: int,
    step_size: float,
    target_accept: float = 0.574,
    thin: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    r"""Metropolis-adjusted Langevin chains, one per row of ``z0``, with a dual-averaging step size.

    Proposal :math:`z' = z + \varepsilon \nabla \log\pi(z) + \sqrt{2\varepsilon}\,\xi`, accepted with
    probability :math:`\min(1, \pi(z') q(z \mid z') / (\pi(z) q(z' \mid z)))`. During ``warmup`` the
    step size (shared by the chains) is adapted by dual averaging (Hoffman & Gelman, 2014, Alg. 5:
    γ = 0.05, t₀ = 10, κ = 0.75) to the mean acceptance probability ``target_accept``, then frozen
    at its averaged value.

    Arguments:
        log_prob: ``(C, D) -> (C,)`` log target density (differentiable; autograd gives the gradient).
        z0: Starting points ``(C, D)``.
        num_draws: Draws kept per chain.
        warmup: Adaptation steps (discarded).
        step_size: The initial ε.
        target_accept: The acceptance rate aimed at.
        thin: Steps between kept draws.
        generator: The random generator.

    Returns:
        Draws ``(C, num_draws, D)`` and ``{"accept_rate", "step_size"}`` (after warm-up).

    Example:
        >>> draws, stats = mala(lambda z: -0.5 * z.square().sum(-1), torch.zeros(4, 2), num_draws=1000, warmup=200, step_size=0.5)
    """

    def value_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            lp = log_prob(z)
            (g,) = torch.autograd.grad(lp.sum(), z)
        return lp.detach(), g.detach()

    z = z0.detach().clone()
    lp, g = value_and_grad(z)
    log_eps, log_eps_bar, h_bar, mu = math.log(step_size), math.log(step_size), 0.0, math.log(10 * step_size)
    draws, accepted, kept_steps = [], 0.0, 0
    total = warmup + num_draws * thin
    for k in range(total):
        eps = math.exp(log_eps) if k < warmup else math.exp(log_eps_bar)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        prop = z + eps * g + math.sqrt(2 * eps) * noise
        lp_p, g_p = value_and_grad(prop)
        fwd = -(prop - z - eps * g).square().sum(-1) / (4 * eps)
        bwd = -(z - prop - eps * g_p).square().sum(-1) / (4 * eps)
        log_alpha = torch.nan_to_num(lp_p - lp + bwd - fwd, nan=-math.inf)
        u = torch.rand(z.shape[0], generator=generator, device=z.device, dtype=z.dtype)
        accept = torch.log(u) < log_alpha
        z = torch.where(accept.unsqueeze(-1), prop, z)
        lp = torch.where(accept, lp_p, lp)
        g = torch.where(accept.unsqueeze(-1), g_p, g)
        prob = float(torch.exp(log_alpha.clamp(max=0.0)).mean())
        if k < warmup:
            m = k + 1
            h_bar = (1 - 1 / (m + 10)) * h_bar + (target_accept - prob) / (m + 10)
            log_eps = mu - math.sqrt(m) / 0.05 * h_bar
            w = m**-0.75
            log_eps_bar = w * log_eps + (1 - w) * log_eps_bar
        else:
            accepted += float(accept.float().mean())
            kept_steps += 1
            if (k - warmup + 1) % thin == 0:
                draws.append(z.clone())
    return torch.stack(draws, 1), {"accept_rate": accepted / max(kept_steps, 1), "step_size": math.exp(log_eps_bar)}


def _latent_log_post(objective: _Objective, scfg: LatentPriorSampler) -> Callable[[Tensor], Tensor]:
    weight = _prior_weight(scfg)
    return lambda z: objective(z)[0] - weight * z.square().sum(-1)


def _prior_weight(scfg: LatentPriorSampler) -> float:
    return scfg.beta if scfg.reparam == "beta" else 0.5


def _preconditioner(log_post: Callable[[Tensor], Tensor], z_map: Tensor, floor: float) -> Tensor:
    r"""``L (D, D)`` with :math:`L L^T = H_+^{-1}`, :math:`H_+` the negative Hessian of the log posterior at the
    MAP with its eigenvalues raised to at least ``floor`` (the prior's curvature): the chains move in
    :math:`u`, :math:`z = z^* + L u`, where a near-Gaussian posterior is near-isotropic."""
    with torch.enable_grad():
        h = -torch.autograd.functional.hessian(lambda z: log_post(z.unsqueeze(0))[0], z_map[0].detach())
    evals, evecs = torch.linalg.eigh(0.5 * (h + h.T))
    return evecs * evals.clamp_min(floor).rsqrt()


def _preconditioned(scfg: LatentPriorSampler, dim: int) -> bool:
    return scfg.precondition == "hessian" or (scfg.precondition == "auto" and dim <= PRECONDITION_MAX_DIM)


def _require_model(post: "LatentPriorPosterior") -> None:
    if post.problem is None:
        raise ProblemError("latent_prior needs the model's likelihood: call post.attach(model) after bayesinv.load")
    check_differentiable(post.problem, post.target.names)


def sample(post: "LatentPriorPosterior", c: Tensor, n: int, generator: torch.Generator, scfg: LatentPriorSampler) -> tuple[Tensor, dict]:
    r"""``n`` MALA draws of G(z) per observation (rows of ``c``, the raw flat y), chains started at the MAP: ``(B, n, D)``."""
    _require_model(post)
    dim = post.target.dim
    per_chain = -(-n // scfg.chains)
    out, records = [], []
    for row in c:
        objective = _Objective(post, row)
        z_map, record = _map(objective, dim, scfg, generator, c.device)
        log_post = _latent_log_post(objective, scfg)
        if _preconditioned(scfg, dim):
            chol = _preconditioner(log_post, z_map, 2 * _prior_weight(scfg))
            target, start = (lambda u: log_post(z_map + u @ chol.T)), torch.zeros(scfg.chains, dim, device=c.device)
        else:
            chol, target, start = None, log_post, z_map.expand(scfg.chains, dim)
        draws, stats = mala(target, start, num_draws=per_chain, warmup=scfg.warmup, step_size=scfg.step_size,
                            target_accept=scfg.target_accept, thin=scfg.thin, generator=generator)  # fmt: skip
        z = draws.transpose(0, 1).reshape(-1, dim)[:n]  # draw-major: the first n interleave the chains
        if chol is not None:
            z = z_map + z @ chol.T
        with torch.no_grad():
            out.append(post.net.generate(z))
        records.append({**record, **stats, "likelihood_evaluations": objective.calls})
    mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
    stats = {"sampler": "mala", "reparam": scfg.reparam, **{k: mean(k) for k in records[0]}}
    return torch.stack(out), stats


class LatentPriorPosterior(AmortizedPosterior):
    r"""The posterior of ``method="latent_prior"``: a trained flow prior with the attached model's likelihood.

    Besides the draws of :meth:`sample` / :meth:`infer` (MALA in the latent space), :meth:`map`
    gives the MAP reconstruction of any reparameterisation.
    """

    def attach(self, model: Any, *, observed: Any = None) -> "LatentPriorPosterior":
        r"""Keeps ``model`` for its likelihood (and deterministic sites). The observation may have another
        shape than at fit (another operator: fewer views, another k-space mask): the prior does not see
        y, so the observation layout becomes the model's.

        Arguments:
            model: A model whose target sites have the fitted shapes.
            observed: Its observed site names, where they cannot be found automatically.

        Returns:
            The posterior itself.
        """
        super().attach(model, observed=observed)
        problem = self.problem
        names = tuple(n for n in problem.observed if n not in problem.fixed_observed)
        self.condition = Layout(names, tuple(problem.sites[n].shape for n in names))
        self.c_norm = Normalizer(torch.zeros(self.condition.dim), torch.ones(self.condition.dim)).to(self.device)
        self.observed, self.obs_keys = names, {k: problem.obs_keys.get(k) for k in names}
        return self

    @torch.no_grad()
    def map(self, y: Any, *, seed: int = 0, **options: Any) -> dict[str, Tensor]:
        r"""The MAP estimate of the target for ``y`` (one observation or a batch in leading dims).

        Arguments:
            y: The observation(s).
            seed: Seed of the start :math:`z_0`.
            options: Fields of :class:`LatentPriorSampler` (``reparam``, ``beta``, ``map_steps``, ...).

        Returns:
            Site → MAP ``(*shape)`` (or ``(*B, *shape)``), with ``info`` the record of each
            optimisation (final log-likelihood, mean squared latent entry) in ``self.last_map``.
        """
        from bayesinv._checks import check_seed

        scfg = self.sampler_config(**options)
        _require_model(self)
        c, batch = self._condition_tensor(y)
        gen = torch.Generator(device=self.device).manual_seed(check_seed(seed))
        xs, self.last_map = [], []
        for row in c:
            objective = _Objective(self, row)
            z, record = _map(objective, self.target.dim, scfg, gen, c.device)
            xs.append(self.net.generate(z)[0])
            self.last_map.append(record)
        values = _site_values(self, torch.stack(xs))
        return {k: v.reshape(*batch, *v.shape[1:]).cpu() for k, v in values.items()}


def _site_values(post: AmortizedPosterior, x: Tensor) -> dict[str, Tensor]:
    return apply_transforms(post.target.unflatten(post.x_norm.inverse(x)), post.transforms, inverse=True)


LATENT_PRIOR = register_amortized(AmortizedMethod(
    name="latent_prior", config=LatentPriorConfig, sampler_config=LatentPriorSampler, build=build, rebuild=rebuild, loss=loss,
    sample=sample, check_sample=check_sample, conditional=False, posterior=LatentPriorPosterior, pairs=_pairs,
    no_density="method 'latent_prior' samples its posterior by MCMC and has no normalised density (the prior's is post.net.log_prob)",
    saved_keys=("architecture", "dim"),
))  # fmt: skip
