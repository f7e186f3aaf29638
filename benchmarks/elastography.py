r"""Elastography (56 × 56): cond_score with a U-Net against the importance-sampling reference.

For each noise level σ_η the script

1. measures the scikit-fem simulation throughput (solves per second, one process);
2. loads (or simulates, resumably) ``--num-train`` noise-free prior draws into
   ``out/elastography/prior_set_<n>.zarr`` (the store ``examples/elastography.py`` uses)
   and adds the truncated noise of this σ_η to make the training pairs (mu, y);
3. fits ``method="cond_score"`` with ``network="unet"`` (the observation enters as an
   extra U-Net channel) for ``--max-steps`` optimiser steps and saves it to
   ``out/elastography/cond_score_<σ_η>.bayesinv`` (``examples/elastography_panels.py``
   can draw it);
4. for ``--num-test`` test inclusions (``problem.draw(seed=100 + i)``) compares the
   pixel-wise posterior mean and standard deviation fields of ``mu`` (normalised to
   [0, 1]: (mu − 0.1)/1.4) with the reference (the same prior set reweighted, then
   ``--refine`` zoom-in stages of ``--num-local`` draws): RMSE of the means and of the
   stds, averaged over the test inclusions, beside the published cSDM figures.

``--reuse`` skips step 3 and evaluates the posterior an earlier run saved.

Writes ``benchmarks/results/elastography_<σ_η>[_<tag>].json`` and prints a table.

Run (2-core CPU: ~15 minutes per noise level with the defaults):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography.py --noises 0.10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography.py --noises 0.05
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography.py --noises 0.025
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from _common import metadata, set_threads, write_results  # noqa: E402
from bayesinv.methods.cond_score import CondScoreConfig  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402

#: Published cSDM RMSE (normalised units) of the mean and std fields against the reference.
PUBLISHED = {0.025: (0.025, 0.029), 0.05: (0.031, 0.032), 0.10: (0.051, 0.051)}
OUT = Path("out/elastography")


def normalise(mu: np.ndarray) -> np.ndarray:
    return (mu - el.MU_BACKGROUND) / (el.MU_INCLUSION - el.MU_BACKGROUND)


def throughput(num: int = 20) -> float:
    r"""scikit-fem solves per second in this process."""
    centers = torch.rand(num, 2, generator=torch.Generator().manual_seed(3)) * 0.6 + 0.2
    mu = el.inclusion_field(centers).numpy()
    el.solve_displacement(mu[:1])  # builds the solver
    t0 = time.perf_counter()
    el.solve_displacement(mu)
    return num / (time.perf_counter() - t0)


def training_pairs(ds, noise: float, seed: int) -> dict[str, torch.Tensor]:
    r"""(mu, y) with fresh truncated noise of level ``noise`` on the stored noise-free displacements."""
    u = torch.as_tensor(np.asarray(ds["_sim_displacement"].values), dtype=torch.float32)
    s = torch.full_like(u, noise * el.U_MAX)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = el.TruncatedNormal(u, s, u - 3 * s, u + 3 * s).sample()
    return {"mu": torch.as_tensor(np.asarray(ds["mu"].values)), "y": y}


def run_noise(noise: float, ds, args) -> dict:
    problem = el.make_problem(noise=noise)
    data = training_pairs(ds, noise, seed=int(noise * 1e4))
    config = CondScoreConfig(
        network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults), batch_size=args.batch_size,
        max_epochs=None, max_steps=args.max_steps, lr=args.lr, ema_decay=args.ema, patience=None, val_fraction=0.05,
        t_min=args.t_min,
    )  # fmt: skip
    saved = OUT / f"cond_score_{noise:g}.bayesinv"
    if args.reuse:
        post = bayesinv.load(saved)
        steps, t_min = post.info.get("train_steps"), post.config.get("t_min")
        if steps != args.max_steps or t_min != args.t_min:
            raise SystemExit(f"--reuse: {saved} was trained for {steps} steps with t_min={t_min}, "
                             f"not --max-steps {args.max_steps} --t-min {args.t_min}")
        fit_time = post.info["fit_time_s"]  # of the run that trained it
    else:
        t0 = time.perf_counter()
        post = bayesinv.fit(problem.model, method="cond_score", target="mu", data=data, seed=0, progress=False,
                            device="cpu", config=config)  # fmt: skip
        fit_time = time.perf_counter() - t0
        OUT.mkdir(parents=True, exist_ok=True)
        post.save(saved)
    rows = []
    for i in range(args.num_test):
        center, y = problem.draw(seed=100 + i)
        truth = normalise(el.inclusion_field(torch.as_tensor(center)).numpy())
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = problem.reference(y, data=ds, num_samples=1000, refine=args.refine, num_local=args.num_local, progress=False)
        ref_time = time.perf_counter() - t0
        ref_mu = normalise(ref.posterior["mu"].values.reshape(-1, el.GRID, el.GRID))
        t0 = time.perf_counter()
        options = {"rtol": args.rtol, "atol": args.rtol, "power": args.power} if args.sampler == "ode" else {}
        idata = post.infer(torch.as_tensor(y), args.num_draws, seed=i, sampler=args.sampler, **options)
        sample_time = time.perf_counter() - t0
        draws = normalise(idata.posterior["mu"].values.reshape(-1, el.GRID, el.GRID))
        stats = {k: idata.sample_stats[k].item() for k in ("nfe",) if k in idata.sample_stats}
        m, s = draws.mean(0), draws.std(0)
        rm, rs = ref_mu.mean(0), ref_mu.std(0)
        row = {
            "seed": 100 + i,
            "center": center.tolist(),
            "mean_rmse": float(np.sqrt(((m - rm) ** 2).mean())),
            "std_rmse": float(np.sqrt(((s - rs) ** 2).mean())),
            "mean_rmse_vs_truth": float(np.sqrt(((m - truth) ** 2).mean())),
            "ref_mean_rmse_vs_truth": float(np.sqrt(((rm - truth) ** 2).mean())),
            "ref_ess": float(ref.sample_stats["ess"]),
            "ref_center_sd": ref.posterior["center"].values.reshape(-1, 2).std(0).tolist(),
            "ref_time_s": ref_time,
            "sample_time_s": sample_time,
            "nfe": int(stats.get("nfe", -1)),
        }
        print(f"  σ_η={noise:g} test {i}: mean RMSE {row['mean_rmse']:.4f}, std RMSE {row['std_rmse']:.4f}, "
              f"vs truth {row['mean_rmse_vs_truth']:.4f} (ref {row['ref_mean_rmse_vs_truth']:.4f}), ESS {row['ref_ess']:.0f}, "
              f"sample {sample_time:.0f}s ({row['nfe']} NFE), ref {ref_time:.0f}s", flush=True)  # fmt: skip
        rows.append(row)
    info = post.info
    return {
        "noise": noise,
        "published_mean_rmse": PUBLISHED.get(noise, (None, None))[0],
        "published_std_rmse": PUBLISHED.get(noise, (None, None))[1],
        "mean_rmse": float(np.mean([r["mean_rmse"] for r in rows])),
        "std_rmse": float(np.mean([r["std_rmse"] for r in rows])),
        "fit_time_s": fit_time,
        "reused": str(saved) if args.reuse else None,
        "train_time_s": info.get("train_time_s"),
        "train_steps": info.get("train_steps"),
        "best_val_loss": info.get("best_val_loss"),
        "num_parameters": sum(p.numel() for p in post.net.parameters()),
        "sample_time_s": float(np.mean([r["sample_time_s"] for r in rows])),
        "tests": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noises", type=float, nargs="+", default=[0.10])
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--num-draws", type=int, default=32)
    parser.add_argument("--sampler", default="ode")
    parser.add_argument("--t-min", type=float, default=1e-3,
                        help="smallest diffusion time in training and sampling (1e-5, the library default, needs "
                             "more training than these CPU budgets: worse fields, twice the ODE evaluations)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="ODE rtol and atol")
    parser.add_argument("--power", type=float, default=2.0, help="ODE in r with t = (1 - r)^power (1: in t)")
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--num-local", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None, help="suffix of the results file")
    parser.add_argument("--reuse", action="store_true",
                        help="load out/elastography/cond_score_<σ_η>.bayesinv (trained by an earlier run with the same "
                             "--max-steps) instead of fitting; the fit time reported is that run's")
    args = parser.parse_args()
    set_threads(args.threads)
    payload = {"meta": metadata("2-core CPU, no GPU, shared"), "args": vars(args)}
    payload["solves_per_second"] = throughput()
    print(f"scikit-fem: {payload['solves_per_second']:.1f} solves/s in one process", flush=True)
    t0 = time.perf_counter()
    ds = el.make_problem().simulate_reference_set(args.num_train, path=OUT / f"prior_set_{args.num_train}.zarr", progress=False)
    payload["prior_set_load_or_simulate_s"] = time.perf_counter() - t0
    for noise in args.noises:
        res = run_noise(noise, ds, args)
        payload["result"] = res
        path = write_results(f"elastography_{noise:g}" + (f"_{args.tag}" if args.tag else ""), payload)
        pub = PUBLISHED.get(noise, (float("nan"),) * 2)
        print("| σ_η | mean RMSE (published) | std RMSE (published) | fit | sampling / inclusion |")
        print(f"| {noise:g} | {res['mean_rmse']:.3f} ({pub[0]}) | {res['std_rmse']:.3f} ({pub[1]}) | {res['fit_time_s']:.0f} s "
              f"| {res['sample_time_s']:.0f} s ({args.num_draws} draws) |")  # fmt: skip
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
