r"""Conditional score-based diffusion posteriors: ``method="cond_score"``.

A network :math:`s_\phi(x, c, t)` learns the score of the noised conditional
:math:`\nabla_x \log p_t(x \mid c)` from simulated pairs (target x, condition c = the
observation y and, optionally, a measurement-operator mask) by conditional denoising
score matching,

.. math:: \mathcal{L}(\phi) = E_{t \sim U(t_{min}, 1),\, (x_0, c),\, z}
          \big\| \sigma(t)\, s_\phi(m(t) x_0 + \sigma(t) z, c, t) + z \big\|^2

(the discrete-level NCSN version draws σ from geometric levels σ_1 > … > σ_L instead).
Only forward simulation is needed: the simulator may be a black box and the noise
non-additive. Sampling integrates the reverse process for every (observation, draw)
pair in one batch: the probability-flow ODE (``"ode"``), the reverse SDE (``"sde"``),
predictor–corrector (``"pc"``) or annealed Langevin dynamics (``"langevin"``, NCSN).

The network works on min-max normalised flat vectors; its output is divided by σ, so
it predicts :math:`-z` (of order one at every noise level). Vector targets use
:class:`~bayesinv.nets.ScoreMLP` with the time features of eq. A.1; a single 2-D field
target uses :class:`~bayesinv.nets.ScoreUNet`, the condition entering as extra
channels when it lies on the target's grid, through an embedding network otherwise.

Example:
    >>> post = bayesinv.fit(model, method="cond_score", num_simulations=10_000)
    >>> draws = post.sample(y_batch, 1000)          # (*B, 1000, *shape), one call
    >>> idata = post.infer(y_obs, num_samples=1000, sampler="sde")
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesinv.diffusion import (
    VE,
    VP,
    annealed_langevin,
    choose_num_levels,
    choose_sigma_1,
    choose_step_size,
    dsm_loss,
    expand_like,
    geometric_sigmas,
    ncsn_loss,
    predictor_corrector,
    probability_flow_ode,
    reverse_sde,
)
from bayesinv.nets import CNNEmbedding, MLPEmbedding, ScoreMLP, ScoreUNet
from bayesinv.posterior import AmortizedPosterior, Layout, Normalizer, _apply_transforms, resolve_device, training_data
from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import register_method
from bayesinv.training import TrainConfig, train

#: Default of the keyword overrides whose None has a meaning of its own (no limit, no early stopping).
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()

__all__ = ["CondScoreConfig", "CondScoreNet", "CondScorePosterior", "cond_score", "PROCESSES", "SAMPLERS"]

PROCESSES = ("ve", "vp", "ncsn")
SAMPLERS = {"ve": ("ode", "sde", "pc"), "vp": ("ode", "sde", "pc"), "ncsn": ("langevin",)}
DEFAULT_SAMPLER = {"ve": "ode", "vp": "ode", "ncsn": "langevin"}
_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
_SAMPLE_OPTIONS = {
    "sampler", "steps", "rtol", "atol", "power", "t_min", "denoise", "corrector_steps", "snr",
    "steps_per_level", "eps", "chunk_size",
}  # fmt: skip
#: The options each sampler reads (besides ``sampler``, ``denoise`` and ``chunk_size``).
_SAMPLER_OPTIONS = {
    "ode": {"rtol", "atol", "power", "t_min"},
    "sde": {"steps", "t_min"},
    "pc": {"steps", "corrector_steps", "snr", "t_min"},
    "langevin": {"steps_per_level", "eps"},
}


@dataclass(frozen=True)
class CondScoreConfig:
    r"""Settings of :func:`cond_score` (keyword arguments of the fit override them).

    Arguments:
        process: ``"ve"`` (γ(t) = σ_max^{2t}), ``"vp"`` (linear β) or ``"ncsn"`` (discrete
            geometric noise levels, annealed Langevin sampling).
        sampler: The default sampler: ``"ode"``, ``"sde"``, ``"pc"`` (VE/VP) or
            ``"langevin"`` (NCSN); ``None``: ``"ode"`` for VE/VP, ``"langevin"`` for NCSN.
        network: ``"mlp"``, ``"unet"`` or ``"auto"`` (U-Net for one 2-D field target).
        hidden: Hidden layer sizes of the MLP.
        activation: ``"silu"``, ``"relu"``, ``"gelu"`` or ``"tanh"``.
        embedding: Observation embedding: ``"none"`` (raw, concatenated), ``"mlp"``,
            ``"cnn"`` or ``"auto"`` (U-Net: channels on the grid, CNN for one field,
            MLP otherwise; MLP network: raw).
        embed_dim: Size of the observation embedding.
        embed_map_channels: U-Net with an embedded observation: channels of the learned
            map from the embedding onto a coarse copy of the target grid (extra input
            channels; 0 turns it off, leaving the embedding only as a feature shift that
            carries no spatial layout).
        base_channels, channel_mults: U-Net width and resolution levels.
        sigma_max: σ_max of the VE process (paper: 5).
        beta_min, beta_max: β(0) and β(1) of the VP process (paper: 0.001 and 5).
        sigma_1, sigma_L, num_levels: NCSN levels; ``sigma_1``/``num_levels`` ``None``
            are chosen by Song & Ermon's rules (largest pairwise distance; overlap, at
            least ``min_levels``).
        min_levels: The fewest NCSN levels (the overlap rule gives 2 in low dimension).
        steps_per_level, eps: Annealed Langevin T and ε (``None``: the NCSN v2 rule).
        t_min: Smallest diffusion time (training and sampling).
        time_sampling: Training times: ``"uniform"`` on :math:`[t_{min}, 1]` (the papers)
            or ``"mixed"`` (half uniform, half log-uniform: more training at the small
            noise levels that resolve narrow posteriors; the minimiser is the same score).
        normalization: ``"minmax"`` (to [0, 1]), ``"standard"`` or ``"none"``.
        max_epochs, max_steps, batch_size, lr, lr_schedule, patience, ema_decay,
        val_fraction, grad_clip, weight_decay: Training options (:class:`TrainConfig`).
    """

    process: str = "ve"
    sampler: str | None = None
    network: str = "auto"
    hidden: tuple[int, ...] = (256, 256, 256)
    activation: str = "silu"
    embedding: str = "auto"
    embed_dim: int = 64
    embed_map_channels: int = 8
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    sigma_max: float = 5.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_1: float | None = None
    sigma_L: float = 0.01
    num_levels: int | None = None
    min_levels: int = 20
    steps_per_level: int = 5
    eps: float | None = None
    t_min: float = 1e-5
    time_sampling: str = "mixed"
    normalization: str = "minmax"
    max_epochs: int | None = 200
    max_steps: int | None = None
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str | None = None
    patience: int | None = 20
    ema_decay: float | None = 0.999
    val_fraction: float = 0.1
    grad_clip: float | None = None
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.process not in PROCESSES:
            raise ProblemError(f"process must be one of {PROCESSES}, got {self.process!r}")
        if self.sampler is not None and self.sampler not in SAMPLERS[self.process]:
            raise ProblemError(
                f"sampler {self.sampler!r} does not fit process {self.process!r}; use one of {SAMPLERS[self.process]}"
            )
        if self.network not in ("auto", "mlp", "unet"):
            raise ProblemError(f"network must be 'auto', 'mlp' or 'unet', got {self.network!r}")
        if self.activation not in _ACTIVATIONS:
            raise ProblemError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.time_sampling not in ("uniform", "mixed"):
            raise ProblemError(f"time_sampling must be 'uniform' or 'mixed', got {self.time_sampling!r}")
        if self.embedding not in ("auto", "none", "mlp", "cnn"):
            raise ProblemError(f"embedding must be 'auto', 'none', 'mlp' or 'cnn', got {self.embedding!r}")

    def to_json(self) -> dict[str, Any]:
        r"""The settings as a JSON-able dict (tuples as lists), as saved with a posterior."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def process_spec(self) -> dict[str, Any]:
        r"""The continuous-time process (``"ve"`` or ``"vp"``) as the JSON-able spec of the network."""
        if self.process == "ve":
            return {"kind": "ve", "sigma_max": self.sigma_max}
        if self.process == "vp":
            return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}
        raise ProblemError(f"process {self.process!r} has no continuous-time spec; NCSN levels come from the data")

    def train_config(self, *, seed: int, device: torch.device, progress: bool | None) -> TrainConfig:
        names = ("max_epochs", "max_steps", "batch_size", "lr", "lr_schedule", "patience", "ema_decay",
                 "val_fraction", "grad_clip", "weight_decay")  # fmt: skip
        return TrainConfig(**{k: getattr(self, k) for k in names}, seed=seed, device=str(device), progress=progress)


# -- the network --------------------------------------------------------------------------
def _process(spec: Mapping[str, Any]):
    if spec["kind"] == "ve":
        return VE(sigma_max=spec["sigma_max"])
    if spec["kind"] == "vp":
        return VP(beta_min=spec["beta_min"], beta_max=spec["beta_max"])
    return None


def _grid(shape: Sequence[int]) -> tuple[int, int, int] | None:
    r"""``(C, H, W)`` of a 2-D field site of shape ``(H, W)`` or ``(C, H, W)``, else ``None``."""
    shape = tuple(shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return shape
    return None


class CondScoreNet(nn.Module):
    r"""The score :math:`s(x, c, \ell)` on flat normalised vectors.

    ``x`` has shape ``(*, D)``, ``c`` ``(*, C)`` (or ``(C,)``, broadcast), and the level
    :math:`\ell` is a time (VE/VP) or a noise level σ (NCSN). The inner network's output
    is divided by σ(ℓ). Built from a JSON-able ``spec`` so that a saved posterior
    rebuilds it exactly.
    """

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        self.kind, self.x_dim, self.c_dim = spec["network"], int(spec["x_dim"]), int(spec["c_dim"])
        self.process = _process(spec["process"])
        levels = spec["process"].get("sigmas")
        sigma_range = None if levels is None else (min(levels), max(levels))
        act = _ACTIVATIONS[spec["activation"]]
        emb = self._embedding(spec.get("embedding"), act)
        if self.kind == "mlp":
            self.inner = ScoreMLP(self.x_dim, self.c_dim, tuple(spec["hidden"]), act, embedding=emb, sigma_range=sigma_range)
        else:
            self.x_shape = tuple(spec["x_shape"])
            self.grid_slices = [tuple(s) for s in spec.get("grid_slices", [])]
            y_channels = sum(s[2] for s in self.grid_slices)
            self.inner = ScoreUNet(
                self.x_shape[0], y_channels, spec["base_channels"], tuple(spec["channel_mults"]),
                embedding=emb, sigma_range=sigma_range,
                # files saved before the map existed have no "map_channels": none
                embedding_map=int((spec.get("embedding") or {}).get("map_channels", 0)), grid_size=self.x_shape[1:],
            )  # fmt: skip

        # input preconditioning (set by the fit from the training data, saved with the weights):
        # the inner network sees x_t centred and scaled to unit variance at every level,
        # and the condition standardised, whatever the user's normalisation
        self.register_buffer("x_mean", torch.zeros(self.x_dim))
        self.register_buffer("x_std", torch.ones(self.x_dim))
        self.register_buffer("c_mean", torch.zeros(self.c_dim))
        self.register_buffer("c_std", torch.ones(self.c_dim))

    def set_statistics(self, x: Tensor, c: Tensor) -> None:
        r"""Sets the input preconditioning from training targets ``(N, D)`` and conditions ``(N, C)``."""
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp_min(1e-6))
        if c.shape[-1]:  # an unconditional net (CSD*) has no condition to standardise
            self.c_mean.copy_(c.mean(0))
            self.c_std.copy_(c.std(0).clamp_min(1e-6))

    def _embedding(self, spec: Mapping[str, Any] | None, act) -> nn.Module | None:
        if not spec:
            return None
        if spec["kind"] == "mlp":
            return MLPEmbedding(self.c_dim, spec["dim"], hidden=(max(128, spec["dim"]),), activation=act)
        shape = tuple(spec["in_shape"])
        return nn.Sequential(nn.Unflatten(-1, shape), CNNEmbedding(shape, spec["dim"], activation=act))

    def sigma(self, level: Tensor) -> Tensor:
        return level if self.process is None else self.process.sigma(level)

    def forward(self, x: Tensor, c: Tensor, level: Tensor) -> Tensor:
        r"""
        Arguments:
            x: Noised targets ``(*, D)``.
            c: Conditions ``(*, C)`` (normalised).
            level: Time or noise level, 0-dim or ``(*)``.

        Returns:
            The score ``(*, D)``.
        """
        level = torch.as_tensor(level, dtype=x.dtype, device=x.device)
        sigma = expand_like(self.sigma(level).expand(x.shape[:-1]), x)
        m = torch.ones_like(sigma) if self.process is None else expand_like(self.process.mean_scale(level).expand(x.shape[:-1]), x)
        x = (x - m * self.x_mean) / (m.square() * self.x_std.square() + sigma.square()).sqrt()
        c = (c - self.c_mean) / self.c_std
        if self.kind == "mlp":
            out = self.inner(x, c, level)
        else:
            batch = x.shape[:-1]
            c = c.expand(*batch, c.shape[-1])
            if self.grid_slices:
                y = torch.cat([c[..., a:b].reshape(*batch, ch, *self.x_shape[1:]) for a, b, ch in self.grid_slices], -3)
            else:
                y = c
            out = self.inner(x.reshape(*batch, *self.x_shape), y, level).reshape(*batch, self.x_dim)
        return out / sigma


def _net_spec(cfg: CondScoreConfig, target: Layout, condition: Layout, process: dict) -> dict:
    network = cfg.network
    x_grid = _grid(target.shapes[0]) if len(target.names) == 1 else None
    if network == "auto":
        network = "unet" if x_grid is not None and min(x_grid[1:]) >= 4 else "mlp"
    spec: dict[str, Any] = dict(
        network=network, x_dim=target.dim, c_dim=condition.dim, activation=cfg.activation, process=process,
        hidden=list(cfg.hidden), base_channels=cfg.base_channels, channel_mults=list(cfg.channel_mults), embedding=None,
    )  # fmt: skip
    field_cond = len(condition.names) == 1 and _grid(condition.shapes[0]) is not None
    if network == "mlp":
        if cfg.embedding in ("mlp", "cnn"):
            if cfg.embedding == "cnn" and not field_cond:
                raise ProblemError(f"embedding='cnn' needs one 2-D field condition; got {dict(zip(condition.names, condition.shapes))}")
            kind = cfg.embedding
            spec["embedding"] = {"kind": kind, "dim": cfg.embed_dim, "in_shape": list(_grid(condition.shapes[0]) or ())}
        return spec
    if x_grid is None:
        raise ProblemError(
            f"network='unet' needs one target site of shape (H, W) or (C, H, W); got {dict(zip(target.names, target.shapes))}"
        )
    spec["x_shape"] = list(x_grid)
    starts = [0]
    for size in condition.sizes:
        starts.append(starts[-1] + size)
    on_grid = [(g := _grid(s)) is not None and g[1:] == x_grid[1:] for s in condition.shapes]
    if cfg.embedding in ("auto", "none") and all(on_grid):
        spec["grid_slices"] = [[starts[i], starts[i + 1], _grid(s)[0]] for i, s in enumerate(condition.shapes)]
    else:
        if cfg.embedding == "none":
            raise ProblemError(
                f"embedding='none' with a U-Net needs every condition on the target grid {x_grid[1:]};"
                f" got {dict(zip(condition.names, condition.shapes))}"
            )
        kind = cfg.embedding if cfg.embedding in ("mlp", "cnn") else ("cnn" if field_cond else "mlp")
        if kind == "cnn" and not field_cond:
            raise ProblemError(f"embedding='cnn' needs one 2-D field condition; got {dict(zip(condition.names, condition.shapes))}")
        spec["embedding"] = {"kind": kind, "dim": cfg.embed_dim, "in_shape": list(_grid(condition.shapes[0]) or ()),
                             "map_channels": int(cfg.embed_map_channels)}  # fmt: skip
    return spec


# -- the posterior ------------------------------------------------------------------------
class CondScorePosterior(AmortizedPosterior):
    r"""A conditional score-based diffusion posterior q(target | y).

    Sampler options of :meth:`sample` / :meth:`infer`: ``sampler`` (``"ode"``,
    ``"sde"``, ``"pc"``, ``"langevin"``), ``steps`` (SDE/PC, default 500), ``rtol``,
    ``atol`` (ODE, default 1e-5), ``power`` (ODE: integrate in r with t = (1 − r)^power,
    default 2), ``t_min``, ``denoise`` (final Tweedie step, default
    ``True``), ``corrector_steps``, ``snr`` (PC), ``steps_per_level``, ``eps``
    (Langevin) and ``chunk_size`` (rows of observations × draws per network batch).
    It has no density: it is a sampler and a Pyro guide, not an importance proposal.
    """

    method = "cond_score"

    @classmethod
    def build_net(cls, config: Mapping[str, Any]) -> nn.Module:
        return CondScoreNet(config["net"])

    @property
    def process(self):
        return _process(self.config["net"]["process"])

    def _sample(self, c: Tensor, n: int, generator: torch.Generator | None, **options) -> tuple[Tensor, dict]:
        unknown = sorted(set(options) - _SAMPLE_OPTIONS)
        if unknown:
            raise ProblemError(f"cond_score has no sampler option(s) {unknown}; its options are {sorted(_SAMPLE_OPTIONS)}")
        kind = self.config["process"]
        sampler = options.pop("sampler", None) or self.config["sampler"]
        if sampler not in SAMPLERS[kind]:
            raise ProblemError(f"sampler {sampler!r} does not fit process {kind!r}; use one of {SAMPLERS[kind]}")
        ignored = sorted(set(options) - _SAMPLER_OPTIONS[sampler] - {"denoise", "chunk_size"})
        if ignored:
            raise ProblemError(
                f"sampler {sampler!r} does not use option(s) {ignored}; its options are "
                f"{sorted(_SAMPLER_OPTIONS[sampler] | {'denoise', 'chunk_size'})}"
            )
        default_chunk = 50_000 if self.config["net"]["network"] == "mlp" else 512
        chunk_size = int(options.pop("chunk_size", None) or default_chunk)
        B, D = c.shape[0], self.target.dim
        rows = B * n
        if kind == "ncsn":
            x = torch.rand((rows, D), generator=generator, device=self.device)
        else:
            # p_1 ≈ N(m(1) E[x_0], σ(1)² I): centring the start removes most of the ODE's bias
            # (VE with σ_max = 5, VP with β_max = 5 leave m(1) E[x_0] far from 0 on [0, 1] data)
            z = torch.randn((rows, D), generator=generator, device=self.device)
            x = self.process.mean_scale(1.0).item() * self.net.x_mean + self.process.sigma(1.0).item() * z
        owner = torch.arange(B, device=self.device).repeat_interleave(n)
        out, nfe = [], 0
        for start in range(0, rows, chunk_size):
            c_chunk = c[owner[start : start + chunk_size]]
            score_fn = lambda x_, level, c_chunk=c_chunk: self.net(x_, c_chunk, level)
            res = self._run_sampler(sampler, score_fn, x[start : start + chunk_size], generator, dict(options))
            out.append(res.x)
            nfe = max(nfe, res.nfe)
        stats = {"sampler": sampler, "process": kind, "nfe": nfe, "num_chunks": len(out)}
        if kind == "ncsn":
            sigmas = self.config["net"]["process"]["sigmas"]
            stats.update(sigma_max=max(sigmas), sigma_min=min(sigmas), num_levels=len(sigmas))
        else:
            t_min = float(options.get("t_min", self.config["t_min"]))
            stats.update(sigma_max=float(self.process.sigma(1.0)), sigma_min=float(self.process.sigma(t_min)), t_min=t_min)
        return torch.cat(out).reshape(B, n, D), stats

    def _run_sampler(self, sampler: str, score_fn, x: Tensor, generator, opts: dict):
        denoise = bool(opts.pop("denoise", True))
        if sampler == "langevin":
            proc = self.config["net"]["process"]
            sigmas = torch.tensor(proc["sigmas"], device=self.device)
            return annealed_langevin(
                score_fn, x, sigmas, steps_per_level=int(opts.pop("steps_per_level", proc["steps_per_level"])),
                eps=float(opts.pop("eps", proc["eps"])), denoise=denoise, generator=generator,
            )  # fmt: skip
        t_min = float(opts.pop("t_min", self.config["t_min"]))
        if sampler == "ode":
            return probability_flow_ode(
                score_fn, x, self.process, rtol=opts.pop("rtol", 1e-5), atol=opts.pop("atol", 1e-5),
                power=float(opts.pop("power", 2.0)), t_min=t_min, denoise=denoise,
            )  # fmt: skip
        steps = int(opts.pop("steps", 500))
        if sampler == "sde":
            return reverse_sde(score_fn, x, self.process, alpha=1.0, steps=steps, t_min=t_min, denoise=denoise, generator=generator)
        return predictor_corrector(
            score_fn, x, self.process, steps=steps, corrector_steps=int(opts.pop("corrector_steps", 1)),
            snr=float(opts.pop("snr", 0.16)), t_min=t_min, denoise=denoise, generator=generator,
        )  # fmt: skip

    def sample_and_log_prob(self, y: Any, n: int):
        raise ProblemError(
            "a cond_score posterior has no tractable density q(target | y), so it cannot be an importance-sampling"
            " proposal (the weights need log q); sample it directly with post.sample / post.infer, or use a"
            " method with a density (method='flow') as the proposal"
        )


# -- fitting ------------------------------------------------------------------------------
def _dsm_loss(net: nn.Module, x0: Tensor, c: Tensor, process, t_min: float, time_sampling: str) -> Tensor:
    r""""Conditional DSM :math:`\|\sigma(t) s(x_t, c, t) + z\|^2`; with ``"mixed"`` every other
    time is log-uniform on :math:`[t_{min}, 1]` instead of uniform (see :func:`~bayesinv.diffusion.dsm_loss`)."""
    if time_sampling == "uniform":
        return dsm_loss(net, x0, c, process, t_min=t_min)
    u = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    log_t = math.log(t_min) * torch.rand_like(u)
    t = torch.where(torch.arange(len(u), device=u.device) % 2 == 0, t_min + (1 - t_min) * u, log_t.exp())
    z = torch.randn_like(x0)
    s = net(process.perturb(x0, t, z), c, t)
    return (expand_like(process.sigma(t), z) * s + z).pow(2).flatten(1).sum(1).mean()



def _levels(cfg: CondScoreConfig, x: Tensor, seed: int) -> dict:
    r"""NCSN noise levels and step size, chosen by the NCSN rules where not given."""
    sigma_1 = cfg.sigma_1
    if sigma_1 is None:
        sigma_1 = choose_sigma_1(x, generator=torch.Generator().manual_seed(seed))
        sigma_1 = max(1.05 * sigma_1, 2 * cfg.sigma_L)  # the subset slightly underestimates it
    L = cfg.num_levels or max(cfg.min_levels, choose_num_levels(x.shape[-1], sigma_1, cfg.sigma_L))
    eps = cfg.eps if cfg.eps is not None else choose_step_size(sigma_1, cfg.sigma_L, L, cfg.steps_per_level)
    sigmas = geometric_sigmas(sigma_1, cfg.sigma_L, L, dtype=torch.float64).tolist()
    return {"kind": "ncsn", "sigmas": sigmas, "eps": eps, "steps_per_level": cfg.steps_per_level}


@register_method("cond_score", amortized=True, loader=CondScorePosterior.from_saved)
def cond_score(
    problem: Problem,
    *,
    target: tuple[str, ...],
    seed: int | None = 0,
    progress: bool | None = None,
    num_simulations: int | None = None,
    data: Any = None,
    process: str | None = None,
    sampler: str | None = None,
    network: str | None = None,
    hidden: Sequence[int] | None = None,
    max_epochs: int | None = _UNSET,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int | None = _UNSET,
    ema_decay: float | None = None,
    normalization: str | None = None,
    transforms: Mapping[str, Any] | None = None,
    condition: str | Sequence[str] | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    device: str | torch.device | None = "auto",
    config: CondScoreConfig | None = None,
) -> CondScorePosterior:
    r"""Fits a conditional score-based diffusion posterior q(target | y).

    Arguments:
        problem: The traced problem.
        target: The target sites (sites named in ``condition`` are left out).
        seed: Seed of the simulations, the initial weights and the training noise.
        progress: Show progress bars (``None``: on a terminal).
        num_simulations: Joint draws to simulate now, or the most of ``data`` to use.
        data: A dataset from :func:`bayesinv.simulate` (or its zarr path, or a dict).
        process, sampler, network, hidden, max_epochs, batch_size, lr, patience,
            ema_decay, normalization: Override the fields of ``config``
            (:class:`CondScoreConfig`) when given; ``patience=None`` turns early
            stopping off and ``max_epochs=None`` lifts the epoch limit (as in the config).
        transforms: Site → ``"log"``/``"log10"``/``(kind, reference)`` applied to the
            target before normalisation, e.g. ``{"E": ("log10", 1e3)}``.
        condition: Extra conditioning site(s) beyond the observed ones, e.g. a sensor
            mask ``"mask"`` (by the model's convention, off readings are -1 in y).
        checkpoint: Path of a training checkpoint (written during training).
        resume: Continue from ``checkpoint`` when it exists.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        config: All settings; see :class:`CondScoreConfig`.

    Returns:
        A :class:`CondScorePosterior`.
    """
    t0 = time.perf_counter()
    overrides = dict(process=process, sampler=sampler, network=network, hidden=None if hidden is None else tuple(hidden),
                     max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience, ema_decay=ema_decay,
                     normalization=normalization)  # fmt: skip
    given = {k: v for k, v in overrides.items() if v is not _UNSET and (v is not None or k in ("max_epochs", "patience"))}
    cfg = dataclasses.replace(config or CondScoreConfig(), **given)
    seed = 0 if seed is None else int(seed)
    dev = resolve_device(device)
    extra = (condition,) if isinstance(condition, str) else tuple(condition or ())
    for name in extra:
        if name not in problem.sites:
            raise ProblemError(f"unknown condition site {name!r}; the model has sites {list(problem.sites)}")
    observed = tuple(n for n in problem.observed if n not in problem.fixed_observed)
    extra = tuple(n for n in extra if n not in observed)
    cond_names = observed + extra
    target = tuple(n for n in target if n not in cond_names)
    if not target:
        raise ProblemError("no target site left: every target is also a conditioning site")
    for name in target:
        site = problem.sites[name]
        if site.discrete or not site.dtype.is_floating_point:
            raise ProblemError(f"target site {name!r} is discrete; cond_score needs continuous targets (or pass it as condition=)")
    for name in dict(transforms or {}):
        if name not in target:
            raise ProblemError(f"transforms= names {name!r}, which is not a target site {list(target)}")

    arrays, n = training_data(
        problem, target, cond_names, num_simulations=num_simulations, data=data, seed=seed, progress=progress
    )
    arrays = _apply_transforms({k: v.float() for k, v in arrays.items()}, dict(transforms or {}))
    t_layout = Layout(target, tuple(problem.sites[s].shape for s in target))
    c_layout = Layout(cond_names, tuple(problem.sites[s].shape for s in cond_names))
    x, c = t_layout.flatten(arrays), c_layout.flatten(arrays)
    keep = torch.isfinite(x).all(-1) & torch.isfinite(c).all(-1)
    x, c = x[keep], c[keep]
    if len(x) < 10:
        raise ProblemError(f"only {len(x)} finite training pairs: cond_score needs more simulations")
    x_norm = Normalizer.fit(x, kind=cfg.normalization, groups=t_layout.groups())
    o_layout = Layout(observed, c_layout.shapes[: len(observed)])
    obs_norm = Normalizer.fit(c[:, : o_layout.dim], kind=cfg.normalization, groups=o_layout.groups())
    n_extra = c.shape[1] - o_layout.dim  # extra conditions (masks) enter unscaled
    c_norm = Normalizer(torch.cat([obs_norm.shift, torch.zeros(n_extra)]), torch.cat([obs_norm.scale, torch.ones(n_extra)]))
    x, c = x_norm(x), c_norm(c)

    proc = _levels(cfg, x, seed) if cfg.process == "ncsn" else cfg.process_spec()
    spec = _net_spec(cfg, t_layout, c_layout, proc)
    settings = cfg.to_json()
    settings.update(sampler=cfg.sampler or DEFAULT_SAMPLER[cfg.process], net=spec)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net = CondScoreNet(spec)
        net.set_statistics(x, c)
        net = net.to(dev)
        if cfg.process == "ncsn":
            sigmas = torch.tensor(proc["sigmas"], dtype=torch.float32, device=dev)
            loss_fn = lambda module, x0, c0: ncsn_loss(module, x0, c0, sigmas)
        else:
            process_ = net.process
            loss_fn = lambda module, x0, c0: _dsm_loss(module, x0, c0, process_, cfg.t_min, cfg.time_sampling)
        result = train(
            loss_fn, net, (x, c), config=cfg.train_config(seed=seed, device=dev, progress=progress),
            checkpoint_path=checkpoint, resume=resume,
        )  # fmt: skip
    trained = result.ema_model if result.ema_model is not None else result.model
    info = {
        "num_simulations": n,
        "num_train_pairs": int(len(x)),
        "fit_time_s": time.perf_counter() - t0,
        "train_time_s": result.wall_time,
        "train_steps": result.steps,
        "best_val_loss": None if math.isnan(result.best_val) else result.best_val,
        "final_train_loss": result.history["train_loss"][-1] if result.history["train_loss"] else None,
        "stopped_early": bool(result.stopped_early),
    }
    return CondScorePosterior(
        trained, target=t_layout, condition=c_layout, x_norm=x_norm, c_norm=c_norm, transforms=transforms,
        observed=observed, obs_keys={k: problem.obs_keys.get(k) for k in cond_names},
        config=settings, info=info, device=dev,
    )  # fmt: skip
