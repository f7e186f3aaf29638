r"""Ground truth on two engines: Pyro NUTS against NumPyro NUTS, and torch against JAX importance sampling.

The same model is written once in each language (``model`` / ``numpyro_model`` of the
problem classes). For each problem both engines run ``--chains`` chains of ``--warmup``
warm-up and ``--draws`` draws through ``bayesinv.infer(..., method="nuts")``; reported:
wall time (JIT compilation included for NumPyro, and the compiled rerun), the smallest
bulk ESS over the target site, ESS per second, the largest R-hat, and the largest error
of the posterior mean and sd against the exact posterior in units of the exact sd.
Pyro NUTS on the 32 × 32 field (and on the problems named by ``--pyro-short``) is run
as one chain of ``--pyro-field-draws`` warm-up and draws so that it finishes; ESS per
second is comparable across lengths.

Importance sampling: ``--proposals`` prior proposals on the 10-D linear Gaussian with
the torch path (Pyro model) and the JAX path (NumPyro model), proposals per second and
the peak resident memory of each run (measured in a subprocess). On the 10-D problem
NumPyro's ``chain_method`` "sequential" and "vectorized" are timed too (compiled reruns).

Example:
    python benchmarks/nuts_engines.py --out nuts_engines
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import metadata, set_threads, write_results  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.models.advection_diffusion import AdvectionDiffusion  # noqa: E402
from bayesinv.models.deblurring import Deblurring  # noqa: E402
from bayesinv.models.toy import LinearGaussian  # noqa: E402


def problems(field_size: int):
    lg = LinearGaussian(dim=10)
    _, y = lg.draw(seed=1)
    mean, cov = lg.posterior(y)
    yield "linear_gaussian_10", lg, y, "theta", mean, np.sqrt(np.diag(cov))
    ad = AdvectionDiffusion(noise=0.02, clip=False)
    _, y = ad.draw(seed=1)
    mean, cov = ad.posterior_gaussian(y)
    yield "advection_diffusion_30", ad, y, "flux_raw", mean, np.sqrt(np.diag(cov))
    db = Deblurring(size=field_size)
    _, y = db.draw(seed=1)
    mean, sd = db.posterior(y)
    yield f"deblurring_{field_size}x{field_size}", db, y, "x", mean, sd


def run_nuts(model, y, target, mean, sd, *, chains, warmup, draws, seed, **options) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = bayesinv.infer(model, y, method="nuts", num_samples=draws, warmup_steps=warmup, num_chains=chains,
                               target=target, seed=seed, progress=False, **options)  # fmt: skip
    wall = time.perf_counter() - t0
    post = idata.posterior[target].values
    post = post.reshape(-1, *post.shape[2:])
    attrs = idata.posterior.attrs
    ess = float(attrs["min_ess_bulk"])
    return {
        "wall_s": wall,
        "min_ess_bulk": ess,
        "ess_per_s": ess / wall,
        "max_rhat": float(attrs["max_rhat"]),
        "divergences": int(attrs["num_divergences"]),
        "mean_err_sd": float(np.max(np.abs(post.mean(0) - mean) / sd)),
        "sd_ratio_range": [float(np.min(post.std(0) / sd)), float(np.max(post.std(0) / sd))],
        "chains": chains, "warmup": warmup, "draws": draws,
        "chain_method": attrs.get("chain_method", "sequential"),
    }  # fmt: skip


_IMPORTANCE = r"""
import json, resource, sys, time
import numpy as np, bayesinv
from bayesinv.models.toy import LinearGaussian
lg = LinearGaussian(dim=10); _, y = lg.draw(seed=1)
model = lg.numpyro_model if sys.argv[1] == "jax" else lg.model
m = int(sys.argv[2])
bayesinv.infer(model, y, method="importance", num_samples=100, num_proposals=20_000, seed=1, progress=False)  # warm-up/JIT
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
idata = bayesinv.infer(model, y, method="importance", num_samples=1000, num_proposals=m, seed=0, progress=False)
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "proposals_per_s": m / wall, "peak_rss_mb": rss / 1024, "rss_growth_mb": (rss - rss0) / 1024,
                  "ess": float(idata.sample_stats["ess"])}))
"""


def run_importance(engine: str, proposals: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _IMPORTANCE, engine, str(proposals)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--field-size", type=int, default=32)
    parser.add_argument("--pyro-field-draws", type=int, default=100, help="warm-up and draws of Pyro NUTS on the field, 1 chain")
    parser.add_argument("--pyro-short", nargs="*", default=[], help="problems on which Pyro NUTS runs 1 chain of --pyro-field-draws"
                        " (its ESS per second compares with the full NumPyro run; Pyro needs hours for the full run)")
    parser.add_argument("--proposals", type=int, default=1_000_000)
    parser.add_argument("--skip", nargs="*", default=[], help="problem names (or 'importance') to skip")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--machine", default="2-core CPU, no GPU")
    parser.add_argument("--out", default="nuts_engines")
    args = parser.parse_args()
    set_threads(args.threads)
    results = {"meta": metadata(args.machine), "nuts": {}, "importance": {}}
    for name, problem, y, target, mean, sd in problems(args.field_size):
        if name in args.skip:
            continue
        row = {}
        field = name.startswith("deblurring") or name in args.pyro_short
        kw = dict(chains=args.chains, warmup=args.warmup, draws=args.draws, seed=0)
        row["numpyro"] = run_nuts(problem.numpyro_model, y, target, mean, sd, **kw)
        row["numpyro_compiled_rerun"] = run_nuts(problem.numpyro_model, y, target, mean, sd, **{**kw, "seed": 1})
        if name == "linear_gaussian_10":  # how to run several chains on one CPU device: measured, not assumed
            for method in ("sequential", "vectorized"):
                run_nuts(problem.numpyro_model, y, target, mean, sd, **kw, chain_method=method)  # compile
                row[f"numpyro_{method}_rerun"] = run_nuts(problem.numpyro_model, y, target, mean, sd,
                                                          **{**kw, "seed": 2}, chain_method=method)  # fmt: skip
        pyro_kw = dict(chains=1, warmup=args.pyro_field_draws, draws=args.pyro_field_draws, seed=0) if field else kw
        row["pyro"] = run_nuts(problem.model, y, target, mean, sd, **pyro_kw)
        row["ess_per_s_ratio"] = row["numpyro"]["ess_per_s"] / row["pyro"]["ess_per_s"]
        results["nuts"][name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    if "importance" not in args.skip:
        for engine in ("torch", "jax"):
            results["importance"][engine] = run_importance(engine, args.proposals)
            print("importance", engine, results["importance"][engine], flush=True)
    print("written", write_results(args.out, results))


if __name__ == "__main__":
    main()
