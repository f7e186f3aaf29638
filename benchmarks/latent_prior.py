r"""latent_prior on Gaussian deblurring: MAP of the three latent reparameterisations against the truth and the exact posterior.

One flow prior (:class:`bayesinv.nets.multiscale_flow.MultiscaleFlow`) is trained on prior
draws of the image ``x`` of :class:`bayesinv.models.deblurring.Deblurring` (no simulation,
no observation). Held-out images (draws of the same prior, seeds 1000, 1001, ...) are blurred
and observed with noise σ; for each, the MAP of ``reparam="none"`` (plain latent inversion),
``"beta"`` (β‖z‖², β = ½) and ``"gaussianize"`` (the Gaussianization layers) is scored by PSNR
and SSIM against the truth (scikit-image, data range of the true image), beside the exact
posterior mean (the Bayes estimate under the true Gaussian-process prior, an upper reference).
The same trained prior is then used, without retraining, at a second noise level (the model's
likelihood changes, the prior does not). With ``--mala`` the MALA posterior mean and the
pixel-wise sd are compared with the exact ones on the first images.

With ``--problem mri`` the same is done on accelerated Cartesian MRI
(:class:`bayesinv.models.imaging.AcceleratedMRI`, textured ellipse phantoms): the levels are
acceleration factors (``--levels 4 8``, one prior for both masks) and the reference row is the
zero-filled inverse FFT (there is no exact posterior).

Example:
    python benchmarks/latent_prior.py --quick
    python benchmarks/latent_prior.py --size 16 --train 4000 --epochs 40 --images 4 --noises 0.05 0.2 --mala 2
    python benchmarks/latent_prior.py --problem mri --size 16 --train 3000 --epochs 30 --images 3 --levels 4 8
    python benchmarks/latent_prior.py --problem traveltime --size 16 --train 3000 --epochs 30 --images 3 --levels 0.005 0.02

With ``--problem traveltime`` it is eikonal travel-time tomography
(:class:`bayesinv.models.travel_time.TravelTimeTomography`: 4 sources on the left edge, 12
receivers on the others, the velocity field ``v`` the target); the levels are noise levels in
seconds (one prior for both) and the reference row is the straight-ray damped least squares.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import bayesinv
from bayesinv.models.deblurring import Deblurring

from _common import RESULTS, metadata, set_threads

REPARAMS = ("none", "beta", "gaussianize")


def scores(truth: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    r"""PSNR and SSIM of ``estimate`` against ``truth`` (data range of the truth), and the relative L1 error."""
    rng = float(truth.max() - truth.min())
    return {
        "psnr": float(peak_signal_noise_ratio(truth, estimate, data_range=rng)),
        "ssim": float(structural_similarity(truth, estimate, data_range=rng)),
        "rel_l1": float(np.abs(estimate - truth).sum() / np.abs(truth).sum()),
    }


def write(payload: dict, name: str) -> str:
    r"""Writes the results atomically (temporary file, ``os.replace``)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8x8 images, a tiny flow, 2 images, short optimisations")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--train", type=int, default=4000, help="prior draws to train the flow on")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--problem", choices=("deblurring", "mri", "traveltime"), default="deblurring")
    parser.add_argument("--noises", type=float, nargs="+", default=[0.05, 0.2], help="deblurring noise levels")
    parser.add_argument("--levels", type=float, nargs="+", default=None,
                        help="MRI acceleration factors (default 4 8), travel-time noise in s (default 0.005 0.02)")
    parser.add_argument("--map-steps", type=int, default=300)
    parser.add_argument("--mala", type=int, default=0, help="images (of the first noise level) sampled by MALA")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="latent_prior")
    args = parser.parse_args()
    if args.quick:
        args.size, args.train, args.epochs, args.images, args.map_steps, args.name = 8, 500, 5, 2, 50, args.name + "_quick"
    set_threads(args.threads)
    torch.manual_seed(0)
    machine = "2-core CPU, no GPU, shared with other jobs"
    mri = args.problem in ("mri", "traveltime")  # no exact posterior: a classical reconstruction is the reference row
    target, ref_key = "x", "exact_mean"
    if args.problem == "mri":
        from bayesinv.models.imaging import AcceleratedMRI

        args.noises = args.levels or [4, 8]
        make = lambda level: AcceleratedMRI(size=args.size, acceleration=level)  # noqa: E731
        args.name = args.name.replace("latent_prior", "latent_prior_mri")
        ref_key = "zero_filled"
    elif args.problem == "traveltime":
        from bayesinv.models.travel_time import TravelTimeTomography

        args.noises = args.levels or [0.005, 0.02]
        make = lambda level: TravelTimeTomography(size=args.size, num_sources=4, num_receivers=12, noise=level)  # noqa: E731
        args.name = args.name.replace("latent_prior", "latent_prior_traveltime")
        target, ref_key = "v", "straight_ray"
    else:
        make = lambda level: Deblurring(size=args.size, noise=level)  # noqa: E731
    base = make(args.noises[0])
    t0 = time.perf_counter()
    post = bayesinv.fit(base.model, method="latent_prior", target=target, num_simulations=args.train, max_epochs=args.epochs,
                        num_transforms=4, hidden=(32,), scales=2, progress=False, seed=0)  # fmt: skip
    fit_s = time.perf_counter() - t0
    print(f"fit {fit_s:.0f} s, {post.info['train_steps']} steps, best val NLL/dim {post.info['best_val_loss']:.3f}", flush=True)
    payload = {"meta": metadata(machine), "settings": vars(args), "fit_time_s": fit_s, "fit_info": post.info, "rows": []}
    for noise in args.noises:
        problem = make(noise)
        post.attach(problem.model)  # the same prior, the model of this noise level / mask
        for i in range(args.images):
            x, y = problem.draw(seed=1000 + i)
            if args.problem == "traveltime":
                mean, sd = problem.straight_ray_baseline(y), None
            else:
                mean, sd = (problem.baseline(y), None) if mri else problem.posterior(y)
            row = {"noise": noise, "image": i, ref_key: scores(x, mean)}
            for rep in REPARAMS:
                t1 = time.perf_counter()
                est = post.map(y, reparam=rep, map_steps=args.map_steps, seed=i)[target].numpy()
                row[rep] = {**scores(x, est), **({} if mri else {"vs_exact_psnr": scores(mean, est)["psnr"]}), "time_s": time.perf_counter() - t1,
                            **post.last_map[0]}  # fmt: skip
            if noise == args.noises[0] and i < args.mala and not mri:
                t1 = time.perf_counter()
                idata = post.infer(y, num_samples=1000, seed=i, reparam="beta", map_steps=args.map_steps, warmup=500)
                draws = idata.posterior["x"].values.reshape(-1, args.size, args.size)
                row["mala"] = {**scores(x, draws.mean(0)), "vs_exact_psnr": scores(mean, draws.mean(0))["psnr"],
                               "sd_mean": float(draws.std(0).mean()), "exact_sd_mean": float(sd.mean()),
                               "sd_rel_error": float(np.abs(draws.std(0) / sd - 1).mean()),
                               "coverage_90": float(np.mean(np.abs(x - draws.mean(0)) <= 1.645 * draws.std(0))),
                               "accept_rate": float(idata.sample_stats["accept_rate"]), "time_s": time.perf_counter() - t1}  # fmt: skip
            payload["rows"].append(row)
            print(json.dumps({k: (v if not isinstance(v, dict) else {kk: round(vv, 3) for kk, vv in v.items() if isinstance(vv, float)})
                              for k, v in row.items()}), flush=True)  # fmt: skip
            path = write(payload, args.name)
    summary = {}
    for noise in args.noises:
        rows = [r for r in payload["rows"] if r["noise"] == noise]
        for key in ("exact_mean", "zero_filled", "straight_ray", *REPARAMS, "mala"):
            have = [r[key] for r in rows if key in r]
            if have:
                summary[f"{noise}/{key}"] = {m: float(np.mean([h[m] for h in have])) for m in ("psnr", "ssim", "rel_l1")}
    payload["summary"] = summary
    path = write(payload, args.name)
    print(json.dumps(summary, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
