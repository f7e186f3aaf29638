r"""The dual-layer phantom (axisymmetric elastodynamics): time-step and mesh convergence, solve throughput, cond_score.

    python benchmarks/dual_layer_phantom.py convergence [--draws 2] [--dts 0.02 0.01 0.005 0.0025]
                                                       [--refinements 0.25 0.5 1]
    python benchmarks/dual_layer_phantom.py throughput [--draws 5]
    python benchmarks/dual_layer_phantom.py cond_score --num-train 300 --num-test 2 --max-steps 500

Published-size run (a GPU): the paper's 3,000 pairs and Table 2's settings (batch 128; y as
the 10 channels of the U-Net),
``python benchmarks/dual_layer_phantom.py cond_score --num-train 3000 --num-test 10 --max-steps 200000
--batch-size 128 --base-channels 32 --channel-mults 1 2 2 2 --workers 16 --device cuda``.
Results go to benchmarks/results/dual_layer_phantom_*.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import metadata, set_threads, write_results

from bayesinv.models import dual_layer_phantom as dlp

OUT = Path(__file__).resolve().parents[1] / "out" / "dual_layer_phantom"
MACHINE = "2-core CPU, no GPU, shared with other jobs"


def _prior_params(n: int, seed: int) -> np.ndarray:
    prob = dlp.DualLayerPhantom(simulator=lambda p: torch.zeros(*p.shape[:-1], 10, dlp.GRID, dlp.GRID), model_error=False)
    return prob.draw(seed=seed, n=n)[0]


def _study(params: np.ndarray, key: str, values: list[float], make) -> list[dict]:
    fields, info = {}, {}
    for v in values:
        solver = make(v)
        t0 = time.perf_counter()
        fields[v] = np.stack([solver.solve(p) for p in params])
        per = (time.perf_counter() - t0) / len(params)
        info[v] = {"num_dofs": int(solver.num_dofs), "s_per_solve": per}
        print(f"{key} {v}: {solver.num_dofs} DOFs, {per:.2f} s/solve", flush=True)
    ref = values[-1]  # the finest
    rows = []
    for v in values[:-1]:
        diff = fields[v] - fields[ref]
        rel = float(np.linalg.norm(diff) / np.linalg.norm(fields[ref]))
        per_snapshot = np.linalg.norm(diff, axis=(2, 3)) / np.linalg.norm(fields[ref], axis=(2, 3))
        rows.append({key: v, "reference": ref, "relative_l2": rel, "worst_snapshot_relative_l2": float(per_snapshot.max()), **info[v]})
        print(f"| {key} {v} vs {ref} | {rel:.2e} | {per_snapshot.max():.2e} |", flush=True)
    for a, b in zip(rows[:-1], rows[1:]):  # observed order from successive errors against the finest
        ratio = values[0] / values[1] if key == "dt" else values[1] / values[0]
        b["observed_order"] = None
        a["observed_order"] = float(np.log(a["relative_l2"] / b["relative_l2"]) / np.log(ratio))
    return rows


def convergence(args) -> None:
    params = _prior_params(args.draws, seed=11)
    params[0] = [1.5, 20.0, 2.6]  # the slowest waves (soft top) and a sharp contrast
    print("parameters:", params.tolist(), flush=True)
    dts = sorted(args.dts, reverse=True)
    time_rows = _study(params, "dt", dts, lambda dt: dlp.ElastodynamicsSolver(dt=dt))
    refs = sorted(args.refinements)
    mesh_rows = _study(params, "cells_per_pixel", refs, lambda k: dlp.ElastodynamicsSolver(cells_per_pixel=k, dt=args.mesh_dt))
    write_results("dual_layer_phantom_convergence", {"meta": metadata(MACHINE), "args": vars(args), "params": params.tolist(),
                                                     "time_step": time_rows, "mesh": mesh_rows})


def throughput(args) -> None:
    params = _prior_params(args.draws, seed=12)
    t0 = time.perf_counter()
    solver = dlp.ElastodynamicsSolver()
    setup = time.perf_counter() - t0
    solver.solve(params[0])
    t0 = time.perf_counter()
    for p in params:
        solver.solve(p)
    per = (time.perf_counter() - t0) / len(params)
    steps = solver._push_steps + 9 * solver._steps_per_snapshot
    print(f"setup {setup:.1f} s, {solver.num_dofs} DOFs, {steps} Newmark steps, {1 / per:.2f} solves/s in one process ({per:.2f} s/solve)")
    write_results("dual_layer_phantom_throughput", {"meta": metadata(MACHINE), "args": vars(args), "setup_s": setup, "num_dofs": solver.num_dofs,
                                                    "steps": steps, "solves_per_second": 1 / per})


def cond_score(args) -> None:
    import bayesinv

    OUT.mkdir(parents=True, exist_ok=True)
    prob = dlp.DualLayerPhantom(workers=args.workers)
    t0 = time.perf_counter()
    ds = bayesinv.simulate(prob.model, args.num_train, seed=0, path=OUT / f"joint_{args.num_train}.zarr",
                           chunk_size=min(50, args.num_train), progress=False, dims=prob.dims)
    sim_time = time.perf_counter() - t0
    print(f"{args.num_train} pairs in {sim_time:.0f} s (or loaded)", flush=True)
    options = dict(network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
                   batch_size=args.batch_size, max_epochs=None, max_steps=args.max_steps, lr=args.lr, patience=None)
    t0 = time.perf_counter()
    post = bayesinv.fit(prob.model, method="cond_score", target="E", data=ds, seed=0, progress=False, device=args.device, **options)
    fit_time = time.perf_counter() - t0
    print(f"fit {fit_time:.0f} s", flush=True)
    rows = []
    z = dlp.pixel_heights()
    for i in range(args.num_test):
        params, E, y = prob.draw(seed=1000 + i)
        t0 = time.perf_counter()
        draws = post.sample(torch.as_tensor(y), args.num_draws, seed=i)["E"].numpy()
        mean = draws.mean(0)
        # Table 10's form: each layer's modulus is the posterior-mean field averaged over the true
        # layer's pixels; the interface is where the column-averaged posterior-mean profile crosses
        # the middle of its range
        profile = mean.mean(1)
        top = profile[z > params[2]].mean() if (z > params[2]).any() else float("nan")
        bottom = profile[z <= params[2]].mean()
        mid = 0.5 * (profile.max() + profile.min())
        crossing = z[np.argmin(np.abs(profile - mid))]
        row = {"seed": 1000 + i, "true": params.tolist(), "posterior_mean_top": float(top), "posterior_mean_bottom": float(bottom),
               "posterior_mean_interface": float(crossing), "rmse_E_kPa": float(np.sqrt(((mean - E) ** 2).mean())),
               "sample_time_s": time.perf_counter() - t0}
        print(row, flush=True)
        rows.append(row)
    write_results(f"dual_layer_phantom_cond_score{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "simulate_s": sim_time, "fit_time_s": fit_time, "tests": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("convergence", "throughput", "cond_score"))
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--dts", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.0025])
    parser.add_argument("--refinements", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--mesh-dt", type=float, default=dlp.DT)
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-test", type=int, default=2)
    parser.add_argument("--num-draws", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    args.draws = args.draws or {"convergence": 2, "throughput": 5, "cond_score": 0}[args.what]
    {"convergence": convergence, "throughput": throughput, "cond_score": cond_score}[args.what](args)


if __name__ == "__main__":
    main()
