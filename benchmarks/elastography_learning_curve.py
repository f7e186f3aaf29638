r"""Elastography (56 × 56), field target: posterior accuracy of cond_score against CPU-minutes of training.

One training run of ``method="cond_score"`` on ``target="mu"`` (U-Net, y as an extra channel; the
published set-up of the elastography benchmark) at one noise level, stopped and resumed from its
checkpoint at each budget of ``--budgets`` (CPU-minutes of training, process CPU time, so the figure
does not depend on other jobs' load). At every budget the posterior is saved to
``out/elastography/elastography_curve_<σ_η>[_<tag>]_<budget>min.bayesinv`` and evaluated as ``elastography.py`` does: on the
ten test inclusions ``draw(seed=100 + i)``, the RMSE between the pixel-wise posterior mean (and std)
fields of cond_score's draws and of the importance-sampling reference (cached per inclusion by
``elastography_latent.references``), beside the published cSDM figure.

The learning rate is constant (with an EMA of the weights), so resuming at a larger budget is the same
run as one that never stopped. Steps per budget are estimated from the CPU time per step measured so
far; the budget actually spent is recorded.

Writes ``benchmarks/results/elastography_curve_<σ_η>[_<tag>].json`` after every budget and prints a
table.

Run (2-core CPU, one thread; the budgets add up, 60 CPU-minutes ≈ 60 minutes on a free core):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography_learning_curve.py --noise 0.05 --budgets 15 60 180
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography_learning_curve.py --noise 0.05 --budgets 15 \
        --base-channels 16 --precision bfloat16 --tag w16_bf16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography_learning_curve.py --noise 0.05 --budgets 15 60 \
        --base-channels 16 --precision bfloat16 --tag w16_bf16 --resume      # continues the run above to 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
import bayesinv.amortized.fit as fit_module  # noqa: E402
from _common import RESULTS, metadata, set_threads, write_results  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402
from elastography import OUT, PUBLISHED, normalise, training_pairs  # noqa: E402
from elastography_latent import field_rmse, references  # noqa: E402


def fit_to(problem, data, args, steps: int, checkpoint: Path, resume: bool):
    r"""Trains (or resumes) to ``steps`` optimiser steps; returns the posterior and the CPU seconds spent in training."""
    cpu = []
    saved = fit_module.train

    def timed(*a, **k):
        c0 = time.process_time()
        try:
            return saved(*a, **k)
        finally:
            cpu.append(time.process_time() - c0)

    fit_module.train = timed
    try:
        post = bayesinv.fit(
            problem.model, method="cond_score", target="mu", data=data, seed=0, progress=False, device="cpu",
            network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
            batch_size=args.batch_size, max_epochs=None, max_steps=steps, lr=args.lr, lr_schedule=None,
            ema_decay=args.ema, patience=None, val_fraction=0.05, t_min=args.t_min, precision=args.precision,
            checkpoint=checkpoint, resume=resume,
        )  # fmt: skip
    finally:
        fit_module.train = saved
    return post, sum(cpu)


def evaluate(post, problem, ref: dict, args) -> dict:
    r"""Mean/std RMSE against the reference over the test inclusions (``--num-draws`` draws each)."""
    rows = []
    for i in range(args.num_test):
        y = torch.as_tensor(ref["y"][i])
        t0 = time.perf_counter()
        idata = post.infer(y, args.num_draws, seed=i, sampler="ode", rtol=args.rtol, atol=args.rtol)
        draws = normalise(idata.posterior["mu"].values.reshape(-1, el.GRID, el.GRID))
        nfe = int(idata.sample_stats["nfe"].item()) if "nfe" in idata.sample_stats else -1
        rows.append({**field_rmse(draws, ref, i), "sample_time_s": time.perf_counter() - t0, "nfe": nfe})
    return {
        "mean_rmse": float(np.mean([r["mean_rmse"] for r in rows])),
        "std_rmse": float(np.mean([r["std_rmse"] for r in rows])),
        "mean_rmse_vs_truth": float(np.mean([r["mean_rmse_vs_truth"] for r in rows])),
        "tests": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--budgets", type=float, nargs="+", default=[15, 60, 180], help="CPU-minutes of training, increasing")
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-test", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--t-min", type=float, default=1e-3)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="the training loss's precision")
    p.add_argument("--num-draws", type=int, default=32)
    p.add_argument("--rtol", type=float, default=1e-3, help="ODE rtol and atol")
    p.add_argument("--refine", type=int, default=2)
    p.add_argument("--num-local", type=int, default=400)
    p.add_argument("--probe-steps", type=int, default=40, help="steps of the first segment, which measures the step cost")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default=None)
    p.add_argument("--resume", action="store_true", help="continue this tag's run from its checkpoint and results file to larger budgets")
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = p.parse_args()
    if sorted(args.budgets) != list(args.budgets) or args.budgets[0] <= 0:
        raise SystemExit(f"--budgets must be positive and increasing, got {args.budgets}")
    set_threads(args.threads)
    store = OUT / f"prior_set_{args.num_train}.zarr"
    ds = bayesinv.data.open_data(store) if store.exists() else None
    if ds is None or ds.sizes["draw"] < args.num_train:  # simulate (or finish) it; a complete store is only read
        ds = el.make_problem().simulate_reference_set(args.num_train, path=store, progress=False)
    problem = el.make_problem(noise=args.noise)
    data = training_pairs(ds, args.noise, seed=int(args.noise * 1e4))
    ref = references(problem, ds, args)
    name = f"elastography_curve_{args.noise:g}" + (f"_{args.tag}" if args.tag else "")
    out = {"meta": metadata(args.machine), "args": vars(args), "published": PUBLISHED.get(args.noise), "points": []}
    checkpoint = OUT / f"{name}.ckpt"
    done = json.loads((RESULTS / f"{name}.json").read_text()) if args.resume and (RESULTS / f"{name}.json").exists() else None
    if done is not None and done["points"] and checkpoint.exists():
        # continue the run this tag's results file records: its checkpoint is at its last budget's steps
        last = done["points"][-1]
        out["points"], out["resumed_from"] = done["points"], done["meta"]
        steps, cpu_total = int(last["train_steps"]), 60 * float(last["train_cpu_min"])
    else:
        if args.resume:
            raise SystemExit(f"--resume: no checkpoint {checkpoint} with a results file {RESULTS / (name + '.json')} to continue")
        checkpoint.unlink(missing_ok=True)  # the CPU time of an earlier run is not known: start afresh
        post, cpu_total = fit_to(problem, data, args, max(args.probe_steps, 1), checkpoint, False)
        steps = post.info["train_steps"]
    for budget in args.budgets:
        if any(pt["budget_cpu_min"] == budget for pt in out["points"]):
            continue
        while cpu_total < 0.98 * budget * 60:
            per_step = cpu_total / steps
            target = steps + max(1, int((budget * 60 - cpu_total) / per_step))
            post, cpu = fit_to(problem, data, args, target, checkpoint, True)
            steps, cpu_total = post.info["train_steps"], cpu_total + cpu
            print(f"  {steps} steps, {cpu_total / 60:.1f} CPU-min of training ({cpu_total / steps:.3f} CPU s per step)", flush=True)
        path = OUT / f"{name}_{budget:g}min.bayesinv"
        post.save(path)
        res = evaluate(post, problem, ref, args)
        point = {"budget_cpu_min": budget, "train_cpu_min": cpu_total / 60, "train_steps": steps,
                 "cpu_s_per_step": cpu_total / steps, "best_val_loss": post.info.get("best_val_loss"), "saved": str(path), **res}  # fmt: skip
        out["points"].append(point)
        write_results(name, out)
        pub = PUBLISHED.get(args.noise, (float("nan"),) * 2)
        print(f"σ_η={args.noise:g}, {budget:g} CPU-min ({steps} steps): mean RMSE {res['mean_rmse']:.4f} "
              f"({res['mean_rmse'] / pub[0]:.2f}× published {pub[0]}), std RMSE {res['std_rmse']:.4f} "
              f"({res['std_rmse'] / pub[1]:.2f}× published {pub[1]})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
