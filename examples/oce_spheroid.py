r"""
How stiff is the tumour spheroid? Optical coherence elastography through a wrapped phase
========================================================================================

1. Draws a spheroid from the full prior of the paper (Table 11: nuclei placed
   sequentially, cells from a power diagram), compresses it (plane-strain FEM on the
   800 µm padded window) and shows the modulus, the clean phase difference (eq. 25: tens
   of radians) and the wrapped noisy measurement (eqs. 26–27), with the k(z) curve.
2. On the reduced variant (a homogeneous spheroid in hydrogel, 7 parameters) computes
   the posterior of E' = log10(E / E_hydrogel) for one observation with the exact
   wrapped-phase likelihood (tempered adaptive importance sampling) and, for contrast,
   with a Gaussian likelihood on the wrapped phase.

Writes ``out/oce_spheroid/prior.png`` and ``out/oce_spheroid/posterior.png``. About 5
minutes on 2 busy cores with the defaults.

Run:  python examples/oce_spheroid.py [--num-simulations 1000] [--seed 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.models import oce_spheroid as oce  # noqa: E402

OUT = Path("out/oce_spheroid")


def show(ax, field, title, **kw):
    extent = [-oce.WINDOW / 2, oce.WINDOW / 2] * 2
    im = ax.imshow(field, origin="lower", extent=extent, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-simulations", type=int, default=1000, help="prior draws of the reduced variant")
    parser.add_argument("--element-size", type=float, default=16.0, help="FEM element size (µm) of the reduced variant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    # 1. the full prior
    full = oce.OCESpheroid(64)
    theta, y = full.draw(seed=args.seed)
    print(f"{int(theta['num_nuclei'])} nuclei; clean phase {theta['phase'].min():.1f} .. {theta['phase'].max():.1f} rad, "
          f"{100 * oce.wrap_fraction(theta['phase']):.0f}% of the pixels wrap")
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
    show(axes[0], theta["E"], "E (kPa)", cmap="viridis")
    show(axes[1], theta["phase"], "clean Δφ (rad)", cmap="magma")
    show(axes[2], y, "measurement: wrapped Δφ + noise", cmap="twilight", vmin=-np.pi, vmax=np.pi)
    z = full.k_curve.depth(oce.pixel_centres(64))
    axes[3].plot(full.k[:, 0], z)
    axes[3].invert_yaxis()
    axes[3].set_xlabel("k")
    axes[3].set_ylabel("depth z (µm)")
    axes[3].set_title("k(z): attenuation × confocal", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "prior.png", dpi=110)

    # 2. the reduced variant and its reference posteriors
    problem = oce.OCESpheroid(64, variant="homogeneous", element_size=args.element_size, workers=args.workers)
    gauss = oce.OCESpheroid(64, variant="homogeneous", element_size=args.element_size, likelihood="gaussian",
                            simulator=problem.simulator)
    theta, y = problem.draw(seed=args.seed)
    t0 = time.perf_counter()
    ds = bayesinv.simulate(problem.model, args.num_simulations, seed=0, dims=problem.dims, progress=False,
                           path=OUT / f"reduced_{args.num_simulations}_{args.element_size:g}.zarr", chunk_size=500)
    print(f"prior set of {args.num_simulations}: {time.perf_counter() - t0:.0f} s")
    rows = []
    for name, p in (("wrapped (exact)", problem), ("Gaussian on wrapped", gauss)):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = p.reference(y, data=ds, num_local=300, num_final=1000)
        lr = np.log10(idata.posterior["E_rel"].values.reshape(-1, 64, 64))
        ratio = np.log10(idata.posterior["E_spheroid"].values / idata.posterior["E_hydrogel"].values).ravel()
        print(f"{name}: ESS {float(idata.sample_stats['ess']):.0f}, {idata.posterior.attrs['stages']} stages, "
              f"{time.perf_counter() - t0:.0f} s; log10(E_s/E_h) = {ratio.mean():.4f} ± {ratio.std():.4f} "
              f"(true {np.log10(theta['E_spheroid'] / theta['E_hydrogel']):.4f})")
        rows.append((name, lr.mean(0), lr.std(0)))
    fig, axes = plt.subplots(1, 6, figsize=(20, 3.3))
    truth = np.log10(theta["E_rel"])
    show(axes[0], truth, "true E' = log10(E/E_h)", cmap="viridis", vmin=0, vmax=0.8)
    show(axes[1], y, "measurement", cmap="twilight", vmin=-np.pi, vmax=np.pi)
    for j, (name, m, s) in enumerate(rows):
        show(axes[2 + 2 * j], m, f"mean, {name}", cmap="viridis", vmin=0, vmax=0.8)
        show(axes[3 + 2 * j], s, f"sd, {name}", cmap="magma")
    fig.tight_layout()
    fig.savefig(OUT / "posterior.png", dpi=110)
    print(f"wrote {OUT / 'prior.png'} and {OUT / 'posterior.png'}")


if __name__ == "__main__":
    main()
