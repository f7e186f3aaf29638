r"""
Optic nerve head: prior draws of the shear modulus and their time-harmonic wave fields
=======================================================================================

The inverse Helmholtz problem of ``bayesinv.models.optic_nerve_head``: five draws of the
parametric prior over the tissue around the optic nerve head (retina, peripapillary sclera,
lamina cribrosa, optic nerve, pia mater) and the real and imaginary parts of the complex
displacement they produce at 5 kHz, with the 4 % measurement noise. Writes
``out/optic_nerve_head/prior_draws.png``.

Run:  python examples/optic_nerve_head.py      (five finite-element solves: under a minute)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bayesinv.models import optic_nerve_head as onh  # noqa: E402

OUT = Path("out/optic_nerve_head")


def main() -> None:
    problem = onh.OpticNerveHead()
    params, mu, y = problem.draw(seed=3, n=5)
    fig, ax = plt.subplots(3, 5, figsize=(15, 9))
    extent = (0, onh.WINDOW, 0, onh.WINDOW)
    for i in range(5):
        panels = [(mu[i], "μ (kPa)", "viridis"), (y[i, 0], "u_R + noise (mm)", "RdBu_r"), (y[i, 1], "u_I + noise (mm)", "RdBu_r")]
        for r, (img, title, cmap) in enumerate(panels):
            im = ax[r, i].imshow(img, cmap=cmap, extent=extent)
            ax[r, i].set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax[r, i], fraction=0.046)
        g = dict(zip(onh.PARAMETERS, params[i]))
        print(f"draw {i}: lamina radius {g['lamina_radius']:.2f} mm, thickness {g['lamina_thickness']:.2f} mm, "
              f"sclera {g['sclera_thickness']:.2f} mm, rotation {g['rotation']:+.2f} rad, "
              f"μ lamina {g['mu_lamina']:.0f} kPa, μ nerve {g['mu_nerve']:.1f} kPa")
    fig.suptitle("optic nerve head: prior draws of μ (top) and the noisy real / imaginary displacement at 5 kHz")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "prior_draws.png", dpi=80, bbox_inches="tight")
    print(f"wrote {OUT / 'prior_draws.png'}")


if __name__ == "__main__":
    main()
