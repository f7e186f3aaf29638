r"""
Boundary flux of a transported species from 30 noisy concentration sensors
==========================================================================

Draws a flux from the Gaussian-process prior (clipped at 0), simulates the sensor
readings, and computes the reference posterior: the exact Gaussian posterior of the
unclipped model, corrected for clipping by importance sampling. Does it for all
sensors and for a random 70% of them (off sensors read -1). Writes
``out/advection_diffusion/posterior.png`` (and the concentration field when
scikit-fem is installed) and prints the effective sample sizes.

Run:  python examples/advection_diffusion.py [--noise 0.02] [--seed 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bayesinv.models import advection_diffusion as ad  # noqa: E402

OUT = Path("out/advection_diffusion")


def concentration_field(ax, flux: np.ndarray, fig) -> None:
    r"""The FE concentration for ``flux`` with the sensors (needs scikit-fem)."""
    setup = ad.fem_setup(h=0.1, degree=1)
    u = ad.solve_fields(setup, flux)[:, 0]
    mesh = setup["mesh"]
    art = ax.tripcolor(mesh.p[0], mesh.p[1], mesh.t.T, u, shading="gouraud", cmap="viridis")
    s = ad.sensor_positions()
    ax.plot(s[:, 0], s[:, 1], "w.", ms=5)
    ax.set(xlabel="x", ylabel="s (height)", title="concentration u for the true flux (dots: sensors)", aspect="equal")
    fig.colorbar(art, ax=ax, label="u", shrink=0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=30, help="seed of the true flux (30: three segments clipped)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    x = ad.segment_midpoints()[:15, 0]

    try:
        import skfem  # noqa: F401

        fig, axes = plt.subplots(3, 2, figsize=(12, 10), gridspec_kw={"height_ratios": [1.2, 1, 1]})
        gs = axes[0, 0].get_gridspec()
        for ax in axes[0]:
            ax.remove()
        field_ax = fig.add_subplot(gs[0, :])
        rows = axes[1:]
    except ImportError:
        fig, rows = plt.subplots(2, 2, figsize=(12, 7))
        field_ax = None

    for row, masked in zip(rows, (False, True)):
        problem = ad.make_problem(noise=args.noise, masked=masked)
        flux, y = problem.draw(seed=args.seed)
        if field_ax is not None and not masked:
            concentration_field(field_ax, flux, fig)
        t0 = time.perf_counter()
        idata = problem.reference(y, num_samples=2000, num_proposals=100_000, progress=False)
        elapsed = time.perf_counter() - t0
        ess = float(idata.sample_stats["ess"])
        post = idata.posterior["flux"].values.reshape(-1, 30)
        gauss_mean, gauss_cov = problem.posterior_gaussian(y)
        label = "70% of sensors on" if masked else "all sensors"
        print(f"{label}: {int((flux == 0).sum())} clipped segments, importance ESS {ess:.0f} of 100000, {elapsed:.1f} s")
        for ax, wall, sl in zip(row, ("bottom", "top"), (slice(0, 15), slice(15, 30))):
            m, sd = post[:, sl].mean(0), post[:, sl].std(0)
            ax.fill_between(x, m - sd, m + sd, color="0.8", label="posterior ±1 sd")
            ax.plot(x, m, "k-", label="posterior mean")
            ax.plot(x, np.maximum(gauss_mean[sl], 0), "b:", label="unclipped Gaussian mean (clipped)")
            ax.plot(x, flux[sl], "g--", label="true flux")
            ax.set(xlabel="x (segment midpoint)", ylabel="flux q", title=f"{wall} wall, {label} (ESS {ess:.0f})")
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "posterior.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
