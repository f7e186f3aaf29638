r"""What a learned method supplies to the amortized layer, and how its options are read.

A method is an :class:`AmortizedMethod` record registered by name with
:func:`register_amortized`: a frozen config dataclass (network and training options,
with the training fields of :class:`TrainOptions`), a network builder, its loss and its
sampler with a frozen sampler-config dataclass (and optionally a density). Everything else
— training pairs, seeding, the training loop, the info record, the posterior object,
save/load and option validation — is the layer's.

Options are set one way for every method: ``fit(model, method=M, **options)`` where the
options are the fields of M's config plus :data:`COMMON_FIT_OPTIONS`, or ``config=`` as the
dataclass or a dict (keywords override it). :func:`split_options` splits the options of
``infer`` into fit and sample options by the two dataclasses' field names; a name of both
(``sampler``, ``t_min``, ...) goes to both.

Example:
    >>> cfg = make_config(get_amortized("flow"), {"hidden": [32, 32]}, {"max_epochs": 5})
    >>> cfg.hidden, cfg.max_epochs
    ((32, 32), 5)
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bayesinv.errors import OptionError

__all__ = [
    "AmortizedMethod",
    "TrainOptions",
    "train_options",
    "ScoreNetOptions",
    "UNetOptions",
    "ProcessOptions",
    "ODEOptions",
    "ReverseOptions",
    "PCOptions",
    "NCSNOptions",
    "check_sizes",
    "COMMON_FIT_OPTIONS",
    "register_amortized",
    "get_amortized",
    "make_config",
    "make_sampler_config",
    "split_options",
    "to_json",
    "check_int",
    "check_float",
    "check_choice",
    "embedded_conditions",
    "map_rows",
    "map_log_prob",
    "EXACT_MAX_DIM",
]

#: Options of every learned method's fit besides its config fields.
COMMON_FIT_OPTIONS = ("num_simulations", "data", "transforms", "condition", "checkpoint", "resume", "device", "build", "config")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_int(cfg: Any, name: str, *, minimum: int = 1, none: bool = False) -> None:
    r"""Refuses a field of ``cfg`` that is not an integer ``>= minimum`` (or ``None`` when allowed)."""
    v = getattr(cfg, name)
    if v is None and none:
        return
    if not _is_int(v) or v < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if none else "")
        raise OptionError(f"{type(cfg).__name__}: option {name}={v!r} is not allowed; it must be {allowed}")


def check_float(cfg: Any, name: str, *, low: float | None = None, high: float | None = None, none: bool = False,
                open_low: bool = False) -> None:  # fmt: skip
    r"""Refuses a field of ``cfg`` that is not a finite number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    v = getattr(cfg, name)
    if v is None and none:
        return
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    ok = ok and (low is None or (v > low if open_low else v >= low)) and (high is None or v <= high)
    if not ok:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(p for p in (lo, hi) if p) or "finite"
        raise OptionError(f"{type(cfg).__name__}: option {name}={v!r} is not allowed; it must be a number {rule}" + (" or None" if none else ""))


def check_choice(cfg: Any, name: str, choices: tuple) -> None:
    r"""Refuses a field of ``cfg`` that is not one of ``choices``."""
    v = getattr(cfg, name)
    if v not in choices:
        raise OptionError(f"{type(cfg).__name__}: option {name}={v!r} is not allowed; it must be one of {list(choices)}")


@dataclass(frozen=True)
class TrainOptions:
    r"""The training options every learned method's config has (see :class:`~bayesinv.amortized.training.TrainConfig`).

    Arguments:
        max_epochs: Passes over the training pairs (``None``: no limit, then ``max_steps`` decides).
        max_steps: Optimiser steps; overrides ``max_epochs``.
        batch_size: The mini-batch size.
        lr: The learning rate.
        lr_schedule: ``None`` (constant) or ``"cosine"``.
        patience: Evaluations without improvement before stopping (``None``: never).
        ema_decay: EMA momentum of the weights (``None``: no EMA).
        val_fraction: Share of the pairs held out for validation.
        grad_clip: Maximal gradient norm (``None``: no clipping).
        weight_decay: Weight decay of Adam.
        normalization: ``"minmax"``, ``"standard"`` or ``"none"`` of targets and observations.
        precision: ``"float32"`` or ``"bfloat16"`` (the training loss under autocast; see
            :class:`~bayesinv.amortized.training.TrainConfig`).
    """

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
    normalization: str = "standard"
    precision: str = "float32"

    def check_training(self) -> None:
        r"""Validates the training fields (called by each config's ``__post_init__``)."""
        if self.max_epochs is None and self.max_steps is None:
            raise OptionError(f"{type(self).__name__}: give max_epochs or max_steps (both are None)")
        check_int(self, "max_epochs", none=True)
        check_int(self, "max_steps", none=True)
        check_int(self, "batch_size")
        check_float(self, "lr", low=0.0, open_low=True)
        check_choice(self, "lr_schedule", (None, "cosine"))
        check_int(self, "patience", minimum=0, none=True)
        check_float(self, "ema_decay", low=0.0, high=1.0, none=True, open_low=True)
        check_float(self, "val_fraction", low=0.0, high=0.9)
        check_float(self, "grad_clip", low=0.0, open_low=True, none=True)
        check_float(self, "weight_decay", low=0.0)
        check_choice(self, "normalization", ("minmax", "standard", "none"))
        check_choice(self, "precision", ("float32", "bfloat16"))

    def to_json(self) -> dict[str, Any]:
        r"""The options as a JSON-able dict (tuples as lists), as saved with a posterior."""
        return to_json(self)

    def train_config(self, *, seed: int, device: Any, progress: bool | None):
        r"""The :class:`~bayesinv.amortized.training.TrainConfig` of these options."""
        from bayesinv.amortized.training import TrainConfig

        names = ("max_epochs", "max_steps", "batch_size", "lr", "lr_schedule", "patience", "ema_decay",
                 "val_fraction", "grad_clip", "weight_decay", "precision")  # fmt: skip
        return TrainConfig(**{k: getattr(self, k) for k in names}, seed=seed, device=str(device), progress=progress)


def train_options(defaults: Mapping[str, Any], name: str = "MethodTrainOptions") -> type:
    r"""The :class:`TrainOptions` base of a method's config, with the method's training defaults.

    Each learned method file declares its training defaults once, as a module-level
    ``TRAIN_DEFAULTS = dict(max_epochs=..., lr=..., ...)`` (one line per value), and derives
    its config from ``train_options(TRAIN_DEFAULTS)``: those values replace the class
    defaults of :class:`TrainOptions` (fields not named keep them), and options the user
    gives (keywords, ``config=``) override both.

    Arguments:
        defaults: Training field names of :class:`TrainOptions` and their default values.
        name: Name of the generated class.

    Returns:
        A frozen dataclass subclass of :class:`TrainOptions`.

    Raises:
        OptionError: A name that is not a training field, or a value its check refuses.

    Example:
        >>> Base = train_options(dict(max_epochs=500, lr_schedule="cosine"))
        >>> Base().max_epochs, Base().patience
        (500, 20)
    """
    fields = {f.name: f for f in dataclasses.fields(TrainOptions)}
    bad = sorted(k for k in defaults if k not in fields)
    if bad:
        raise OptionError(f"training defaults {bad} are not training options; these are: {list(fields)}")
    cls = dataclasses.make_dataclass(
        name, [(k, fields[k].type, dataclasses.field(default=v)) for k, v in defaults.items()], bases=(TrainOptions,), frozen=True
    )
    cls().check_training()  # a default value its check refuses fails here, at import
    return cls


def check_sizes(cfg: Any, name: str, *, empty: bool = True) -> None:
    r"""Refuses a field of ``cfg`` that is not a tuple of integers ``>= 1`` (layer sizes; non-empty unless ``empty``)."""
    v = getattr(cfg, name)
    if not isinstance(v, tuple) or not (empty or v) or not all(_is_int(h) and h >= 1 for h in v):
        what = "a tuple of integers >= 1" if empty else "a non-empty tuple of integers >= 1"
        raise OptionError(f"{type(cfg).__name__}: option {name}={v!r} must be {what}")


@dataclass(frozen=True)
class UNetOptions:
    r"""The U-Net options of the score networks (:mod:`bayesinv.nets.score`), shared by every
    score / velocity method (csd_star has only these).

    Arguments:
        activation: ``"silu"``, ``"relu"``, ``"gelu"`` or ``"tanh"``.
        embed_dim: Size of the observation embedding.
        embed_map_channels: U-Net with an embedded observation: channels of the learned map
            onto a coarse copy of the target grid (0: off).
        base_channels, channel_mults: U-Net width and resolution levels.
    """

    activation: str = "silu"
    embed_dim: int = 64
    embed_map_channels: int = 8
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)

    def check_unet(self) -> None:
        r"""Validates the U-Net fields."""
        from bayesinv.nets.score import ACTIVATIONS

        check_choice(self, "activation", tuple(ACTIVATIONS))
        check_sizes(self, "channel_mults")
        for name in ("embed_dim", "base_channels"):
            check_int(self, name)
        check_int(self, "embed_map_channels", minimum=0)


@dataclass(frozen=True)
class ScoreNetOptions(UNetOptions):
    r"""The network options of the score / velocity networks (:mod:`bayesinv.nets.score`), shared by
    cond_score and flow_matching: those of :class:`UNetOptions` and

    Arguments:
        network: ``"mlp"``, ``"resmlp"`` (residual blocks with the time in each: ``len(hidden)`` blocks of
            width ``hidden[0]``), ``"unet"`` or ``"auto"`` (U-Net for one 2-D field target, else the method's
            vector network: ``"resmlp"`` for cond_score and flow_matching, ``"mlp"`` for the others).
        hidden: Hidden layer sizes of the MLP.
        embedding: Observation embedding: ``"none"``, ``"mlp"``, ``"cnn"`` or ``"auto"`` (U-Net:
            channels on the grid, CNN for one field, MLP otherwise; MLP network: raw).
        embed_pool: How the CNN embedding summarises its last feature map: ``"mean"`` (global
            average pooling: shift invariant, right for field targets) or ``"flatten"`` (every
            position: for vector targets that locate something, such as an inclusion centre).
    """

    network: str = "auto"
    hidden: tuple[int, ...] = (256, 256, 256)
    embedding: str = "auto"
    embed_pool: str = "mean"

    def check_network(self) -> None:
        r"""Validates the network fields (called by each config's ``__post_init__``)."""
        check_choice(self, "network", ("auto", "mlp", "resmlp", "unet"))
        check_choice(self, "embedding", ("auto", "none", "mlp", "cnn"))
        check_choice(self, "embed_pool", ("mean", "flatten"))
        check_sizes(self, "hidden")
        self.check_unet()


@dataclass(frozen=True)
class ProcessOptions:
    r"""The forward-process options of the score methods (:mod:`bayesinv.diffusion.sde`), shared
    by cond_score and csd_star.

    Arguments:
        process: ``"ve"`` (γ(t) = σ_max^{2t}) or ``"vp"`` (linear β); cond_score also has ``"ncsn"``.
        sigma_max: σ_max of the VE process.
        beta_min, beta_max: β(0) and β(1) of the VP process.
        t_min: Smallest diffusion time (training and sampling).
        time_sampling: ``"uniform"`` on :math:`[t_{min}, 1]` or ``"mixed"`` (half uniform,
            half log-uniform: more training at small noise levels; the same minimiser).
    """

    process: str = "ve"
    sigma_max: float = 5.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    time_sampling: str = "mixed"

    def check_process(self, processes: tuple[str, ...] = ("ve", "vp")) -> None:
        r"""Validates the process fields (``processes``: the kinds the method allows)."""
        check_choice(self, "process", processes)
        check_choice(self, "time_sampling", ("uniform", "mixed"))
        for name in ("sigma_max", "beta_min", "beta_max"):
            check_float(self, name, low=0.0, open_low=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True)

    def process_spec(self) -> dict[str, Any]:
        r"""The continuous-time process (``"ve"`` or ``"vp"``) as the JSON-able spec of the network."""
        if self.process == "ve":
            return {"kind": "ve", "sigma_max": self.sigma_max}
        if self.process == "vp":
            return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max}
        raise OptionError(f"process {self.process!r} has no continuous-time spec; NCSN levels come from the data")


@dataclass(frozen=True)
class NCSNOptions:
    r"""The discrete noise levels of NCSN (``process="ncsn"`` of cond_score) and its annealed Langevin sampler.

    Arguments:
        sigma_1, sigma_L, num_levels, min_levels: The geometric levels σ_1 > … > σ_L and their
            number (``None``: Song & Ermon's rules, :func:`~bayesinv.diffusion.schedules.ncsn_levels`).
        steps_per_level, eps: Annealed Langevin T and ε (``None``: the NCSN v2 rule).
    """

    sigma_1: float | None = None
    sigma_L: float = 0.01
    num_levels: int | None = None
    min_levels: int = 20
    steps_per_level: int = 5
    eps: float | None = None

    def check_ncsn(self) -> None:
        r"""Validates the NCSN fields."""
        for name in ("min_levels", "steps_per_level"):
            check_int(self, name)
        check_int(self, "num_levels", minimum=2, none=True)
        check_float(self, "sigma_L", low=0.0, open_low=True)
        for name in ("sigma_1", "eps"):
            check_float(self, name, low=0.0, open_low=True, none=True)

    def ncsn_spec(self, x: Any, seed: int) -> dict[str, Any]:
        r"""The NCSN process spec of training targets ``x`` ``(N, D)`` (levels chosen by the rules where not given)."""
        from bayesinv.diffusion.schedules import ncsn_levels

        return ncsn_levels(x, sigma_1=self.sigma_1, sigma_L=self.sigma_L, num_levels=self.num_levels,
                           min_levels=self.min_levels, steps_per_level=self.steps_per_level, eps=self.eps, seed=seed)  # fmt: skip


@dataclass(frozen=True)
class ODEOptions:
    r"""Sampling options of an ODE sampler and its density (``None``: the default), shared by the
    sampler configs of cond_score and flow_matching.

    Arguments:
        rtol, atol: Tolerances of the adaptive RK5(4) integrator (1e-5), for draws and densities.
        chunk_size: Rows of observations × draws per network batch (MLP 50,000, U-Net 512).
        exact: ``log_prob`` with the exact divergence (default: target dimension ≤ :data:`EXACT_MAX_DIM`),
            else Hutchinson's estimator.
        num_probes: Hutchinson probes K per point when not exact (1): variance
            :math:`2 \sum_{i \neq j} S_{ij}^2 / K` (:mod:`bayesinv.diffusion.ode`); their spread is the
            standard error.
    """

    rtol: float | None = None
    atol: float | None = None
    chunk_size: int | None = None
    exact: bool | None = None
    num_probes: int | None = None

    def check_ode(self) -> None:
        r"""Validates the ODE fields (called by each sampler config's ``__post_init__``)."""
        for name in ("rtol", "atol"):
            check_float(self, name, low=0.0, open_low=True, none=True)
        for name in ("chunk_size", "num_probes"):
            check_int(self, name, none=True)
        check_choice(self, "exact", (None, True, False))


@dataclass(frozen=True)
class PCOptions:
    r"""Sampling options of the predictor–corrector and reverse-SDE samplers (``None``: the default).

    Arguments:
        steps: SDE/PC steps (500).
        t_min: Smallest time (the fit's).
        denoise: Final Tweedie step (``True``).
        corrector_steps, snr: PC corrector (1, 0.16).
        chunk_size: Rows of observations × draws per network batch (MLP 50,000, U-Net 512).
    """

    steps: int | None = None
    t_min: float | None = None
    denoise: bool | None = None
    corrector_steps: int | None = None
    snr: float | None = None
    chunk_size: int | None = None

    def check_pc(self) -> None:
        r"""Validates the fields (called by each sampler config's ``__post_init__``)."""
        check_choice(self, "denoise", (None, True, False))
        for name in ("steps", "chunk_size"):
            check_int(self, name, none=True)
        check_int(self, "corrector_steps", minimum=0, none=True)
        check_float(self, "snr", low=0.0, open_low=True, none=True)
        check_float(self, "t_min", low=0.0, high=0.5, open_low=True, none=True)


@dataclass(frozen=True)
class ReverseOptions(PCOptions, ODEOptions):
    r"""Sampling options of the reverse-diffusion samplers (:func:`~bayesinv.diffusion.samplers.reverse_sample`;
    ``None``: the default): those of :class:`PCOptions` and :class:`ODEOptions`, and

    Arguments:
        power: ODE: integrate in r with t = (1 − r)^power (2).
        steps_per_level, eps: Annealed Langevin (the fit's).
    """

    power: float | None = None
    steps_per_level: int | None = None
    eps: float | None = None

    def check_reverse(self) -> None:
        r"""Validates the fields (called by each sampler config's ``__post_init__``)."""
        self.check_ode()
        self.check_pc()
        check_int(self, "steps_per_level", none=True)
        for name in ("power", "eps"):
            check_float(self, name, low=0.0, open_low=True, none=True)


def to_json(cfg: Any) -> dict[str, Any]:
    r"""A config dataclass as a JSON-able dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


@dataclass(frozen=True)
class AmortizedMethod:
    r"""A learned method, as the amortized layer needs it.

    Training defaults: each method file declares its own, in one place, as a module-level
    ``TRAIN_DEFAULTS = dict(max_epochs=..., patience=..., lr=..., ...)`` (one line per value),
    and its config derives from :func:`train_options` ``(TRAIN_DEFAULTS)``: these replace the
    class defaults of :class:`TrainOptions` when the user passes nothing, and the user's
    options override them. :attr:`train_defaults` lists the effective defaults.

    Arguments:
        name: The ``method=`` name.
        config: Frozen config dataclass (fields: network and training options; the training
            fields with the method's defaults, through :func:`train_options`).
        sampler_config: Frozen dataclass of the sampling options (fields default to ``None``
            = the posterior's default).
        build: ``build(cfg, pairs, seed) -> (net, settings)``: the named network of the config and
            the JSON-able settings saved with it (built inside the seeded block).
        rebuild: ``rebuild(settings) -> net``: the network of a saved posterior.
        loss: ``loss(cfg, net, settings) -> loss_fn(module, x, c)``.
        sample: ``sample(post, c, n, generator, scfg) -> (x (B, n, D), stats)``.
        log_prob: ``log_prob(post, x, c) -> (N,)`` on normalised flat tensors, or ``None``; with
            ``density`` given, ``log_prob(post, x, c, scfg, generator) -> ((N,), std_error (N,))``.
        density: For a method whose density depends on the sampler settings (an ODE):
            ``density(settings) -> options``, the sampler options under which ``log_prob`` is the
            density of the sampler's draws (the defaults of ``post.log_prob`` and
            ``post.sample_and_log_prob``); it raises when the fitted settings have no density.
        train: Optional ``train(net, pairs, cfg, settings, run, seed) -> (net, results, extra_info)`` for
            a method that trains in stages; ``run(loss_fn, module, data, suffix)`` is the shared loop.
        check_sample: Optional ``check_sample(settings, scfg, given)`` refusing sampling
            options that do not fit the fitted settings (``given``: the names passed).
        conditional: ``False`` for a method that learns the target alone (its network never sees y).
        posterior: The posterior class (:class:`~bayesinv.amortized.posterior.AmortizedPosterior`
            or a small subclass with method-specific helpers).
        fit_extras: Names of fit options that are neither config fields nor saved
            (e.g. csd_star's ``solver``); passed to the posterior's constructor.
        no_density: The message of ``log_prob`` for a method without a density.
        saved_keys: Keys the saved settings must have (checked by :func:`bayesinv.load`).
        pairs: Optional replacement of :func:`~bayesinv.amortized.pairs.prepare_pairs` (same
            signature), e.g. :func:`~bayesinv.amortized.prior_only.prepare_prior_pairs` for a
            method trained on draws of the target alone (no simulation).
    """

    name: str
    config: type
    sampler_config: type
    build: Callable
    rebuild: Callable
    loss: Callable
    sample: Callable
    log_prob: Callable | None = None
    density: Callable | None = None
    train: Callable | None = None
    check_sample: Callable | None = None
    conditional: bool = True
    posterior: type | None = None
    fit_extras: tuple[str, ...] = ()
    no_density: str = ""
    saved_keys: tuple[str, ...] = ()
    pairs: Callable | None = None

    @property
    def config_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config))

    @property
    def train_defaults(self) -> dict[str, Any]:
        r"""The default of every training field (:class:`TrainOptions`) in this method's config."""
        names = [f.name for f in dataclasses.fields(TrainOptions)]
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.name in names}

    @property
    def sample_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.sampler_config))

    @property
    def fit_options(self) -> tuple[str, ...]:
        return (*COMMON_FIT_OPTIONS, *self.fit_extras, *self.config_fields)


_AMORTIZED: dict[str, AmortizedMethod] = {}


def register_amortized(method: AmortizedMethod) -> AmortizedMethod:
    r"""Registers ``method`` under its name (in :mod:`bayesinv.registry` too, so ``fit``/``infer``/``load`` find it).

    Arguments:
        method: The method record.

    Returns:
        ``method``.
    """
    from bayesinv.amortized.files import load_posterior
    from bayesinv.amortized.fit import fit_posterior
    from bayesinv.registry import register_method

    _AMORTIZED[method.name] = method

    def fit_fn(problem, **options):
        return fit_posterior(problem, method, **options)

    fit_fn.__doc__ = f"Fits a {method.name!r} posterior (options: the fields of {method.config.__name__})."
    register_method(method.name, amortized=True, loader=load_posterior, overwrite=True, amortized_method=method)(fit_fn)
    return method


def get_amortized(name: str) -> AmortizedMethod:
    r"""The learned method registered as ``name``."""
    if name not in _AMORTIZED:
        from bayesinv.registry import get_method

        get_method(name)  # imports the built-in methods
    if name not in _AMORTIZED:
        raise OptionError(f"{name!r} is not a learned method of the amortized layer; these are: {sorted(_AMORTIZED)}")
    return _AMORTIZED[name]


def _coerce(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in values.items():
        if isinstance(v, list) and "tuple" in str(fields[k].type):
            v = tuple(v)
        out[k] = v
    return out


def _unknown(kind: str, method: str, names: list[str], allowed: tuple[str, ...]) -> OptionError:
    return OptionError(f"method {method!r} has no {kind} option(s) {names}; its {kind} options are {sorted(set(allowed))}")


def make_config(method: AmortizedMethod, config: Any, overrides: Mapping[str, Any]) -> Any:
    r"""The method's config: ``config`` (dataclass, dict or ``None``) with keyword ``overrides``, validated.

    Arguments:
        method: The method.
        config: A ``method.config`` instance, a dict of its fields, or ``None`` (defaults).
        overrides: Config fields given as keywords.

    Returns:
        A frozen ``method.config``.
    """
    fields = method.config_fields
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, method.config):
        base = {f: getattr(config, f) for f in fields}
    elif isinstance(config, Mapping):
        bad = sorted(k for k in config if k not in fields)
        if bad:
            raise _unknown("config", method.name, bad, fields)
        base = dict(config)
    else:
        raise OptionError(
            f"config= of method {method.name!r} must be a {method.config.__name__} or a dict of its fields, got {type(config).__name__}"
        )
    bad = sorted(k for k in overrides if k not in fields)
    if bad:
        raise _unknown("fit", method.name, bad, method.fit_options)
    try:
        return method.config(**_coerce(method.config, {**base, **overrides}))
    except TypeError as exc:
        raise OptionError(f"{method.config.__name__}: {exc}") from exc


def make_sampler_config(method: AmortizedMethod, options: Mapping[str, Any]) -> Any:
    r"""The method's sampler config from keyword ``options`` (unknown names refused, values validated)."""
    fields = method.sample_fields
    bad = sorted(k for k in options if k not in fields)
    if bad:
        raise _unknown("sampling", method.name, bad, fields)
    return method.sampler_config(**_coerce(method.sampler_config, options))


def split_options(method: AmortizedMethod, options: Mapping[str, Any]) -> tuple[dict, dict]:
    r"""Splits ``infer`` options into fit options and sampling options by field names (a shared name goes to both).

    Arguments:
        method: The method.
        options: The keyword options of ``infer``.

    Returns:
        ``(fit_options, sample_options)``.
    """
    fit_names, sample_names = set(method.fit_options), set(method.sample_fields)
    bad = sorted(k for k in options if k not in fit_names and k not in sample_names)
    if bad:
        raise OptionError(
            f"method {method.name!r} has no option(s) {bad}; its fit options are {sorted(fit_names)} and its sampling"
            f" options are {sorted(sample_names)}"
        )
    return ({k: v for k, v in options.items() if k in fit_names}, {k: v for k, v in options.items() if k in sample_names})


def embedded_conditions(net: Any, c: Any) -> tuple[Any, dict]:
    r"""A sampler's conditions ``(B, C)``, embedded once when the network can (``net.embeds()``), and the
    keyword arguments to call it with: the embedding then runs once per observation, not at every
    step of every draw. A network of the user's own (``build=``) without that interface is called
    as ``net(x, c, level)`` on the raw conditions.
    """
    import torch

    if not getattr(net, "embeds", lambda: False)():
        return c, {}
    with torch.no_grad():
        return net.features(c), {"embedded": True}


def map_rows(fn: Callable, x: Any, c: Any, owner: Any, chunk_size: int) -> tuple[list, int]:
    r"""Applies ``fn(x_chunk, c_chunk) -> (out, nfe)`` to chunks of ``chunk_size`` rows.

    Arguments:
        fn: The per-chunk computation (a sampler or a density).
        x: Rows ``(R, D)``.
        c: Conditions ``(B, C)``; row ``i`` is conditioned on ``c[owner[i]]``.
        owner: ``(R,)`` indices into ``c``.
        chunk_size: Rows per call.

    Returns:
        The list of outputs and the largest ``nfe``.
    """
    out, nfe = [], 0
    for start in range(0, x.shape[0], chunk_size):
        res, k = fn(x[start : start + chunk_size], c[owner[start : start + chunk_size]])
        out.append(res)
        nfe = max(nfe, int(k))
    return out, nfe


#: Targets of at most this many dimensions get the exact divergence in an ODE posterior's ``log_prob`` by default.
EXACT_MAX_DIM = 32


def map_log_prob(fn: Callable, x: Any, c: Any, scfg: Any, chunk_size: int) -> tuple[Any, Any]:
    r"""An ODE posterior's density over chunks of rows, with the divergence chosen by ``scfg``.

    Arguments:
        fn: ``fn(x_chunk, c_rows, exact, probes) -> LogProbResult`` (:mod:`bayesinv.diffusion.ode`);
            ``c_rows`` holds each condition once per probe, as the points are repeated.
        x: Normalised flat points ``(N, D)``.
        c: Their conditions ``(N, C)``.
        scfg: A sampler config with ``exact`` (``None``: ``D <= EXACT_MAX_DIM``) and ``num_probes``
            (Hutchinson probes when not exact; ``None``: 1).
        chunk_size: Rows per call.

    Returns:
        ``(log_prob (N,), std_error (N,))``.
    """
    import torch

    exact = x.shape[-1] <= EXACT_MAX_DIM if scfg.exact is None else scfg.exact
    probes = 1 if exact else int(scfg.num_probes or 1)

    def run(x_chunk: Any, c_chunk: Any) -> tuple[tuple[Any, Any], int]:
        res = fn(x_chunk, c_chunk.repeat_interleave(probes, 0), exact, probes)
        return (res.log_prob, res.std_error), res.nfe

    out, _ = map_rows(run, x, c, torch.arange(x.shape[0], device=x.device), chunk_size)
    return torch.cat([lp for lp, _ in out]), torch.cat([se for _, se in out])
