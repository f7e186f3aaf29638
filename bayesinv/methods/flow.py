r"""Conditional normalizing flow: ``method="flow"``.

A flow :math:`q_\phi(x \mid y)` with a tractable density is fitted by maximum likelihood
on simulated pairs :math:`(x_i, y_i)` from the joint,

.. math:: \min_\phi \; -\frac{1}{N} \sum_i \log q_\phi(x_i \mid h(y_i)),

where :math:`x` is the normalised flat target and :math:`h` an optional embedding of
the normalised observation (an MLP for vectors, a CNN for images), trained jointly.
Vector targets use zuko's flows (``"nsf"`` neural spline autoregressive flow by
default; ``"maf"`` affine autoregressive; ``"realnvp"`` affine coupling;
``"nsf_coupling"`` spline coupling). Field targets on a grid can use the multi-scale
conditional coupling flow of :mod:`bayesinv.nets.coupling` (``flow="multiscale"``),
whose conditioning network may also be trained to map y to a reconstruction of the
target with the loss :math:`\alpha \lVert H(y) - x \rVert^2` added to the NLL.

The posterior has a density (:meth:`FlowPosterior.log_prob`), so it is a valid
``proposal=`` for ``method="importance"``: the importance weights then correct it into
asymptotically exact posterior draws, and their ESS measures how good the flow is.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesinv.nets.embedding import CNNEmbedding, MLPEmbedding
from bayesinv.posterior import AmortizedPosterior, Layout, Normalizer, resolve_device, training_data
from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import register_method
from bayesinv.training import TrainConfig, train

__all__ = ["ConditionalFlow", "FlowPosterior", "flow", "FLOWS", "prepare", "train_config"]

FLOWS = ("nsf", "maf", "realnvp", "nsf_coupling", "multiscale")

# -- shared by the learned methods of this file and vae.py ------------------------------

def prepare(
    problem: Problem,
    target: tuple[str, ...],
    *,
    num_simulations: int | None,
    data: Any,
    seed: int | None,
    progress: bool | None,
    normalization: str,
    transforms: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    r"""Layouts, normalisers and normalised flat training tensors of an amortized method.

    Returns:
        A dict with ``target``/``condition`` (:class:`Layout`), ``x_norm``/``c_norm``
        (:class:`Normalizer`), ``x`` ``(N, D)`` and ``c`` ``(N, C)`` (normalised),
        ``observed``, ``obs_keys`` and ``num_simulations``.
    """
    from bayesinv.posterior import _apply_transforms

    condition = tuple(n for n in problem.observed if n not in problem.fixed_observed)
    if not condition:
        raise ProblemError("the model has no observed site to condition on")
    arrays, n = training_data(
        problem, target, condition, num_simulations=num_simulations, data=data, seed=seed, progress=progress
    )
    for name in target:
        if not problem.sites[name].dtype.is_floating_point or problem.sites[name].discrete:
            raise ProblemError(f"target site {name!r} is discrete; a learned posterior needs continuous targets")
    arrays = {k: v.float() for k, v in arrays.items()}
    arrays = _apply_transforms(arrays, dict(transforms or {}))
    t_layout = Layout(target, tuple(problem.sites[s].shape for s in target))
    c_layout = Layout(condition, tuple(problem.sites[s].shape for s in condition))
    x = t_layout.flatten(arrays)
    c = c_layout.flatten(arrays)
    keep = torch.isfinite(x).all(-1) & torch.isfinite(c).all(-1)
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} of {len(keep)} training pairs hold NaN/inf and are left out", RuntimeWarning, stacklevel=3)
        x, c = x[keep], c[keep]
    x_norm = Normalizer.fit(x, kind=normalization, groups=t_layout.groups())
    c_norm = Normalizer.fit(c, kind=normalization, groups=c_layout.groups())
    return dict(
        target=t_layout, condition=c_layout, x_norm=x_norm, c_norm=c_norm, x=x_norm(x), c=c_norm(c),
        observed=condition, obs_keys={k: problem.obs_keys.get(k) for k in condition}, num_simulations=n,
    )  # fmt: skip


def embedding_net(kind: str | None, condition: Layout, dim: int, hidden: Sequence[int]) -> nn.Module | None:
    r"""The observation embedding: ``None``, ``"mlp"``, ``"cnn"`` (one site of shape ``(H, W)`` or
    ``(C, H, W)``) or ``"auto"`` (``"cnn"`` for one such site, else none)."""
    image = len(condition.names) == 1 and len(condition.shapes[0]) in (2, 3)
    if kind == "auto":
        kind = "cnn" if image else None
    if kind in (None, "none"):
        return None
    if kind == "mlp":
        return MLPEmbedding(condition.dim, dim, hidden=tuple(hidden))
    if kind == "cnn":
        if not image:
            raise ProblemError(
                f"embedding='cnn' needs one observed site of shape (H, W) or (C, H, W); got"
                f" {dict(zip(condition.names, condition.shapes))}"
            )
        shape = condition.shapes[0]
        shape = (1, *shape) if len(shape) == 2 else shape
        return nn.Sequential(nn.Unflatten(-1, shape), CNNEmbedding(shape, dim))
    raise ProblemError(f"embedding must be None, 'auto', 'mlp' or 'cnn', got {kind!r}")


def train_config(
    seed: int | None, progress: bool | None, device: torch.device, extra: Mapping[str, Any] | None, **options: Any
) -> TrainConfig:
    r"""The :class:`TrainConfig` of a method: its options, then ``extra`` (``train_options=``)."""
    options.update(dict(extra or {}))
    options.setdefault("seed", 0 if seed is None else int(seed))
    options.setdefault("progress", progress)
    options.setdefault("device", str(device))
    return TrainConfig(**options)


@contextlib.contextmanager
def seeded(generator: torch.Generator | None) -> Iterator[None]:
    r"""Seeds torch's global RNG from ``generator`` inside the block (restored after it);
    zuko's samplers draw from the global RNG."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[generator.device] if generator.device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# -- the network --------------------------------------------------------------------------
class ConditionalFlow(nn.Module):
    r"""A conditional flow for flat targets: ``forward(c)`` returns the distribution q(x | c).

    Arguments:
        x_dim: The target size D.
        c_dim: The (flat) condition size C.
        flow: ``"nsf"``, ``"maf"``, ``"realnvp"`` or ``"nsf_coupling"`` (zuko flows).
        num_transforms: The number of flow transformations.
        hidden: Hidden layer sizes of the transformations' hyper-networks.
        bins: Spline bins (NSF).
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: how the condition is encoded.
        embed_dim: The embedding size.
        condition: The condition layout (for ``"cnn"``).

    Example:
        >>> net = ConditionalFlow(3, 5)
        >>> net(torch.randn(7, 5)).sample((2,)).shape
        torch.Size([2, 7, 3])
    """

    def __init__(
        self,
        x_dim: int,
        c_dim: int,
        flow: str = "nsf",
        num_transforms: int = 3,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        embedding: str | None = None,
        embed_dim: int = 32,
        embedding_hidden: Sequence[int] = (128,),
        condition: Layout | None = None,
    ):
        super().__init__()
        import zuko

        condition = condition or Layout(("y",), ((c_dim,),))
        self.embedding = embedding_net(embedding, condition, embed_dim, embedding_hidden) or nn.Identity()
        context = embed_dim if not isinstance(self.embedding, nn.Identity) else c_dim
        hidden = tuple(int(h) for h in hidden)
        if flow == "nsf":
            self.flow = zuko.flows.NSF(x_dim, context, bins=bins, transforms=num_transforms, hidden_features=hidden)
        elif flow == "nsf_coupling":
            self.flow = zuko.flows.NSF(x_dim, context, bins=bins, transforms=num_transforms, hidden_features=hidden, passes=2)
        elif flow == "maf":
            self.flow = zuko.flows.MAF(x_dim, context, transforms=num_transforms, hidden_features=hidden)
        elif flow == "realnvp":
            if x_dim < 2:
                raise ProblemError("flow='realnvp' (affine coupling) needs a target of 2 or more entries; use 'nsf' or 'maf'")
            self.flow = zuko.flows.RealNVP(x_dim, context, transforms=num_transforms, hidden_features=hidden)
        else:
            raise ProblemError(f"unknown flow {flow!r} for a vector target; use one of {FLOWS[:4]}")

    def forward(self, c: Tensor) -> torch.distributions.Distribution:
        r"""
        Arguments:
            c: Conditions, with shape ``(*, C)``.

        Returns:
            q(x | c), with batch shape ``(*)`` and event shape ``(D,)``.
        """
        return self.flow(self.embedding(c))

    def loss(self, x: Tensor, c: Tensor) -> Tensor:
        r"""The negative log-likelihood, averaged over the batch."""
        return -self(c).log_prob(x).mean()


# -- the posterior -----------------------------------------------------------------------
class FlowPosterior(AmortizedPosterior):
    r"""A trained conditional flow q(target | y); it has a density (``log_prob``)."""

    method = "flow"

    def _sample(self, c: Tensor, n: int, generator: torch.Generator | None, **options) -> tuple[Tensor, dict]:
        if options:
            raise ProblemError(f"method 'flow' has no sampling option(s) {sorted(options)}")
        with seeded(generator):
            x = self.net(c).sample((n,))  # (n, B, D)
        return x.movedim(0, -2), {}

    def _log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        return self.net(c).log_prob(x)

    @torch.no_grad()
    def log_prob(self, values: Mapping[str, Any], y: Any) -> Tensor:
        return super().log_prob(values, y)

    @classmethod
    def build_net(cls, config: Mapping[str, Any]) -> nn.Module:
        arch = dict(config["architecture"])
        if arch.get("flow") == "multiscale":
            from bayesinv.nets.coupling import MultiscaleConditionalFlow

            arch.pop("flow")
            return MultiscaleConditionalFlow(**arch)
        cond = config.get("condition_layout")
        arch["condition"] = Layout.from_json(cond) if cond else None
        return ConditionalFlow(**arch)


@register_method("flow", amortized=True, loader=FlowPosterior.from_saved)
def flow(
    problem: Problem,
    *,
    target: tuple[str, ...],
    seed: int | None = 0,
    progress: bool | None = None,
    num_simulations: int | None = None,
    data: Any = None,
    flow: str = "nsf",
    num_transforms: int = 3,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    embedding: str | None = None,
    embed_dim: int = 32,
    alpha: float = 0.0,
    scales: int = 2,
    normalization: str = "standard",
    transforms: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    max_epochs: int = 200,
    max_steps: int | None = None,
    lr: float = 1e-3,
    patience: int | None = 20,
    ema_decay: float | None = 0.999,
    train_options: Mapping[str, Any] | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    device: str | None = "auto",
) -> FlowPosterior:
    r"""Fits a conditional normalizing flow q(target | y) by maximum likelihood.

    Arguments:
        problem: The traced problem.
        target: The target sites.
        seed: Seed of the simulations, the initial weights and the training.
        progress: Show progress bars.
        num_simulations: Simulate this many joint draws (or give ``data=``).
        data: A dataset from :func:`bayesinv.simulate`, its zarr path, or a dict of arrays.
        flow: ``"nsf"`` (default), ``"maf"``, ``"realnvp"`` (affine coupling),
            ``"nsf_coupling"``, or ``"multiscale"`` (one field target on a grid).
        num_transforms: Flow transformations (vector flows) or coupling blocks per
            scale (multiscale).
        hidden: Hidden sizes of the hyper-networks (vector flows); the first entry is
            the channel width of the coupling networks (multiscale).
        bins: Spline bins.
        embedding: ``None`` (the normalised y is the context), ``"mlp"`` or ``"cnn"``.
        embed_dim: The embedding size.
        alpha: Weight of the conditioning-network loss ‖H(y) − x‖² (multiscale only).
        scales: Number of scales (multiscale only).
        normalization: ``"standard"`` (default), ``"minmax"`` or ``"none"``.
        transforms: Site → ``"log"``/``"log10"`` transform of the target before
            normalisation (``log_prob`` is then unavailable).
        batch_size, max_epochs, max_steps, lr, patience, ema_decay: Training settings
            (the posterior keeps the EMA weights).
        train_options: Further :class:`bayesinv.training.TrainConfig` fields.
        checkpoint: Path of a training checkpoint; ``resume=True`` continues from it.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.

    Returns:
        A :class:`FlowPosterior`.
    """
    t0 = time.perf_counter()
    prep = prepare(
        problem, target, num_simulations=num_simulations, data=data, seed=seed, progress=progress,
        normalization=normalization, transforms=transforms,
    )  # fmt: skip
    t_layout, c_layout = prep["target"], prep["condition"]
    if flow == "multiscale":
        from bayesinv.nets.coupling import MultiscaleConditionalFlow, field_shape

        arch = dict(
            flow="multiscale", x_shape=field_shape(t_layout), c_dim=c_layout.dim, scales=int(scales),
            blocks=int(num_transforms), channels=int(tuple(hidden)[0]), embedding=embedding,
            embedding_dim=int(embed_dim), c_shape=list(c_layout.shapes[0]) if len(c_layout.names) == 1 else None,
        )  # fmt: skip
    else:
        if flow not in FLOWS:
            raise ProblemError(f"unknown flow {flow!r}; use one of {FLOWS}")
        arch = dict(
            x_dim=t_layout.dim, c_dim=c_layout.dim, flow=flow, num_transforms=int(num_transforms),
            hidden=[int(h) for h in hidden], bins=int(bins), embedding=embedding, embed_dim=int(embed_dim),
        )  # fmt: skip
    config = {"architecture": arch, "condition_layout": c_layout.to_json(), "alpha": float(alpha), "normalization": normalization}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else int(seed))
        net = FlowPosterior.build_net(config)
        dev = resolve_device(device)
        if alpha and flow != "multiscale":
            raise ProblemError("alpha (the conditioning-network loss) needs flow='multiscale'")

        def loss_fn(module: nn.Module, x: Tensor, c: Tensor) -> Tensor:
            return module.loss(x, c, alpha=alpha) if flow == "multiscale" else module.loss(x, c)

        cfg = train_config(
            seed, progress, dev, train_options, batch_size=batch_size, max_epochs=max_epochs, max_steps=max_steps,
            lr=lr, patience=patience, ema_decay=ema_decay,
        )  # fmt: skip
        result = train(loss_fn, net, (prep["x"], prep["c"]), config=cfg, checkpoint_path=checkpoint, resume=resume)
    trained = result.ema_model if result.ema_model is not None else result.model
    info = {
        "num_simulations": prep["num_simulations"],
        "fit_time_s": time.perf_counter() - t0,
        "train_time_s": result.wall_time,
        "steps": result.steps,
        "best_val_loss": result.best_val,
        "stopped_early": result.stopped_early,
    }
    return FlowPosterior(
        trained, target=t_layout, condition=c_layout, x_norm=prep["x_norm"], c_norm=prep["c_norm"],
        transforms=transforms, observed=prep["observed"], obs_keys=prep["obs_keys"], config=config, info=info,
        device=dev,
    )  # fmt: skip
