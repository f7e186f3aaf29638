r"""The optic-nerve-head inverse Helmholtz problem: mesh convergence, solve throughput, U_MAX, cond_score.

The prior figure (Figs. 4–5) is examples/optic_nerve_head.py.

    python benchmarks/optic_nerve_head.py convergence [--draws 3] [--refinements 1 2 3]
    python benchmarks/optic_nerve_head.py throughput [--draws 10]
    python benchmarks/optic_nerve_head.py u_max          # recompute U_MAX (200 prior draws)
    python benchmarks/optic_nerve_head.py cond_score --num-train 2000 --num-test 10 --max-steps 1500
    python benchmarks/optic_nerve_head.py latent --num-train 4000 --max-steps 3000 [--importance 400]

``latent`` learns the 13 geometry and modulus sites (Tables 6–7) with a CNN embedding of the two-channel
wave field and pushes each draw through the deterministic site ``mu`` (the model's own geometry), instead of
learning the 64 × 64 field; ``--importance N`` adds the exact-likelihood importance correction with the fitted
flow as the proposal (N simulations per test case). The panels of the first test case go to
``benchmarks/results/optic_nerve_head_latent_panels[_<tag>].png``.

Published-size run (a GPU): the paper's 12,000 pairs and Table 2's settings,
``python benchmarks/optic_nerve_head.py cond_score --num-train 12000 --num-test 10 --max-steps 200000
--batch-size 64 --base-channels 32 --channel-mults 1 2 2 2 --workers 16 --device cuda`` (the paper trains 100,000+ epochs; see docs/physics_models.md).
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


def convergence(args) -> None:
    params = onh.sample_parameters(args.draws, seed=11)
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
    params = onh.sample_parameters(args.draws, seed=12)
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


def u_max(args) -> None:
    value = onh.compute_u_max(num_draws=args.draws, seed=0)
    print(f"U_MAX = {value:.4g} mm over {args.draws} prior draws")
    write_results("optic_nerve_head_u_max", {"meta": metadata(MACHINE), "draws": args.draws, "u_max": value})


def normalise(mu: np.ndarray) -> np.ndarray:
    r"""The paper's [0, 1] scale of the modulus: min-max over the prior's range (background to the stiffest pia)."""
    lo, hi = onh.MU_BACKGROUND, onh.MODULI["mu_pia"][0] + 2 * onh.MODULI["mu_pia"][1]
    return (mu - lo) / (hi - lo)


def cond_score(args) -> None:
    import bayesinv

    prob = onh.OpticNerveHead(workers=args.workers)
    ds, sim_time = _simulated(prob, args.num_train)
    options = dict(network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
                   batch_size=args.batch_size, max_epochs=None, max_steps=args.max_steps, lr=args.lr, patience=None,
                   t_min=args.t_min, precision=args.precision)
    transforms = {"mu": ("log10", onh.MU_BACKGROUND)} if args.transform == "log10" else None
    t0 = time.perf_counter()
    post = bayesinv.fit(prob.model, method="cond_score", target="mu", data=ds, seed=0, progress=False, device=args.device,
                        transforms=transforms, **options)
    fit_time = time.perf_counter() - t0
    post.save(OUT / f"cond_score_{args.num_train}_{args.max_steps}{'_' + args.tag if args.tag else ''}.bayesinv")
    print(f"fit {fit_time:.0f} s", flush=True)
    test = onh.OpticNerveHead()
    tests = [test.draw(seed=1000 + i) for i in range(args.num_test)]  # (params, mu, y), one solve each
    results = {clip: evaluate(post, ds, tests, args, clip) for clip in ((False, True) if args.clip == "both" else (args.clip == "on",))}
    result = {"num_train": args.num_train, "simulate_s": sim_time, "fit_time_s": fit_time, "info": {
        k: v for k, v in post.info.items() if isinstance(v, (int, float, str, bool)) or v is None},
        **results[args.clip == "on" or args.clip == "both"], "published_rmse": [0.021, 0.032]}
    if args.clip == "both":
        result["unclipped"] = results[False]
    write_results(f"optic_nerve_head_cond_score{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "result": result})


def _simulated(prob, num: int):
    r"""The joint set of ``num`` prior draws (latent sites, ``mu``, ``y``), simulated once into ``out/`` and resumed."""
    import bayesinv

    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = bayesinv.simulate(prob.model, num, seed=0, path=OUT / f"joint_{num}.zarr", chunk_size=min(100, num),
                           progress=True, dims=prob.dims)
    sim_time = time.perf_counter() - t0
    print(f"{num} pairs in {sim_time:.0f} s (or loaded)", flush=True)
    return ds, sim_time


def field_row(mu: np.ndarray, draws: np.ndarray) -> dict:
    r"""RMSE of the posterior mean against the truth and pixel-interval coverage, in the normalised units."""
    x, d = normalise(mu), normalise(draws)
    m = d.mean(0)
    lo90, hi90 = np.quantile(d, [0.05, 0.95], axis=0)
    lo50, hi50 = np.quantile(d, [0.25, 0.75], axis=0)
    return {"rmse_mean_vs_truth": float(np.sqrt(((m - x) ** 2).mean())), "mean_std": float(d.std(0).mean()),
            "coverage_90": float(((x >= lo90) & (x <= hi90)).mean()), "coverage_50": float(((x >= lo50) & (x <= hi50)).mean())}


def panels(truth, u_real, draws, name: str) -> None:
    r"""truth / measured u_R / three draws / mean / std / error of the normalised μ, as ``benchmarks/results/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    from _common import RESULTS
    from bayesinv.diagnostics import plot_field_panels

    fig = plot_field_panels(truth, u_real, draws[:3], draws.mean(0), draws.std(0), panel_size=2.6,
                            titles={"truth": "true μ (normalised)", "measurement": "measured u_R (mm)"})
    fig.savefig(RESULTS / f"{name}.png", dpi=70)


def latent(args) -> None:
    r"""Learn the 13 latent sites with a CNN embedding of ``y``; the field draws are the model's push-forward."""
    import warnings

    import bayesinv

    prob = onh.OpticNerveHead(workers=args.workers)
    ds, sim_time = _simulated(prob, args.num_train)
    if args.simulate_only:
        return
    data = {k: torch.as_tensor(np.asarray(ds[k].values)) for k in (*onh.PARAMETERS, "y")}
    options = dict(embedding="cnn", embed_pool="flatten", embed_dim=args.embed_dim, num_transforms=5, hidden=(128, 128),
                   max_epochs=None, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                   patience=None, val_fraction=0.05, transforms={k: "log" for k in onh.MODULI})
    saved = OUT / f"latent_flow_{args.num_train}_{args.max_steps}{'_' + (args.reuse or args.tag) if (args.reuse or args.tag) else ''}.bayesinv"
    if args.reuse:  # the posterior of an earlier run with tag ``--reuse`` and the same sizes
        post = bayesinv.load(saved)
        fit_time = float(post.info.get("fit_time_s", float("nan")))
        print(f"loaded {saved}", flush=True)
    else:
        t0 = time.perf_counter()
        post = bayesinv.fit(prob.model, method="flow", target=list(onh.PARAMETERS), data=data, seed=0, progress=None,
                            device=args.device, **options)
        fit_time = time.perf_counter() - t0
        post.save(saved)
        print(f"fit {fit_time:.0f} s, {post.info.get('train_steps')} steps", flush=True)
    test = onh.OpticNerveHead()
    prior_mean = normalise(np.asarray(ds["mu"].values)).mean(0)
    rows = []
    for i in range(args.num_test):
        params, mu, y = test.draw(seed=1000 + i)
        t0 = time.perf_counter()
        draws = post.sample(torch.as_tensor(y), args.num_draws, seed=i, deterministic=True)
        sample_time = time.perf_counter() - t0
        theta = np.stack([draws[k].double().numpy() for k in onh.PARAMETERS], -1)
        row = {"seed": 1000 + i, **field_row(mu, draws["mu"].double().numpy()), "sample_time_s": sample_time,
               "prior_mean_rmse_vs_truth": float(np.sqrt(((prior_mean - normalise(mu)) ** 2).mean())),
               "z_params": dict(zip(onh.PARAMETERS, ((theta.mean(0) - params) / theta.std(0)).tolist()))}
        if args.importance:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a low ESS is reported in the table, not warned about per test
                idata = bayesinv.infer(prob.model, torch.as_tensor(y), method="importance", proposal=post,
                                       num_samples=args.num_draws, num_proposals=args.importance, seed=i, progress=False)
            row["importance"] = {"ess": float(idata.sample_stats["ess"]), "time_s": time.perf_counter() - t0,
                                 **field_row(mu, idata.posterior["mu"].values.reshape(-1, onh.GRID, onh.GRID))}
        print(f"test {i}: RMSE {row['rmse_mean_vs_truth']:.4f} (prior mean {row['prior_mean_rmse_vs_truth']:.4f}), "
              f"90 % coverage {row['coverage_90']:.2f}, 50 % {row['coverage_50']:.2f}, sample {sample_time:.1f} s"
              + (f"; importance ESS {row['importance']['ess']:.1f}, RMSE {row['importance']['rmse_mean_vs_truth']:.4f}, "
                 f"90 % {row['importance']['coverage_90']:.2f}" if args.importance else ""), flush=True)
        rows.append(row)
        if i == 0:
            panels(normalise(mu), y[0], normalise(draws["mu"].double().numpy()),
                   f"optic_nerve_head_latent_panels{'_' + args.tag if args.tag else ''}")
    keys = ("rmse_mean_vs_truth", "prior_mean_rmse_vs_truth", "coverage_90", "coverage_50", "mean_std", "sample_time_s")
    result = {"num_train": args.num_train, "simulate_s": sim_time, "fit_time_s": fit_time, "options": options,
              "train_steps": post.info.get("train_steps"), **{k: float(np.mean([r[k] for r in rows])) for k in keys},
              "abs_z_median": {k: float(np.median([abs(r["z_params"][k]) for r in rows])) for k in onh.PARAMETERS},
              "tests": rows, "published_rmse": [0.021, 0.032]}
    if args.importance:
        result["importance"] = {k: float(np.mean([r["importance"][k] for r in rows]))
                                for k in ("ess", "rmse_mean_vs_truth", "coverage_90", "coverage_50", "time_s")}
    print(f"latent flow: posterior-mean RMSE {result['rmse_mean_vs_truth']:.4f} (prior mean "
          f"{result['prior_mean_rmse_vs_truth']:.4f}; published 0.021, 0.032 on two cases), 90 % coverage "
          f"{result['coverage_90']:.2f}, 50 % {result['coverage_50']:.2f}", flush=True)
    write_results(f"optic_nerve_head_latent{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "result": result})


def evaluate(post, ds, tests, args, clip: bool) -> dict:
    r"""Posterior-mean RMSE against the truth and interval coverage on the test draws ``(params, mu, y)``."""
    rows = []
    print(f"sampling with clip={clip}", flush=True)
    for i, (params, mu, y) in enumerate(tests):
        t0 = time.perf_counter()
        draws = post.sample(torch.as_tensor(y), args.num_draws, seed=i, clip=clip)["mu"].numpy()
        sample_time = time.perf_counter() - t0
        row = {"seed": 1000 + i, **field_row(mu, draws), "sample_time_s": sample_time}
        print(f"  test {i}: RMSE {row['rmse_mean_vs_truth']:.4f}, 90 % coverage {row['coverage_90']:.2f}, "
              f"50 % coverage {row['coverage_50']:.2f}, sample {sample_time:.0f} s", flush=True)
        rows.append(row)
    prior_mean = normalise(np.asarray(ds["mu"].values)).mean(0)
    prior_rmse = float(np.mean([np.sqrt(((prior_mean - normalise(mu)) ** 2).mean()) for _, mu, _ in tests]))
    result = {"clip": clip, "rmse_mean_vs_truth": float(np.mean([r["rmse_mean_vs_truth"] for r in rows])),
              "prior_mean_rmse_vs_truth": prior_rmse,
              "coverage_90": float(np.mean([r["coverage_90"] for r in rows])),
              "coverage_50": float(np.mean([r["coverage_50"] for r in rows])), "tests": rows}
    print(f"clip={clip}: posterior-mean RMSE {result['rmse_mean_vs_truth']:.4f} (prior mean {prior_rmse:.4f}; published 0.021,"
          f" 0.032 on two cases), 90 % interval coverage {result['coverage_90']:.2f}, 50 % {result['coverage_50']:.2f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("convergence", "throughput", "u_max", "cond_score", "latent"))
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--num-test", type=int, default=10)
    parser.add_argument("--num-draws", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--t-min", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--transform", default="none", choices=["none", "log10"],
                        help="learn mu in its own units (default; the paper's) or log10(mu / background)")
    parser.add_argument("--clip", default="both", choices=["off", "on", "both"],
                        help="sample with clip=True (the denoiser kept in the training range), without, or both")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="training-loss precision")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--embed-dim", type=int, default=64, help="latent: the CNN embedding's size")
    parser.add_argument("--importance", type=int, default=0, help="latent: exact-likelihood importance proposals per test")
    parser.add_argument("--reuse", default=None, metavar="TAG",
                        help="latent: load the posterior saved by the run tagged TAG (same --num-train / --max-steps)")
    parser.add_argument("--simulate-only", action="store_true", help="latent: only simulate (or resume) the training set")
    parser.add_argument("--draws", type=int, default=None)
    parser.add_argument("--refinements", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    defaults = {"convergence": 3, "throughput": 10, "u_max": 200, "cond_score": 0, "latent": 0}
    args.draws = args.draws or defaults[args.what]
    {"convergence": convergence, "throughput": throughput, "u_max": u_max, "cond_score": cond_score,
     "latent": latent}[args.what](args)


if __name__ == "__main__":
    main()
