r"""The two-stage conditional VAE: ``method="vae"`` (Algorithm 2 of the EIT comparison).

Stage 1 fits a VAE to target draws alone (normalised, flat ``x``): an encoder
:math:`\Phi(x) = (\mu(x), s(x))`, latent draws :math:`z = \mu(x) + s(x) \odot
\varepsilon`, a decoder :math:`\Psi`, and

.. math:: \mathcal{L}_1 = \lVert x - \Psi(z) \rVert^2 + \beta\,
          \mathrm{KL}(\mathcal{N}(\mu, s^2) \,\Vert\, \mathcal{N}(0, I)).

Stage 2 freezes the VAE and fits a regression network :math:`f` (an MLP, optionally
after an MLP/CNN embedding of y) to *sampled* latent codes — fresh
:math:`z_i \sim \mathcal{N}(\mu(x_i), s(x_i)^2)` at every step, not the means
(eq. 13): :math:`\mathcal{L}_2 = \lVert f(y_i) - z_i \rVert^2`.

The reconstruction is :math:`\Psi(f(y))` (eq. 14; :meth:`VAEPosterior.reconstruct`).
Posterior draws are :math:`\Psi(f(y) + \lambda\, r \odot \varepsilon)`,
:math:`\varepsilon \sim \mathcal{N}(0, I)`, where :math:`r` is the per-dimension root
mean square of the stage-2 residuals :math:`z_i - f(y_i)` on held-out pairs and
:math:`\lambda` the sampling option ``spread`` (default 1). Since :math:`f` is a
least-squares fit, :math:`f(y) \approx \mathbb{E}[z \mid y]` and :math:`r^2` estimates
:math:`\mathbb{E}_y[\operatorname{Var}(z \mid y)]`: the latent posterior spread *averaged
over observations* (encoder noise and regression error included), as a diagonal
Gaussian. It is not the spread of p(x | y) for a given y — not heteroscedastic, not
correlated across latent dimensions, and distorted by the decoder's non-linearity —
so this posterior is not calibrated by construction; check it with
:func:`bayesinv.diagnostics.sbc_ranks` / ``tarp_coverage``. It has no density, so it
cannot be an importance-sampling proposal (use ``method="flow"``).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from bayesinv.methods.flow import embedding_net, prepare, train_config
from bayesinv.nets.embedding import _mlp
from bayesinv.posterior import AmortizedPosterior, Layout, resolve_device
from bayesinv.problem import Problem, ProblemError
from bayesinv.registry import register_method
from bayesinv.training import train

__all__ = ["TwoStageVAE", "VAEPosterior", "vae"]


class TwoStageVAE(nn.Module):
    r"""Encoder, decoder and regression network of the two-stage conditional VAE.

    Arguments:
        x_dim: The target size D.
        c_dim: The (flat) condition size C.
        latent_dim: The latent size k.
        hidden: Hidden sizes of the encoder (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y before f.
        embed_dim: The embedding size.
        condition: The condition layout (for ``"cnn"``).

    Example:
        >>> net = TwoStageVAE(4, 6, latent_dim=2)
        >>> net.decoder(net.regress(torch.randn(3, 6))).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        x_dim: int,
        c_dim: int,
        latent_dim: int = 8,
        hidden: Sequence[int] = (128, 128),
        regressor_hidden: Sequence[int] = (128, 128),
        embedding: str | None = None,
        embed_dim: int = 32,
        condition: Layout | None = None,
    ):
        super().__init__()
        hidden, regressor_hidden = tuple(hidden), tuple(regressor_hidden)
        self.latent_dim = latent_dim
        self.encoder = _mlp([x_dim, *hidden, 2 * latent_dim], nn.SiLU)
        self.decoder = _mlp([latent_dim, *hidden[::-1], x_dim], nn.SiLU)
        condition = condition or Layout(("y",), ((c_dim,),))
        emb = embedding_net(embedding, condition, embed_dim, (128,))
        f_in = embed_dim if emb is not None else c_dim
        self.regressor = nn.Sequential(emb or nn.Identity(), _mlp([f_in, *regressor_hidden, latent_dim], nn.SiLU))
        self.register_buffer("z_spread", torch.ones(latent_dim))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Latent mean and log-variance, each ``(*, k)``."""
        return _encode(self.encoder, x)

    def encode_sample(self, x: Tensor) -> Tensor:
        r"""A latent draw :math:`z = \mu(x) + s(x) \odot \varepsilon`."""
        mu, logvar = self.encode(x)
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def regress(self, c: Tensor) -> Tensor:
        r"""f(y): the latent code predicted from the condition, ``(*, k)``."""
        return self.regressor(c)


def _encode(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    mu, logvar = encoder(x).chunk(2, dim=-1)
    return mu, logvar.clamp(-12.0, 8.0)


class _Stage1(nn.Module):
    r"""Stage 1 loss: ‖x − Ψ(z)‖² + β KL(N(μ, s²) ‖ N(0, I)), summed over dims, batch mean."""

    def __init__(self, net: TwoStageVAE, beta: float):
        super().__init__()
        self.encoder, self.decoder, self.beta = net.encoder, net.decoder, beta

    def forward(self, x: Tensor) -> Tensor:
        mu, logvar = _encode(self.encoder, x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = (self.decoder(z) - x).square().sum(-1)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
        return (rec + self.beta * kl).mean()


class _Stage2(nn.Module):
    r"""Stage 2 loss: ‖f(y) − z‖², z a fresh draw of the frozen encoder (not its mean)."""

    def __init__(self, net: TwoStageVAE):
        super().__init__()
        self.regressor = net.regressor
        self._frozen = [net.encoder]  # not a submodule: stays out of the optimiser and the EMA

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        with torch.no_grad():
            mu, logvar = _encode(self._frozen[0], x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return (self.regressor(c) - z).square().sum(-1).mean()


class VAEPosterior(AmortizedPosterior):
    r"""A trained two-stage conditional VAE. Sampling option ``spread`` (λ, default 1)
    scales the latent spread around f(y); ``spread=0`` returns the reconstruction.
    It has no density."""

    method = "vae"

    def _sample(self, c: Tensor, n: int, generator: torch.Generator | None, *, spread: float = 1.0, **options) -> tuple[Tensor, dict]:
        if options:
            raise ProblemError(f"method 'vae' has no sampling option(s) {sorted(options)}; it has 'spread'")
        if spread < 0:
            raise ProblemError(f"spread must be non-negative, got {spread}")
        z0 = self.net.regress(c)  # (B, k)
        eps = torch.randn((c.shape[0], n, z0.shape[-1]), generator=generator, device=c.device)
        z = z0.unsqueeze(1) + spread * self.net.z_spread * eps
        return self.net.decoder(z), {"spread": float(spread)}

    @torch.no_grad()
    def reconstruct(self, y: Any) -> dict[str, Tensor]:
        r"""The point reconstruction Ψ(f(y)) of every target site, ``(*shape)`` (or ``(*B, *shape)``)."""
        values = self.sample(y, 1, seed=0, spread=0.0)
        return {k: v.squeeze(-len(s) - 1) for (k, v), s in zip(values.items(), self.target.shapes)}

    def log_prob(self, values: Mapping[str, Any], y: Any) -> Tensor:
        raise ProblemError(
            "method 'vae' has no density (its draws are decoded latent perturbations), so it cannot be scored"
            " or used as an importance-sampling proposal; use method='flow' for a proposal"
        )

    def sample_and_log_prob(self, y: Any, n: int) -> tuple[dict[str, Tensor], Tensor]:
        return self.log_prob({}, y)

    @classmethod
    def build_net(cls, config: Mapping[str, Any]) -> nn.Module:
        arch = dict(config["architecture"])
        cond = config.get("condition_layout")
        return TwoStageVAE(**arch, condition=Layout.from_json(cond) if cond else None)


@register_method("vae", amortized=True, loader=VAEPosterior.from_saved)
def vae(
    problem: Problem,
    *,
    target: tuple[str, ...],
    seed: int | None = 0,
    progress: bool | None = None,
    num_simulations: int | None = None,
    data: Any = None,
    latent_dim: int | None = None,
    hidden: Sequence[int] = (128, 128),
    regressor_hidden: Sequence[int] = (128, 128),
    embedding: str | None = None,
    embed_dim: int = 32,
    beta: float = 0.1,
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
) -> VAEPosterior:
    r"""Fits the two-stage conditional VAE (stage 1: VAE on targets; stage 2: f(y) → z).

    Arguments:
        problem: The traced problem.
        target: The target sites.
        seed: Seed of the simulations, the initial weights and the training.
        progress: Show progress bars.
        num_simulations: Simulate this many joint draws (or give ``data=``).
        data: A dataset from :func:`bayesinv.simulate`, its zarr path, or a dict of arrays.
        latent_dim: The latent size k (default ``min(D, 32)``).
        hidden: Encoder hidden sizes (the decoder mirrors them).
        regressor_hidden: Hidden sizes of the regression network f.
        embedding: ``None``, ``"mlp"`` or ``"cnn"``: an embedding of y inside f.
        embed_dim: The embedding size.
        beta: Weight of the KL term of stage 1. With the squared error as reconstruction
            term this is a Gaussian decoder of variance β/2 in normalised units: β = 1
            (the textbook VAE) shrinks low-dimensional targets strongly towards their
            mean; the default 0.1 keeps the reconstruction close to the target.
        normalization: ``"standard"`` (default), ``"minmax"`` or ``"none"``.
        transforms: Site → ``"log"``/``"log10"`` transform of the target.
        batch_size, max_epochs, max_steps, lr, patience, ema_decay: Settings of each
            stage's training (EMA weights are kept).
        train_options: Further :class:`bayesinv.training.TrainConfig` fields.
        checkpoint: Path prefix of training checkpoints (``.stage1``, ``.stage2``);
            ``resume=True`` continues from them.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        A :class:`VAEPosterior`.
    """
    t0 = time.perf_counter()
    prep = prepare(
        problem, target, num_simulations=num_simulations, data=data, seed=seed, progress=progress,
        normalization=normalization, transforms=transforms,
    )  # fmt: skip
    t_layout, c_layout = prep["target"], prep["condition"]
    k = int(latent_dim) if latent_dim is not None else min(t_layout.dim, 32)
    arch = dict(
        x_dim=t_layout.dim, c_dim=c_layout.dim, latent_dim=k, hidden=[int(h) for h in hidden],
        regressor_hidden=[int(h) for h in regressor_hidden], embedding=embedding, embed_dim=int(embed_dim),
    )  # fmt: skip
    config = {"architecture": arch, "condition_layout": c_layout.to_json(), "beta": float(beta), "normalization": normalization}
    dev = resolve_device(device)
    s = 0 if seed is None else int(seed)
    cfg = train_config(
        s, progress, dev, train_options, batch_size=batch_size, max_epochs=max_epochs, max_steps=max_steps, lr=lr,
        patience=patience, ema_decay=ema_decay,
    )  # fmt: skip
    ckpt = (None, None) if checkpoint is None else (f"{checkpoint}.stage1", f"{checkpoint}.stage2")
    x, c = prep["x"], prep["c"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s)
        net = VAEPosterior.build_net(config)
        # stage 1: the VAE on targets alone
        stage1 = train(lambda m, xb: m(xb), _Stage1(net, float(beta)), (x,), config=cfg, checkpoint_path=ckpt[0], resume=resume)
        _Stage1(net, float(beta)).load_state_dict((stage1.model if stage1.ema_model is None else stage1.ema_model).state_dict())
        net.encoder.requires_grad_(False)
        # stage 2: f(y) regressed onto sampled latent codes of the frozen encoder
        stage2 = train(lambda m, xb, cb: m(xb, cb), _Stage2(net), (x, c), config=cfg, checkpoint_path=ckpt[1], resume=resume)
        net.regressor.load_state_dict((stage2.model if stage2.ema_model is None else stage2.ema_model).regressor.state_dict())
        net.requires_grad_(True)
        # the latent spread: RMS of the residuals z − f(y) on the pairs held out by stage 2
        n_val = max(1, int(round(len(x) * cfg.val_fraction)))
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[:n_val]
        with torch.no_grad():
            net.to(dev)
            xv, cv = x[perm].to(dev), c[perm].to(dev)
            resid = net.encode_sample(xv) - net.regress(cv)
            net.z_spread.copy_(resid.square().mean(0).sqrt())
    info = {
        "num_simulations": prep["num_simulations"],
        "fit_time_s": time.perf_counter() - t0,
        "train_time_s": stage1.wall_time + stage2.wall_time,
        "steps": [stage1.steps, stage2.steps],
        "best_val_loss": [stage1.best_val, stage2.best_val],
        "latent_spread": net.z_spread.cpu().tolist(),
    }
    return VAEPosterior(
        net, target=t_layout, condition=c_layout, x_norm=prep["x_norm"], c_norm=prep["c_norm"],
        transforms=transforms, observed=prep["observed"], obs_keys=prep["obs_keys"], config=config, info=info,
        device=dev,
    )  # fmt: skip
