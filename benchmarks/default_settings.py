r"""Default settings: every learned method called with NO options, on small problems with exact reference posteriors.

For each problem of :data:`PROBLEMS` (vector and scalar targets; unimodal, multimodal and
heavy-tailed posteriors, all from ``bayesinv.models.toy``), each bayesinv method is fitted
exactly as a user would call it,

    post = bayesinv.fit(model, method=M, num_simulations=10_000, seed=0)

(no method options), and sbi's NPE with its defaults (``NPE(prior=None)``: sbi's own
default density estimator and training) is trained on the same 10,000 pairs
(``bayesinv.simulate(model, 10_000, seed=0)``). For each observation, 10,000 posterior draws
are compared with 10,000 exact reference draws by C2ST (``bayesinv.diagnostics.c2st``, as
``benchmarks/two_moons.py``: sbibm's MLP classifier, z-scored by the reference, 5-fold
cross-validation; ``--max-samples`` per set). Fit wall times are recorded. Results are
written after every row, so a cut-short run keeps what it finished.

The problems and their references:

- ``linear_gaussian``: ``LinearGaussian(dim=5)``, 5-D Gaussian posterior (closed form);
- ``heavy_tailed``: ``HeavyTailed(dim=3)``, Student-t (ν = 2) likelihood, 3-D heavy-tailed
  posterior (self-normalised importance sampling with 2,000,000 proposals, then resampling);
- ``sign_flip``: ``SignFlip(dim=2)``, y = |θ| + ε, 2-D posterior with four modes (exact);
- ``bimodal``: the 1-D bimodal conditional density (X | Y drawn directly: exact);
- ``tanh``: the 1-D skewed tanh conditional density (exact, likewise).

Needs sbi for the ``npe`` row (see ``benchmarks/two_moons.py``).

Example:
    python benchmarks/default_settings.py --methods flow cond_score flow_matching vae npe
    python benchmarks/default_settings.py --table before:linear_gaussian heavy_tailed   # merged table of result files
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import bayesinv
from bayesinv.diagnostics import c2st
from bayesinv.models import toy

from _common import RESULTS, metadata, set_threads, write_results


def _direct(model, y: float, n: int, seed: int) -> np.ndarray:
    r"""``n`` draws of x | y of a conditional-density toy whose x given y is drawn directly (exact)."""
    import pyro

    pyro.set_rng_seed(seed)
    return np.asarray(model(torch.full((n,), float(y))).detach()).reshape(n, 1)


def _problems() -> dict:
    lg, ht, sf = toy.LinearGaussian(dim=5), toy.HeavyTailed(dim=3), toy.SignFlip(dim=2)

    def lg_ref(y, n, seed):
        mean, cov = lg.posterior(y)
        return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n).astype(np.float32)

    return {
        "linear_gaussian": dict(model=lg.model, kind="unimodal, 5-D", observe=lambda k: lg.draw(seed=k)[1], reference=lg_ref),
        "heavy_tailed": dict(model=ht.model, kind="heavy-tailed, 3-D", observe=lambda k: ht.draw(seed=k)[1],
                             reference=lambda y, n, seed: ht.reference(y, n, seed=seed)[0]),
        "sign_flip": dict(model=sf.model, kind="4 modes, 2-D", observe=lambda k: sf.draw(seed=k)[1],
                          reference=lambda y, n, seed: sf.reference(y, n, seed=seed)),
        "bimodal": dict(model=toy.bimodal, kind="2 modes, 1-D", observe=lambda k: np.float32([0.0, 0.5, -0.5][(k - 1) % 3]),
                        reference=lambda y, n, seed: _direct(toy.bimodal, y, n, seed)),
        "tanh": dict(model=toy.tanh, kind="skewed, 1-D", observe=lambda k: np.float32([0.5, -1.0, 1.5][(k - 1) % 3]),
                     reference=lambda y, n, seed: _direct(toy.tanh, y, n, seed)),
    }  # fmt: skip


PROBLEMS = _problems()


def fit_bayesinv(method: str, problem: dict, args):
    t0, c0 = time.perf_counter(), time.process_time()
    post = bayesinv.fit(problem["model"], method=method, num_simulations=args.num_simulations, seed=args.seed, progress=False)
    fit_time, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    (name,) = post.target.names

    def sample(y, n):
        idata = post.infer(np.asarray(y), n, seed=args.seed)
        return np.asarray(idata.posterior[name].values[0]).reshape(n, -1)

    info = {**{k: post.info[k] for k in ("train_steps", "train_time_s", "best_val_loss", "stopped_early")}, "fit_cpu_s": fit_cpu}
    return fit_time, sample, info


def fit_npe(problem: dict, args):
    from sbi.inference import NPE

    ds = bayesinv.simulate(problem["model"], args.num_simulations, seed=args.seed, progress=False)
    y_name = "y"
    t_name = [v for v in ds.data_vars if v not in (y_name, "mean_y")][0]
    theta = torch.as_tensor(np.asarray(ds[t_name].values), dtype=torch.float32).reshape(args.num_simulations, -1)
    x = torch.as_tensor(np.asarray(ds[y_name].values), dtype=torch.float32).reshape(args.num_simulations, -1)
    torch.manual_seed(args.seed)
    inference = NPE(prior=None)
    t0, c0 = time.perf_counter(), time.process_time()
    inference.append_simulations(theta, x).train(show_train_summary=False)
    posterior = inference.build_posterior()
    fit_time, fit_cpu = time.perf_counter() - t0, time.process_time() - c0

    def sample(y, n):
        torch.manual_seed(args.seed)
        y = torch.as_tensor(np.asarray(y), dtype=torch.float32).reshape(1, -1)
        return posterior.sample((n,), x=y, show_progress_bars=False).numpy().reshape(n, -1)

    return fit_time, sample, {"epochs": int(inference.epoch) if hasattr(inference, "epoch") else None, "fit_cpu_s": fit_cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["flow", "cond_score", "flow_matching", "vae", "npe"])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    p.add_argument("--observations", type=int, default=1, help="observations per problem (seeds 1..k)")
    p.add_argument("--num-simulations", type=int, default=10_000)
    p.add_argument("--num-draws", type=int, default=10_000)
    p.add_argument("--max-samples", type=int, default=None, help="C2ST: at most this many draws per set (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="default")
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    p.add_argument("--table", nargs="+", default=None, metavar="LABEL",
                   help="print the table of the result files default_settings_<LABEL>.json (merged; LABEL:p1,p2 keeps those problems) and exit")
    args = p.parse_args()
    if args.table:
        rows = []
        for spec in args.table:
            label, _, only = spec.partition(":")  # LABEL:problem,problem keeps only those problems of the file
            data = json.loads((RESULTS / f"default_settings_{label}.json").read_text())
            rows += [{**r, "c2st_draws": data["max_samples"] or data["num_draws"]} for r in data["results"]
                     if not only or r["problem"] in only.split(",")]
        print(table(rows))
        return
    set_threads(args.threads)
    out = {"meta": metadata(args.machine), "num_simulations": args.num_simulations, "num_draws": args.num_draws,
           "c2st": "bayesinv.diagnostics.c2st (sbibm MLP, 5 folds)", "max_samples": args.max_samples,
           "fit_options": "none (method defaults)", "fits": {}, "results": []}  # fmt: skip
    for pname in args.problems:
        problem = PROBLEMS[pname]
        observations = [(k, problem["observe"](k)) for k in range(1, args.observations + 1)]
        refs = {k: np.asarray(problem["reference"](y, args.num_draws, args.seed)).reshape(args.num_draws, -1) for k, y in observations}
        for method in args.methods:
            fit_time, sample, info = fit_npe(problem, args) if method == "npe" else fit_bayesinv(method, problem, args)
            out["fits"][f"{pname}/{method}"] = {"fit_time_s": fit_time, "info": info}
            print(f"{pname} {method}: fit {fit_time:.0f}s {info}", flush=True)
            for k, y in observations:
                t0 = time.perf_counter()
                draws = sample(y, args.num_draws)
                sample_time = time.perf_counter() - t0
                acc = c2st(draws, refs[k], seed=args.seed, max_samples=args.max_samples)
                row = {"problem": pname, "kind": problem["kind"], "observation": k, "method": method, "c2st": acc,
                       "fit_time_s": fit_time, "fit_cpu_s": info["fit_cpu_s"], "sample_time_s": sample_time}  # fmt: skip
                out["results"].append(row)
                print(json.dumps(row), flush=True)
                write_results(f"default_settings_{args.label}", out)
    print(table(out["results"]), flush=True)


def table(rows: list[dict]) -> str:
    r"""A markdown table: one row per problem, per method the mean C2ST (fit seconds)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| problem | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for pname in dict.fromkeys(r["problem"] for r in rows):
        cells = []
        for m in methods:
            rs = [r for r in rows if r["problem"] == pname and r["method"] == m]
            cells.append(f"{np.mean([r['c2st'] for r in rs]):.3f} ({rs[0]['fit_time_s']:.0f} s)" if rs else "–")
        first = next(r for r in rows if r["problem"] == pname)
        n = f"; C2ST on {first['c2st_draws']:,} draws" if "c2st_draws" in first else ""
        lines.append(f"| {pname} ({first['kind']}{n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
