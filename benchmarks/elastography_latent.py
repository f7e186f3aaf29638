r"""Elastography (56 × 56) with the latent target: learn the inclusion centre, push it forward to the field.

The prior of the elastography problem is a 2-D latent (the centre ``center``) pushed
through a deterministic site (the modulus field ``mu``). Instead of learning the
3,136-pixel field (``benchmarks/elastography.py``), each method here learns
q(center | y) — a 2-D target — with a CNN embedding of the 56 × 56 measurement, and the
field draws are the model's deterministic site replayed from the centre draws
(``post.sample(y, n, deterministic=True)["mu"]``). For each noise level σ_η the script

1. loads (or simulates, resumably) ``--num-train`` noise-free prior draws into
   ``out/elastography/prior_set_<n>.zarr`` and adds the truncated noise of this σ_η;
2. computes (or loads from ``out/elastography/latent_reference_<σ_η>_<...>.npz``) the
   importance-sampling reference for the ten test inclusions ``draw(seed=100 + i)``,
   exactly as ``benchmarks/elastography.py`` does (the prior set reweighted, then
   ``--refine`` zoom-in stages of ``--num-local`` draws, 1,000 resampled draws);
3. fits ``--methods`` (``cond_score``, ``flow``, ``flow_matching``) on ``target="center"``
   with a CNN embedding of ``y`` for ``--max-steps`` optimiser steps (cosine schedule);
4. compares the pixel-wise posterior mean and standard deviation fields of ``mu``
   (normalised to [0, 1]: (mu − 0.1)/1.4) of ``--num-draws`` replayed draws with the
   reference's: RMSE of the means and of the stds, averaged over the test inclusions,
   beside the published cSDM figures.

The CNN embedding (:class:`bayesinv.nets.embedding.CNNEmbedding`, channels 16-32-64,
stride 2) is put into each method's own network with ``build=`` (see
:func:`cnn_embedding`: the configs cannot yet ask for it with an MLP score network, nor
for its pooling). ``--pool flatten`` (default) feeds the whole last 7 × 7 feature map to
the head; ``--pool mean`` is the library's global average pooling, which keeps almost no
information on *where* the inclusion is.

Writes ``benchmarks/results/elastography_latent[_<tag>].json`` (after every noise level)
and prints a table.

Run (2-core CPU):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography_latent.py --pool flatten
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elastography_latent.py --quick    # a smoke run, ~3 min
"""

from __future__ import annotations

import argparse
import importlib
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
from elastography import OUT, PUBLISHED, normalise  # noqa: E402  (benchmarks/elastography.py: the field-target benchmark)
from elastography import training_pairs as field_training_pairs  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402
from bayesinv.nets.embedding import CNNEmbedding, MLPEmbedding  # noqa: E402

METHODS = ("cond_score", "flow", "flow_matching")


def training_pairs(ds, noise: float, seed: int) -> dict[str, torch.Tensor]:
    r"""(center, y): the field benchmark's noisy measurements (same noise, same seed) with the latent as target."""
    y = field_training_pairs(ds, noise, seed)["y"]
    return {"center": torch.as_tensor(np.asarray(ds["center"].values), dtype=torch.float32), "y": y}


def references(problem: el.Elastography, ds, args) -> dict[str, np.ndarray]:
    r"""The reference mean/std fields (normalised) and centre statistics of the test inclusions.

    Each inclusion's reference is cached in ``out/elastography/latent_reference_<σ_η>_...`` (one
    ``.npz`` per inclusion, written atomically), so an interrupted run resumes.
    """
    keys = ("mean", "std", "center_mean", "center_sd", "ess", "truth", "y", "time_s")
    rows: dict[str, list] = {k: [] for k in keys}
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(args.num_test):
        path = OUT / f"latent_reference_{problem.noise:g}_n{ds.sizes['draw']}_r{args.refine}_l{args.num_local}_seed{100 + i}.npz"
        if not path.exists():
            center, y = problem.draw(seed=100 + i)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = problem.reference(y, data=ds, num_samples=1000, refine=args.refine, num_local=args.num_local,
                                        progress=False)  # fmt: skip
            mu = normalise(ref.posterior["mu"].values.reshape(-1, el.GRID, el.GRID))
            c = ref.posterior["center"].values.reshape(-1, 2)
            one = {"mean": mu.mean(0), "std": mu.std(0), "center_mean": c.mean(0), "center_sd": c.std(0),
                   "ess": float(ref.sample_stats["ess"]), "truth": center, "y": y, "time_s": time.perf_counter() - t0}
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **one)
            os.replace(tmp, path)
            print(f"  reference σ_η={problem.noise:g} test {i}: ESS {one['ess']:.0f}, centre sd "
                  f"{np.array2string(one['center_sd'], precision=4)}, {one['time_s']:.0f} s", flush=True)  # fmt: skip
        with np.load(path) as f:
            for k in keys:
                rows[k].append(f[k])
    return {k: np.asarray(v) for k, v in rows.items()}


def cnn_embedding(method: str, pool: str):
    r"""``build=`` for ``fit``: the method's own network with a CNN embedding of the 56 × 56 ``y`` (pooling ``pool``).

    flow builds its CNN embedding itself (``embedding="cnn"``); only the pooling is set
    here. cond_score and flow_matching with an MLP network cannot build one (nets/score.py
    wraps the CNN in an ``nn.Sequential`` without the ``out_dim`` that
    :class:`~bayesinv.nets.mlp.ScoreMLP` reads), so they are configured with
    ``embedding="mlp"`` and that MLP embedding is replaced by the CNN of the same output size.
    """
    builder = importlib.import_module(f"bayesinv.methods.{method}").build
    shape = (1, el.GRID, el.GRID)

    def build(cfg, pairs):
        net, _ = builder(cfg, pairs, 0)
        swapped = 0
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, CNNEmbedding):
                    setattr(parent, name, CNNEmbedding(child.in_shape, child.out_dim, activation=type(child.conv[1]), pool=pool))
                    swapped += 1
                elif isinstance(child, MLPEmbedding):
                    cnn = CNNEmbedding(shape, child.out_dim, activation=type(child.net[1]), pool=pool)
                    setattr(parent, name, torch.nn.Sequential(torch.nn.Unflatten(-1, shape), cnn))
                    swapped += 1
        if swapped != 1:
            raise RuntimeError(f"{method}: expected one observation embedding in the network, found {swapped}")
        return net

    return build


def method_options(method: str, args) -> dict:
    common = dict(embedding="cnn" if method == "flow" else "mlp", max_epochs=None, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                  patience=None, val_fraction=0.05, embed_dim=args.embed_dim, lr_schedule="cosine")  # fmt: skip
    if method in ("cond_score", "flow_matching"):
        common["network"] = "mlp"
    if method == "cond_score":
        common["t_min"] = args.t_min
    return common


def field_rmse(mu: np.ndarray, ref: dict, i: int) -> dict:
    r"""RMSE of the pixel-wise mean and std of normalised draws ``mu`` ``(n, H, W)`` against test ``i``'s reference,
    and of the means against the true field."""
    m, s = mu.mean(0), mu.std(0)
    truth = normalise(el.inclusion_field(torch.as_tensor(ref["truth"][i])).numpy())
    return {
        "seed": 100 + i,
        "mean_rmse": float(np.sqrt(((m - ref["mean"][i]) ** 2).mean())),
        "std_rmse": float(np.sqrt(((s - ref["std"][i]) ** 2).mean())),
        "mean_rmse_vs_truth": float(np.sqrt(((m - truth) ** 2).mean())),
        "ref_mean_rmse_vs_truth": float(np.sqrt(((ref["mean"][i] - truth) ** 2).mean())),
    }


def evaluate(post, problem, ref, args, method: str) -> dict:
    rows = []
    for i in range(args.num_test):
        y = torch.as_tensor(ref["y"][i])
        t0 = time.perf_counter()
        draws = post.sample(y, args.num_draws, seed=i, deterministic=True)
        sample_time = time.perf_counter() - t0
        center = draws["center"].numpy()
        rows.append({
            **field_rmse(normalise(draws["mu"].numpy()), ref, i),
            "center_error": float(np.linalg.norm(center.mean(0) - ref["center_mean"][i])),
            "center_sd": center.std(0).tolist(),
            "ref_center_sd": ref["center_sd"][i].tolist(),
            "sample_time_s": sample_time,
        })  # fmt: skip
        r = rows[-1]
        print(f"  σ_η={problem.noise:g} {method} test {i}: mean RMSE {r['mean_rmse']:.4f}, std RMSE {r['std_rmse']:.4f}, "
              f"|Δcentre| {r['center_error']:.4f} cm, sd {np.array2string(np.asarray(r['center_sd']), precision=4)} "
              f"(ref {np.array2string(np.asarray(r['ref_center_sd']), precision=4)}), {sample_time:.1f} s", flush=True)  # fmt: skip
    return {"mean_rmse": float(np.mean([r["mean_rmse"] for r in rows])),
            "std_rmse": float(np.mean([r["std_rmse"] for r in rows])),
            "center_error": float(np.mean([r["center_error"] for r in rows])),
            "sample_time_s": float(np.mean([r["sample_time_s"] for r in rows])), "tests": rows}  # fmt: skip


def print_table(tags: list[str]) -> None:
    r"""The markdown table of finished result files (one per tag), in σ_η then method order."""
    import json

    from _common import RESULTS

    rows = []
    for tag in tags:
        payload = json.loads((RESULTS / f"elastography_latent_{tag}.json").read_text())
        rows += payload["results"]
    rows.sort(key=lambda r: (r["noise"], METHODS.index(r["method"])))
    print("| σ_η | method | mean RMSE (published cSDM) | std RMSE (published cSDM) | mean vs truth (reference) "
          "| centre error (cm) | fit | sampling + replay per inclusion |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pub = r["published"] or (float("nan"),) * 2
        truth = np.mean([t["mean_rmse_vs_truth"] for t in r["tests"]])
        ref_truth = np.mean([t["ref_mean_rmse_vs_truth"] for t in r["tests"]])
        print(f"| {r['noise'] * 100:g}% | {r['method']} | **{r['mean_rmse']:.3f}** ({pub[0]}): {r['mean_rmse'] / pub[0]:.1f} × "
              f"| **{r['std_rmse']:.3f}** ({pub[1]}): {r['std_rmse'] / pub[1]:.1f} × | {truth:.3f} ({ref_truth:.3f}) "
              f"| {r['center_error']:.4f} | {r['fit_time_s']:.0f} s | {r['sample_time_s']:.1f} s |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noises", type=float, nargs="+", default=[0.025, 0.05, 0.10])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--num-train", type=int, default=8000)
    parser.add_argument("--num-test", type=int, default=10)
    parser.add_argument("--num-draws", type=int, default=200, help="posterior draws per inclusion (each replayed)")
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--t-min", type=float, default=1e-3, help="cond_score's smallest diffusion time")
    parser.add_argument("--pool", choices=("mean", "flatten"), default="flatten",
                        help="the CNN embedding's pooling (flatten: injected with build=)")
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--num-local", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default=None, help="suffix of the results file")
    parser.add_argument("--quick", action="store_true", help="σ_η = 10 %%, 2 tests, 1,000 pairs, 200 steps, 50 draws")
    parser.add_argument("--table", nargs="+", metavar="TAG", default=None,
                        help="only print the table of the result files elastography_latent_<TAG>.json")
    args = parser.parse_args()
    if args.table:
        print_table(args.table)
        return
    if args.quick:
        args.noises, args.num_test, args.num_train, args.max_steps, args.num_draws = [0.10], 2, 1000, 200, 50
        args.tag = args.tag or "quick"
    set_threads(args.threads)
    payload = {"meta": metadata("2-core CPU, no GPU, shared with other jobs"), "args": vars(args), "results": []}
    t0 = time.perf_counter()
    store = OUT / f"prior_set_{args.num_train}.zarr"
    ds = bayesinv.data.open_data(store) if store.exists() else None
    if ds is None or ds.sizes["draw"] < args.num_train:  # simulate (or finish) it; a complete store is only read
        ds = el.make_problem().simulate_reference_set(args.num_train, path=store, progress=False)
    payload["prior_set_load_or_simulate_s"] = time.perf_counter() - t0
    name = "elastography_latent" + (f"_{args.tag}" if args.tag else "")
    table = []
    for noise in args.noises:
        problem = el.make_problem(noise=noise)
        t0 = time.perf_counter()
        ref = references(problem, ds, args)
        ref_time = time.perf_counter() - t0
        data = training_pairs(ds, noise, seed=int(noise * 1e4))
        for method in args.methods:
            options = method_options(method, args)
            build = cnn_embedding(method, args.pool)
            t0 = time.perf_counter()
            post = bayesinv.fit(problem.model, method=method, target="center", data=data, seed=0, progress=False,
                                device="cpu", build=build, **options)  # fmt: skip
            fit_time = time.perf_counter() - t0
            res = evaluate(post, problem, ref, args, method)
            res.update(noise=noise, method=method, options=options, fit_time_s=fit_time, reference_time_s=ref_time,
                       train_steps=post.info.get("train_steps"), best_val_loss=post.info.get("best_val_loss"),
                       num_parameters=sum(p.numel() for p in post.net.parameters()),
                       published=PUBLISHED.get(noise))  # fmt: skip
            payload["results"].append(res)
            table.append(res)
            path = write_results(name, payload)
            print(f"σ_η={noise:g} {method}: mean/std RMSE {res['mean_rmse']:.4f}/{res['std_rmse']:.4f} "
                  f"(published {PUBLISHED.get(noise)}), fit {fit_time:.0f} s; wrote {path}", flush=True)  # fmt: skip
    print("| σ_η | method | mean RMSE (published) | std RMSE (published) | |Δcentre| cm | fit | sampling / inclusion |")
    for r in table:
        pub = r["published"] or (float("nan"),) * 2
        print(f"| {r['noise']:g} | {r['method']} | {r['mean_rmse']:.3f} ({pub[0]}) | {r['std_rmse']:.3f} ({pub[1]}) | "
              f"{r['center_error']:.4f} | {r['fit_time_s']:.0f} s | {r['sample_time_s']:.1f} s ({args.num_draws} draws) |")  # fmt: skip


if __name__ == "__main__":
    main()
