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
far; the budget actually spent is recorded. The training CPU time is the training loop's own
(``post.info["train_cpu_s"]``), which the checkpoint carries: ``--resume`` continues a killed run from its
last checkpoint with the CPU time exact. A checkpoint written before checkpoints carried it needs
``--checkpoint-cpu-min`` (an estimate, recorded as one in the results file).

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
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from _common import RESULTS, metadata, set_threads, write_results  # noqa: E402
from bayesinv.amortized.training import read_checkpoint, write_checkpoint  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402
from elastography import OUT, PUBLISHED, normalise, training_pairs  # noqa: E402
from elastography_latent import field_rmse, references  # noqa: E402


def fit_to(problem, data, args, steps: int, checkpoint: Path, resume: bool):
    r"""Trains (or resumes) to ``steps`` optimiser steps; returns the posterior and the training loop's CPU seconds
    so far (those of the checkpoint's earlier segments included)."""
    post = bayesinv.fit(
        problem.model, method="cond_score", target="mu", data=data, seed=0, progress=False, device="cpu",
        network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
        batch_size=args.batch_size, max_epochs=None, max_steps=steps, lr=args.lr, lr_schedule=None,
        ema_decay=args.ema, patience=None, val_fraction=0.05, t_min=args.t_min, precision=args.precision,
        checkpoint=checkpoint, resume=resume,
    )  # fmt: skip
    cpu = post.info.get("train_cpu_s")
    if cpu is None:
        raise SystemExit(f"{checkpoint} does not record its training CPU time: pass --checkpoint-cpu-min")
    return post, float(cpu)


def checkpoint_state(checkpoint: Path, args, min_step: int) -> tuple[int, float, dict | None]:
    r"""Steps and training CPU seconds of ``checkpoint`` (refused if before ``min_step``, the results file's last
    point); for a checkpoint that predates CPU accounting, the ``--checkpoint-cpu-min`` estimate is written into it
    (atomically) and returned as an estimate record."""
    ck = read_checkpoint(checkpoint)
    if int(ck["step"]) < min_step:
        raise SystemExit(f"{checkpoint} is at step {ck['step']}, before the results file's last point: not this run's")
    if math.isfinite(ck.get("cpu", math.nan)):
        if args.checkpoint_cpu_min is not None:
            raise SystemExit(f"{checkpoint} records its CPU time ({ck['cpu'] / 60:.1f} min): drop --checkpoint-cpu-min")
        return int(ck["step"]), float(ck["cpu"]), None
    if args.checkpoint_cpu_min is None:
        raise SystemExit(f"{checkpoint} (step {ck['step']}) predates CPU accounting: pass --checkpoint-cpu-min "
                         "with the training CPU-minutes it holds (recorded as an estimate)")  # fmt: skip
    ck["cpu"] = 60.0 * args.checkpoint_cpu_min
    write_checkpoint(checkpoint, ck)
    return int(ck["step"]), ck["cpu"], {"step": int(ck["step"]), "cpu_min": args.checkpoint_cpu_min, "note": args.estimate_note}


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
    p.add_argument("--checkpoint-cpu-min", type=float, default=None,
                   help="--resume from a checkpoint that predates CPU accounting: the training CPU-minutes it holds (an estimate)")
    p.add_argument("--estimate-note", default="", help="how the --checkpoint-cpu-min estimate was made (recorded with it)")
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
    post = None
    done = json.loads((RESULTS / f"{name}.json").read_text()) if args.resume and (RESULTS / f"{name}.json").exists() else None
    if done is not None and done["points"] and checkpoint.exists():
        # continue the run this tag's results file records from its checkpoint (its last budget's steps, or later
        # if the run was stopped between budgets): the checkpoint holds the steps and the CPU time spent
        earlier = done.get("resumed_from", [])
        out["points"], out["resumed_from"] = done["points"], [*(earlier if isinstance(earlier, list) else [earlier]), done["meta"]]
        out["cpu_estimates"] = done.get("cpu_estimates", [])
        steps, cpu_total, estimate = checkpoint_state(checkpoint, args, int(done["points"][-1]["train_steps"]))
        if estimate is not None:
            out["cpu_estimates"].append(estimate)
        print(f"resuming at step {steps}, {cpu_total / 60:.1f} CPU-min of training"
              + (" (estimated)" if estimate is not None else ""), flush=True)  # fmt: skip
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
            post, cpu_total = fit_to(problem, data, args, target, checkpoint, True)
            steps = post.info["train_steps"]
            print(f"  {steps} steps, {cpu_total / 60:.1f} CPU-min of training ({cpu_total / steps:.3f} CPU s per step)", flush=True)
        if post is None:  # resumed past this budget already: the checkpoint's posterior, nothing trained
            post, cpu_total = fit_to(problem, data, args, steps, checkpoint, True)
        path = OUT / f"{name}_{budget:g}min.bayesinv"
        post.save(path)
        res = evaluate(post, problem, ref, args)
        point = {"budget_cpu_min": budget, "train_cpu_min": cpu_total / 60, "train_steps": steps,
                 "cpu_s_per_step": cpu_total / steps, "best_val_loss": post.info.get("best_val_loss"), "saved": str(path),
                 "cpu_includes_estimate": bool(out.get("cpu_estimates")), **res}  # fmt: skip
        out["points"].append(point)
        write_results(name, out)
        pub = PUBLISHED.get(args.noise, (float("nan"),) * 2)
        print(f"σ_η={args.noise:g}, {budget:g} CPU-min ({steps} steps): mean RMSE {res['mean_rmse']:.4f} "
              f"({res['mean_rmse'] / pub[0]:.2f}× published {pub[0]}), std RMSE {res['std_rmse']:.4f} "
              f"({res['std_rmse'] / pub[1]:.2f}× published {pub[1]})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
