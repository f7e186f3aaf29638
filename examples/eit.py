r"""EIT with pyEIT: simulate a few test pairs and compare the truth with Gauss–Newton.

For 2 anomalies (40 dB) and 4 anomalies (40 dB), draws three (sigma, y) pairs from the
model, reconstructs each with ``bayesinv.infer(..., method="gauss_newton")`` and saves
truth / Gauss–Newton side by side, with colour bars and the MSE / PSNR / SSIM of each
reconstruction, to ``out/eit/truth_vs_gn_{k}anomalies.png`` (about a minute on one core).

Run:

    .venv/bin/python examples/eit.py
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.diagnostics.metrics import mse, psnr, ssim  # noqa: E402
from bayesinv.models import eit as E  # noqa: E402

OUT = Path(os.environ.get("BAYESINV_OUT", "out")) / "eit"


def main(num_pairs: int = 3) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for k in (2, 4):
        eit = E.make_model(num_anomalies=k, snr_db=40)
        sigma, y = eit.draw(seed=2024, n=num_pairs)
        fig, axes = plt.subplots(num_pairs, 2, figsize=(7.2, 3.3 * num_pairs), squeeze=False)
        extent = (-1, 1, -1, 1)
        for i in range(num_pairs):
            idata = bayesinv.infer(eit.model, y[i], method="gauss_newton", solver=eit, target="sigma")
            rec = idata.posterior["sigma"].values[0, 0]
            scores = f"MSE {mse(rec, sigma[i]):.4f}  PSNR {psnr(rec, sigma[i]):.1f}  SSIM {ssim(rec, sigma[i]):.3f}"
            print(f"{k} anomalies, pair {i}: {scores}")
            for ax, image, title in ((axes[i, 0], sigma[i], "truth σ"), (axes[i, 1], rec, "Gauss–Newton\n" + scores)):
                im = ax.imshow(image, origin="upper", extent=extent, cmap="viridis", vmin=0.0, vmax=1.6)
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("x")
                ax.set_ylabel("y")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="conductivity")
        fig.suptitle(f"EIT, {k} anomalies, 40 dB: truth and Gauss–Newton ({eit.mesh.n_elems}-element simulation mesh)")
        fig.tight_layout()
        path = OUT / f"truth_vs_gn_{k}anomalies.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
