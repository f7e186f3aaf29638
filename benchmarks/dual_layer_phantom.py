r"""The dual-layer phantom (axisymmetric elastodynamics): time-step and mesh convergence, solve throughput, cond_score.

    python benchmarks/dual_layer_phantom.py convergence [--draws 2] [--dts 0.02 0.01 0.005 0.0025]
                                                       [--refinements 0.25 0.5 1]
    python benchmarks/dual_layer_phantom.py throughput [--draws 5]
    python benchmarks/dual_layer_phantom.py cond_score --num-train 300 --num-test 2 --max-steps 500
    python benchmarks/dual_layer_phantom.py reference --num-test 10 [--num-proposals 200]
    python benchmarks/dual_layer_phantom.py latent --num-train 4000 --num-test 10 --max-steps 4000 [--methods flow cond_score]

``reference`` computes the exact posterior (``DualLayerPhantom.reference``: least-squares fit of the
simulated specimen, Laplace proposal, exact-likelihood importance weights, the modelling error in
closed form) of the test observations ``draw(seed=1000 + i)`` and of the two published Table 10
cases; ``latent`` learns the three layer parameters with a CNN embedding of the ten snapshots,
pushes the draws forward to the field ``E`` and compares both with the references.

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


def _simulated(args):
    r"""The problem, the training set ``out/dual_layer_phantom/joint_<num_train>.zarr`` (simulated once, then
    loaded) and the seconds it took."""
    import bayesinv

    OUT.mkdir(parents=True, exist_ok=True)
    prob = dlp.DualLayerPhantom(workers=args.workers)
    t0 = time.perf_counter()
    ds = bayesinv.simulate(prob.model, args.num_train, seed=0, path=OUT / f"joint_{args.num_train}.zarr",
                           chunk_size=min(50, args.num_train), progress=False, dims=prob.dims)
    sim_time = time.perf_counter() - t0
    print(f"{args.num_train} pairs in {sim_time:.0f} s (or loaded)", flush=True)
    return prob, ds, sim_time


def cond_score(args) -> None:
    import bayesinv

    prob, ds, sim_time = _simulated(args)
    options = dict(network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults),
                   batch_size=args.batch_size, max_epochs=None, max_steps=args.max_steps, lr=args.lr, patience=None)
    t0 = time.perf_counter()
    post = bayesinv.fit(prob.model, method="cond_score", target="E", data=ds, seed=0, progress=False, device=args.device, **options)
    fit_time = time.perf_counter() - t0
    print(f"fit {fit_time:.0f} s", flush=True)
    rows = []
    for i, (name, params, E, y) in enumerate(_tests(args.num_test)):
        t0 = time.perf_counter()
        fields = post.sample(torch.as_tensor(y), args.num_draws, seed=i)["E"].double().numpy()
        sample_time = time.perf_counter() - t0
        if i == 0:
            panels(E, y, fields, f"dual_layer_phantom_cond_score_panels{'_' + args.tag if args.tag else ''}")
        row = {**_against_reference(name, _field_parameters(fields), fields), "sample_time_s": sample_time}
        print(f"  {name}: true {np.round(row['true'], 2).tolist()}, reference {np.round(row['reference_mean'], 2).tolist()}, "
              f"cond_score {np.round(row['mean'], 2).tolist()}; field mean/std RMSE vs reference "
              f"{row['rmse_mean_vs_reference_kPa']:.3f}/{row['rmse_std_vs_reference_kPa']:.3f} kPa", flush=True)
        rows.append(row)
    seeded = [r for r in rows if r["test"].startswith("seed_")]
    summary = {k: float(np.mean([r[k] for r in seeded])) for k in ("rmse_mean_vs_reference_kPa", "rmse_std_vs_reference_kPa",
                                                                 "rmse_mean_vs_truth_kPa", "reference_rmse_mean_vs_truth_kPa")}
    print(f"cond_score (field): {summary}", flush=True)
    write_results(f"dual_layer_phantom_cond_score{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "simulate_s": sim_time, "fit_time_s": fit_time,
                   "summary": summary, "tests": rows})


PUBLISHED = {"paper_1": ([14.74, 6.66, 2.48], [14.20, 6.01, 2.57]), "paper_2": ([21.81, 9.70, 2.11], [23.42, 8.48, 2.05])}
#: Table 10: (true, published posterior mean) of (E_top kPa, E_bottom kPa, interface mm).


def _tests(num_test: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    r"""(name, labelled parameters, E, y): ``draw(seed=1000 + i)``, then the two Table 10 cases (their modelling
    error drawn from its prior with seeds 2000, 2001)."""
    import pyro

    prob = dlp.DualLayerPhantom()
    out = []
    for i in range(num_test):
        params, E, y = prob.draw(seed=1000 + i)
        out.append((f"seed_{1000 + i}", params, E, y))
    for j, (name, (true, _)) in enumerate(PUBLISHED.items()):
        fixed = {k: torch.tensor([float(v)]) for k, v in zip(dlp.PARAMETERS, true)}
        with torch.random.fork_rng(devices=[]), pyro.plate("draws", 1):
            torch.manual_seed(2000 + j)
            trace = pyro.poutine.trace(pyro.condition(prob.model, data=fixed)).get_trace()
        out.append((name, np.array(true, dtype=np.float32), trace.nodes["E"]["value"][0].numpy(), trace.nodes["y"]["value"][0].numpy()))
    return out


def _field_parameters(fields: np.ndarray) -> np.ndarray:
    r"""(E_top, E_bottom, interface) ``(n, 3)`` read off field draws ``(n, 64, 64)``: the interface where the row-mean
    profile crosses the middle of its range (between the two rows), each modulus the mean of the rows on its side."""
    z = dlp.pixel_heights()
    out = []
    for profile in fields.mean(2):
        mid = 0.5 * (profile.max() + profile.min())
        above = profile > mid if profile[0] > profile[-1] else profile < mid  # the top layer's side of the crossing
        k = int(np.argmin(above)) if not above.all() else len(z)  # first row below the interface
        k = min(max(k, 1), len(z) - 1)
        out.append([profile[:k].mean(), profile[k:].mean(), 0.5 * (z[k - 1] + z[k])])
    return np.array(out)


def panels(E: np.ndarray, y: np.ndarray, draws: np.ndarray, name: str) -> None:
    r"""true E / the snapshot at 0.4 ms / three draws / mean / std / error of E (kPa), as ``benchmarks/results/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    from _common import RESULTS
    from bayesinv.diagnostics import plot_field_panels

    up = lambda a: a[..., ::-1, :]  # noqa: E731 - row 0 is the top of the specimen; the panels put row 0 at the bottom
    fig = plot_field_panels(up(E), 1e3 * up(y[2]), up(draws[:3]), up(draws.mean(0)), up(draws.std(0)), panel_size=2.6,
                            titles={"truth": "true E (kPa)", "measurement": "u_z at 0.4 ms (µm)"},
                            suptitle="axis on the left, top surface up")
    fig.savefig(RESULTS / f"{name}.png", dpi=70)


def _reference_path(name: str) -> Path:
    return OUT / f"reference_{name}.npz"


def reference(args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    prob = dlp.DualLayerPhantom()
    rows = []
    for name, params, E, y in _tests(args.num_test):
        t0 = time.perf_counter()
        ref = prob.reference(y, num_proposals=args.num_proposals, num_samples=args.num_draws_reference, seed=0)
        elapsed = time.perf_counter() - t0
        theta = np.stack([ref.posterior[k].values.ravel() for k in dlp.PARAMETERS], -1)
        fit = [ref.attrs[f"fit_{k}"] for k in dlp.PARAMETERS]
        laplace_sd = [ref.attrs[f"laplace_sd_{k}"] for k in dlp.PARAMETERS]
        fields = ref.posterior["E"].values.reshape(-1, dlp.GRID, dlp.GRID)
        np.savez(_reference_path(name), params=theta, E_mean=fields.mean(0), E_sd=fields.std(0), truth=params, E_true=E,
                 fit=np.array(fit), laplace_sd=np.array(laplace_sd))
        row = {"test": name, "true": params.tolist(), "mean": theta.mean(0).tolist(), "sd": theta.std(0).tolist(),
               "fit": fit, "laplace_sd": laplace_sd, "ess": ref.attrs["ess"],
               "misfit": ref.attrs["misfit"], "num_simulations": ref.attrs["num_simulations"], "time_s": elapsed,
               "rmse_mean_vs_truth_kPa": float(np.sqrt(((fields.mean(0) - E) ** 2).mean()))}
        print(f"{name}: true {np.round(params, 2).tolist()}, posterior mean {np.round(theta.mean(0), 2).tolist()} "
              f"sd {np.round(theta.std(0), 2).tolist()}; fit {np.round(fit, 3).tolist()} ± "
              f"{np.round(laplace_sd, 4).tolist()}, χ²/pixel {ref.attrs['misfit']:.3f}, ESS {ref.attrs['ess']:.0f}"
              f"/{args.num_proposals}, {ref.attrs['num_simulations']} solves, {elapsed:.0f} s", flush=True)
        rows.append(row)
    write_results(f"dual_layer_phantom_reference{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "tests": rows, "published": PUBLISHED})


def _against_reference(name: str, theta: np.ndarray, fields: np.ndarray) -> dict:
    r"""A learned posterior's draws (parameters (n, 3), fields (n, 64, 64)) against the stored reference of ``name``."""
    path = _reference_path(name)
    if not path.exists():
        raise SystemExit(f"no reference for {name} at {path}: run `python benchmarks/dual_layer_phantom.py reference` first")
    ref = np.load(path)
    r_mean, r_sd = ref["params"].mean(0), ref["params"].std(0)
    mean, sd = theta.mean(0), theta.std(0)
    return {"test": name, "true": ref["truth"].tolist(), "reference_mean": r_mean.tolist(), "reference_sd": r_sd.tolist(),
            "mean": mean.tolist(), "sd": sd.tolist(), "z": ((mean - r_mean) / r_sd).tolist(), "sd_ratio": (sd / r_sd).tolist(),
            "rmse_mean_vs_reference_kPa": float(np.sqrt(((fields.mean(0) - ref["E_mean"]) ** 2).mean())),
            "rmse_std_vs_reference_kPa": float(np.sqrt(((fields.std(0) - ref["E_sd"]) ** 2).mean())),
            "rmse_mean_vs_truth_kPa": float(np.sqrt(((fields.mean(0) - ref["E_true"]) ** 2).mean())),
            "reference_rmse_mean_vs_truth_kPa": float(np.sqrt(((ref["E_mean"] - ref["E_true"]) ** 2).mean()))}


def latent(args) -> None:
    r"""Learn (E_top, E_bottom, interface) with a CNN embedding of the ten snapshots; the field is the push-forward."""
    import bayesinv

    prob, ds, sim_time = _simulated(args)
    data = {k: torch.as_tensor(np.asarray(ds[k].values)) for k in (*dlp.PARAMETERS, "y")}
    tests = _tests(args.num_test)
    summary = {}
    for method in args.methods:
        options = dict(embedding="cnn", embed_pool="flatten", embed_dim=args.embed_dim, max_epochs=None, max_steps=args.max_steps,
                       batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine", patience=None, val_fraction=0.05,
                       transforms={"E_top": "log", "E_bottom": "log"})
        options.update(dict(num_transforms=5, hidden=(128, 128)) if method == "flow" else dict(hidden=(256, 256, 256)))
        tag = args.reuse or args.tag
        saved = OUT / f"latent_{method}_{args.num_train}_{args.max_steps}{'_' + tag if tag else ''}.bayesinv"
        if args.reuse:  # the posterior an earlier run with tag ``--reuse`` saved (same sizes): sampling only
            post = bayesinv.load(saved).attach(prob.model)
            fit_time = float(post.info.get("fit_time_s", float("nan")))
            print(f"{method}: loaded {saved}", flush=True)
        else:
            t0 = time.perf_counter()
            post = bayesinv.fit(prob.model, method=method, target=list(dlp.PARAMETERS), data=data, seed=0, progress=None,
                                device=args.device, **options)
            fit_time = time.perf_counter() - t0
            post.save(saved)
            print(f"{method}: fit {fit_time:.0f} s, {post.info.get('train_steps')} steps, saved {saved}", flush=True)
        rows = []
        for i, (name, params, E, y) in enumerate(tests):
            t0 = time.perf_counter()
            extra = {k: v for k, v in (("sampler", args.sampler), ("clip", args.clip or None)) if v is not None}
            draws = post.sample(torch.as_tensor(y), args.num_draws, seed=i, deterministic=True, **extra)
            sample_time = time.perf_counter() - t0
            theta = np.stack([draws[k].double().numpy() for k in dlp.PARAMETERS], -1)
            row = {**_against_reference(name, theta, draws["E"].double().numpy()), "sample_time_s": sample_time}
            print(f"  {name}: true {np.round(row['true'], 2).tolist()}, reference {np.round(row['reference_mean'], 2).tolist()}, "
                  f"{method} {np.round(row['mean'], 2).tolist()}; z {np.round(row['z'], 2).tolist()}, sd ratio "
                  f"{np.round(row['sd_ratio'], 2).tolist()}; field mean/std RMSE vs reference {row['rmse_mean_vs_reference_kPa']:.3f}/"
                  f"{row['rmse_std_vs_reference_kPa']:.3f} kPa", flush=True)
            rows.append(row)
            if i == 0:
                panels(E, y, draws["E"].double().numpy(), f"dual_layer_phantom_latent_panels_{method}{'_' + args.tag if args.tag and args.tag != method else ''}")
        seeded = [r for r in rows if r["test"].startswith("seed_")]
        summary[method] = {
            "fit_time_s": fit_time, "options": {k: v for k, v in options.items() if k != "transforms"},
            **{k: float(np.mean([r[k] for r in seeded])) for k in ("rmse_mean_vs_reference_kPa", "rmse_std_vs_reference_kPa",
                                                                 "rmse_mean_vs_truth_kPa", "reference_rmse_mean_vs_truth_kPa",
                                                                 "sample_time_s")},
            "abs_z_median": np.median(np.abs([r["z"] for r in seeded]), 0).tolist(),
            "sd_ratio_median": np.median([r["sd_ratio"] for r in seeded], 0).tolist(), "tests": rows}
        print(f"{method}: field mean/std RMSE vs reference {summary[method]['rmse_mean_vs_reference_kPa']:.3f}/"
              f"{summary[method]['rmse_std_vs_reference_kPa']:.3f} kPa over {len(seeded)} tests; |z| median "
              f"{np.round(summary[method]['abs_z_median'], 2).tolist()}, sd ratio median {np.round(summary[method]['sd_ratio_median'], 2).tolist()}",
              flush=True)
    write_results(f"dual_layer_phantom_latent{'_' + args.tag if args.tag else ''}",
                  {"meta": metadata(MACHINE), "args": vars(args), "num_train": args.num_train, "simulate_s": sim_time,
                   "published": PUBLISHED, "methods": summary})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("convergence", "throughput", "cond_score", "reference", "latent"))
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
    parser.add_argument("--num-proposals", type=int, default=200, help="reference: exact-likelihood proposals per test")
    parser.add_argument("--num-draws-reference", type=int, default=4000)
    parser.add_argument("--methods", nargs="+", default=["flow", "cond_score"], choices=("flow", "cond_score", "flow_matching", "vae"))
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--sampler", default=None, help="latent: the score methods' sampler (ode, sde, pc; default the fit's)")
    parser.add_argument("--clip", action="store_true", help="latent: cond_score's clipped sampler")
    parser.add_argument("--reuse", default=None, help="latent: load the posteriors an earlier run with this tag saved")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    args.draws = args.draws or {"convergence": 2, "throughput": 5}.get(args.what, 0)
    {"convergence": convergence, "throughput": throughput, "cond_score": cond_score, "reference": reference,
     "latent": latent}[args.what](args)


if __name__ == "__main__":
    main()
