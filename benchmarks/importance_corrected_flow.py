r"""Importance-corrected conditional flow on a linear-Gaussian problem.

A conditional flow q(θ | y) is trained once (amortized) on simulations of
``LinearGaussian(dim)``; for several observations it is then used as the proposal of
self-normalised importance sampling, ``bayesinv.infer(model, y, method="importance",
proposal=post)``. Reported per observation: the ESS fraction of the importance weights,
and the error of the raw flow and of the importance-corrected draws against the
analytic posterior (max |mean error| / posterior std, max relative std error, and the
KL(q ‖ p) estimate E_q[log q − log p] of the raw flow).

Usage:
    python benchmarks/importance_corrected_flow.py --dim 10 --num-simulations 20000 \
        --observations 5 --out benchmarks/results/flow_importance_linear_gaussian.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.stats import multivariate_normal

import bayesinv
from bayesinv.models.toy import LinearGaussian

from _common import metadata, set_threads


def errors(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    std = np.sqrt(np.diag(cov))
    return {
        "max_abs_mean_error_over_std": float(np.max(np.abs(draws.mean(0) - mean) / std)),
        "max_rel_std_error": float(np.max(np.abs(draws.std(0) / std - 1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--flow", default="nsf")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--num-proposals", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = parser.parse_args()
    set_threads(args.threads)

    problem = LinearGaussian(dim=args.dim, noise=args.noise, seed=0)
    t0 = time.perf_counter()
    post = bayesinv.fit(
        problem.model, method="flow", flow=args.flow, num_simulations=args.num_simulations,
        max_epochs=args.max_epochs, seed=args.seed, progress=False,
    )  # fmt: skip
    fit_time = time.perf_counter() - t0
    print(f"fit: {fit_time:.1f} s, {post.info['train_steps']} steps, best val NLL {post.info['best_val_loss']:.3f}")

    rows = []
    for i in range(args.observations):
        _, y = problem.draw(seed=1000 + i)
        mean, cov = problem.posterior(y)
        t1 = time.perf_counter()
        values, log_q = post.sample_and_log_prob(y, args.num_samples)
        raw_time = time.perf_counter() - t1
        raw = values["theta"].double().numpy()
        kl = float(np.mean(log_q.numpy() - multivariate_normal(mean, cov).logpdf(raw)))
        t1 = time.perf_counter()
        idata = bayesinv.infer(
            problem.model, y, method="importance", proposal=post, num_samples=args.num_samples,
            num_proposals=args.num_proposals, seed=i, progress=False,
        )  # fmt: skip
        is_time = time.perf_counter() - t1
        corrected = idata.posterior["theta"].values.reshape(-1, args.dim)
        row = {
            "observation": i,
            "ess_fraction": float(idata.sample_stats["ess_fraction"]),
            "kl_flow_to_posterior": kl,
            "flow": errors(raw, mean, cov),
            "importance_corrected": errors(corrected, mean, cov),
            "flow_sample_time_s": raw_time,
            "importance_time_s": is_time,
        }
        rows.append(row)
        print(
            f"obs {i}: ESS {row['ess_fraction']:.1%}, KL(q||p) {kl:.3f}; flow mean err/std"
            f" {row['flow']['max_abs_mean_error_over_std']:.3f} std err {row['flow']['max_rel_std_error']:.3f};"
            f" corrected mean err/std {row['importance_corrected']['max_abs_mean_error_over_std']:.3f}"
            f" std err {row['importance_corrected']['max_rel_std_error']:.3f}"
        )
    ess = [r["ess_fraction"] for r in rows]
    summary = {
        "benchmark": "importance_corrected_flow",
        **metadata(args.machine),
        "args": vars(args),
        "fit_time_s": fit_time,
        "train_steps": post.info["train_steps"],
        "ess_fraction_mean": float(np.mean(ess)),
        "ess_fraction_min": float(np.min(ess)),
        "rows": rows,
    }
    print(f"ESS fraction: mean {np.mean(ess):.1%}, min {np.min(ess):.1%}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
