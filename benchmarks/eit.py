r"""EIT (pyEIT): mesh convergence, forward-solve speed, Gauss–Newton tuning and metrics.

- ``--convergence``: the 208 voltages of a few prior draws on distmesh meshes of size
  h0 = 0.1 … 0.018; relative change ‖v_h − v_ref‖ / ‖v_ref‖ to the finest mesh, for the
  voltages and for the difference data v − v_homogeneous (what the anomalies add).
- ``--speed``: forward solves per second on one core (single-threaded BLAS) and the
  estimated time to simulate the published 23,810 pairs.
- ``--tune``: the Gauss–Newton grid (λ, p, iterations) on validation draws (seed 100,
  never the test draws), ranked by mean MSE.
- ``--gn`` (default): Gauss–Newton metrics (MSE, PSNR, SSIM, relative L1, absolute L1,
  dynamic range; mean ± std) on ``--num-test`` test draws (seed 0) for 2 and 4 anomalies
  at 40 and 25 dB, beside the published GN rows (Tables 1–4).
- ``--datasets [K:SNR ...]``: simulates the published-size datasets (23,810 pairs at
  128 × 128, ``--workers`` processes) into ``out/eit_bench/data/`` and records the time.
- ``--learned``: fits vae, flow (multiscale), CSD* and cond_score on simulated pairs
  and scores one draw per test observation (and Gauss–Newton on the same draws) with
  the same six metrics, on an ``--image-size`` grid (default 32 × 32: the paper's
  128 × 128 is out of reach of a 2-core CPU). CSD*'s K′ is chosen on validation pairs.
  Results go to ``benchmarks/results/eit_<k>anom_<snr>db_<size>px.json`` and the
  fitted posteriors to ``out/eit_bench/`` (read by ``examples/eit.py``). ``--reuse``
  loads those posteriors instead of fitting; ``--test-anomalies``/``--test-snr`` test on
  another prior or noise level (the generalisation test). Each learned method is scored
  on one posterior draw per test observation, or on the mean of ``--num-draws`` draws.
- ``--learned --published``: the same on the published-size store of the setting (made
  by ``--datasets``, simulated first when missing): trained on its 21,600 training pairs at
  128 × 128, K′ chosen on its validation part, scored on its 50 test pairs; results in
  ``eit_<k>anom_<snr>db_128px_published.json``. The budget of the paper needs a GPU
  (``bayesinv.fit`` takes one when present); size it with ``--train-steps`` and
  ``--base-channels``.

Run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eit.py --convergence --speed --gn [--num-test 50]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eit.py --tune
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eit.py --learned --methods csd_star --image-size 32 \
        --num-train 4000 --train-steps csd_star=1500
    .venv/bin/python benchmarks/eit.py --learned --published --anomalies 2 --snr 40 --base-channels 32 \
        --train-steps vae=30000 flow=20000 csd_star=40000 cond_score=40000      # on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bayesinv.diagnostics import metrics as M  # noqa: E402
from bayesinv.models import eit as E  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, metadata, write_results  # noqa: E402

#: Published Gauss–Newton rows (mean ± std): MSE, PSNR, SSIM, RE, AE, DR.
PUBLISHED_GN = {
    (2, 40): ((0.0032, 0.0004), (28.850, 0.675), (0.874, 0.011), (0.034, 0.003), (0.026, 0.002), (1.045, 0.066)),
    (4, 40): ((0.0140, 0.006), (26.317, 1.034), (0.794, 0.047), (0.061, 0.015), (0.078, 0.019), (1.199, 0.107)),
    (2, 25): ((0.0067, 0.0009), (24.271, 0.992), (0.804, 0.018), (0.059, 0.004), (0.046, 0.003), (0.891, 0.068)),
    (4, 25): ((0.0164, 0.003), (24.752, 1.018), (0.747, 0.031), (0.092, 0.012), (0.072, 0.009), (1.108, 0.129)),
}
METRICS = ("MSE", "PSNR", "SSIM", "RE", "AE", "DR")


def _machine() -> str:
    r"""What this run ran on, for the result files: the GPU when torch sees one, else the CPU."""
    cpus = f"{os.cpu_count()}-core CPU"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} GPU, {cpus}"
    return f"{cpus}, no GPU"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def field_metrics(rec: np.ndarray, truth: np.ndarray) -> tuple[float, ...]:
    r"""The paper's six metrics of one image (data range of the truth for PSNR and SSIM)."""
    return (
        M.mse(rec, truth),
        M.psnr(rec, truth),
        M.ssim(rec, truth),
        M.relative_l1(rec, truth),
        M.absolute_l1(rec, truth),
        M.dynamic_range(rec, truth),
    )


def convergence(sizes: list[float], num_draws: int) -> None:
    print(f"Mesh convergence of the 208 voltages ({num_draws} prior draws each, 2 and 4 anomalies; reference h0 = {sizes[-1]})")
    eit2, eit4 = E.make_model(2), E.make_model(4)
    anomalies = []
    for eit in (eit2, eit4):
        from bayesinv.problem import as_problem, run_batch

        batch = run_batch(as_problem(eit.model), num_draws, seed=7)
        anomalies.append((eit.conductivities, batch.values["centres"].double(), batch.values["radii"].double()))
    results = {}
    for h0 in sizes:
        t0 = time.perf_counter()
        solver = E.fem_solver(h0)
        t_mesh = time.perf_counter() - t0
        homog = solver.voltages(np.ones(solver.num_elements))
        vs = []
        t0 = time.perf_counter()
        for values, centres, radii in anomalies:
            perm = E.paint(solver.centres, centres, radii, values).numpy()
            vs.append(np.stack([solver.voltages(p) for p in perm]))
        t_solve = (time.perf_counter() - t0) / (2 * num_draws)
        results[h0] = (np.concatenate(vs), homog, solver.mesh.n_nodes, solver.mesh.n_elems, t_mesh, t_solve)
    ref_v, ref_h = results[sizes[-1]][:2]
    print(f"{'h0':>6} {'nodes':>6} {'elems':>6} {'mesh s':>7} {'solve ms':>8} {'rel dv (max)':>13} {'rel dv (mean)':>14} {'rel d(v-v0) (mean)':>19}")
    for h0, (v, homog, nodes, elems, t_mesh, t_solve) in results.items():
        rel = np.linalg.norm(v - ref_v, axis=1) / np.linalg.norm(ref_v, axis=1)
        diff = (v - homog) - (ref_v - ref_h)
        rel_d = np.linalg.norm(diff, axis=1) / np.linalg.norm(ref_v - ref_h, axis=1)
        mark = "  <- simulation mesh" if h0 == E.SIM_H0 else ("  <- Gauss-Newton mesh" if h0 == E.INV_H0 else "")
        print(f"{h0:6.3f} {nodes:6d} {elems:6d} {t_mesh:7.1f} {1e3 * t_solve:8.1f} {rel.max():13.2e} {rel.mean():14.2e} {rel_d.mean():19.2e}{mark}")
    print("noise at 40 dB is 1e-2 of the voltage norm; at 25 dB 5.6e-2")


def speed(num_draws: int) -> None:
    for k in (2, 4):
        eit = E.make_model(k)
        from bayesinv.problem import as_problem, run_batch

        batch = run_batch(as_problem(eit.model), num_draws, seed=11)
        centres, radii = batch.values["centres"].numpy(), batch.values["radii"].numpy()
        E.solve_voltages(centres[:2], radii[:2], eit.conductivities)
        t0 = time.perf_counter()
        E.solve_voltages(centres, radii, eit.conductivities)
        t_sim = (time.perf_counter() - t0) / num_draws
        t0 = time.perf_counter()
        eit.draw(seed=12, n=num_draws)
        t_draw = (time.perf_counter() - t0) / num_draws
        n = sum(E.PUBLISHED_SPLIT.values())
        print(
            f"{k} anomalies: {1 / t_sim:.1f} forward solves/s/core ({1e3 * t_sim:.1f} ms), full model draw (prior, image, "
            f"solve, noise) {1e3 * t_draw:.1f} ms -> {n} pairs ~ {n * t_draw / 60:.0f} min on one core, "
            f"~ {n * t_draw / 120:.0f} min with workers=2"
        )


def tune(num_val: int) -> None:
    grid = list(itertools.product((0.0, 0.5, 1.0), (1e-3, 1e-2, 1e-1, 1.0), (1, 3, 6), (1.0, 0.5)))
    grid = [g for g in grid if not (g[2] == 1 and g[3] != 1.0)]
    for k, snr in ((2, 40), (4, 40)):
        eit = E.make_model(k, snr)
        sigma, y = eit.draw(seed=100, n=num_val)
        rows = []
        for p, lamb, it, decay in grid:
            rec = eit.gauss_newton(y, lamb=lamb, p=p, maxiter=it, lamb_decay=decay)
            m = np.array([field_metrics(r, s)[:3] for r, s in zip(rec, sigma)]).mean(0)
            rows.append((m[0], p, lamb, it, decay, m[1], m[2]))
            print(f"  .. p={p} lamb={lamb:g} maxiter={it} decay={decay}: MSE {m[0]:.4f} PSNR {m[1]:.2f} SSIM {m[2]:.3f}", flush=True)
        print(f"validation, {k} anomalies {snr} dB ({num_val} draws, seed 100): best 8 of {len(grid)} by MSE")
        for r in sorted(rows)[:8]:
            print(f"  MSE {r[0]:.4f} PSNR {r[5]:.2f} SSIM {r[6]:.3f}  p={r[1]} lamb={r[2]:g} maxiter={r[3]} lamb_decay={r[4]}")


def gauss_newton(num_test: int, machine: str) -> None:
    print(f"Gauss-Newton on {num_test} test draws (seed 0), settings {E.GN_DEFAULTS}")
    print(f"| setting | | {' | '.join(METRICS)} | ms/recon |")
    print("|---|---|" + "---|" * (len(METRICS) + 1))
    rows: dict = {}
    for k, snr in ((2, 40), (4, 40), (2, 25), (4, 25)):
        eit = E.make_model(k, snr)
        sigma, y = eit.draw(seed=0, n=num_test)
        eit.gauss_newton(y[0])
        t0 = time.perf_counter()
        rec = eit.gauss_newton(y)
        t_rec = (time.perf_counter() - t0) / num_test
        m = np.array([field_metrics(r, s) for r, s in zip(rec, sigma)])
        ours = " | ".join(f"{a:.4g} ± {b:.2g}" for a, b in zip(m.mean(0), m.std(0)))
        paper = " | ".join(f"{a:.4g} ± {b:.2g}" for a, b in PUBLISHED_GN[(k, snr)])
        print(f"| {k} anomalies, {snr} dB | ours | {ours} | {1e3 * t_rec:.1f} |")
        rows[f"{k}anom_{snr}db"] = {"mean": m.mean(0).tolist(), "std": m.std(0).tolist(), "ms_per_reconstruction": 1e3 * t_rec}
        print(f"| | published | {paper} | |")
    path = write_results("eit_gauss_newton_128px", {**metadata(machine),
                         "metrics": list(METRICS), "num_test": num_test, "settings": {k: str(v) for k, v in E.GN_DEFAULTS.items()},
                         "rows": rows})  # fmt: skip
    print(f"wrote {path}")


#: Published rows (mean): MSE, PSNR, SSIM (Tables 1–4; at 25 dB CSD* is the model trained at 40 dB,
#: which is the same model: CSD*'s score network sees conductivity images only).
PUBLISHED = {
    (2, 40): {"gauss_newton": (0.0032, 28.85, 0.874), "vae": (0.0014, 32.80, 0.969), "flow": (0.0011, 33.79, 0.969),
              "csd_star": (0.0015, 32.67, 0.976)},
    (4, 40): {"gauss_newton": (0.0140, 26.32, 0.794), "vae": (0.0121, 26.28, 0.882), "flow": (0.0040, 30.98, 0.962),
              "csd_star": (0.0070, 28.22, 0.952)},
    (2, 25): {"gauss_newton": (0.0067, 24.27, 0.804), "vae": (0.0035, 29.00, 0.945), "flow": (0.0063, 25.65, 0.932),
              "csd_star": (0.0060, 25.45, 0.932)},
    (4, 25): {"gauss_newton": (0.0164, 24.75, 0.747), "vae": (0.0134, 25.84, 0.868), "flow": (0.0093, 26.84, 0.922),
              "csd_star": (0.0100, 26.35, 0.928)},
}  # fmt: skip
BENCH_OUT = Path(os.environ.get("BAYESINV_OUT", "out")) / "eit_bench"


def _in_memory(ds):
    r"""The ``sigma`` and ``y`` of a (zarr-backed) dataset, read into memory."""
    import xarray as xr

    return xr.Dataset({k: ds[k].load() for k in ("sigma", "y")})


def _head(ds, n: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The first ``n`` (sigma, y) pairs of a lazily read dataset part (only those are read)."""
    return ds["sigma"][:n].values, ds["y"][:n].values


def _dataset(eit: "E.EIT", n: int, seed: int, tag: str):
    r"""Simulated pairs, cached as zarr under ``out/eit_bench/data`` (resumable)."""
    path = BENCH_OUT / "data" / f"{tag}_n{n}_seed{seed}.zarr"
    t0 = time.perf_counter()
    ds = E.make_dataset(n, path=str(path), eit=eit, seed=seed, chunk_size=500, progress=False)
    return _in_memory(ds), time.perf_counter() - t0


def _published_store(k: int, snr: float, n: int, workers: int):
    r"""One setting's published-size store (zarr, lazily read) and its path.

    The missing pairs are simulated first with ``workers`` processes (resumable: an
    interrupted run continues where it stopped).
    """
    path = BENCH_OUT / "data" / f"published_{k}anom_{snr:g}db_n{n}.zarr"
    eit = E.make_model(k, snr, workers=workers)
    return E.make_dataset(n, path=str(path), eit=eit, seed=0, chunk_size=500, progress=True), path


def published_datasets(settings: list[tuple[int, float]], workers: int, n: int, machine: str) -> None:
    r"""Simulates and stores the published-size datasets (``n`` = 23,810 pairs, 128 × 128).

    One zarr store per setting under ``out/eit_bench/data/published_<k>anom_<snr>db_n<n>.zarr``
    (resumable: an interrupted run continues where it stopped); records the wall time,
    the pairs per second and the size on disk in ``benchmarks/results/eit_datasets.json``.
    """
    run_meta = metadata(machine)
    path_json = RESULTS / "eit_datasets.json"
    payload = json.loads(path_json.read_text()) if path_json.exists() else {"datasets": {}}
    for k, snr in settings:
        t0 = time.perf_counter()
        ds, path = _published_store(k, snr, n, workers)
        wall = time.perf_counter() - t0
        parts = E.split_dataset(ds)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        row = {"pairs": int(ds.sizes["draw"]), "split": {name: int(part.sizes["draw"]) for name, part in parts.items()},
               "sigma_shape": list(ds["sigma"].shape[1:]), "workers": workers, "wall_s": wall,
               "pairs_per_s": n / wall, "bytes": size, "path": str(path), "run": {**run_meta, "finished_utc": _now()}}  # fmt: skip
        payload["datasets"][f"{k}anom_{snr:g}db"] = row
        path_json.parent.mkdir(parents=True, exist_ok=True)
        path_json.write_text(json.dumps(payload, indent=1))
        print(f"{k} anomalies, {snr:g} dB: {n} pairs in {wall:.0f} s with {workers} workers ({n / wall:.0f} pairs/s), "
              f"{size / 2**30:.2f} GiB at {path}; split {row['split']}", flush=True)  # fmt: skip


def _fit(method: str, eit: "E.EIT", train, train_steps: int, seed: int, base_channels: int = 16,
         precision: str = "float32"):
    r"""Fits one learned method for ``train_steps`` optimiser steps (loss in ``precision``)."""
    import bayesinv

    common = dict(target="sigma", data=train, seed=seed, progress=False)
    budget = dict(max_steps=train_steps, precision=precision)  # vae / flow options; the U-Net methods take them in cfg
    if method == "vae":
        return bayesinv.fit(eit.model, method="vae", embedding="mlp", latent_dim=64, hidden=(512, 256),
                            regressor_hidden=(512, 256), beta=0.01, batch_size=64, patience=None, **budget, **common)  # fmt: skip
    if method == "flow":
        return bayesinv.fit(eit.model, method="flow", flow="multiscale", embedding="mlp", embed_dim=64, hidden=(32,),
                            num_transforms=3, scales=2, batch_size=64, patience=None, **budget, **common)  # fmt: skip
    from bayesinv.methods.cond_score import CondScoreConfig

    cfg = CondScoreConfig(process="ve", sigma_max=10.0, embed_dim=64, base_channels=base_channels, channel_mults=(1, 2, 2),
                          batch_size=32, max_epochs=None, max_steps=train_steps, patience=None, lr=2e-3, ema_decay=0.99,
                          precision=precision)  # fmt: skip
    if method == "cond_score":
        return bayesinv.fit(eit.model, method="cond_score", config=cfg, **common)
    if method == "csd_star":
        from bayesinv.methods.csd_star import CSDStarConfig  # the fields of cfg that CSD* has

        csd = {f: getattr(cfg, f) for f in CSDStarConfig.__dataclass_fields__ if hasattr(cfg, f)}
        return bayesinv.fit(eit.model, method="csd_star", config=csd, solver=eit, **common)
    raise ValueError(method)


def learned(args) -> None:
    from bayesinv.methods.csd_star import choose_insert_step

    k, snr, size = args.anomalies, args.snr, args.image_size
    test_k, test_snr = args.test_anomalies or k, args.test_snr or snr
    generalisation = (test_k, test_snr) != (k, snr)
    if args.published:
        t0 = time.perf_counter()
        parts = E.split_dataset(_published_store(k, snr, args.num_pairs, args.workers)[0])
        train, t_train = _in_memory(parts["train"]), time.perf_counter() - t0
        size = int(train["sigma"].shape[-1])
        eit = E.make_model(k, snr, image_size=size)
        val_sigma, val_y = _head(parts["validation"], args.num_val)
        if generalisation:
            parts = E.split_dataset(_published_store(test_k, test_snr, args.num_pairs, args.workers)[0])
        test_sigma, test_y = _head(parts["test"], args.num_test)
        args.num_train, args.num_val, args.num_test = int(train.sizes["draw"]), len(val_y), len(test_y)
        tag, source = f"eit_{k}anom_{snr:g}db_{size}px_published", "the published-size store"
    else:
        eit = E.make_model(k, snr, image_size=size)
        train, t_train = _dataset(eit, args.num_train, 1, f"{k}anom_{snr:g}db_{size}px")
        val_sigma, val_y = eit.draw(seed=100, n=args.num_val)
        test_eit = E.make_model(test_k, test_snr, image_size=size) if generalisation else eit
        test_sigma, test_y = test_eit.draw(seed=0, n=args.num_test)
        tag, source = f"eit_{k}anom_{snr:g}db_{size}px", "prior draws of seed 0"
    result_tag = f"{tag}_test_{test_k}anom_{test_snr:g}db" if generalisation else tag
    print(f"{tag}: {args.num_train} training pairs simulated/loaded in {t_train:.0f} s; {args.num_val} validation,"
          f" {args.num_test} test pairs ({source})", flush=True)  # fmt: skip
    results_path = RESULTS / f"{result_tag}.json"
    payload = json.loads(results_path.read_text()) if results_path.exists() else {"methods": {}}
    run_meta = metadata(args.machine)  # at the start: the code that runs
    payload.update(run_meta, image_size=size, num_train=args.num_train, published_split=args.published,
                   base_channels=args.base_channels, precision=args.precision, train_steps=args.train_steps,
                   num_val=args.num_val, num_test=args.num_test, anomalies=k, snr_db=snr,
                   test_anomalies=test_k, test_snr_db=test_snr)  # fmt: skip
    t0 = time.perf_counter()
    gn_test = eit.gauss_newton(test_y)
    t_gn = (time.perf_counter() - t0) / args.num_test
    BENCH_OUT.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        extra: dict = {}
        if method == "gauss_newton":
            rec, fit_s, sample_s = gn_test, 0.0, t_gn * args.num_test
        else:
            saved = BENCH_OUT / f"{tag}_{method}.bayesinv"
            t0 = time.perf_counter()
            if args.reuse and saved.exists():
                import bayesinv

                post = bayesinv.load(saved)
                post.solver = eit
                fit_s = float(post.info.get("fit_time_s") or math.nan)
                print(f"  {method}: reusing {saved} (fitted in {fit_s:.0f} s)", flush=True)
            else:
                post = _fit(method, eit, train, args.train_steps.get(method, 1000), args.seed, args.base_channels,
                           args.precision)
                fit_s = time.perf_counter() - t0
            scalars = {key: v for key, v in post.info.items() if isinstance(v, (int, float, bool, type(None)))}
            print(f"  {method}: fitted in {fit_s:.0f} s, {scalars}", flush=True)
            options: dict = {}
            if method == "csd_star":
                options = {"steps": args.steps}
                gn_val = eit.gauss_newton(val_y)
                cands = sorted({max(1, int(round(f * args.steps))) for f in args.fractions})
                t0 = time.perf_counter()
                best, table = choose_insert_step(post, val_y, val_sigma, cands, start=gn_val, steps=args.steps)
                extra = {"insert_step": best, "steps": args.steps, "validation_mse": table,
                         "choose_time_s": time.perf_counter() - t0}  # fmt: skip
                print(f"  csd_star: K' of K = {args.steps} on validation: {table} -> {best}", flush=True)
                options["start"] = gn_test
            elif method == "cond_score":
                options = {"sampler": "sde", "steps": args.steps}
            t0 = time.perf_counter()
            # one draw per test observation (the default), or the mean of --num-draws draws
            rec = post.sample(test_y, args.num_draws, seed=args.seed, **options)["sigma"].mean(1).numpy()
            extra["num_draws"] = args.num_draws
            sample_s = time.perf_counter() - t0
            post.save(BENCH_OUT / f"{tag}_{method}.bayesinv")
            extra["info"] = {key: v for key, v in post.info.items() if isinstance(v, (int, float, bool, type(None)))}
        m = np.array([field_metrics(r, s) for r, s in zip(rec, test_sigma)])
        row = {"mean": m.mean(0).tolist(), "std": m.std(0).tolist(), "fit_time_s": fit_s, "sample_time_s": sample_s, **extra}
        published = PUBLISHED.get((k, snr), {}).get(method) if not generalisation else None
        if published:
            row["published_mse_psnr_ssim"] = list(published)
        # re-read: several runs (one per method) may write the same file
        payload = json.loads(results_path.read_text()) if results_path.exists() else payload
        payload.setdefault("methods", {})[method if args.label is None else f"{method}_{args.label}"] = {**row, "run": {**run_meta, "finished_utc": _now()}}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(payload, indent=1, default=float))
        print(f"| {method} | " + " | ".join(f"{a:.4g} ± {b:.2g}" for a, b in zip(m.mean(0), m.std(0)))
              + f" | fit {fit_s:.0f} s | sample {sample_s:.1f} s |"
              + (f" published MSE / PSNR / SSIM {published[0]:g} / {published[1]:g} / {published[2]:g} |" if published else ""),
              flush=True)  # fmt: skip
    print(f"wrote {results_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--convergence", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--gn", action="store_true")
    parser.add_argument("--learned", action="store_true")
    parser.add_argument("--published", action="store_true",
                        help="with --learned: train, validate and test on the published-size store (128 x 128, 21,600 training pairs)")
    parser.add_argument("--base-channels", type=int, default=16, help="U-Net width of cond_score and CSD*")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help="training loss precision of every learned method (bfloat16: autocast)")
    parser.add_argument("--machine", default=_machine(), help="description of the machine, for the result files")
    parser.add_argument("--datasets", nargs="*", metavar="K:SNR", default=None,
                        help="simulate and store the published-size datasets, e.g. 2:40 4:25 (default: all four)")
    parser.add_argument("--workers", type=int, default=2, help="simulator processes for --datasets (and --published)")
    parser.add_argument("--num-pairs", type=int, default=sum(E.PUBLISHED_SPLIT.values()), help="pairs per --datasets / --published set")
    parser.add_argument("--methods", nargs="+", default=["gauss_newton", "vae", "flow", "csd_star", "cond_score"])
    parser.add_argument("--anomalies", type=int, default=2)
    parser.add_argument("--snr", type=float, default=40.0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--test-anomalies", type=int, default=None, help="test on another prior (generalisation test)")
    parser.add_argument("--test-snr", type=float, default=None, help="test at another noise level (generalisation test)")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--train-steps", nargs="+", default=["vae=3000", "flow=400", "csd_star=1000", "cond_score=1000"],
                        help="optimiser steps per method, as method=steps")
    parser.add_argument("--steps", type=int, default=100,
                        help="reverse-process steps: K of CSD* (K' is chosen as a fraction of it), SDE steps of cond_score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75],
                        help="CSD* candidates K'/K tried on the validation pairs")
    parser.add_argument("--reuse", action="store_true", help="load the posteriors saved by an earlier run instead of fitting")
    parser.add_argument("--label", default=None, help="store the rows under method + '_' + label")
    parser.add_argument("--num-test", type=int, default=50)
    parser.add_argument("--num-draws", type=int, default=1,
                        help="learned methods: score the mean of this many posterior draws per test observation (1: one draw)")
    parser.add_argument("--num-val", type=int, default=10)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 0.07, 0.05, 0.035, 0.025, 0.018])
    args = parser.parse_args()
    if args.datasets is not None:
        settings = [(int(a), float(b)) for a, b in (item.split(":") for item in args.datasets or ["2:40", "4:40", "2:25", "4:25"])]
        published_datasets(settings, args.workers, args.num_pairs, args.machine)
        return
    if args.published and not args.learned:
        parser.error("--published goes with --learned (it chooses the data the learned methods train and test on)")
    if args.learned:
        args.train_steps = {k: int(v) for k, v in (item.split("=") for item in args.train_steps)}
        learned(args)
        return
    if not (args.convergence or args.speed or args.tune or args.gn):
        args.gn = True
    print(f"# benchmarks/eit.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  cpus={os.cpu_count()} torch threads=1")
    if args.convergence:
        convergence(sorted(args.sizes, reverse=True), 5)
    if args.speed:
        speed(40)
    if args.tune:
        tune(args.num_val)
    if args.gn:
        gauss_newton(args.num_test, args.machine)


if __name__ == "__main__":
    main()
