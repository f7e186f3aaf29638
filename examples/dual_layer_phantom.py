r"""
Dual-layer phantom: a shear-wave observation and its exact posterior over the two layers
=========================================================================================

The time-dependent elastography problem of ``bayesinv.models.dual_layer_phantom``: one draw of
the two-layer gelatin cylinder (Table 9's prior, with the paper's modelling error between the
simulated and the labelled specimen), four of the ten blurred, noisy snapshots of the vertical
displacement the acoustic radiation force excites, and the reference posterior of the layer
moduli and the interface height (``DualLayerPhantom.reference``: a least-squares fit of the
simulated specimen, importance sampling with the exact likelihood around it, the modelling error
in closed form). Writes ``out/dual_layer_phantom/example.png``.

Run:  python examples/dual_layer_phantom.py      (about 150 finite-element solves: under a minute)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bayesinv.models import dual_layer_phantom as dlp  # noqa: E402

OUT = Path("out/dual_layer_phantom")


def main() -> None:
    phantom = dlp.DualLayerPhantom()
    params, E, y = phantom.draw(seed=1000)  # (E_top, E_bottom, interface), E (64, 64) kPa, y (10, 64, 64) mm
    ref = phantom.reference(y, num_proposals=60, num_samples=2000, search=16, restarts=1, seed=0)
    fit = [ref.attrs[f"fit_{k}"] for k in dlp.PARAMETERS]
    print(f"simulated specimen fitted at {np.round(fit, 3).tolist()} (χ² per pixel {ref.attrs['misfit']:.3f}), "
          f"ESS {ref.attrs['ess']:.0f} of 60, {ref.attrs['num_simulations']} solves")

    fig, ax = plt.subplots(2, 5, figsize=(17, 6.5))
    extent = (0, dlp.WINDOW, 0, dlp.WINDOW)
    im = ax[0, 0].imshow(E, extent=extent, cmap="viridis")
    ax[0, 0].set_title("true E (kPa)")
    fig.colorbar(im, ax=ax[0, 0], fraction=0.046)
    for j, k in enumerate((0, 2, 5, 9)):
        im = ax[0, j + 1].imshow(1e3 * y[k], extent=extent, cmap="RdBu_r")
        ax[0, j + 1].set_title(f"u_z at {dlp.SNAPSHOTS[k]:.1f} ms (µm)")
        fig.colorbar(im, ax=ax[0, j + 1], fraction=0.046)
    labels = {"E_top": "E top (kPa)", "E_bottom": "E bottom (kPa)", "interface": "interface (mm)"}
    for j, name in enumerate(dlp.PARAMETERS):
        draws = ref.posterior[name].values.ravel()
        ax[1, j].hist(draws, bins=40, color="0.6")
        ax[1, j].axvline(params[j], color="k", label="truth")
        ax[1, j].axvline(fit[j], color="C3", ls="--", label="simulated specimen")
        ax[1, j].set_title(f"{labels[name]}: {draws.mean():.2f} ± {draws.std():.2f}")
        print(f"{name}: true {params[j]:.2f}, posterior {draws.mean():.2f} ± {draws.std():.2f}")
    ax[1, 0].legend(fontsize=8)
    fields = ref.posterior["E"].values.reshape(-1, dlp.GRID, dlp.GRID)
    for j, (img, title) in enumerate(((fields.mean(0), "posterior mean E"), (fields.std(0), "posterior sd E"))):
        im = ax[1, 3 + j].imshow(img, extent=extent, cmap="viridis")
        ax[1, 3 + j].set_title(f"{title} (kPa)")
        fig.colorbar(im, ax=ax[1, 3 + j], fraction=0.046)
    fig.suptitle("dual-layer phantom: truth and snapshots (top); the exact posterior (bottom)")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "example.png", dpi=70, bbox_inches="tight")
    print(f"wrote {OUT / 'example.png'}")


if __name__ == "__main__":
    main()
