r"""Differentiable Gaussianization layers: whitening, Yeo–Johnson, Lambert W × F_X, standardization.

The layers of "Differentiable Gaussianization layers for inverse problems regularized by
deep generative models" (papers/gaussianization-layers.md): a latent tensor of a
generative prior is *reparameterised* as :math:`z = \Gamma(v)`, where :math:`\Gamma` maps
whatever :math:`v` an inversion produces back onto a standard Gaussian-looking tensor, so
that the generator :math:`G(z)` only sees in-distribution latents. Each row of an input
``(*, D)`` is one latent tensor whose D entries are treated as a sample (i.i.d. scalars for
Yeo–Johnson, Lambert W and standardization; ``D / block`` vectors of ``block`` entries for
whitening). The layers are *data dependent*: their parameters are fitted to the row they
transform, inside the forward pass, by solving an optimisation problem, and gradients flow
through the fitted parameters by the implicit function theorem
(:math:`\partial \theta^* / \partial x = -H^{-1} \partial_x \nabla_\theta L`).

- :class:`Whitening`: ZCA whitening :math:`W = \hat\Sigma^{-1/2}` of the ``block``-vectors
  (closed form; the gradient goes through ``eigh``): removes correlation between entries.
- :class:`YeoJohnson` (Yeo & Johnson, 2000): :math:`\psi(\lambda, x)` with :math:`\lambda`
  maximising the profile log-likelihood
  :math:`-\tfrac{D}{2}\log\hat\sigma^2_\psi + (\lambda-1)\sum_i \operatorname{sign}(x_i)\log(1+|x_i|)`
  (as :func:`scipy.stats.yeojohnson`): removes skewness.
- :class:`LambertW` (Goerg, 2015, heavy-tailed Lambert W × Gaussian): the data are modelled
  as :math:`x = \mu + \sigma\,u\,e^{\delta u^2/2}`, :math:`u \sim N(0, 1)`, with
  :math:`(\mu, \sigma, \delta \ge 0)` by maximum likelihood; the layer returns the
  Gaussianized :math:`\mu + \sigma\,W_\delta((x-\mu)/\sigma)`,
  :math:`W_\delta(z) = \operatorname{sign}(z)\sqrt{W_0(\delta z^2)/\delta}`: removes heavy tails.
- :class:`Standardization`: :math:`(x - \bar x) / \hat\sigma` (closed form).
- :class:`Gaussianization`: the composition (Yeo–Johnson, Lambert W, whitening,
  standardization by default; the order is this module's choice, see the class).

The extracted paper text holds only its abstract and introduction; the definitions above
are those of the cited transforms (Yeo–Johnson's power family and its likelihood, Goerg's
heavy-tail Lambert W family and its likelihood), and the parameters are fitted per latent
tensor by maximum likelihood, as the paper's "custom operators defined by solving
optimization problems".

Every layer has ``fit(x) -> params`` (differentiable in ``x``), ``transform(x, params)``,
``inverse(y, params)`` and ``log_abs_det(x, params)`` (log |det ∂y/∂x| per row at fixed
parameters); ``forward(x)`` is ``transform(x, fit(x))``.

Example:
    >>> x = torch.distributions.Gamma(2.0, 1.0).sample((1, 4096)).double()
    >>> z = Gaussianization(("yeojohnson", "standardize"))(x)
    >>> float(z.mean()), float(z.std())        # ≈ 0, 1, and ≈ symmetric
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from bayesinv.errors import OptionError, ProblemError

__all__ = [
    "lambertw",
    "yeo_johnson",
    "yeo_johnson_inverse",
    "Whitening",
    "YeoJohnson",
    "LambertW",
    "Standardization",
    "Gaussianization",
    "LAYERS",
]


# -- the Lambert W function (principal branch) -------------------------------------------


class _LambertW0(torch.autograd.Function):
    r"""W₀(a) for a ≥ −1/e by Halley's iteration; dW/da = e^{−W} / (1 + W), differentiable again."""

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:
        with torch.no_grad():
            a64 = a.double()
            w = torch.where(a64 < 1.0, a64 / (1.0 + a64).clamp_min(1e-3), torch.log1p(a64))
            big = a64 > 3.0
            la = torch.log(a64.clamp_min(3.0))
            w = torch.where(big, la - torch.log(la), w)
            near = a64 < -0.3  # near the branch point −1/e: the series in p = sqrt(2(e a + 1))
            p = torch.sqrt((2.0 * (math.e * a64 + 1.0)).clamp_min(0.0))
            w = torch.where(near, -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p**3, w)
            for _ in range(60):
                ew = torch.exp(w)
                f = w * ew - a64
                wp1 = w + 1.0
                denom = ew * wp1 - (w + 2.0) * f / (2.0 * wp1).where(wp1.abs() > 1e-12, torch.full_like(wp1, 1e-12))
                step = f / denom.where(denom != 0, torch.ones_like(denom))
                step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
                w = w - step
                if bool((step.abs() <= 1e-15 * (1.0 + w.abs())).all()):
                    break
            w = torch.where(a64 == 0, torch.zeros_like(w), w).to(a.dtype)
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * torch.exp(-w) / (1.0 + w)


def lambertw(a: Tensor) -> Tensor:
    r"""The principal branch :math:`W_0(a)` of the Lambert W function (:math:`W e^W = a`), for real ``a ≥ −1/e``.

    Differentiable (to any order) with :math:`W'(a) = e^{-W}/(1 + W)`; agrees with
    :func:`scipy.special.lambertw` (``k=0``, real part) to double precision.

    Arguments:
        a: Real tensor, entries ``>= -1/e``.

    Returns:
        :math:`W_0(a)`, same shape and dtype.
    """
    if not torch.is_floating_point(a):
        a = a.double()
    if bool((a < -1.0 / math.e - 1e-12).any()):
        raise ProblemError(f"lambertw: the principal branch is real for a >= -1/e only; got min(a) = {float(a.min())}")
    return _LambertW0.apply(a.clamp_min(-1.0 / math.e))


# -- the Yeo–Johnson transform -------------------------------------------------------------


def _safe(lmbda: Tensor, at: float) -> tuple[Tensor, Tensor]:
    near = (lmbda - at).abs() < 1e-10
    return near, torch.where(near, torch.full_like(lmbda, at + 1.0), lmbda)


def yeo_johnson(x: Tensor, lmbda: Tensor) -> Tensor:
    r"""The Yeo–Johnson transform :math:`\psi(\lambda, x)` (``lmbda`` broadcast against ``x``).

    :math:`((1+x)^\lambda - 1)/\lambda` for :math:`x \ge 0` (:math:`\log(1+x)` at λ = 0),
    :math:`-((1-x)^{2-\lambda} - 1)/(2-\lambda)` for :math:`x < 0` (:math:`-\log(1-x)` at λ = 2);
    the same values as ``scipy.stats.yeojohnson(x, lmbda)``.
    """
    lmbda = torch.as_tensor(lmbda, dtype=x.dtype, device=x.device)
    pos = x >= 0
    xp, xn = torch.where(pos, x, torch.zeros_like(x)), torch.where(pos, torch.zeros_like(x), -x)
    n0, l0 = _safe(lmbda, 0.0)
    n2, l2 = _safe(2.0 - lmbda, 0.0)
    yp = torch.where(n0, torch.log1p(xp), torch.expm1(l0 * torch.log1p(xp)) / l0)
    yn = -torch.where(n2, torch.log1p(xn), torch.expm1(l2 * torch.log1p(xn)) / l2)
    return torch.where(pos, yp, yn)


def yeo_johnson_inverse(y: Tensor, lmbda: Tensor) -> Tensor:
    r"""The inverse of :func:`yeo_johnson` in ``x`` (``y ≥ 0`` comes from ``x ≥ 0``)."""
    lmbda = torch.as_tensor(lmbda, dtype=y.dtype, device=y.device)
    pos = y >= 0
    yp, yn = torch.where(pos, y, torch.zeros_like(y)), torch.where(pos, torch.zeros_like(y), -y)
    n0, l0 = _safe(lmbda, 0.0)
    n2, l2 = _safe(2.0 - lmbda, 0.0)
    xp = torch.where(n0, torch.expm1(yp), torch.expm1(torch.log1p(l0 * yp) / l0))
    xn = -torch.where(n2, torch.expm1(yn), torch.expm1(torch.log1p(l2 * yn) / l2))
    return torch.where(pos, xp, xn)


# -- fitting by maximum likelihood with implicit gradients --------------------------------------


def _grad_hess(objective: Callable, theta: Tensor, x: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
    r"""Row-wise value ``(R,)``, gradient ``(R, P)`` and Hessian ``(R, P, P)`` of ``objective`` in ``theta``."""
    value = objective(theta, x)
    (g,) = torch.autograd.grad(value.sum(), theta, create_graph=True)
    rows = [torch.autograd.grad(g[:, k].sum(), theta, retain_graph=True, create_graph=create_graph)[0] for k in range(theta.shape[1])]
    return value, g, torch.stack(rows, 1)


def _maximise(objective: Callable, theta0: Tensor, x: Tensor, lower: Tensor, *, max_iter: int = 100, tol: float = 1e-10) -> Tensor:
    r"""Row-wise maximiser of ``objective(theta (R, P), x (R, D)) -> (R,)`` subject to ``theta >= lower``:
    damped Newton (the negative Hessian shifted to be positive definite where it is not), with backtracking.
    A row stops when its gradient is below ``tol``, its step is negligible, or no step improves it."""
    theta, x = theta0.detach().clone(), x.detach()
    active = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
    eye = torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
    with torch.enable_grad():
        for _ in range(max_iter):
            idx = active.nonzero().squeeze(-1)
            if idx.numel() == 0:
                break
            th0, xa, lo = theta[idx], x[idx], lower[idx]
            th = th0.clone().requires_grad_(True)
            value, g, h = (t.detach() for t in _grad_hess(objective, th, xa, create_graph=False))
            at_bound = (th0 <= lo) & (g < 0)
            g = torch.where(at_bound, torch.zeros_like(g), g)
            m = torch.where(at_bound.unsqueeze(-1) | at_bound.unsqueeze(-2), eye, -h)
            m = torch.where(torch.isfinite(m), m, eye)
            evals = torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2)))
            shift = (1e-8 * evals.abs().max(-1).values + 1e-12 - evals.min(-1).values).clamp_min(0)
            step = torch.linalg.solve(m + shift[:, None, None] * eye, g.unsqueeze(-1)).squeeze(-1)
            conv = g.abs().max(-1).values < tol
            t = torch.ones(len(idx), 1, dtype=theta.dtype, device=theta.device)
            accepted = conv.clone()
            new = th0.clone()
            for _ in range(30):
                cand = torch.maximum(th0 + t * step, lo)
                with torch.no_grad():
                    v = objective(cand, xa)
                ok = ~accepted & torch.isfinite(v) & (v > value)
                new = torch.where(ok.unsqueeze(-1), cand, new)
                accepted = accepted | ok
                if bool(accepted.all()):
                    break
                t = torch.where(accepted.unsqueeze(-1), t, t / 2)
            tiny = ((new - th0).abs() <= 1e-13 * (1.0 + th0.abs())).all(-1)
            theta[idx] = new
            active[idx[conv | ~accepted | tiny]] = False
    return theta


def _attach(objective: Callable, theta: Tensor, x: Tensor, lower: Tensor) -> Tensor:
    r"""The fitted ``theta`` with the implicit-function gradient in ``x``: θ* − H⁻¹ ∇_θ L(θ*, x) (value θ*)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return theta.detach()
    th = theta.detach().requires_grad_(True)
    value, g, h = _grad_hess(objective, th, x, create_graph=False)
    at_bound = (theta.detach() <= lower) & (g.detach() < 0)
    g = torch.where(at_bound, torch.zeros_like(g), g)
    eye = torch.eye(theta.shape[1], dtype=theta.dtype, device=theta.device)
    h = torch.where(at_bound.unsqueeze(-1) | at_bound.unsqueeze(-2), -eye, h.detach())
    correction = torch.linalg.solve(h, g.unsqueeze(-1)).squeeze(-1)
    return theta.detach() - correction  # ∇θ L(θ*) = 0: same value, gradient −H⁻¹ ∂x∇θ L


def _rows(x: Tensor, name: str, minimum: int = 3) -> tuple[Tensor, torch.Size]:
    if not torch.is_floating_point(x):
        raise ProblemError(f"{name}: the input must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] < minimum:
        raise ProblemError(f"{name}: the input must have shape (*, D) with D >= {minimum} entries per latent tensor, got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1]), x.shape


class _Layer(nn.Module):
    r"""A data-dependent layer: parameters fitted per row in ``fit``, then a transform at fixed parameters."""

    def fit(self, x: Tensor, start: tuple[Tensor, ...] | None = None) -> tuple[Tensor, ...]:  # pragma: no cover - abstract
        r"""The parameters of each row (``start``: a warm start for iterative fits, ignored by closed forms)."""
        raise NotImplementedError

    def transform(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor, params: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_abs_det(self, x: Tensor, params: tuple[Tensor, ...]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        r"""``transform(x, fit(x))``: the row-wise Gaussianized input ``(*, D)``."""
        return self.transform(x, self.fit(x))


class Standardization(_Layer):
    r"""Row-wise :math:`(x - \bar x)/\hat\sigma` (``hat σ`` with divisor D); parameters ``(mean (R,), std (R,))``."""

    def fit(self, x: Tensor, start: tuple[Tensor, ...] | None = None) -> tuple[Tensor, Tensor]:
        r"""Row means and standard deviations ``(R,)`` of ``x`` ``(*, D)``."""
        rows, _ = _rows(x, "Standardization", 2)
        mean = rows.mean(-1)
        std = (rows - mean.unsqueeze(-1)).square().mean(-1).sqrt()
        if bool((std <= 0).any()):
            raise ProblemError("Standardization: a latent tensor with all entries equal cannot be standardized")
        return mean, std

    def transform(self, x: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        rows, shape = _rows(x, "Standardization", 2)
        mean, std = params
        return ((rows - mean.unsqueeze(-1)) / std.unsqueeze(-1)).reshape(shape)

    def inverse(self, y: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        rows, shape = _rows(y, "Standardization", 2)
        mean, std = params
        return (rows * std.unsqueeze(-1) + mean.unsqueeze(-1)).reshape(shape)

    def log_abs_det(self, x: Tensor, params: tuple[Tensor, Tensor]) -> Tensor:
        return -x.shape[-1] * torch.log(params[1])


class Whitening(_Layer):
    r"""ZCA whitening of the ``D / block`` consecutive ``block``-vectors of each row.

    A row ``(D,)`` is read as ``m = D / block`` samples of a ``block``-vector; with their mean
    :math:`\mu` and covariance :math:`\hat\Sigma = U \Lambda U^T` (divisor m), the output is
    :math:`(v - \mu)\, W`, :math:`W = U (\Lambda + \epsilon)^{-1/2} U^T` — the whitening closest
    to the identity, so a latent that is already white stays almost unchanged. Parameters
    ``(mean (R, block), W (R, block, block), W⁻¹)``.

    Arguments:
        block: Entries per vector (``D`` must be a multiple, with ``D / block > block``).
        eps: Added to the eigenvalues.
    """

    def __init__(self, block: int = 4, eps: float = 1e-8):
        super().__init__()
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise OptionError(f"Whitening: block={block!r} must be an integer >= 1")
        self.block, self.eps = block, float(eps)

    def _split(self, x: Tensor) -> tuple[Tensor, torch.Size]:
        rows, shape = _rows(x, "Whitening", 2)
        d, k = rows.shape[-1], self.block
        if d % k or d // k <= k:
            raise ProblemError(f"Whitening: D={d} entries per latent tensor must be a multiple of block={k} with D/block > block")
        return rows.reshape(rows.shape[0], d // k, k), shape

    def fit(self, x: Tensor, start: tuple[Tensor, ...] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""Block means ``(R, block)``, W and W⁻¹ ``(R, block, block)`` of each row of ``x`` ``(*, D)``."""
        v, _ = self._split(x)
        mean = v.mean(1)
        c = v - mean.unsqueeze(1)
        cov = c.transpose(1, 2) @ c / v.shape[1]
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + self.eps
        w = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(1, 2)
        w_inv = evecs @ torch.diag_embed(evals.sqrt()) @ evecs.transpose(1, 2)
        return mean, w, w_inv

    def transform(self, x: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        v, shape = self._split(x)
        mean, w, _ = params
        return ((v - mean.unsqueeze(1)) @ w).reshape(shape)

    def inverse(self, y: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        v, shape = self._split(y)
        mean, _, w_inv = params
        return (v @ w_inv + mean.unsqueeze(1)).reshape(shape)

    def log_abs_det(self, x: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        return (x.shape[-1] // self.block) * torch.linalg.slogdet(params[1])[1]


def _yj_loglik(theta: Tensor, x: Tensor) -> Tensor:
    r"""Mean profile log-likelihood of Yeo–Johnson λ = theta[:, 0] for rows ``x`` (scipy's ``yeojohnson_llf`` / D)."""
    lmbda = theta[:, :1]
    y = yeo_johnson(x, lmbda)
    var = (y - y.mean(-1, keepdim=True)).square().mean(-1)
    return -0.5 * torch.log(var) + (lmbda[:, 0] - 1.0) * (torch.sign(x) * torch.log1p(x.abs())).mean(-1)


class YeoJohnson(_Layer):
    r"""The Yeo–Johnson transform with λ fitted per row by maximum likelihood; parameters ``(lmbda (R,),)``.

    λ maximises :math:`-\tfrac12\log\hat\sigma^2_{\psi(\lambda,x)} + (\lambda - 1)\,\overline{\operatorname{sign}(x)\log(1+|x|)}`
    (the likelihood of ``scipy.stats.yeojohnson``), found by Newton's method in double
    precision; its gradient in ``x`` is the implicit-function one.
    """

    def fit(self, x: Tensor, start: tuple[Tensor] | None = None) -> tuple[Tensor]:
        r"""λ ``(R,)`` of each row of ``x`` ``(*, D)`` (Newton from ``start``, e.g. the previous step's λ, or from 1)."""
        rows, _ = _rows(x, "YeoJohnson")
        r64 = rows.double()
        lower = torch.full((rows.shape[0], 1), -math.inf, dtype=torch.float64, device=rows.device)
        theta0 = torch.ones(rows.shape[0], 1, dtype=torch.float64, device=rows.device) if start is None else start[0].detach().double().reshape(-1, 1)
        theta = _maximise(_yj_loglik, theta0, r64, lower)
        theta = _attach(_yj_loglik, theta, r64, lower)
        return (theta[:, 0].to(rows.dtype),)

    def transform(self, x: Tensor, params: tuple[Tensor]) -> Tensor:
        rows, shape = _rows(x, "YeoJohnson")
        return yeo_johnson(rows, params[0].unsqueeze(-1)).reshape(shape)

    def inverse(self, y: Tensor, params: tuple[Tensor]) -> Tensor:
        rows, shape = _rows(y, "YeoJohnson")
        return yeo_johnson_inverse(rows, params[0].unsqueeze(-1)).reshape(shape)

    def log_abs_det(self, x: Tensor, params: tuple[Tensor]) -> Tensor:
        rows, _ = _rows(x, "YeoJohnson")
        return ((params[0].unsqueeze(-1) - 1.0) * torch.sign(rows) * torch.log1p(rows.abs())).sum(-1)


def _w_delta(z: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    r"""``W_δ(z)`` and ``W₀(δ z²)`` (δ broadcast); ``W_δ(z) = z`` at δ = 0."""
    small = delta <= 1e-300
    d = torch.where(small, torch.ones_like(delta), delta)
    w = lambertw(delta * z * z)
    u2 = torch.where(small, z * z, w / d)
    return torch.sign(z) * torch.sqrt(u2), w


def _lw_loglik(theta: Tensor, x: Tensor) -> Tensor:
    r"""Mean log-likelihood of the heavy-tailed Lambert W × Gaussian with θ = (μ, log σ, δ) for rows ``x``."""
    mu, log_sigma, delta = theta[:, :1], theta[:, 1:2], theta[:, 2:3]
    z = (x - mu) * torch.exp(-log_sigma)
    small = delta <= 1e-300
    w = lambertw(delta * z * z)
    u2 = torch.where(small, z * z, w / torch.where(small, torch.ones_like(delta), delta))
    lp = -0.5 * math.log(2 * math.pi) - log_sigma - 0.5 * u2 - 0.5 * w - torch.log1p(w)
    return lp.mean(-1)


class LambertW(_Layer):
    r"""Goerg's heavy-tail Lambert W × F_X layer with F_X Gaussian; parameters ``(mu, sigma, delta)`` each ``(R,)``.

    Each row is modelled as :math:`x = \mu + \sigma\, u\, e^{\delta u^2 / 2}` with
    :math:`u \sim N(0, 1)` i.i.d. and :math:`\delta \ge 0` (tail heaviness); the parameters
    maximise the log-likelihood

    .. math:: \ell = \sum_i \log\varphi(W_\delta(z_i)) - \log\sigma - \tfrac12 W_0(\delta z_i^2) - \log(1 + W_0(\delta z_i^2)),
              \quad z_i = (x_i - \mu)/\sigma,

    (Newton's method from a quantile-matching start, in double precision) and the output
    is :math:`\mu + \sigma\, W_\delta((x - \mu)/\sigma)`: the same location and scale, Gaussian
    tails. A light-tailed row has δ = 0 (the layer is then the identity).
    """

    def fit(self, x: Tensor, start: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(mu, sigma, delta)`` ``(R,)`` of each row of ``x`` ``(*, D)`` (Newton from ``start``, e.g. the
        previous step's parameters, or from a quantile-matching estimate)."""
        rows, _ = _rows(x, "LambertW")
        r64 = rows.double()
        mu0 = r64.median(-1).values
        dev = (r64 - mu0.unsqueeze(-1)).abs()
        mad = dev.median(-1).values.clamp_min(1e-12)
        q95 = torch.quantile(dev, 0.95, dim=-1)
        # quantile matching: |x − μ| has quantiles σ q exp(δ q²/2) at the N(0, 1) quantiles q = 0.6745 (50 %), 1.96 (95 %)
        delta0 = (2.0 * torch.log(q95 / mad * 0.6745 / 1.96) / (1.96**2 - 0.6745**2)).clamp(0.0, 2.0)
        sigma0 = mad / (0.6745 * torch.exp(delta0 * 0.6745**2 / 2))
        theta0 = torch.stack([mu0, torch.log(sigma0), delta0], -1)
        if start is not None:
            theta0 = torch.stack([start[0].detach().double(), torch.log(start[1].detach().double()), start[2].detach().double()], -1)
        lower = torch.tensor([-math.inf, -math.inf, 0.0], dtype=torch.float64, device=rows.device).expand_as(theta0)
        theta = _maximise(_lw_loglik, theta0, r64, lower)
        theta = _attach(_lw_loglik, theta, r64, lower)
        theta = theta.to(rows.dtype)
        return theta[:, 0], torch.exp(theta[:, 1]), theta[:, 2]

    def transform(self, x: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        rows, shape = _rows(x, "LambertW")
        mu, sigma, delta = (p.unsqueeze(-1) for p in params)
        u, _ = _w_delta((rows - mu) / sigma, delta)
        return (mu + sigma * u).reshape(shape)

    def inverse(self, y: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        rows, shape = _rows(y, "LambertW")
        mu, sigma, delta = (p.unsqueeze(-1) for p in params)
        u = (rows - mu) / sigma
        return (mu + sigma * u * torch.exp(0.5 * delta * u * u)).reshape(shape)

    def log_abs_det(self, x: Tensor, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        rows, _ = _rows(x, "LambertW")
        mu, sigma, delta = (p.unsqueeze(-1) for p in params)
        _, w = _w_delta((rows - mu) / sigma, delta)
        return (-0.5 * w - torch.log1p(w)).sum(-1)  # dW_δ/dz = e^{−W/2} / (1 + W)


#: The layer names of :class:`Gaussianization`.
LAYERS = ("yeojohnson", "lambertw", "whiten", "standardize")


class Gaussianization(nn.Module):
    r"""A composition of Gaussianization layers, applied in the order given.

    Arguments:
        layers: Names from :data:`LAYERS` (default: all four, in that order: remove skewness,
            remove heavy tails — both monotone entry by entry, so the dependence between entries is
            kept —, then decorrelate the now Gaussian-looking entries, then standardize; Yeo–Johnson
            before whitening, since centring first would change what it sees: it treats x ≥ 0 and
            x < 0 differently).
        block: The whitening block size.

    Example:
        >>> g = Gaussianization()
        >>> z, params = g.forward_with_params(v)      # v: (R, D)
        >>> torch.allclose(g.inverse(z, params), v)
        True
    """

    def __init__(self, layers: Sequence[str] = LAYERS, block: int = 4):
        super().__init__()
        layers = tuple(layers)
        bad = [n for n in layers if n not in LAYERS]
        if bad or not layers:
            raise OptionError(f"Gaussianization: unknown layer(s) {bad or '(none given)'}; use names from {list(LAYERS)}")
        make = {"whiten": lambda: Whitening(block), "lambertw": LambertW, "yeojohnson": YeoJohnson, "standardize": Standardization}
        self.names = layers
        self.layers = nn.ModuleList(make[n]() for n in layers)

    def forward_with_params(self, x: Tensor, start: Sequence[tuple[Tensor, ...]] | None = None) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        r"""The output ``(*, D)`` and the fitted parameters of every layer (``start``: the parameters of a
        previous call, a warm start for the iterative fits of an input that changed little)."""
        params = []
        for i, layer in enumerate(self.layers):
            p = layer.fit(x, None if start is None else start[i])
            params.append(p)
            x = layer.transform(x, p)
        return x, params

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_params(x)[0]

    def inverse(self, y: Tensor, params: Sequence[tuple[Tensor, ...]]) -> Tensor:
        r"""The input of :meth:`forward_with_params` from its output and parameters."""
        for layer, p in zip(reversed(self.layers), reversed(list(params))):
            y = layer.inverse(y, p)
        return y

    def log_abs_det(self, x: Tensor, params: Sequence[tuple[Tensor, ...]]) -> Tensor:
        r"""log |det ∂y/∂x| per row at the fixed parameters ``params``."""
        total = x.new_zeros(x.reshape(-1, x.shape[-1]).shape[0])
        for layer, p in zip(self.layers, params):
            total = total + layer.log_abs_det(x, p)
            x = layer.transform(x, p)
        return total

    def extra_repr(self) -> str:
        return f"layers={list(self.names)}"
