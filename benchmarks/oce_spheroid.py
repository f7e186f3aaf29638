r"""OCE tumour spheroid (Section 4.2.3): FEM convergence and speed, phase wrapping, references, cond_score.

Subcommands (each writes ``benchmarks/results/oce_<name>.json`` and prints a table):

- ``convergence``: u₂ on the 64 × 64 grid of prior draws (full prior) for element sizes
  16, 8, 4 µm against 2 µm; the largest difference relative to max |u₂| and as a phase
  error (rad) at the mean top displacement 2.2 µm.
- ``throughput``: solves per second in one process (single-threaded BLAS) at 64 and 128
  pixels for the given element sizes.
- ``wrap``: the fraction of pixels that wrap (clean phase outside (−π, π]), the phase
  range and fringe count, and the number of nuclei placed, over prior draws.
- ``reference``: the reduced (homogeneous) variant at 64 × 64: a prior set of
  ``--num-train`` draws (``out/oce/reduced_<n>_<h>.zarr``), ``--num-test`` test
  observations (``problem.draw(seed=100 + i)``), and for each the tempered adaptive
  importance-sampling reference with the exact wrapped-phase likelihood and with a
  Gaussian likelihood on the wrapped phase (same per-depth sd); distance between the two
  (RMSE of the pixel-wise posterior mean / sd of E' = log10(E / E_hydrogel), and of the
  parameters). Posterior fields are kept in ``out/oce/reference_<i>.npz``.
- ``cond_score``: fits cond_score (U-Net, y as a channel) on the prior set, target
  ``E_rel`` = E / E_hydrogel with ``transforms={"E_rel": "log10"}`` (eq. 28), samples ``--num-draws`` per test observation and compares with the saved
  references (run ``reference`` first).
- ``full``: cond_score on the full prior at 64 × 64 (``--num-train`` draws, sixfold
  augmentation optional), posterior-mean error against the truth and SBC ranks and TARP
  coverage of four summaries of E' (``FULL_SUMMARIES``: the spheroid area, pixels with
  |E'| > 0.05, in µm², and the mean E' over those pixels; the window mean of E' and the
  area after a 5 × 5 median filter, which pixel noise does not move), and the RMS of the
  draws in the true gel; the panel figure of the first test pair is
  ``benchmarks/results/oce_full_64_panels.png``.

``cond_score`` and ``full`` train through a checkpoint (``out/oce/cond_score[_<tag>].ckpt``,
``out/oce/full_<n>[_<tag>].ckpt``): the same command run again resumes instead of
retraining, and a larger ``--max-steps`` continues the run (the learning rate is constant).

- ``gel``: for the posterior a ``full --tag <tag>`` run saved (``out/oce/full_<n>_<tag>.bayesinv``), the RMS,
  mean and share above 0.05 of the draws' E' over the true gel, in bands of distance from the true spheroid.

Run (2-core CPU, shared; minutes as measured there):

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py convergence
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py throughput
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py wrap
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py reference --num-test 10
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py cond_score --num-test 10
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/oce_spheroid.py full

Published size (GPU; 5,000 draws: 4,000 augmented sixfold to 24,000 training pairs, 1,000 held
out; Table 2):

    .venv/bin/python benchmarks/oce_spheroid.py full --image-size 256 --num-train 4000 --num-test 1000 \
        --augment --published --element-size 4 --workers 16 --device cuda --num-draws 200
"""

from __future__ import annotations

import argparse
import functools
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
from bayesinv.models import oce_spheroid as oce  # noqa: E402

OUT = Path("out/oce")
MACHINE = "2-core CPU, no GPU, shared"
PARAMS = ("width", "ratio", "center", "E_spheroid", "E_hydrogel", "top_displacement")


def convergence(args) -> dict:
    problem = oce.OCESpheroid(64)
    fields = []
    for seed in range(args.num_draws):
        fields.append(_prior_field(problem, seed)[0])
    sizes = [16.0, 8.0, 4.0, 2.0]
    u = {}
    for h in sizes:
        t0 = time.perf_counter()
        solver = oce.SpheroidSolver(64, h)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        u[h] = np.stack([solver.vertical(f) for f in fields])
        print(f"h = {h:g} µm: {solver.num_dofs} DOFs, setup {setup:.1f} s, {(time.perf_counter() - t0) / len(fields):.2f} s/solve",
              flush=True)
    ref = u[2.0]
    scale = np.abs(ref).max()
    rows = []
    for h in sizes[:-1]:
        err = np.abs(u[h] - ref).max()
        rows.append({"element_size": h, "max_rel": float(err / scale), "phase_error_rad": float(err * oce.PHASE_PER_UM * 2.2)})
    print("| element (µm) | max |Δu₂| / max |u₂| | max phase error at 2.2 µm (rad) |")
    for r in rows:
        print(f"| {r['element_size']:g} | {r['max_rel']:.2e} | {r['phase_error_rad']:.3f} |")
    return {"draws": args.num_draws, "reference_element_size": 2.0, "rows": rows}


def _prior_field(problem, seed: int) -> tuple[np.ndarray, float]:
    r"""E / E_hydrogel ``(n, n)`` of one prior draw (no simulation) and its number of nuclei."""
    import pyro

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trace = pyro.poutine.trace(problem.sample_geometry).get_trace()
    sites = {k: n["value"][None] for k, n in trace.nodes.items() if n["type"] == "sample"}
    E, count = problem.field(sites)
    return (E[0] / sites["E_hydrogel"][0]).double().numpy(), float(count[0]) if count is not None else float("nan")


def throughput(args) -> dict:
    rows = []
    for n in (64, 128):
        problem = oce.OCESpheroid(n)
        fields = [_prior_field(problem, s)[0] for s in range(args.num_draws)]
        for h in args.element_sizes:
            solver = oce.SpheroidSolver(n, h)
            solver.vertical(fields[0])
            t0 = time.perf_counter()
            for f in fields:
                solver.vertical(f)
            rate = len(fields) / (time.perf_counter() - t0)
            rows.append({"image_size": n, "element_size": h, "dofs": solver.num_dofs, "solves_per_s": rate})
            print(f"| {n} | {h:g} | {solver.num_dofs} | {rate:.2f} |", flush=True)
    return {"rows": rows}


def wrap(args) -> dict:
    problem = oce.OCESpheroid(64)
    ds = bayesinv.simulate(problem.model, args.num_draws, seed=11, dims=problem.dims, progress=False,
                           chunk_size=args.num_draws)
    u = ds["_sim_unit_displacement"].values * ds["top_displacement"].values[:, None, None]
    phase = oce.phase_difference(u)
    frac = np.array([oce.wrap_fraction(p) for p in phase])
    span = phase.max((1, 2)) - phase.min((1, 2))
    res = {
        "draws": args.num_draws,
        "wrap_fraction_mean": float(frac.mean()), "wrap_fraction_min": float(frac.min()),
        "phase_min_rad": float(phase.min()), "phase_max_rad": float(phase.max()),
        "fringes_mean": float((span / (2 * np.pi)).mean()), "fringes_max": float((span / (2 * np.pi)).max()),
        "num_nuclei_mean": float(ds["num_nuclei"].values.mean()), "num_nuclei_min": float(ds["num_nuclei"].values.min()),
        "num_nuclei_max": float(ds["num_nuclei"].values.max()),
        "k_top_row": float(problem.k[-1, 0]), "k_bottom_row": float(problem.k[0, 0]), "k_max": float(problem.k.max()),
    }
    for key, value in res.items():
        print(f"{key}: {value:.4g}")
    return res


def _reduced(args, likelihood: str = "wrapped", simulator=None):
    return oce.OCESpheroid(64, variant="homogeneous", likelihood=likelihood, element_size=args.element_size,
                           workers=args.workers, simulator=simulator)


def _prior_set(args, problem):
    path = OUT / f"reduced_{args.num_train}_{args.element_size:g}.zarr"
    return bayesinv.simulate(problem.model, args.num_train, seed=0, dims=problem.dims, path=path, progress=False,
                             chunk_size=500)


def _log_rel(E: np.ndarray, Eh: np.ndarray) -> np.ndarray:
    return np.log10(E / Eh.reshape(-1, 1, 1))


def _summary(idata) -> dict:
    post = idata.posterior
    E = post["E"].values.reshape(-1, 64, 64)
    Eh = post["E_hydrogel"].values.reshape(-1)
    lr = _log_rel(E, Eh)
    params = {}
    for k in PARAMS:
        v = post[k].values.reshape(E.shape[0], -1)
        params[k] = (v.mean(0).tolist(), v.std(0).tolist())
    ratio = np.log10(post["E_spheroid"].values.reshape(-1) / Eh)
    params["log10_ratio"] = ([float(ratio.mean())], [float(ratio.std())])
    return {"mean": lr.mean(0), "std": lr.std(0), "E_mean": E.mean(0), "E_std": E.std(0), "params": params,
            "ess": float(idata.sample_stats["ess"]), "stages": int(post.attrs["stages"]),
            "sims": int(post.attrs["num_simulations_total"])}


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).mean()))


def reference(args) -> dict:
    problem = _reduced(args)
    t0 = time.perf_counter()
    ds = _prior_set(args, problem)
    prior_time = time.perf_counter() - t0
    gauss = _reduced(args, "gaussian", simulator=problem.simulator)
    rows = []
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(args.num_test):
        theta, y = problem.draw(seed=100 + i)
        res = {}
        for name, p in (("wrapped", problem), ("gaussian", gauss))[: 2 if i < args.num_gaussian else 1]:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                idata = p.reference(y, data=ds, num_local=args.num_local, num_final=args.num_final, seed=i)
            res[name] = _summary(idata)
            res[name]["time_s"] = time.perf_counter() - t0
        w = res["wrapped"]
        truth = np.log10(theta["E_rel"])
        np.savez(OUT / f"reference_{i}.npz", y=y, truth=truth, E_true=theta["E"], mean=w["mean"], std=w["std"],
                 E_mean=w["E_mean"], E_std=w["E_std"], **({"g_mean": res["gaussian"]["mean"], "g_std": res["gaussian"]["std"]}
                                                           if "gaussian" in res else {}))
        row = {"seed": 100 + i, "theta": {k: np.asarray(theta[k]).tolist() for k in PARAMS}, "ess_wrapped": w["ess"],
               "stages_wrapped": w["stages"], "sims_wrapped": w["sims"], "time_wrapped_s": w["time_s"],
               "exact_mean_rmse_vs_truth": _rmse(w["mean"], truth), "params_wrapped": w["params"]}
        print(f"test {i}: exact reference ESS {w['ess']:.0f}, {w['stages']} stages, {w['sims']} simulations, {w['time_s']:.0f} s; "
              f"posterior-mean RMSE vs truth {row['exact_mean_rmse_vs_truth']:.4f}", flush=True)
        rows.append(row)
        if "gaussian" not in res:
            continue
        g = res["gaussian"]
        row.update({
            "ess_gaussian": g["ess"], "stages_gaussian": g["stages"], "sims_gaussian": g["sims"], "time_gaussian_s": g["time_s"],
            "gauss_vs_exact_mean_rmse": _rmse(g["mean"], w["mean"]), "gauss_vs_exact_std_rmse": _rmse(g["std"], w["std"]),
            "gauss_mean_rmse_vs_truth": _rmse(g["mean"], truth), "params_gaussian": g["params"],
        })
        # parameter error of the Gaussian posterior mean in units of the exact posterior sd
        z = {}
        for k in ("width", "ratio", "center", "log10_ratio", "top_displacement"):
            m_w, s_w = np.asarray(w["params"][k][0]), np.asarray(w["params"][k][1])
            z[k] = (np.abs(np.asarray(g["params"][k][0]) - m_w) / s_w).tolist()
        row["gauss_mean_shift_in_exact_sd"] = z
        print(f"  Gaussian likelihood: ESS {g['ess']:.0f}, {g['stages']} stages; Gaussian vs exact: mean RMSE {row['gauss_vs_exact_mean_rmse']:.4f}, std RMSE {row['gauss_vs_exact_std_rmse']:.4f}; "
              f"shift {np.round(np.concatenate([np.atleast_1d(v) for v in z.values()]), 1)} sd; "
              f"{g['time_s']:.0f} s", flush=True)  # fmt: skip
    out = {"prior_set_s": prior_time, "element_size": args.element_size, "num_train": args.num_train, "tests": rows}
    for key in ("gauss_vs_exact_mean_rmse", "gauss_vs_exact_std_rmse", "exact_mean_rmse_vs_truth", "gauss_mean_rmse_vs_truth",
                "ess_wrapped", "ess_gaussian"):
        vals = [r[key] for r in rows if key in r]
        if vals:  # the Gaussian-likelihood keys only with --num-gaussian > 0
            out[key], out[key + "_min"], out[key + "_max"] = float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))
    return out


def _z_summary(params: dict) -> tuple[np.ndarray, np.ndarray]:
    r"""Posterior mean and sd in the located coordinates (width, ratio, x, y, ln(E_s/E_h), E_h, d) from a reference summary."""
    mean = [params["width"][0][0], params["ratio"][0][0], *params["center"][0], params["log10_ratio"][0][0] * np.log(10),
            params["E_hydrogel"][0][0], params["top_displacement"][0][0]]
    sd = [params["width"][1][0], params["ratio"][1][0], *params["center"][1], params["log10_ratio"][1][0] * np.log(10),
          params["E_hydrogel"][1][0], params["top_displacement"][1][0]]
    return np.asarray(mean), np.asarray(sd)


def mcmc(args) -> dict:
    r"""Gradient-free MCMC (``method="mcmc"``) on the reduced variant against the importance-sampling references.

    The chains run on :meth:`OCESpheroid.located_model` (the same posterior in whitened
    coordinates) centred on the reference's posterior mean with ``--init-spread`` times its
    sd, so they start dispersed around the located region and must find the posterior
    themselves; the Metropolis target is the exact wrapped-phase posterior.
    """
    import json

    from _common import RESULTS

    problem = _reduced(args)
    refs = json.loads((RESULTS / "oce_reference.json").read_text())["result"]["tests"]
    rows = []
    for i in range(args.first, args.num_test):
        ref = np.load(OUT / f"reference_{i}.npz")
        theta, y = problem.draw(seed=100 + i)
        np.testing.assert_allclose(y, ref["y"], atol=1e-5)
        del theta
        mean, sd = _z_summary(refs[i]["params_wrapped"])
        model = problem.located_model(mean, args.init_spread * sd)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = bayesinv.infer(model, y, method="mcmc", num_samples=args.num_samples, num_chains=args.num_chains,
                                   warmup_steps=args.warmup, thin=args.thin, seed=i, progress=False, target=["w"])
        elapsed = time.perf_counter() - t0
        w = torch.as_tensor(idata.posterior["w"].values.reshape(-1, 7), dtype=torch.float64)
        z = torch.as_tensor(mean) + torch.as_tensor(args.init_spread * sd) * w
        sites = oce._from_z(z)
        E_rel = oce.homogeneous_field(64, sites["width"], sites["ratio"], sites["center"], torch.exp(z[:, 4]),
                                      torch.ones(len(z), dtype=torch.float64))
        lr = np.log10(E_rel.numpy())
        m, s = lr.mean(0), lr.std(0)
        p_ref = refs[i]["params_wrapped"]
        shift, sd_ratio = {}, {}
        for k in ("width", "ratio", "center", "top_displacement"):
            v = sites[k].numpy().reshape(len(z), -1)
            rm, rs = np.asarray(p_ref[k][0]), np.asarray(p_ref[k][1])
            shift[k] = (np.abs(v.mean(0) - rm) / rs).tolist()
            sd_ratio[k] = (v.std(0) / rs).tolist()
        ratio = (z[:, 4] / np.log(10)).numpy()
        rm, rs = p_ref["log10_ratio"][0][0], p_ref["log10_ratio"][1][0]
        shift["log10_ratio"], sd_ratio["log10_ratio"] = [abs(ratio.mean() - rm) / rs], [ratio.std() / rs]
        row = {"seed": 100 + i, "mean_rmse_vs_importance": _rmse(m, ref["mean"]), "std_rmse_vs_importance": _rmse(s, ref["std"]),
               "mean_rmse_vs_truth": _rmse(m, ref["truth"]), "importance_mean_rmse_vs_truth": _rmse(ref["mean"], ref["truth"]),
               "param_shift_in_importance_sd": shift, "param_sd_ratio": sd_ratio, "time_s": elapsed,
               "acceptance": float(idata.posterior.attrs.get("acceptance_rate", np.nan)),
               "attrs": {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in idata.posterior.attrs.items()
                         if k in ("max_rhat", "min_ess_bulk", "num_modes", "thin", "acceptance_rate")}}
        np.savez(OUT / f"mcmc_{i}.npz", mean=m, std=s)
        (OUT / f"mcmc_{i}.json").write_text(json.dumps(row))
        worst = max(max(v) for v in shift.values())
        print(f"test {i}: mcmc vs importance: mean RMSE {row['mean_rmse_vs_importance']:.4f}, std RMSE "
              f"{row['std_rmse_vs_importance']:.4f}; largest parameter shift {worst:.2f} importance sd; "
              f"sd ratios {np.round([v[0] for v in sd_ratio.values()], 2)}; {row['attrs']}; {elapsed:.0f} s", flush=True)
        rows.append(row)
    out = {"tests": rows, "num_chains": args.num_chains, "warmup": args.warmup, "num_samples": args.num_samples,
           "thin": args.thin, "init_spread": args.init_spread}
    for key in ("mean_rmse_vs_importance", "std_rmse_vs_importance", "mean_rmse_vs_truth", "importance_mean_rmse_vs_truth",
                "time_s"):
        out[key] = float(np.mean([r[key] for r in rows]))
    out["largest_param_shift_in_importance_sd"] = float(max(max(max(v) for v in r["param_shift_in_importance_sd"].values())
                                                            for r in rows))
    print(f"| mcmc vs importance | mean RMSE {out['mean_rmse_vs_importance']:.4f} | std RMSE {out['std_rmse_vs_importance']:.4f} |"
          f" largest parameter shift {out['largest_param_shift_in_importance_sd']:.2f} sd |")
    return out


def _feature_build(args) -> dict:
    r"""``build=`` of ``--features`` (with ``--strain-windows``), or nothing."""
    windows = tuple(getattr(args, "strain_windows", None) or ())
    if windows and not getattr(args, "features", False):
        raise SystemExit("--strain-windows needs --features")
    if not getattr(args, "features", False):
        return {}
    return {"build": functools.partial(oce.phase_feature_build, strain_windows=windows)}


def _options(args) -> dict:
    r"""cond_score fit options (keyword arguments of the public ``bayesinv.fit``)."""
    if getattr(args, "published", False):  # Table 2, § 4.2.3: NCSN, annealed Langevin
        return dict(network="unet", process="ncsn", sigma_1=120.0, sigma_L=0.01, num_levels=680, steps_per_level=5,
                    eps=5.7e-6, lr=1e-4, batch_size=32, max_steps=300_000, max_epochs=None, patience=None, val_fraction=0.2,
                **_feature_build(args))
    extra = _feature_build(args)
    return dict(network="unet", base_channels=args.base_channels, channel_mults=tuple(args.channel_mults), **extra,
                batch_size=args.batch_size, max_epochs=None, max_steps=args.max_steps, lr=args.lr, ema_decay=args.ema,
                patience=None, val_fraction=0.05, t_min=args.t_min, precision=getattr(args, "precision", "float32"))


def cond_score(args) -> dict:
    problem = _reduced(args)
    ds = _prior_set(args, problem)
    data = {k: torch.as_tensor(np.asarray(ds[k].values)) for k in ("E_rel", "y")}
    t0 = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / ("cond_score" + (f"_{args.tag}" if args.tag else "") + ".ckpt")  # rerun = resume, not retrain
    post = bayesinv.fit(problem.model, method="cond_score", target="E_rel", data=data, transforms={"E_rel": "log10"},
                        seed=0, progress=None, device="cpu", checkpoint=ckpt, resume=True, **_options(args))
    fit_time = time.perf_counter() - t0
    print(f"fit: {fit_time:.0f} s this call ({post.info.get('train_steps')} steps, {post.info.get('train_time_s') or 0:.0f} s "
          f"training in all)", flush=True)
    clips = {"off": (False,), "on": (True,), "both": (False, True)}[args.clip]
    out = {"fit_time_s": fit_time, "train_steps": post.info.get("train_steps"), "train_time_s": post.info.get("train_time_s"),
           "train_cpu_s": post.info.get("train_cpu_s"),
           "num_parameters": sum(p.numel() for p in post.net.parameters())}
    for clip in clips:
        res = _compare_with_references(post, args, clip)
        out.update(res) if clip == clips[-1] else out.update({"unclipped": res})
    return out


def _field_errors(log_rel: np.ndarray, ref) -> dict:
    r"""RMSE of the pixel-wise mean / sd of draws of E' ``(n, H, W)`` against a saved reference, and of the mean
    against the truth."""
    m, s = log_rel.mean(0), log_rel.std(0)
    return {"mean_rmse": _rmse(m, ref["mean"]), "std_rmse": _rmse(s, ref["std"]), "mean_rmse_vs_truth": _rmse(m, ref["truth"])}


def _compare_with_references(post, args, clip: bool) -> dict:
    r"""cond_score's pixel-wise posterior mean / sd of E' against the saved exact references."""
    rows = []
    for i in range(args.num_test):
        ref = np.load(OUT / f"reference_{i}.npz")
        t0 = time.perf_counter()
        draws = post.sample(torch.as_tensor(ref["y"]), args.num_draws, seed=i, clip=clip)["E_rel"].double().numpy()
        sample_time = time.perf_counter() - t0
        row = {"seed": 100 + i, **_field_errors(np.log10(np.clip(draws, 1e-6, None)), ref),
               "ref_mean_rmse_vs_truth": _rmse(ref["mean"], ref["truth"]), "sample_time_s": sample_time}
        if "g_mean" in ref:
            row.update({"gauss_mean_rmse": _rmse(ref["g_mean"], ref["mean"]), "gauss_std_rmse": _rmse(ref["g_std"], ref["std"])})
        print(f"clip={clip} test {i}: mean RMSE {row['mean_rmse']:.4f}, std RMSE {row['std_rmse']:.4f}, vs truth "
              f"{row['mean_rmse_vs_truth']:.4f} (reference {row['ref_mean_rmse_vs_truth']:.4f}); {sample_time:.0f} s", flush=True)
        rows.append(row)
    out = {"clip": clip, "tests": rows}
    for key in ("mean_rmse", "std_rmse", "mean_rmse_vs_truth", "ref_mean_rmse_vs_truth", "gauss_mean_rmse", "gauss_std_rmse",
                "sample_time_s"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    print(f"| cond_score (clip={clip}) vs exact | mean RMSE {out['mean_rmse']:.4f} | std RMSE {out['std_rmse']:.4f} |")
    return out


def _panels(truth, y, draws, name: str) -> None:
    r"""truth / wrapped measurement / three draws / mean / std / error of E', as ``benchmarks/results/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    from _common import RESULTS
    from bayesinv.diagnostics import plot_field_panels

    fig = plot_field_panels(truth, y, draws[:3], draws.mean(0), draws.std(0), panel_size=2.6,
                            titles={"truth": "true E' = log10(E/E_h)", "measurement": "wrapped phase (rad)"})
    fig.savefig(RESULTS / f"{name}.png", dpi=70)


LATENT = ["width", "ratio", "center", "E_spheroid", "E_hydrogel", "top_displacement"]


def _latent_options(method: str, args) -> dict:
    r"""Fit options of the latent route (public ``bayesinv.fit`` names): the method's network with an embedding
    that :func:`oce.phase_embedding_build` replaces by the phase-feature CNN."""
    common = dict(max_epochs=None, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, lr_schedule="cosine",
                  patience=None, val_fraction=0.05, embed_dim=args.embed_dim,
                  transforms={"E_spheroid": "log", "E_hydrogel": "log", "width": "log"})
    if method == "flow":
        common.update(embedding="cnn", num_transforms=5, hidden=(128, 128))
    else:  # cond_score / flow_matching: an MLP network on the 7 numbers, its MLP embedding replaced
        common.update(network="mlp", embedding="mlp")
    if method == "cond_score":
        common["t_min"] = args.t_min
    return common


def _importance_corrected(problem, post, ref, args, seed: int) -> dict:
    r"""Importance sampling of the exact wrapped-phase posterior with the fitted flow as the proposal
    (``--importance`` proposals, 1,000 resampled draws): ESS and the field errors against the reference."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a low ESS is reported in the table, not warned about per test
        idata = bayesinv.infer(problem.model, torch.as_tensor(ref["y"]), method="importance", proposal=post,
                               num_samples=1000, num_proposals=args.importance, seed=seed, progress=False)  # fmt: skip
    post_ = idata.posterior
    lr = _log_rel(post_["E"].values.reshape(-1, 64, 64), post_["E_hydrogel"].values.reshape(-1))
    res = {"ess": float(idata.sample_stats["ess"]), **_field_errors(lr, ref), "time_s": time.perf_counter() - t0}
    print(f"  flow + importance ({args.importance} simulations): ESS {res['ess']:.0f}, mean RMSE {res['mean_rmse']:.4f}, "
          f"std RMSE {res['std_rmse']:.4f}, vs truth {res['mean_rmse_vs_truth']:.4f}; {res['time_s']:.0f} s", flush=True)  # fmt: skip
    return res


def latent(args) -> dict:
    r"""The latent route on the reduced variant: learn the 7 parameters with a phase-feature CNN embedding, push the
    draws through the model's field ``E_rel`` and compare the field's pixel-wise mean / sd with the exact references."""
    import json

    problem = _reduced(args)
    t0 = time.perf_counter()
    ds = _prior_set(args, problem)
    sim_time = time.perf_counter() - t0
    data = {k: torch.as_tensor(np.asarray(ds[k].values)) for k in (*LATENT, "y")}
    ref_file = Path(__file__).resolve().parent / "results" / f"oce_reference{'_' + args.reference_tag if args.reference_tag else ''}.json"
    out = {"num_train": args.num_train, "prior_set_s": sim_time, "methods": {}}
    fitted = {}
    for method in args.methods:  # every fit first: the evaluation needs the references (``reference``) only then
        options = _latent_options(method, args)
        t0 = time.perf_counter()
        post = bayesinv.fit(problem.model, method=method, target=LATENT, data=data, seed=0, progress=None, device="cpu",
                            build=oce.phase_embedding_build(method), **options)  # fmt: skip
        fitted[method] = (post, options, time.perf_counter() - t0)
        print(f"{method}: fit {fitted[method][2]:.0f} s, {post.info.get('train_steps')} steps", flush=True)
    # read when the fits are done: a ``reference`` run may have been writing it meanwhile
    ref_params = [t["params_wrapped"] for t in json.loads(ref_file.read_text())["result"]["tests"]] if ref_file.exists() else None
    for method, (post, options, fit_time) in fitted.items():
        rows = []
        for i in range(args.num_test):
            ref = np.load(OUT / f"reference_{i}.npz")
            t0 = time.perf_counter()
            draws = post.sample(torch.as_tensor(ref["y"]), args.num_draws, seed=i, deterministic=True)
            sample_time = time.perf_counter() - t0
            row = {"seed": 100 + i, **_field_errors(np.log10(np.clip(draws["E_rel"].double().numpy(), 1e-6, None)), ref),
                   "ref_mean_rmse_vs_truth": _rmse(ref["mean"], ref["truth"]), "sample_time_s": sample_time}
            ratio = np.log10((draws["E_spheroid"] / draws["E_hydrogel"]).double().numpy())
            mine = {"width": draws["width"].double().numpy(), "log10_ratio": ratio,
                    "x": draws["center"][:, 0].double().numpy(), "y": draws["center"][:, 1].double().numpy()}
            row["params"] = {k: [float(v.mean()), float(v.std())] for k, v in mine.items()}
            if ref_params is not None:
                p = ref_params[i]
                exact = {"width": (p["width"][0][0], p["width"][1][0]), "log10_ratio": (p["log10_ratio"][0][0], p["log10_ratio"][1][0]),
                         "x": (p["center"][0][0], p["center"][1][0]), "y": (p["center"][0][1], p["center"][1][1])}
                row["shift_in_exact_sd"] = {k: abs(row["params"][k][0] - exact[k][0]) / exact[k][1] for k in exact}
                row["sd_ratio"] = {k: row["params"][k][1] / exact[k][1] for k in exact}
            print(f"{method} test {i}: mean RMSE {row['mean_rmse']:.4f}, std RMSE {row['std_rmse']:.4f}, vs truth "
                  f"{row['mean_rmse_vs_truth']:.4f} (reference {row['ref_mean_rmse_vs_truth']:.4f})"
                  + (f"; shift/exact sd {np.round(list(row['shift_in_exact_sd'].values()), 2)}, sd ratio "
                     f"{np.round(list(row['sd_ratio'].values()), 2)}" if "sd_ratio" in row else "")
                  + f"; {sample_time:.1f} s", flush=True)  # fmt: skip
            if args.importance and method == "flow":  # the exact wrapped-phase posterior, the flow as proposal
                row["importance"] = _importance_corrected(problem, post, ref, args, seed=i)
            rows.append(row)
        res = {"options": dict(options), "fit_time_s": fit_time, "train_steps": post.info.get("train_steps"),
               "num_parameters": sum(p.numel() for p in post.net.parameters()), "tests": rows}
        for key in ("mean_rmse", "std_rmse", "mean_rmse_vs_truth", "ref_mean_rmse_vs_truth", "sample_time_s"):
            res[key] = float(np.mean([r[key] for r in rows]))
        for key in ("shift_in_exact_sd", "sd_ratio"):
            if rows and key in rows[0]:
                res[key + "_median"] = {k: float(np.median([r[key][k] for r in rows])) for k in rows[0][key]}
                res[key + "_max"] = {k: float(np.max([r[key][k] for r in rows])) for k in rows[0][key]}
        if args.importance and method == "flow":
            res["importance"] = {k: float(np.mean([r["importance"][k] for r in rows]))
                                 for k in ("ess", "mean_rmse", "std_rmse", "mean_rmse_vs_truth", "time_s")}
        out["methods"][method] = res
        print(f"| {method} latent | {args.num_train} pairs | {res['train_steps']} steps | fit {fit_time:.0f} s "
              f"| mean RMSE {res['mean_rmse']:.4f} | std RMSE {res['std_rmse']:.4f} | vs truth {res['mean_rmse_vs_truth']:.4f} |", flush=True)
    return out


def _full_store(args) -> Path:
    r"""The simulation store of the full-problem draws (training and held-out)."""
    return OUT / f"full_{args.image_size}_{args.num_train}_{args.element_size:g}.zarr"


def _full_stem(args) -> str:
    r"""The name of a full-problem run's checkpoint, saved posterior and panels: ``full_<n>[_<tag>]``."""
    return f"full_{args.image_size}" + (f"_{args.tag}" if args.tag else "")


def _log_draws(post, y: np.ndarray, num: int, seed: int) -> np.ndarray:
    r"""``num`` posterior draws of E' = log10(E / E_hydrogel) for the observation ``y``."""
    draws = post.sample(torch.as_tensor(y), num, seed=seed)["E_rel"].double().numpy()
    return np.log10(np.clip(draws, 1e-6, None))


def full(args) -> dict:
    problem = oce.OCESpheroid(args.image_size, workers=args.workers, element_size=args.element_size)
    path = _full_store(args)
    t0 = time.perf_counter()
    ds = bayesinv.simulate(problem.model, args.num_train + args.num_test, seed=0, dims=problem.dims, path=path,
                           progress=False, chunk_size=250)
    sim_time = time.perf_counter() - t0
    if args.simulate_only:
        print(f"simulated {args.num_train + args.num_test} draws into {path} in {sim_time:.0f} s")
        return {"sim_time_s": sim_time, "path": str(path)}
    train = ds.isel(draw=slice(0, args.num_train))[["E_rel", "y"]].load()
    test = ds.isel(draw=slice(args.num_train, None))[["E_rel", "y"]].load()
    if args.augment:
        train = oce.augment(train)
    data = {k: torch.as_tensor(np.asarray(train[k].values)) for k in ("E_rel", "y")}
    t0 = time.perf_counter()
    stem = _full_stem(args)
    # a checkpoint per run: a crash in the evaluation (or a kill) reruns without retraining
    post = bayesinv.fit(problem.model, method="cond_score", target="E_rel", data=data, transforms={"E_rel": "log10"},
                        seed=0, progress=None, device=args.device, checkpoint=OUT / f"{stem}.ckpt", resume=True,
                        **_options(args))
    fit_time = time.perf_counter() - t0
    saved = post.save(OUT / f"{stem}.bayesinv")  # bayesinv.load(saved) samples again without the data
    info = post.info
    print(f"fit on {int(data['E_rel'].shape[0])} pairs: {fit_time:.0f} s this call, {info.get('train_steps')} steps, "
          f"{info.get('train_time_s') or 0:.0f} s training in all; saved {saved}", flush=True)
    names = list(FULL_SUMMARIES)
    ranks, err, rows, summaries, true_summaries, gel_noise = [], [], [], [], [], []
    for i in range(args.num_test):
        truth = np.log10(test["E_rel"].values[i])
        draws = _log_draws(post, test["y"].values[i], args.num_draws, i)
        m = draws.mean(0)
        err.append(_rmse(m, truth))
        s_true = np.array([FULL_SUMMARIES[k](truth) for k in names])
        s_draws = np.array([[FULL_SUMMARIES[k](d) for k in names] for d in draws])
        ranks.append((s_draws < s_true).sum(0).astype(int).tolist())
        summaries.append(s_draws.tolist())
        true_summaries.append(s_true.tolist())
        gel = np.abs(truth) < 1e-6  # the gel: E = E_hydrogel exactly
        gel_noise.append(float(np.sqrt((draws[:, gel] ** 2).mean())) if gel.any() else float("nan"))
        rows.append({"mean_rmse_vs_truth": err[-1], "true": dict(zip(names, s_true.tolist())),
                     "draw_mean": dict(zip(names, s_draws.mean(0).tolist())), "gel_rms_of_draws": gel_noise[-1],
                     "inside_pixels": int((np.abs(truth) > 0.05).sum())})
        print(f"test {i}: RMSE {err[-1]:.4f}, ranks {dict(zip(names, ranks[-1]))}, gel RMS of draws {gel_noise[-1]:.4f}",
              flush=True)
        if i == 0:
            _panels(truth, test["y"].values[0], draws, f"oce_full_{args.image_size}_panels" + (f"_{args.tag}" if args.tag else ""))
    prior_mean = np.log10(train["E_rel"].values[: args.num_train]).mean(0)  # the uninformed estimate, as a yardstick
    prior_err = float(np.mean([_rmse(prior_mean, np.log10(t)) for t in test["E_rel"].values]))
    ranks_arr = np.asarray(ranks)
    out = {"sim_time_s": sim_time, "fit_time_s": fit_time, "train_steps": info.get("train_steps"),
           "train_time_s": info.get("train_time_s"), "train_cpu_s": info.get("train_cpu_s"),
           "num_pairs": int(data["E_rel"].shape[0]), "mean_rmse_vs_truth": float(np.mean(err)),
           "summary_names": names, "ranks": {k: ranks_arr[:, j].tolist() for j, k in enumerate(names)},
           "ranks_area": ranks_arr[:, 0].tolist(), "ranks_modulus": ranks_arr[:, 1].tolist(),
           "num_draws": args.num_draws, "tests": rows, "prior_mean_rmse_vs_truth": prior_err,
           "gel_rms_of_draws": float(np.nanmean(gel_noise))}
    frac = ((ranks_arr / args.num_draws >= 0.1) & (ranks_arr / args.num_draws <= 0.9)).mean(0)
    out["fraction_in_central_80"] = dict(zip(names, frac.tolist()))
    out["ranks_area_fraction_in_central_80"], out["ranks_modulus_fraction_in_central_80"] = float(frac[0]), float(frac[1])
    from bayesinv.diagnostics.calibration import sbc_uniformity, tarp_coverage

    sbc = sbc_uniformity(ranks_arr, args.num_draws)
    out["sbc_chi2_pvalue"] = dict(zip(names, sbc.chi2_pvalue.tolist()))
    out["sbc_ks_pvalue"] = dict(zip(names, sbc.ks_pvalue.tolist()))
    S, T = np.asarray(summaries), np.asarray(true_summaries)
    out["tarp"] = {}
    for label, cols in (("area_modulus", [0, 1]), ("contrast_area_median5", [2, 3])):
        alpha, ecp = tarp_coverage(S[..., cols], T[:, cols], num_alphas=11)
        out["tarp"][label] = {"alpha": alpha.tolist(), "ecp": ecp.tolist()}
    out["summaries"], out["true_summaries"] = summaries, true_summaries
    print(f"posterior-mean RMSE vs truth (E' = log10 E/E_h): {out['mean_rmse_vs_truth']:.4f} (prior mean: {prior_err:.4f}); "
          f"central-80% coverage {out['fraction_in_central_80']}; SBC chi2 p {out['sbc_chi2_pvalue']}; "
          f"gel RMS of draws {out['gel_rms_of_draws']:.4f}")
    return out


def gel(args) -> dict:
    r"""The draws' error in the gel by distance from the true spheroid, for a posterior saved by ``full --tag <tag>``."""
    from scipy.ndimage import distance_transform_edt

    post = bayesinv.load(OUT / f"{_full_stem(args)}.bayesinv")
    ds = bayesinv.data.open_data(_full_store(args))
    test = ds.isel(draw=slice(args.num_train, args.num_train + args.num_test))[["E_rel", "y"]].load()
    bands = [(1, 2), (2, 4), (4, 8), (8, args.image_size)]
    per = {b: [] for b in bands}
    for i in range(args.num_test):
        truth = np.log10(test["E_rel"].values[i])
        draws = _log_draws(post, test["y"].values[i], args.num_draws, i)
        is_gel = np.abs(truth) < 1e-6
        dist = distance_transform_edt(is_gel)  # pixels to the nearest non-gel pixel
        for lo, hi in bands:
            v = draws[:, is_gel & (dist >= lo) & (dist < hi)]
            per[(lo, hi)].append([float(np.sqrt((v**2).mean())), float(v.mean()), float((np.abs(v) > 0.05).mean())])
    out = {}
    for (lo, hi), rows in per.items():
        rms, mean, share = np.mean(rows, 0).tolist()
        out[f"{lo}-{hi}"] = {"rms": rms, "mean": mean, "share_above_0.05": share}
        print(f"| gel {lo}-{hi} px from the spheroid | RMS {rms:.4f} | mean {mean:+.4f} | share abs(E') > 0.05 {share:.3f} |")
    return {"bands_px": out, "num_test": args.num_test, "num_draws": args.num_draws}


def _area(f: np.ndarray) -> float:
    r"""µm² of the window where abs(E') > 0.05 (the spheroid, read off a field)."""
    return float((np.abs(f) > 0.05).mean() * oce.WINDOW**2)


def _modulus(f: np.ndarray) -> float:
    r"""Mean E' over the pixels where abs(E') > 0.05 (0 where there are none)."""
    inside = np.abs(f) > 0.05
    return float(f[inside].mean()) if inside.any() else 0.0


def _area_median5(f: np.ndarray) -> float:
    r""":func:`_area` of the 5 × 5 median-filtered field: isolated pixel noise does not count as spheroid."""
    from scipy.ndimage import median_filter

    return _area(median_filter(f, size=5, mode="nearest"))


#: Summaries of a field E' whose SBC ranks the full-problem run reports: the first two (chosen before the first
#: run) threshold single pixels, so any pixel noise of a draw in the gel enlarges its area; the last two (added
#: 2026-12-04, before the 4,000-step run) do not: the window mean of E' (pixel noise averages out) and the area
#: after a 5 x 5 median filter.
FULL_SUMMARIES = {"area": _area, "modulus": _modulus, "contrast": lambda f: float(f.mean()), "area_median5": _area_median5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["convergence", "throughput", "wrap", "reference", "mcmc", "cond_score", "latent", "full", "gel"])
    parser.add_argument("--num-draws", type=int, default=None)
    parser.add_argument("--element-sizes", type=float, nargs="+", default=[8.0, 4.0])
    parser.add_argument("--element-size", type=float, default=16.0,
                        help="FEM element size (µm) of reference/cond_score/full (16: fast; the same model everywhere)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--num-test", type=int, default=10)
    parser.add_argument("--num-local", type=int, default=300)
    parser.add_argument("--num-gaussian", type=int, default=5, help="reference: test observations that also get the Gaussian-likelihood reference")
    parser.add_argument("--num-final", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--t-min", type=float, default=1e-3)
    parser.add_argument("--augment", action="store_true", help="full: sixfold augmentation of the training draws")
    parser.add_argument("--features", action="store_true",
                        help="cond_score/full: the network sees the wrapped phase through oce.phase_features (cos, sin, wrapped differences)")
    parser.add_argument("--strain-windows", type=int, nargs="+", default=None,
                        help="with --features: add oce.strain_ratio channels averaged over these odd window sizes (pixels)")
    parser.add_argument("--published", action="store_true", help="full: the Table 2 settings (GPU)")
    parser.add_argument("--simulate-only", action="store_true", help="full: only simulate (resumably) the training and test draws")
    parser.add_argument("--num-chains", type=int, default=4, help="mcmc: chains")
    parser.add_argument("--first", type=int, default=0, help="mcmc: the first test observation (run a range in parallel)")
    parser.add_argument("--warmup", type=int, default=500, help="mcmc: warm-up steps per chain")
    parser.add_argument("--num-samples", type=int, default=250, help="mcmc: kept draws per chain")
    parser.add_argument("--thin", type=int, default=2, help="mcmc: keep every thin-th step")
    parser.add_argument("--init-spread", type=float, default=3.0, help="mcmc: starting spread in reference posterior sds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="cond_score's training precision")
    parser.add_argument("--clip", default="off", choices=["off", "on", "both"],
                        help="cond_score: sample with clip=True (the denoiser kept in the training range), without, or both")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--methods", nargs="+", default=["flow", "cond_score"], choices=["flow", "cond_score", "flow_matching"],
                        help="latent: the methods fitted on the 7 parameters")
    parser.add_argument("--embed-dim", type=int, default=64, help="latent: the phase-feature CNN embedding size")
    parser.add_argument("--importance", type=int, default=0,
                        help="latent: also importance-sample the exact posterior with the flow as proposal (this many simulations)")
    parser.add_argument("--reference-tag", default="rerun", help="latent: oce_reference_<tag>.json holds the exact parameter posteriors")
    args = parser.parse_args()
    if args.num_draws is None:
        args.num_draws = {"convergence": 3, "throughput": 5, "wrap": 200, "full": 16, "gel": 16}.get(args.what, 32)
    set_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    payload = {"meta": metadata(MACHINE), "args": vars(args)}
    payload["result"] = globals()[args.what](args)
    path = write_results(f"oce_{args.what}" + (f"_{args.tag}" if args.tag else ""), payload)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
