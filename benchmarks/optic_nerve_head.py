r"""The optic-nerve-head inverse Helmholtz problem: mesh convergence, solve throughput, prior figure, cond_score.

    python benchmarks/optic_nerve_head.py convergence [--draws 3] [--refinements 1 2 3]
    python benchmarks/optic_nerve_head.py throughput [--draws 10]
    python benchmarks/optic_nerve_head.py prior          # Fig. 4/5-like panels of prior draws
    python benchmarks/optic_nerve_head.py u_max          # recompute U_MAX (200 prior draws)
    python benchmarks/optic_nerve_head.py cond_score --num-train 2000 --num-test 10 --max-steps 1500

Published-size run (a GPU): the paper's 12,000 pairs and Table 2's settings,
``python benchmarks/optic_nerve_head.py cond_score --num-train 12000 --num-test 10 --max-steps 200000
--batch-size 64 --device cuda`` (the paper trains 100,000+ epochs; see docs/physics_models.md).
Results go to benchmarks/results/optic_nerve_head_*.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import metadata, set_threads, write_results

from bayesinv.models import optic_nerve_head as onh

OUT = Path(__file__).resolve().parents[1] / "out" / "optic_nerve_head"
MACHINE = "2-core CPU, no GPU, shared with other jobs"


def _prior_params(n: int, seed: int) -> np.ndarray:
    prob = onh.OpticNerveHead(simulator=lambda p: torch.zeros(*p.shape[:-1], 2, onh.GRID, onh.GRID))
    return prob.draw(seed=seed, n=n)[0]


def convergence(args) -> None:
    params = _prior_params(args.draws, seed=11)
    fields = {}
    for k in args.refinements:
        solver = onh.HelmholtzSolver(cells_per_pixel=k)
        t0 = time.perf_counter()
        fields[k] = np.stack([solver.solve(p) for p in params])
        print(f"cells per pixel {k}: {solver.num_dofs} DOFs, {(time.perf_counter() - t0) / len(params):.2f} s/solve", flush=True)
    finest = max(args.refinements)
    tissue = np.stack([onh.regions(onh.pixel_centres(), torch.as_tensor(p)).numpy() > 0 for p in params]).reshape(len(params), 1, onh.GRID, onh.GRID)
    tissue = np.broadcast_to(tissue, fields[finest].shape)
    rows = []
    for k in args.refinements:
        if k == finest:
            continue
        diff = fields[k] - fields[finest]
        rel = np.linalg.norm(diff) / np.linalg.norm(fields[finest])
        rel_tissue = np.linalg.norm(diff[tissue]) / np.linalg.norm(fields[finest][tissue])
        max_abs = np.abs(diff).max() / np.abs(fields[finest]).max()
        rows.append({"cells_per_pixel": k, "relative_l2": float(rel), "relative_l2_tissue": float(rel_tissue), "max_abs_relative": float(max_abs)})
        print(f"| {k} vs {finest} | {rel:.2e} | {rel_tissue:.2e} | {max_abs:.2e} |", flush=True)
    write_results("optic_nerve_head_convergence", {"meta": metadata(MACHINE), "args": vars(args), "finest": finest, "rows": rows})


def throughput(args) -> None:
    params = _prior_params(args.draws, seed=12)
    t0 = time.perf_counter()
    solver = onh.HelmholtzSolver()
    setup = time.perf_counter() - t0
    solver.solve(params[0])
    t0 = time.perf_counter()
    for p in params:
        solver.solve(p)
    per = (time.perf_counter() - t0) / len(params)
    print(f"setup {setup:.1f} s, {solver.num_dofs} complex DOFs, {1 / per:.2f} solves/s in one process ({per:.2f} s/solve)")
    write_results("optic_nerve_head_throughput", {"meta": metadata(MACHINE), "args": vars(args), "setup_s": setup,
                                                  "num_dofs": solver.num_dofs, "solves_per_second": 1 / per})


def prior(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prob = onh.OpticNerveHead()
    params, mu, y = prob.draw(seed=args.seed, n=5)
    fig, ax = plt.subplots(3, 5, figsize=(15, 9))
    for i in range(5):
        for r, (img, title, cmap) in enumerate([(mu[i], "μ (kPa)", "viridis"), (y[i, 0], "u_R + noise (mm)", "RdBu_r"),
                                                (y[i, 1], "u_I + noise (mm)", "RdBu_r")]):
            im = ax[r, i].imshow(img, cmap=cmap, extent=(0, onh.WINDOW, 0, onh.WINDOW))
            ax[r, i].set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax[r, i], fraction=0.046)
    fig.suptitle("optic nerve head: prior draws (top), noisy real and imaginary displacement (4 % noise)")
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(args.figure or OUT / "prior_draws.png")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    print(f"wrote {path}")


def u_max(args) -> None:
    value = onh.compute_u_max(num_draws=args.draws, seed=0)
    print(f"U_MAX = {value:.4g} mm over {args.draws} prior draws")
    write_results("optic_nerve_head_u_max", {"meta": metadata(MACHINE), "draws": args.draws, "u_max": value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("convergence", "throughput", "prior", "u_max"))
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--refinements", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    defaults = {"convergence": 3, "throughput": 10, "prior": 5, "u_max": 200}
    args.draws = args.draws or defaults[args.what]
    {"convergence": convergence, "throughput": throughput, "prior": prior, "u_max": u_max}[args.what](args)


if __name__ == "__main__":
    main()
