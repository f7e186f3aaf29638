r"""
EIT with pyEIT: truth, Gauss–Newton and every learned method side by side
=========================================================================

Part 1 (128 × 128, about a minute): for 2 and 4 anomalies at 40 dB, draws three
(sigma, y) pairs, reconstructs each with ``bayesinv.infer(..., method="gauss_newton")``
and saves truth / Gauss–Newton with colour bars and MSE / PSNR / SSIM to
``out/eit/truth_vs_gn_{k}anomalies.png``.

Part 2 (32 × 32): truth / Gauss–Newton / vae / flow / CSD* / cond_score on three test
pairs (2 anomalies, 40 dB), to ``out/eit/methods_2anomalies_32px.png``. It loads the
posteriors that ``benchmarks/eit.py --learned`` saved under ``out/eit_bench/``; a method
without a saved posterior is fitted here on 1,000 pairs for a few hundred steps (a few
minutes on a CPU, so its image is only a smoke test: see docs/benchmarks.md for trained
numbers).

Run:

    OMP_NUM_THREADS=1 .venv/bin/python examples/eit.py
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.diagnostics.metrics import mse, psnr, ssim  # noqa: E402
from bayesinv.models import eit as E  # noqa: E402

OUT = Path(os.environ.get("BAYESINV_OUT", "out")) / "eit"
BENCH = Path(os.environ.get("BAYESINV_OUT", "out")) / "eit_bench"
METHODS = ("vae", "flow", "csd_star", "cond_score")
LABELS = {"gauss_newton": "Gauss–Newton", "vae": "CVAE (vae)", "flow": "CNF (flow, multiscale)", "csd_star": "CSD*",
          "cond_score": "cond_score"}  # fmt: skip
EXTENT = (-1, 1, -1, 1)


def _panel(fig, ax, image, title, vmax):
    im = ax.imshow(image, origin="upper", extent=EXTENT, cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="σ")


def truth_vs_gauss_newton(num_pairs: int = 3) -> None:
    for k in (2, 4):
        eit = E.make_model(num_anomalies=k, snr_db=40)
        sigma, y = eit.draw(seed=2024, n=num_pairs)
        fig, axes = plt.subplots(num_pairs, 2, figsize=(6.4, 3.0 * num_pairs), squeeze=False)
        for i in range(num_pairs):
            idata = bayesinv.infer(eit.model, y[i], method="gauss_newton", solver=eit, target="sigma")
            rec = idata.posterior["sigma"].values[0, 0]
            scores = f"MSE {mse(rec, sigma[i]):.4f}  PSNR {psnr(rec, sigma[i]):.1f}  SSIM {ssim(rec, sigma[i]):.3f}"
            print(f"{k} anomalies, pair {i}: Gauss-Newton {scores}")
            _panel(fig, axes[i, 0], sigma[i], "truth σ", 1.6)
            _panel(fig, axes[i, 1], rec, "Gauss–Newton\n" + scores, 1.6)
        fig.suptitle(f"EIT, {k} anomalies, 40 dB, 128 × 128: truth and Gauss–Newton")
        fig.tight_layout()
        path = OUT / f"truth_vs_gn_{k}anomalies.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"saved {path}")


def _posterior(method: str, eit: E.EIT, tag: str):
    path = BENCH / f"{tag}_{method}.bayesinv"
    if path.exists():
        post = bayesinv.load(path)
        print(f"{method}: loaded {path} ({post.info.get('num_simulations')} training pairs)")
    else:
        print(f"{method}: no {path}; fitting a small one here (smoke test, not a trained model)")
        data = E.make_dataset(1000, eit=eit, seed=1, chunk_size=500, progress=False)
        small = {"max_steps": 300, "progress": False, "target": "sigma", "data": data}
        if method == "vae":
            post = bayesinv.fit(eit.model, method="vae", embedding="mlp", max_steps=2000,
                                **{k: v for k, v in small.items() if k != "max_steps"})  # fmt: skip
        elif method == "flow":
            post = bayesinv.fit(eit.model, method="flow", flow="multiscale", embedding="mlp", hidden=(16,), **small)
        else:
            kw = dict(base_channels=8, channel_mults=(1, 2), max_epochs=None, batch_size=32, **small)
            extra = {"solver": eit, "steps": 200, "insert_step": 120} if method == "csd_star" else {}
            post = bayesinv.fit(eit.model, method=method, **kw, **extra)
    if method == "csd_star":
        post.solver = eit
    return post


def all_methods(num_pairs: int = 3, size: int = 32) -> None:
    tag = f"eit_2anom_40db_{size}px"
    eit = E.make_model(num_anomalies=2, snr_db=40, image_size=size)
    sigma, y = eit.draw(seed=0, n=num_pairs)  # the first benchmark test draws
    recs = {"gauss_newton": eit.gauss_newton(y)}
    for method in METHODS:
        post = _posterior(method, eit, tag)
        options = {"sampler": "sde", "steps": 100} if method == "cond_score" else {}
        recs[method] = post.sample(y, 1, seed=0, **options)["sigma"][:, 0].numpy()
    cols = ["truth", *recs]
    fig, axes = plt.subplots(num_pairs, len(cols), figsize=(2.55 * len(cols), 2.5 * num_pairs), squeeze=False)
    for i in range(num_pairs):
        _panel(fig, axes[i, 0], sigma[i], "truth σ", 1.6)
        for j, (method, rec) in enumerate(recs.items(), start=1):
            title = f"{LABELS[method]}\nMSE {mse(rec[i], sigma[i]):.4f} SSIM {ssim(rec[i], sigma[i]):.2f}"
            _panel(fig, axes[i, j], rec[i], title, 1.6)
    fig.suptitle(f"EIT, 2 anomalies, 40 dB, {size} × {size} pixels: truth, Gauss–Newton and one draw of each learned method")
    fig.tight_layout()
    path = OUT / f"methods_2anomalies_{size}px.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"saved {path}")


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    truth_vs_gauss_newton()
    all_methods()


if __name__ == "__main__":
    main()
