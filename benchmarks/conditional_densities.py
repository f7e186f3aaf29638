r"""Conditional density benchmark of "Unifying and extending diffusion models through PDEs" (Table 1).

For each problem (Tanh, Bimodal, Spiral of ``bayesinv.models.toy``): train an amortized
method on 10,000 joint samples; for y ∈ {−0.5, 0, 0.5, 1} draw 10,000 samples of x | y
(the four y in one batched call); the reference for each y is the x of the draws whose y
lies within ±0.05 among 100,000 fresh joint draws (as ``joint_reference``, one joint set for the four y). The score is
the entropic OT distance (``bayesinv.diagnostics.sinkhorn_distance``: Euclidean cost,
reg 0.01, each set subsampled to ``--max-samples``), averaged over the four y. A
"floor" row gives the same distance between the reference and an independent
reference (another 100,000 joint draws): the value a perfect sampler would get.

Generic over ``--method``: any amortized method registered in bayesinv
(``cond_score``, ``flow``, ``flow_matching``, ``vae``); ``--fit-options`` (JSON) go to ``bayesinv.fit``,
each entry of ``--sample-options`` (JSON list) is one sampling variant.
``--merge`` adds the problems of this run to an earlier result file of the same method,
label and options instead of replacing it (each problem keeps the command that made it).
Every fitted posterior is saved to ``out/conditional_densities/<method>_<label>_<problem>.bayesinv``;
``--reuse`` samples a saved one again (new ``--sample-options``) instead of refitting,
with ``--results-label`` naming its result file.

Example:
    python benchmarks/conditional_densities.py --method cond_score --label ve \
        --fit-options '{"process": "ve"}' --sample-options '[{"sampler": "ode"}, {"sampler": "sde"}]'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import bayesinv
from bayesinv.diagnostics import sinkhorn_distance
from bayesinv.models.toy import CONDITIONAL_DENSITIES

from _common import RESULTS, metadata, set_threads, write_results

Y_VALUES = (-0.5, 0.0, 0.5, 1.0)
SAVE_DIR = Path(os.environ.get("BAYESINV_OUT", Path(__file__).resolve().parent.parent / "out")) / "conditional_densities"


def band_references(model, num_joint: int, seed: int, width: float = 0.05) -> list[np.ndarray]:
    r"""``joint_reference`` for every y of ``Y_VALUES`` from one set of ``num_joint`` joint draws."""
    ds = bayesinv.simulate(model, num_joint, seed=seed, chunk_size=num_joint, progress=False)
    yy, x = np.asarray(ds["y"].values).reshape(-1), np.asarray(ds["x"].values).reshape(-1)
    return [x[np.abs(yy - y) <= width] for y in Y_VALUES]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="cond_score")
    p.add_argument("--label", default="default", help="names the result file")
    p.add_argument("--problems", nargs="+", default=list(CONDITIONAL_DENSITIES))
    p.add_argument("--fit-options", default="{}", help="JSON dict for bayesinv.fit")
    p.add_argument("--sample-options", default="[{}]", help="JSON list of dicts, one per sampling variant")
    p.add_argument("--num-train", type=int, default=10_000)
    p.add_argument("--num-draws", type=int, default=10_000)
    p.add_argument("--num-joint", type=int, default=100_000)
    p.add_argument("--max-samples", type=int, default=1000, help="Sinkhorn subsample size per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    p.add_argument("--merge", action="store_true", help="keep the other problems of an earlier result file with this label")
    p.add_argument("--reuse", action="store_true", help="sample the posteriors an earlier run with this label saved instead of fitting")
    p.add_argument("--results-label", default=None, help="name the result file by this label instead of --label (e.g. with --reuse)")
    args = p.parse_args()
    set_threads(args.threads)
    fit_options = json.loads(args.fit_options)
    fit_kwargs = dict(fit_options)
    if args.method == "cond_score" and "config" in fit_kwargs:  # JSON dict -> CondScoreConfig
        from bayesinv.methods.cond_score import CondScoreConfig

        fit_kwargs["config"] = CondScoreConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fit_kwargs["config"].items()})
    variants = json.loads(args.sample_options)
    sk = dict(reg=0.01, max_samples=args.max_samples)
    out = {"meta": metadata(args.machine), "method": args.method, "label": args.label, "results_label": args.results_label,
           "fit_options": fit_options,
           "sinkhorn": {**sk, "cost": "euclidean (not squared)", "solver": "log-domain, 1000 iterations max"},
           "y_values": list(Y_VALUES), "problems": {}}  # fmt: skip
    name_out = f"conditional_densities_{args.method}_{args.results_label or args.label}"
    if args.merge and (RESULTS / f"{name_out}.json").exists():
        earlier = json.loads((RESULTS / f"{name_out}.json").read_text())
        if earlier["fit_options"] != fit_options or earlier["sinkhorn"] != out["sinkhorn"]:
            raise SystemExit(f"--merge: {name_out}.json was made with other fit or Sinkhorn options; use another --label")
        for entry in earlier["problems"].values():
            entry.setdefault("meta", earlier["meta"])
        out["problems"] = {k: v for k, v in earlier["problems"].items() if k not in args.problems}
    for name in args.problems:
        model = CONDITIONAL_DENSITIES[name]
        refs, refs2 = band_references(model, args.num_joint, args.seed + 1), band_references(model, args.num_joint, args.seed + 2)
        floor = [sinkhorn_distance(a[:, None], b[:, None], **sk) for a, b in zip(refs, refs2)]
        saved = SAVE_DIR / f"{args.method}_{args.label}_{name}.bayesinv"
        if args.reuse:
            if not saved.exists():
                raise SystemExit(f"--reuse: no saved posterior {saved}; run once without --reuse first")
            post = bayesinv.load(saved)
            fit_time = float(post.info.get("fit_time_s", float("nan")))
            print(f"{name}: reusing {saved} (fitted in {fit_time:.0f} s)", flush=True)
        else:
            data = bayesinv.simulate(model, args.num_train, seed=args.seed, chunk_size=args.num_train, progress=False)
            t0 = time.perf_counter()
            post = bayesinv.fit(model, method=args.method, target="x", data=data, seed=args.seed, progress=False, **fit_kwargs)
            fit_time = time.perf_counter() - t0
            post.save(saved)
        entry = {"meta": out["meta"], "fit_time_s": fit_time, "posterior": str(saved), "reused": args.reuse, "reference_sizes": [len(r) for r in refs], "floor_per_y": floor,
                 "floor_mean": float(np.mean(floor)), "info": getattr(post, "info", {}), "variants": []}  # fmt: skip
        for options in variants:
            t0 = time.perf_counter()
            draws = post.sample(np.asarray(Y_VALUES, dtype=np.float32), args.num_draws, seed=args.seed, **options)["x"]
            sample_time = time.perf_counter() - t0
            draws = draws.numpy().reshape(len(Y_VALUES), args.num_draws)
            dist = [sinkhorn_distance(d[:, None], r[:, None], **sk) for d, r in zip(draws, refs)]
            entry["variants"].append({"sample_options": options, "sample_time_s": sample_time, "sinkhorn_per_y": dist,
                                      "sinkhorn_mean": float(np.mean(dist))})  # fmt: skip
            print(f"{name:8s} {args.label:10s} {json.dumps(options):30s} sinkhorn {np.mean(dist):.4f}"
                  f" (floor {np.mean(floor):.4f}) fit {fit_time:.0f}s sample {sample_time:.1f}s", flush=True)
        out["problems"][name] = entry
        path = write_results(name_out, out)
    print("wrote", path)


if __name__ == "__main__":
    main()
