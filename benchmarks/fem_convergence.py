r"""Mesh convergence and speed of the finite-element forward models.

Advection-diffusion: the flux → sensor matrix G (30 × 30) for P1 and P2 triangles on
meshes of size h, the relative change ‖G_h − G_{h/2}‖_F / ‖G_{h/2}‖_F under refinement,
and the distance of each G to the shipped matrix (P2, h = 0.05).

Elastography: u_y at the 56 × 56 pixel centres for 1, 2, 3 mesh cells per pixel side,
the largest difference to the finest mesh relative to U_MAX (over a few prior draws),
and the solves per second on one core.

Run (single-threaded BLAS so "per core" means one core):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fem_convergence.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bayesinv.models import advection_diffusion as ad  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402


def advection(sizes: list[float]) -> None:
    shipped = ad.load_forward()
    print("Advection-diffusion forward matrix G (30 x 30)")
    print(f"{'elem':>4} {'h':>6} {'dofs':>8} {'Pe_cell':>8} {'time s':>7} {'rel change vs h/2':>18} {'rel diff to shipped':>20}")
    for degree in (1, 2):
        mats, rows = [], []
        for h in sizes:
            t0 = time.perf_counter()
            setup = ad.fem_setup(h, degree)
            G = np.asarray(setup["probes"] @ ad.solve_fields(setup, np.eye(30)))
            rows.append((h, setup["K"].shape[0], setup["peclet"], time.perf_counter() - t0))
            mats.append(G)
        for i, (h, n, pe, t) in enumerate(rows):
            change = np.linalg.norm(mats[i] - mats[i + 1]) / np.linalg.norm(mats[i + 1]) if i + 1 < len(mats) else float("nan")
            to_shipped = np.linalg.norm(mats[i] - shipped) / np.linalg.norm(shipped)
            print(f"{'P' + str(degree):>4} {h:6.3f} {n:8d} {pe:8.4f} {t:7.2f} {change:18.2e} {to_shipped:20.2e}")


def elastography(num_draws: int, refinements: list[int]) -> None:
    gen = torch.Generator().manual_seed(0)
    lo, hi = el.CENTER_RANGE
    centers = lo + (hi - lo) * torch.rand(num_draws, 2, generator=gen)
    mu = el.inclusion_field(centers).numpy()
    print(f"\nElastography u_y on the 56 x 56 grid ({num_draws} prior draws)")
    print(f"{'cells/pixel':>11} {'unknowns':>9} {'setup s':>8} {'solves/s/core':>14} {'max|u - u_finest|/U_MAX':>24}")
    out = {}
    for k in refinements:
        t0 = time.perf_counter()
        solver = el.ElasticitySolver(cells_per_pixel=k)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        out[k] = np.stack([solver.vertical(m) for m in mu])
        rate = num_draws / (time.perf_counter() - t0)
        out[k] = (out[k], solver.num_dofs, setup, rate)
    finest = out[refinements[-1]][0]
    for k in refinements:
        u, n, setup, rate = out[k]
        err = np.abs(u - finest).max() / el.U_MAX
        print(f"{k:11d} {n:9d} {setup:8.2f} {rate:14.1f} {err:24.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarser meshes only (about 20 s)")
    args = parser.parse_args()
    if args.quick:
        advection([0.4, 0.2, 0.1, 0.05])
        elastography(5, [1, 2])
    else:
        advection([0.4, 0.2, 0.1, 0.05, 0.025])
        elastography(20, [1, 2, 3, 4])


if __name__ == "__main__":
    main()
