r"""Conditional flows for flat targets (zuko): :class:`ConditionalFlow`, the network of ``method="flow"``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesinv.amortized.layout import Layout
from bayesinv.errors import ProblemError
from bayesinv.nets.embedding import observation_embedding

__all__ = ["ConditionalFlow", "VECTOR_FLOWS", "flow_architecture", "build_flow"]

VECTOR_FLOWS = ("nsf", "maf", "realnvp", "nsf_coupling")


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
        embed_pool: The CNN embedding's pooling, ``"mean"`` or ``"flatten"`` (position-aware).

    Example:
        >>> net = ConditionalFlow(3, 5)
        >>> net(torch.randn(7, 5)).sample((2,)).shape
        torch.Size([2, 7, 3])
    """

    def __init__(self, x_dim: int, c_dim: int, flow: str = "nsf", num_transforms: int = 3, hidden: Sequence[int] = (64, 64),
                 bins: int = 8, embedding: str | None = None, embed_dim: int = 32, embedding_hidden: Sequence[int] = (128,),
                 condition: Layout | None = None, embed_pool: str = "mean"):  # fmt: skip
        super().__init__()
        import zuko

        condition = condition or Layout(("y",), ((c_dim,),))
        self.embedding = observation_embedding(embedding, condition, embed_dim, embedding_hidden, pool=embed_pool) or nn.Identity()
        context = embed_dim if not isinstance(self.embedding, nn.Identity) else c_dim
        kw = dict(transforms=num_transforms, hidden_features=tuple(int(h) for h in hidden))
        if flow in ("nsf", "nsf_coupling"):
            self.flow = zuko.flows.NSF(x_dim, context, bins=bins, **kw, **({"passes": 2} if flow == "nsf_coupling" else {}))
        elif flow == "maf":
            self.flow = zuko.flows.MAF(x_dim, context, **kw)
        elif flow == "realnvp":
            if x_dim < 2:
                raise ProblemError("flow='realnvp' (affine coupling) needs a target of 2 or more entries; use 'nsf' or 'maf'")
            self.flow = zuko.flows.RealNVP(x_dim, context, **kw)
        else:
            raise ProblemError(f"unknown flow {flow!r} for a vector target; use one of {VECTOR_FLOWS}")

    def forward(self, c: Tensor) -> torch.distributions.Distribution:
        r"""q(x | c) for conditions ``(*, C)``: batch shape ``(*)``, event shape ``(D,)``."""
        return self.flow(self.embedding(c))

    def loss(self, x: Tensor, c: Tensor) -> Tensor:
        r"""The negative log-likelihood, averaged over the batch."""
        return -self(c).log_prob(x).mean()


def flow_architecture(cfg: Any, target: Layout, condition: Layout) -> dict[str, Any]:
    r"""The JSON-able architecture (saved with a posterior) of the flow of a config with the fields
    ``flow``, ``num_transforms``, ``hidden``, ``bins``, ``embedding``, ``embed_dim`` and ``scales``: the
    arguments of :class:`ConditionalFlow`, or of :class:`~bayesinv.nets.coupling.MultiscaleConditionalFlow`
    with ``flow="multiscale"`` (one field target; ``num_transforms`` blocks per scale, width ``hidden[0]``)."""
    if cfg.flow == "multiscale":
        from bayesinv.nets.coupling import field_shape

        return dict(
            flow="multiscale", x_shape=field_shape(target), c_dim=condition.dim, scales=cfg.scales, blocks=cfg.num_transforms,
            channels=cfg.hidden[0], embedding=cfg.embedding, embedding_dim=cfg.embed_dim,
            c_shape=list(condition.shapes[0]) if len(condition.names) == 1 else None,
        )  # fmt: skip
    return dict(x_dim=target.dim, c_dim=condition.dim, flow=cfg.flow, num_transforms=cfg.num_transforms, hidden=list(cfg.hidden),
                bins=cfg.bins, embedding=cfg.embedding, embed_dim=cfg.embed_dim,
                **({"embed_pool": cfg.embed_pool} if getattr(cfg, "embed_pool", "mean") != "mean" else {}))  # fmt: skip


def build_flow(architecture: Mapping[str, Any], condition: Layout | None = None) -> nn.Module:
    r"""The flow of an architecture of :func:`flow_architecture` (``condition``: the condition layout, for a CNN embedding)."""
    arch = dict(architecture)
    if arch.get("flow") == "multiscale":
        from bayesinv.nets.coupling import MultiscaleConditionalFlow

        arch.pop("flow")
        return MultiscaleConditionalFlow(**arch)
    return ConditionalFlow(**arch, condition=condition)
