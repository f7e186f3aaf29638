r"""score_prior: one learned prior, several operators and noise levels, no retraining.

1. **Deblurring** (``bayesinv.models.deblurring``, 8 × 8, exact Gaussian posterior): one
   prior (MLP score) trained on prior draws; DPS (``step_rule="plain"`` and ``"normalized"``) at two noise levels
   (the model it was fitted with, then another one attached), posterior-mean RMSE against
   the exact mean (and relative to the exact mean's RMS) and mean sd against the exact sd,
   over ``--observations`` observations.
2. **Sparse-view CT and accelerated MRI** (``bayesinv.models.imaging``, 32 × 32 ellipse
   phantoms): ONE prior (by default a 16-channel U-Net trained in bfloat16 autocast,
   ``--network mlp`` for the earlier MLP) trained on phantoms serves CT with 16 and 8 views and MRI at
   4× and 8× acceleration, each at two noise levels. PSNR / SSIM (scikit-image) of the
   posterior mean of ``--draws`` draws against the truth, on ``--phantoms`` test phantoms,
   for the classical baseline (filtered back-projection / zero-filled inverse FFT), the
   total-variation reconstruction (its weight chosen on the validation phantoms by
   ``choose_tv_weight``), DPS (``step_rule="normalized"``, ζ chosen on the validation phantoms)
   and the data-consistency step (λ chosen by ``choose_lambda``), with the coverage of the
   pixel-wise central 90 % intervals of the draws. With ``--cond-score-steps N`` cond_score
   (the same U-Net, N steps) is trained on CT with 16 views at noise 0.5 and scored on the rows
   of that operator (at noise 2.0 without retraining); the other operators' observations have
   another shape, which an amortized posterior cannot take without retraining. The trained
   networks are saved under ``out/score_prior/``; ``--reuse`` loads them.

3. **Travel-time tomography** (``--traveltime``, only this part; ``bayesinv.models.travel_time``, 16 × 16
   velocity fields, 4 sources, 12 receivers, the set-up of ``benchmarks/latent_prior.py --problem traveltime``):
   one prior (the U-Net) trained on prior velocity fields, DPS through the differentiable eikonal solver at
   noise 5 and 20 ms (ζ chosen on validation fields), PSNR / SSIM of the posterior mean on the same test
   fields (``draw(seed=1000 + i)``) as the latent-prior benchmark, against the straight-ray baseline, and
   the coverage of the 90 % intervals.

Raw results: ``benchmarks/results/score_prior[_quick][_deblurring|_imaging|_traveltime].json`` (the last part
with ``--skip-imaging`` / ``--skip-deblurring``).

Usage::

    python benchmarks/score_prior.py            # the table of docs/benchmarks.md (both parts may run
                                                # side by side: --skip-imaging, --skip-deblurring)
    python benchmarks/score_prior.py --quick    # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import bayesinv
from bayesinv.methods.score_prior import choose_lambda
from bayesinv.models.deblurring import Deblurring
from bayesinv.models.imaging import AcceleratedMRI, SparseViewCT, choose_tv_weight, psnr_ssim

try:
    from benchmarks._common import metadata, set_threads, write_results
except ImportError:  # run as a script
    from _common import metadata, set_threads, write_results

MACHINE = "2-core CPU, no GPU, shared with other jobs"
OUT = Path("out/score_prior")


def deblurring(args) -> list[dict]:
    base = Deblurring(8, noise=0.3)
    t0 = time.perf_counter()
    post = bayesinv.fit(base.model, method="score_prior", target="x", num_simulations=20_000, seed=0, network="mlp",
                        hidden=(256, 256), max_steps=args.deblur_steps, batch_size=256, patience=None, progress=False)  # fmt: skip
    fit_s = time.perf_counter() - t0
    rows = []
    for noise in (0.3, 0.1):
        problem = Deblurring(8, noise=noise)
        post.attach(problem.model)
        for rule, steps, zeta in (("plain", args.deblur_sample_steps, 1.0), ("normalized", args.deblur_sample_steps, args.zeta)):
            errs, rel, sd_ratio = [], [], []
            t0 = time.perf_counter()
            for k in range(args.observations):
                _, y = problem.draw(seed=100 + k)
                mean, sd = problem.posterior(y)
                try:
                    draws = post.sample(torch.as_tensor(y), args.deblur_draws, seed=k, guidance="dps", step_rule=rule,
                                        steps=steps, step_size=zeta)["x"].numpy()  # fmt: skip
                except bayesinv.errors.ProblemError as exc:  # the plain rule diverges for precise data: recorded
                    print(noise, rule, exc, flush=True)
                    errs, rel, sd_ratio = [float("nan")], [float("nan")], [float("nan")]
                    break
                err = float(np.sqrt(((draws.mean(0) - mean) ** 2).mean()))
                errs.append(err)
                rel.append(err / float(np.sqrt((mean**2).mean())))
                sd_ratio.append(float(draws.std(0).mean() / sd.mean()))
            rows.append({"problem": "deblurring 8x8", "noise": noise, "guidance": "dps", "step_rule": rule, "steps": steps,
                         "mean_rmse": float(np.mean(errs)), "mean_rmse_relative": float(np.mean(rel)),
                         "sd_ratio": float(np.mean(sd_ratio)), "fit_s": fit_s, "sample_s": time.perf_counter() - t0,
                         "fitted_model": noise == 0.3})  # fmt: skip  (False: another model attached, no retraining)
            print(rows[-1], flush=True)
    return rows


def coverage(truth: np.ndarray, draws: np.ndarray, level: float = 0.9) -> float:
    r"""Share of pixels whose truth lies in the central ``level`` interval of the draws ``(n, *shape)``."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(((truth >= lo) & (truth <= hi)).mean())


def choose_zeta(post, y, truth, candidates, args, site: str = "x") -> tuple[float, dict]:
    r"""DPS's ζ (normalized rule) with the smallest posterior-mean MSE on the validation pairs."""
    table = {}
    for zeta in candidates:
        try:
            draws = post.sample(torch.as_tensor(y), 2, seed=0, guidance="dps", step_rule="normalized", step_size=zeta,
                                steps=args.lambda_steps)[site].numpy()  # fmt: skip
            table[float(zeta)] = float(((draws.mean(1) - truth) ** 2).mean())
        except bayesinv.errors.ProblemError:  # diverged: not a candidate
            table[float(zeta)] = float("inf")
    return min(table, key=table.get), table


def _fit_or_load(path: Path, fit):
    r"""The posterior saved at ``path`` (``--reuse``), or ``fit()`` saved there; and its fit seconds."""
    if path.exists():
        post = bayesinv.load(path)
        return post, float(post.info.get("fit_time_s", float("nan")))
    t0 = time.perf_counter()
    post = fit()
    path.parent.mkdir(parents=True, exist_ok=True)
    post.save(path)
    return post, time.perf_counter() - t0


def imaging(args) -> list[dict]:
    size = 32
    train = SparseViewCT(size, 16)
    net_opts = ({"network": "mlp", "hidden": (args.width,) * 3} if args.network == "mlp" else
                {"network": "unet", "base_channels": args.base_channels, "precision": args.precision})  # fmt: skip
    tag = f"{args.network}{args.base_channels if args.network == 'unet' else args.width}_{args.prior_steps}_{args.phantoms_train}"
    prior_path = OUT / f"imaging_prior_{tag}.bayesinv"
    if not args.reuse:
        prior_path.unlink(missing_ok=True)
    post, fit_s = _fit_or_load(prior_path, lambda: bayesinv.fit(
        train.model, method="score_prior", target="x", num_simulations=args.phantoms_train, seed=0, max_steps=args.prior_steps,
        batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine", patience=None, progress=False, **net_opts))  # fmt: skip
    print("prior fitted", round(fit_s), "s", post.info, flush=True)
    amortized = None
    if args.cond_score_steps:  # the amortized posterior of one operator (CT, 16 views, noise 0.5), for comparison
        cs_path = OUT / f"imaging_cond_score_{tag}_{args.cond_score_steps}.bayesinv"
        if not args.reuse:
            cs_path.unlink(missing_ok=True)
        amortized, cs_fit_s = _fit_or_load(cs_path, lambda: bayesinv.fit(
            SparseViewCT(size, 16, noise=0.5).model, method="cond_score", target="x", num_simulations=args.phantoms_train,
            seed=0, max_steps=args.cond_score_steps, max_epochs=None, batch_size=args.batch_size, lr=args.lr,
            patience=None, progress=False, **net_opts))  # fmt: skip
        print("cond_score fitted", round(cs_fit_s), "s", amortized.info, flush=True)
    problems = []
    for views in (16, 8):
        for noise in (0.5, 2.0):
            problems.append((f"CT {views} views", "FBP", SparseViewCT(size, views, noise=noise), noise))
    for acc in (4, 8):
        for noise in (0.05, 0.2):
            problems.append((f"MRI {acc}x", "zero-filled", AcceleratedMRI(size, acc, noise=noise, texture=False), noise))
    rows = []
    for name, baseline, problem, noise in problems:
        post.attach(problem.model)  # the same prior, another operator / noise level
        x_val, y_val = problem.draw(2, seed=50)
        op = getattr(problem, "view_operator", problem.operator)  # CT: the measured views with a right inverse
        lam, table = choose_lambda(post, y_val, x_val, op, candidates=args.lams, num_samples=2, steps=args.lambda_steps)
        zeta, zeta_table = choose_zeta(post, y_val, x_val, args.zetas, args)
        tv_weight, tv_table = choose_tv_weight(problem, y_val, x_val)
        x_test, y_test = problem.draw(args.phantoms, seed=7)
        use_cs = amortized is not None and tuple(problem.y_shape) == tuple(train.y_shape)  # cond_score: y of its shape only
        scores = {baseline: [], "TV": [], "dps": [], "consistency": [], **({"cond_score": []} if use_cs else {})}
        cover = {"dps": [], "consistency": [], "cond_score": []}
        times = {"dps": 0.0, "consistency": 0.0, "cond_score": 0.0}
        for k in range(args.phantoms):
            scores[baseline].append(psnr_ssim(x_test[k], problem.baseline(y_test[k])))
            scores["TV"].append(psnr_ssim(x_test[k], problem.tv(y_test[k], tv_weight)))
            for guidance, opts in (("dps", {"step_rule": "normalized", "step_size": zeta}),
                                   ("consistency", {"operator": op, "lam": lam})):  # fmt: skip
                t0 = time.perf_counter()
                draws = post.sample(torch.as_tensor(y_test[k]), args.draws, seed=k, guidance=guidance, steps=args.sample_steps,
                                    **opts)["x"].numpy()  # fmt: skip
                times[guidance] += time.perf_counter() - t0
                scores[guidance].append(psnr_ssim(x_test[k], draws.mean(0)))
                cover[guidance].append(coverage(x_test[k], draws))
            if use_cs:  # trained at noise 0.5: at 2.0 it is applied to a noise level it was not trained for
                t0 = time.perf_counter()
                draws = amortized.sample(torch.as_tensor(y_test[k]), args.draws, seed=k)["x"].numpy()
                times["cond_score"] += time.perf_counter() - t0
                scores["cond_score"].append(psnr_ssim(x_test[k], draws.mean(0)))
                cover["cond_score"].append(coverage(x_test[k], draws))
        for method, vals in scores.items():
            vals = np.asarray(vals)
            if not len(vals):
                continue
            rows.append({"problem": name, "noise": noise, "method": method, "psnr": float(vals[:, 0].mean()),
                         "ssim": float(vals[:, 1].mean()), "coverage_90": float(np.mean(cover[method])) if method in cover else None,
                         "lam": lam if method == "consistency" else None, "lambda_table": table if method == "consistency" else None,
                         "zeta": zeta if method == "dps" else None, "zeta_table": zeta_table if method == "dps" else None,
                         "tv_weight": tv_weight if method == "TV" else None, "tv_table": tv_table if method == "TV" else None,
                         "sample_s_per_phantom": times.get(method, 0.0) / args.phantoms, "fit_s": fit_s,
                         "prior": {**net_opts, "steps": args.prior_steps, "phantoms": args.phantoms_train,
                                   "best_val_loss": post.info.get("best_val_loss")}})  # fmt: skip
            print({k: v for k, v in rows[-1].items() if not k.endswith("table")}, flush=True)
    return rows


def traveltime(args) -> list[dict]:
    r"""DPS with one score prior on eikonal travel-time tomography at two noise levels (see the module).

    The prior is learnt on log v (``transforms={"v": "log"}``): Tweedie's estimate of an early step, mapped back, is
    then a positive velocity field, which the eikonal solver needs.
    """
    from bayesinv.models.travel_time import TravelTimeTomography

    size = 16
    make = lambda noise: TravelTimeTomography(size=size, num_sources=4, num_receivers=12, noise=noise)  # noqa: E731
    base = make(0.005)
    net_opts = {"network": "unet", "base_channels": args.base_channels, "precision": args.precision}
    prior_path = OUT / f"traveltime_prior_unet{args.base_channels}_{args.prior_steps}_{args.phantoms_train}.bayesinv"
    if not args.reuse:
        prior_path.unlink(missing_ok=True)
    post, fit_s = _fit_or_load(prior_path, lambda: bayesinv.fit(
        base.model, method="score_prior", target="v", transforms={"v": "log"}, num_simulations=args.phantoms_train, seed=0,
        max_steps=args.prior_steps,
        batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine", patience=None, progress=False, **net_opts))  # fmt: skip
    print("travel-time prior fitted", round(fit_s), "s", post.info, flush=True)
    rows = []
    for noise in (0.005, 0.02):
        problem = make(noise)
        post.attach(problem.model)
        v_val, y_val = problem.draw(2, seed=50)
        zeta, zeta_table = choose_zeta(post, y_val, v_val, (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0), args, site="v")
        print(f"noise {noise}: zeta {zeta} from {zeta_table}", flush=True)
        scores = {"straight-ray": [], "dps": []}
        cover, sample_s = [], 0.0
        for i in range(args.tt_images):
            v, y = problem.draw(seed=1000 + i)
            scores["straight-ray"].append(psnr_ssim(v, problem.straight_ray_baseline(y)))
            t0 = time.perf_counter()
            draws = post.sample(torch.as_tensor(y), args.draws, seed=i, guidance="dps", step_rule="normalized", step_size=zeta,
                                steps=args.sample_steps)["v"].numpy()  # fmt: skip
            sample_s += time.perf_counter() - t0
            scores["dps"].append(psnr_ssim(v, draws.mean(0)))
            cover.append(coverage(v, draws))
            print(f"  image {i}: straight-ray {scores['straight-ray'][-1][0]:.1f} dB, DPS {scores['dps'][-1][0]:.1f} dB, "
                  f"90% coverage {cover[-1]:.2f}", flush=True)  # fmt: skip
        for method, vals in scores.items():
            vals = np.asarray(vals)
            rows.append({"problem": "travel time 16x16", "noise": noise, "method": method, "psnr": float(vals[:, 0].mean()),
                         "ssim": float(vals[:, 1].mean()), "coverage_90": float(np.mean(cover)) if method == "dps" else None,
                         "zeta": zeta if method == "dps" else None, "zeta_table": zeta_table if method == "dps" else None,
                         "sample_s_per_image": sample_s / args.tt_images if method == "dps" else None, "fit_s": fit_s,
                         "prior": {**net_opts, "steps": args.prior_steps, "fields": args.phantoms_train,
                                   "best_val_loss": post.info.get("best_val_loss")}})  # fmt: skip
            print({k: v for k, v in rows[-1].items() if not k.endswith("table")}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small budgets")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-deblurring", action="store_true")
    parser.add_argument("--skip-imaging", action="store_true")
    parser.add_argument("--traveltime", action="store_true", help="only the travel-time tomography part")
    parser.add_argument("--tt-images", type=int, default=3, help="travel-time test fields (draw(seed=1000 + i))")
    parser.add_argument("--network", default="unet", choices=["unet", "mlp"], help="the imaging prior's score network")
    parser.add_argument("--base-channels", type=int, default=16, help="U-Net width")
    parser.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"], help="U-Net training precision")
    parser.add_argument("--prior-steps", type=int, default=None, help="training steps of the imaging prior")
    parser.add_argument("--label", default="", help="suffix of the results file")
    parser.add_argument("--reuse", action="store_true", help="load the imaging prior (and cond_score) saved by an earlier run")
    parser.add_argument("--cond-score-steps", type=int, default=0,
                        help="also train cond_score on CT 16 views, noise 0.5 (the same U-Net, these steps) and compare")
    args = parser.parse_args()
    q = args.quick
    args.deblur_steps, args.deblur_draws, args.observations = (300, 100, 1) if q else (2000, 300, 2)
    args.deblur_sample_steps = 50 if q else 400
    steps, args.phantoms_train, args.width = (100, 2000, 256) if q else (3000, 10_000, 512)
    args.prior_steps = args.prior_steps or steps
    args.batch_size, args.lr = (64, 2e-3) if args.network == "unet" else (128, 1e-3)
    args.sample_steps, args.lambda_steps, args.draws, args.phantoms = (30, 10, 4, 1) if q else (100, 50, 16, 3)
    args.tt_images = 1 if q else args.tt_images
    args.zeta, args.zetas = 0.2, (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
    args.lams = (0.01, 0.03, 0.1, 0.2, 0.5, 1.0)
    set_threads(args.threads)
    out = {"meta": metadata(MACHINE), "settings": {k: v for k, v in vars(args).items()}}
    if args.traveltime:
        out["traveltime"] = traveltime(args)
        name = "score_prior" + ("_quick" if q else "") + "_traveltime" + args.label
        print("wrote", write_results(name, out))
        return
    if not args.skip_deblurring:
        out["deblurring"] = deblurring(args)
    if not args.skip_imaging:
        out["imaging"] = imaging(args)
    name = "score_prior" + ("_quick" if q else "") + ("_deblurring" if args.skip_imaging else "") + ("_imaging" if args.skip_deblurring else "") + args.label
    print("wrote", write_results(name, out))


if __name__ == "__main__":
    main()
