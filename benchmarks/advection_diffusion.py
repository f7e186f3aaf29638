r"""Advection-diffusion boundary flux: cond_score (and flow) against the reference posterior.

For each sensor-noise level σ_ε and for all sensors / the masked variant (each sensor
on with probability 0.7, off readings −1; ONE network trained on random masks and
conditioned on the mask), fits an amortized posterior of ``flux`` (30,) on
``--num-simulations`` joint draws and compares, on ``--num-test`` test pairs drawn from
the prior (seed 1000 + i):

- the sample-averaged absolute error of the posterior mean against the true flux,
  normalised by the average flux, per segment e_k = mean_i |m_ik − f_ik| / mean_{i,k} f_ik
  and averaged over segments (the drift-diffusion paper's metric; ~5.9% at zero noise);
- the same distance between the learned and the reference posterior means;
- the posterior standard deviation per segment (averaged over test pairs) against the
  prior's (clipped prior, 100,000 draws).

The reference is the model's own: the exact Gaussian posterior of the unclipped model
corrected for clipping by importance sampling (``AdvectionDiffusion.reference``).
The Gaussian noise law needs σ_ε > 0, so "zero noise" is σ_ε = 0.001 (readings are
O(10)). Writes ``benchmarks/results/advection_diffusion[_<tag>].json`` and prints tables.

Run (2-core CPU: about 10 minutes each):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advection_diffusion.py --variant full
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/advection_diffusion.py --variant masked
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
from bayesinv.models import advection_diffusion as ad  # noqa: E402

#: Published average error of the posterior mean at zero noise (drift-diffusion paper, §5.2).
PUBLISHED_ZERO_NOISE = 0.059
NOISES = (0.001, 0.005, 0.02, 0.1, 0.5, 2.0)


def prior_std(num: int = 100_000, seed: int = 0) -> np.ndarray:
    r"""Standard deviation per segment of the clipped GP prior of ``flux``."""
    p = ad.make_problem()
    rng = np.random.default_rng(seed)
    raw = rng.multivariate_normal(p.prior_mean, p.prior_cov, size=num)
    return np.maximum(raw, 0).std(0)


def test_set(problem: ad.AdvectionDiffusion, num: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [problem.draw(seed=1000 + i) for i in range(num)]
    return np.stack([f for f, _ in pairs]), np.stack([y for _, y in pairs])


def mean_error(est: np.ndarray, truth: np.ndarray) -> np.ndarray:
    r"""Per segment: mean over test pairs of |est − truth|, divided by the average true flux."""
    return np.abs(est - truth).mean(0) / truth.mean()


def references(problem, ys, num_samples: int, num_proposals: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    r"""Reference posterior means and stds ``(T, 30)``, smallest ESS and wall time."""
    t0 = time.perf_counter()
    means, stds, ess = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, y in enumerate(ys):
            idata = problem.reference(y, num_samples=num_samples, num_proposals=num_proposals, seed=i, progress=False)
            draws = idata.posterior["flux"].values.reshape(-1, 30)
            means.append(draws.mean(0))
            stds.append(draws.std(0))
            ess.append(float(idata.sample_stats["ess"]))
    return np.stack(means), np.stack(stds), float(min(ess)), time.perf_counter() - t0


def fit_and_sample(method: str, problem, ys, args) -> dict:
    opts = dict(target="flux", num_simulations=args.num_simulations, seed=0, progress=False, device="cpu")
    if method == "cond_score":
        opts.update(max_epochs=args.epochs, batch_size=256, patience=20)
    else:
        opts.update(max_epochs=args.epochs)
    masked_cond = problem.masked and method == "cond_score"  # flow has no condition=: the mask is read off y (= −1)
    if masked_cond:
        opts["condition"] = "mask"
    t0 = time.perf_counter()
    post = bayesinv.fit(problem.model, method=method, **opts)
    fit_time = time.perf_counter() - t0
    y_in = torch.as_tensor(ys)
    cond = {"y": y_in, "mask": ad.mask_from_y(y_in)} if masked_cond else y_in
    t0 = time.perf_counter()
    draws = post.sample(cond, args.num_draws, seed=1)["flux"].numpy()  # (T, n, 30)
    sample_time = time.perf_counter() - t0
    info = dict(getattr(post, "info", {}) or {})
    return {
        "mean": draws.mean(1),
        "std": draws.std(1),
        "fit_time_s": fit_time,
        "train_time_s": info.get("train_time_s"),
        "train_steps": info.get("train_steps"),
        "stopped_early": info.get("stopped_early"),
        "sample_time_s": sample_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("full", "masked"), default="full")
    parser.add_argument("--noises", type=float, nargs="+", default=list(NOISES))
    parser.add_argument("--methods", nargs="+", default=["cond_score"])
    parser.add_argument("--num-simulations", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--num-test", type=int, default=50)
    parser.add_argument("--num-draws", type=int, default=500)
    parser.add_argument("--ref-proposals", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None, help="suffix of the results file")
    args = parser.parse_args()
    set_threads(args.threads)
    masked = args.variant == "masked"
    machine = "2-core CPU, no GPU, shared"
    payload = {"meta": metadata(machine), "args": vars(args), "published_zero_noise_error": PUBLISHED_ZERO_NOISE}
    sd_prior = prior_std()
    payload["prior_std"] = sd_prior.tolist()
    rows = []
    for noise in args.noises:
        problem = ad.make_problem(noise=noise, masked=masked)
        truth, ys = test_set(problem, args.num_test)
        ref_mean, ref_std, ess, ref_time = references(problem, ys, 2000, args.ref_proposals)
        row = {
            "noise": noise,
            "masked": masked,
            "reference": {
                "error_per_segment": mean_error(ref_mean, truth).tolist(),
                "error": float(mean_error(ref_mean, truth).mean()),
                "std_per_segment": ref_std.mean(0).tolist(),
                "min_ess": ess,
                "time_s": ref_time,
            },
        }
        for method in args.methods:
            res = fit_and_sample(method, problem, ys, args)
            err = mean_error(res["mean"], truth)
            row[method] = {
                "error_per_segment": err.tolist(),
                "error": float(err.mean()),
                "error_vs_reference": float(mean_error(res["mean"], ref_mean).mean() * ref_mean.mean() / truth.mean()),
                "std_per_segment": res["std"].mean(0).tolist(),
                "std_rmse_vs_reference": float(np.sqrt(((res["std"] - ref_std) ** 2).mean())),
                **{k: res[k] for k in ("fit_time_s", "train_time_s", "train_steps", "stopped_early", "sample_time_s")},
            }
            print(
                f"σ_ε={noise:<6} {'masked' if masked else 'full  '} {method:10s} err {err.mean():.4f} (ref {row['reference']['error']:.4f},"
                f" |m-m_ref| {row[method]['error_vs_reference']:.4f}) std {res['std'].mean():.3f} (ref {ref_std.mean():.3f},"
                f" prior {sd_prior.mean():.3f}) fit {res['fit_time_s']:.0f}s sample {res['sample_time_s']:.1f}s",
                flush=True,
            )
        rows.append(row)
    payload["rows"] = rows
    name = "advection_diffusion_" + args.variant + (f"_{args.tag}" if args.tag else "")
    path = write_results(name, payload)

    print(f"\n{args.variant}: average error of the posterior mean / average flux (published ~{PUBLISHED_ZERO_NOISE:.3f} at zero noise)")
    head = "| σ_ε | reference | " + " | ".join(f"{m} | {m} vs ref | {m} sd / ref sd" for m in args.methods) + " | ref sd / prior sd |"
    print(head)
    for row in rows:
        ref = row["reference"]
        cells = [f"{row['noise']:g}", f"{ref['error']:.4f}"]
        for m in args.methods:
            r = row[m]
            cells += [f"{r['error']:.4f}", f"{r['error_vs_reference']:.4f}", f"{np.mean(r['std_per_segment']) / np.mean(ref['std_per_segment']):.2f}"]
        cells.append(f"{np.mean(ref['std_per_segment']) / sd_prior.mean():.3f}")
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
