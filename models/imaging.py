r"""Linear imaging problems for learned priors: sparse-view CT and accelerated MRI.

Both are the measurement of eq. 42 of the generative-models overview,
:math:`y = P(\Lambda) M x + \varepsilon`, with a differentiable torch forward operator and a
prior of phantoms drawn locally (nothing is downloaded):

- **Prior** (:func:`ellipse_phantom`): ``num_ellipses`` soft-edged ellipses of random
  centre, semi-axes, orientation and intensity inside the reconstruction circle (latent
  sites ``centers``, ``axes``, ``angles``, ``values``), optionally modulated by a smooth
  random texture (``texture``); the image is the deterministic site ``x`` (size × size).
- :class:`SparseViewCT`: :math:`M` the parallel-beam Radon transform over ``full_views``
  angles in [0°, 180°) — a dense torch matrix built once, equal to scikit-image's
  ``radon(x, theta, circle=True)`` (bilinear sampling along every ray) — and
  :math:`\Lambda` the ``views`` angles measured, evenly spread; baseline: filtered
  back-projection (scikit-image's ``iradon``, ramp filter). ``y`` has shape (views, size).
- :class:`AcceleratedMRI`: :math:`M` the orthonormal 2-D FFT (real and imaginary parts
  stacked, shape (2, size, size)), :math:`\Lambda` a Cartesian mask of phase-encoding
  lines — the central ``center_fraction`` and random others, ``size / acceleration`` lines
  in all; baseline: the zero-filled inverse FFT. ``y`` has shape (2, size, lines).

Each problem gives the Pyro :meth:`model`, its :attr:`operator` (a
:class:`~bayesinv.methods.score_prior.LinearOperator` ``(forward, adjoint, mask)`` for the
data-consistency step; the adjoint is a left inverse: a regularised pseudo-inverse of the
full-view Radon matrix, the inverse FFT), the classical :meth:`baseline`, the total-variation
reconstruction :meth:`tv` (with :func:`choose_tv_weight`) and :meth:`draw`.
Problems with other operators or noise levels share the prior, so one trained
``score_prior`` serves all of them (``post.attach(other.model)``).

Example:
    >>> ct = SparseViewCT(size=32, views=16)
    >>> x, y = ct.draw(seed=0)
    >>> fbp = ct.baseline(y)
    >>> post = bayesinv.fit(ct.model, method="score_prior", target="x", num_simulations=20_000)
    >>> post.attach(SparseViewCT(size=32, views=8).model)        # another operator, same prior
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from bayesinv.methods.score_prior import LinearOperator

__all__ = ["ellipse_phantom", "radon_matrix", "SparseViewCT", "AcceleratedMRI", "psnr_ssim", "choose_tv_weight"]


def _check(name: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def ellipse_phantom(size: int, num_ellipses: int = 5, *, edge: float = 0.08, texture: bool = False) -> torch.Tensor:
    r"""Draws (inside a Pyro model) a phantom of soft ellipses and records it as the deterministic site ``x``.

    Arguments:
        size: Image side in pixels.
        num_ellipses: Ellipses per image.
        edge: Width of the soft edge (in units of an ellipse's radius).
        texture: Multiply the object by ``1 + 0.15 tanh(t)``, t a smooth random field of
            4 × 4 random cosine modes (latent site ``texture``).

    Returns:
        The image ``(*, size, size)`` (zero outside the inscribed circle of radius size // 2).
    """
    K = num_ellipses
    centers = pyro.sample("centers", dist.Uniform(-0.5, 0.5).expand([K, 2]).to_event(2))
    axes = pyro.sample("axes", dist.Uniform(0.1, 0.4).expand([K, 2]).to_event(2))
    angles = pyro.sample("angles", dist.Uniform(0.0, math.pi).expand([K]).to_event(1))
    values = pyro.sample("values", dist.Uniform(0.2, 1.0).expand([K]).to_event(1))
    u = (torch.arange(size, dtype=torch.float32) - size // 2) / (size / 2)  # pixel centres in [-1, 1)
    row, col = u[:, None], u[None, :]
    dx = col - centers[..., 0, None, None]
    dy = row - centers[..., 1, None, None]
    cos, sin = torch.cos(angles)[..., None, None], torch.sin(angles)[..., None, None]
    r2 = ((cos * dx + sin * dy) / axes[..., 0, None, None]) ** 2 + ((-sin * dx + cos * dy) / axes[..., 1, None, None]) ** 2
    image = (values[..., None, None] * torch.sigmoid((1 - r2) / edge)).sum(-3)
    if texture:
        coef = pyro.sample("texture", dist.Normal(0.0, 1.0).expand([4, 4]).to_event(2))
        freq = torch.arange(4, dtype=torch.float32)
        basis = torch.cos(math.pi * freq[:, None] * (u[None, :] + 1) / 2)  # (4, size) cosine modes
        field = torch.einsum("...ij,ia,jb->...ab", coef, basis, basis) / 4
        image = image * (1 + 0.15 * torch.tanh(field))
    circle = (row * size / 2) ** 2 + (col * size / 2) ** 2 <= (size // 2) ** 2 - 1
    return pyro.deterministic("x", image * circle, event_dim=2)


def radon_matrix(size: int, theta: np.ndarray) -> np.ndarray:
    r"""The Radon transform of scikit-image (``radon(image, theta, circle=True)``) as a matrix.

    Row ``i * size + c`` is detector ``c`` of angle ``theta[i]`` (degrees): the sum over the
    ray's ``size`` sample points of the image bilinearly interpolated (zero outside), as
    scikit-image computes it by rotating the image.

    Arguments:
        size: Image side (detectors per view).
        theta: Angles in degrees, ``(V,)``.

    Returns:
        ``(V * size, size * size)`` float64; ``A @ x.ravel()`` equals ``radon(x, theta).T.ravel()``.
    """
    center = size // 2
    idx = np.arange(size) - center
    s, tau = np.meshgrid(idx, idx, indexing="ij")  # detector c, sample along the ray
    A = np.zeros((len(theta), size, size * size))
    det = np.broadcast_to(np.arange(size)[:, None], s.shape)
    for i, a in enumerate(np.deg2rad(np.asarray(theta, dtype=np.float64))):
        col = center + np.cos(a) * s + np.sin(a) * tau
        row = center - np.sin(a) * s + np.cos(a) * tau
        r0, c0 = np.floor(row).astype(int), np.floor(col).astype(int)
        fr, fc = row - r0, col - c0
        for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size) & (w > 0)
            np.add.at(A[i], (det[ok], rr[ok] * size + cc[ok]), w[ok])
    return A.reshape(len(theta) * size, size * size)


@lru_cache(maxsize=8)
def _ct_matrices(size: int, full_views: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The full-view Radon matrix A and :math:`(A^TA + \epsilon I)^{-1}`, ε = ``ridge`` times the largest
    eigenvalue of AᵀA (built once per size)."""
    import scipy.sparse

    A = radon_matrix(size, np.arange(full_views) * 180.0 / full_views)
    sparse = scipy.sparse.csr_matrix(A)
    w, V = np.linalg.eigh((sparse.T @ sparse).toarray())
    inv = 1.0 / (np.clip(w, 0.0, None) + ridge * w.max())
    return torch.as_tensor(A).float(), torch.as_tensor((V * inv) @ V.T).float()


def psnr_ssim(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    r"""PSNR (dB) and SSIM of ``estimate`` against ``truth`` (scikit-image, data range of the truth)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    truth, estimate = np.asarray(truth, np.float64), np.asarray(estimate, np.float64)
    rng = float(truth.max() - truth.min()) or 1.0
    return float(peak_signal_noise_ratio(truth, estimate, data_range=rng)), float(structural_similarity(truth, estimate, data_range=rng))


class _Imaging:
    size: int
    noise: float
    num_ellipses: int
    texture: bool = False

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""The Pyro model: the phantom prior (deterministic site ``x``) and ``y = P(Λ) M x + ε``."""
        x = ellipse_phantom(self.size, self.num_ellipses, texture=self.texture)
        mean = self.measure(x)
        return pyro.sample("y", dist.Normal(mean, self.noise).to_event(len(self.y_shape)), obs=y)

    __call__ = model

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        r"""The noise-free observation :math:`P(\Lambda) M x` in the shape of ``y``."""
        return self.operator.measure(x).reshape(*x.shape[:-2], *self.y_shape)

    def tv(self, y: np.ndarray, weight: float, *, iters: int = 100) -> np.ndarray:
        r"""The total-variation reconstruction :math:`\arg\min_x \tfrac12 \|P(\Lambda) M x - y\|^2 + w\, \mathrm{TV}(x)`.

        FISTA (Beck and Teboulle 2009) with step :math:`1 / \|P M\|^2`, the proximal map of the
        isotropic TV being scikit-image's Chambolle denoiser (``denoise_tv_chambolle``, whose
        ``weight`` is the prox's parameter: it minimises :math:`\tfrac{1}{2}\|u - v\|^2 + \text{weight}\,\mathrm{TV}(u)`).

        Arguments:
            y: Observation(s) ``(*, *y_shape)``.
            weight: :math:`w > 0`, in units of the data term (choose it with :func:`choose_tv_weight`).
            iters: FISTA iterations (≥ 1).

        Returns:
            The reconstruction(s) ``(*, size, size)`` (float32).
        """
        from skimage.restoration import denoise_tv_chambolle

        _check("weight", weight, isinstance(weight, (int, float)) and float(weight) > 0, "a positive number")
        _check("iters", iters, isinstance(iters, int) and iters >= 1, "an integer >= 1")
        y = np.asarray(y, np.float32)
        if tuple(y.shape[y.ndim - len(self.y_shape):]) != tuple(self.y_shape):
            raise ValueError(f"tv: y has shape {y.shape}; its trailing dimensions must be the observation's {self.y_shape}")
        flat = torch.as_tensor(y.reshape(-1, *self.y_shape))
        step = 1.0 / self._lipschitz
        out = []
        for obs in flat:
            x = z = torch.as_tensor(self.baseline(obs.numpy())).double()  # started from FBP / zero-filled
            t = 1.0
            for _ in range(iters):
                grad = self._adjoint_measure(self.measure(z.float()) - obs).double()
                x_new = torch.as_tensor(denoise_tv_chambolle((z - step * grad).numpy(), weight=step * float(weight)))
                t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
                z = x_new + ((t - 1) / t_new) * (x_new - x)
                x, t = x_new, t_new
            out.append(x.float().numpy())
        return np.stack(out).reshape(*y.shape[: y.ndim - len(self.y_shape)], self.size, self.size)

    def draw(self, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        r"""Ground-truth phantom(s) and their observation(s) (float32): one, or ``n`` stacked."""
        with pyro.poutine.trace() as tr, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with pyro.plate("draws", n or 1, dim=-1):
                ellipse_phantom(self.size, self.num_ellipses, texture=self.texture)
        x = tr.trace.nodes["x"]["value"].detach()
        rng = np.random.default_rng(seed)
        y = self.measure(x).numpy() + self.noise * rng.standard_normal((n or 1, *self.y_shape))
        x, y = x.numpy().astype(np.float32), y.astype(np.float32)
        return (x, y) if n else (x[0], y[0])


class SparseViewCT(_Imaging):
    r"""Sparse-view parallel-beam CT: ``views`` of ``full_views`` angles, y = R_Λ x + ε.

    Arguments:
        size: Image side in pixels (also the detectors per view).
        views: Angles measured (evenly spread over the ``full_views`` angles in [0°, 180°)).
        full_views: The angles of the full measurement M.
        noise: Standard deviation of the Gaussian noise per detector value.
        num_ellipses: Ellipses per phantom.
        texture: Phantoms with a smooth texture (see :func:`ellipse_phantom`).
        ridge: The operator's adjoint is the regularised pseudo-inverse :math:`(A^TA + \epsilon I)^{-1} A^T`
            of the full-view Radon matrix, ε = ``ridge`` × its largest eigenvalue (a fifth of the
            eigenvalues of the 32 × 32, 180-view matrix lie below 1e-3 of the largest: the exact
            pseudo-inverse amplifies a partial-view residual along them).

    Attributes:
        theta: The measured angles in degrees ``(views,)``.
        operator: The :class:`~bayesinv.methods.score_prior.LinearOperator` of eq. 45 as written
            (full-view Radon matrix, its regularised pseudo-inverse, the mask of measured views).
            With few views its step is weak: the zero-filled residual is projected onto the
            range of the full-view transform, which keeps little of it.
        view_operator: The measured views as the whole measurement (M = R_Λ, Λ = I) with the
            regularised right inverse :math:`R_\Lambda^T (R_\Lambda R_\Lambda^T + \epsilon I)^{-1}`:
            the consistency step is then the projection :math:`x + \lambda R_\Lambda^\dagger(\tilde y - R_\Lambda x)`
            onto the measured data (λ = 1), keeping the unmeasured part of x.
    """

    def __init__(self, size: int = 32, views: int = 16, *, full_views: int = 180, noise: float = 0.5, num_ellipses: int = 5,
                 texture: bool = False, ridge: float = 1e-3):  # fmt: skip
        _check("size", size, isinstance(size, int) and 8 <= size <= 128, "an integer in [8, 128]")
        _check("full_views", full_views, isinstance(full_views, int) and full_views >= 2, "an integer >= 2")
        _check("views", views, isinstance(views, int) and 1 <= views <= full_views, f"an integer in [1, full_views={full_views}]")
        _check("noise", noise, float(noise) > 0, "positive")
        self.size, self.views, self.full_views, self.noise, self.num_ellipses = size, views, full_views, float(noise), num_ellipses
        self.texture = bool(texture)
        self.index = np.unique(np.linspace(0, full_views, views, endpoint=False).astype(int))
        self.theta = self.index * 180.0 / full_views
        _check("ridge", ridge, 0 < float(ridge) < 1, "in (0, 1)")
        A, gram_pinv = _ct_matrices(size, full_views, float(ridge))
        mask = torch.zeros(full_views, size, dtype=torch.bool)
        mask[torch.as_tensor(self.index)] = True
        n = size

        def forward(x: torch.Tensor) -> torch.Tensor:
            return (x.reshape(*x.shape[:-2], n * n) @ A.T).reshape(*x.shape[:-2], full_views, n)

        def adjoint(s: torch.Tensor) -> torch.Tensor:
            return (s.reshape(*s.shape[:-2], full_views * n) @ A @ gram_pinv).reshape(*s.shape[:-2], n, n)  # (AᵀA + εI)⁻¹Aᵀ s

        self.operator = LinearOperator(forward, adjoint, mask)
        self._A_sub = A_sub = A.reshape(full_views, n, n * n)[torch.as_tensor(self.index)].reshape(-1, n * n)
        self.y_shape = y_shape = (len(self.index), size)
        w, V = np.linalg.eigh((A_sub.double() @ A_sub.double().T).numpy())  # the measured views' Gram matrix
        gram_inv = torch.as_tensor((V / (np.clip(w, 0.0, None) + float(ridge) * w.max())) @ V.T).float()

        def view_adjoint(s: torch.Tensor) -> torch.Tensor:  # A_Λᵀ (A_Λ A_Λᵀ + εI)⁻¹ s
            return ((s.reshape(*s.shape[:-2], -1) @ gram_inv) @ A_sub).reshape(*s.shape[:-2], n, n)

        self.view_operator = LinearOperator(self.measure, view_adjoint, torch.ones(y_shape, dtype=torch.bool))
        self._lipschitz = float(w.max())  # ‖R_Λ‖²: the largest eigenvalue of R_Λ R_Λᵀ
        self.dims = {"x": ["row", "col"], "y": ["view", "detector"]}

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(*x.shape[:-2], self.size**2) @ self._A_sub.T).reshape(*x.shape[:-2], *self.y_shape)

    def _adjoint_measure(self, r: torch.Tensor) -> torch.Tensor:
        r""":math:`R_\Lambda^T r`: ``(*, views, size)`` → ``(*, size, size)``."""
        return (r.reshape(*r.shape[:-2], -1) @ self._A_sub).reshape(*r.shape[:-2], self.size, self.size)

    def baseline(self, y: np.ndarray) -> np.ndarray:
        r"""Filtered back-projection (scikit-image ``iradon``, ramp filter) of ``y`` ``(*, views, size)``."""
        from skimage.transform import iradon

        y = np.asarray(y, np.float64)
        flat = y.reshape(-1, *self.y_shape)
        out = np.stack([iradon(s.T, theta=self.theta, filter_name="ramp", circle=True, output_size=self.size) for s in flat])
        return out.reshape(*y.shape[:-2], self.size, self.size).astype(np.float32)


class AcceleratedMRI(_Imaging):
    r"""Accelerated Cartesian MRI: y = the measured lines of the orthonormal 2-D FFT of x, plus noise.

    Arguments:
        size: Image side in pixels.
        acceleration: k-space lines are ``size // acceleration`` of ``size``.
        center_fraction: Share of the lines taken at the centre of k-space (the rest at random).
        noise: Standard deviation of the noise on each real and imaginary part.
        seed: Seed of the random lines.
        num_ellipses: Ellipses per phantom.
        texture: Phantoms with a smooth texture (default; see :func:`ellipse_phantom`).

    Attributes:
        lines: Indices of the measured phase-encoding columns (in FFT order).
        operator: The :class:`~bayesinv.methods.score_prior.LinearOperator` (FFT as real and
            imaginary parts, the inverse FFT's real part, the line mask on both parts).
    """

    def __init__(self, size: int = 32, acceleration: float = 4, *, center_fraction: float = 0.125, noise: float = 0.05,
                 seed: int = 0, num_ellipses: int = 5, texture: bool = True):  # fmt: skip
        _check("size", size, isinstance(size, int) and 8 <= size <= 256, "an integer in [8, 256]")
        _check("acceleration", acceleration, float(acceleration) >= 1 and size // acceleration >= 1, "at least 1 and at most size")
        _check("center_fraction", center_fraction, 0 <= float(center_fraction) <= 1.0 / float(acceleration), "in [0, 1/acceleration]")
        _check("noise", noise, float(noise) > 0, "positive")
        self.size, self.acceleration, self.noise, self.num_ellipses = size, float(acceleration), float(noise), num_ellipses
        self.texture = bool(texture)
        total = max(1, int(size // acceleration))
        num_center = min(total, int(round(size * center_fraction)))
        freq = np.abs(np.fft.fftfreq(size) * size)  # |frequency| of each column in FFT order
        center = np.argsort(freq, kind="stable")[:num_center]
        rest = np.setdiff1d(np.arange(size), center)
        others = np.random.default_rng(seed).choice(rest, total - num_center, replace=False)
        self.lines = np.sort(np.concatenate([center, others]).astype(int))
        mask = torch.zeros(2, size, size, dtype=torch.bool)
        mask[:, :, torch.as_tensor(self.lines)] = True

        def forward(x: torch.Tensor) -> torch.Tensor:
            k = torch.fft.fft2(x, norm="ortho")
            return torch.stack([k.real, k.imag], -3)

        def adjoint(k: torch.Tensor) -> torch.Tensor:
            return torch.fft.ifft2(torch.complex(k[..., 0, :, :], k[..., 1, :, :]), norm="ortho").real

        self.operator = LinearOperator(forward, adjoint, mask)
        self.y_shape = (2, size, len(self.lines))
        self.dims = {"x": ["row", "col"], "y": ["part", "row", "line"]}
        self._lipschitz = 1.0  # the masked orthonormal FFT has norm 1

    def _adjoint_measure(self, r: torch.Tensor) -> torch.Tensor:
        r""":math:`(P M)^T r`, M the orthonormal FFT: the real part of the inverse FFT of the zero-filled ``r``."""
        flat = r.reshape(*r.shape[:-3], -1)
        return self.operator.adjoint(self.operator.zero_fill(flat))

    def baseline(self, y: np.ndarray) -> np.ndarray:
        r"""The zero-filled inverse FFT of ``y`` ``(*, 2, size, lines)``."""
        return self._adjoint_measure(torch.as_tensor(np.asarray(y, np.float32))).numpy()


def choose_tv_weight(problem: _Imaging, y: np.ndarray, truth: np.ndarray, candidates=None, *, iters: int = 100) -> tuple[float, dict]:
    r"""The TV weight of :meth:`~SparseViewCT.tv` with the smallest mean squared error on validation pairs.

    Arguments:
        problem: A :class:`SparseViewCT` or :class:`AcceleratedMRI`.
        y: Validation observations ``(B, *y_shape)``.
        truth: Their phantoms ``(B, size, size)``.
        candidates: Weights to try (default: a log grid of 13 values around the noise variance,
            :math:`\sigma^2 \cdot 10^{-2 \ldots 4}`, where the data term's scale puts the useful ones).
        iters: FISTA iterations per reconstruction.

    Returns:
        The best weight and the MSE of each candidate.
    """
    truth = np.asarray(truth, np.float32)
    if candidates is None:
        candidates = problem.noise**2 * np.logspace(-2, 4, 13)
    table = {float(w): float(((problem.tv(y, float(w), iters=iters) - truth) ** 2).mean()) for w in candidates}
    return min(table, key=table.get), table
