r"""sbibm two_moons: cond_score, flow and flow_matching beside sbi's NPE, NPSE and FMPE on the same 10,000 simulations.

The prior, simulator, observations and reference posterior samples come from sbibm.
Every method trains on the same (θ, x) pairs drawn with sbibm's prior and simulator.
For each observation, 10,000 posterior draws are compared with sbibm's 10,000
reference draws by C2ST (``bayesinv.diagnostics.c2st``: sbibm's MLP classifier,
z-scored by the reference, 5-fold cross-validation). Fit wall time and the time to
draw 10,000 samples are recorded. Results are written after every observation, so a
cut-short run keeps what it finished.

Needs, beside ``pip install -e ".[all]"``: ``pip install sbi==0.27.0`` and
``pip install --no-deps sbibm future`` (sbibm 1.1 pins an old sbi; its tasks and reference
posteriors work with the current one).

Example:
    python benchmarks/two_moons.py --observations 1 2 3 --methods cond_score flow npe npse
    python benchmarks/two_moons.py --observations 1 2 3 --methods flow_matching
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import bayesinv
from bayesinv.diagnostics import c2st

from _common import metadata, set_threads, write_results


BAYESINV = ("cond_score", "flow", "flow_matching", "vae")
DEFAULT_FIT_OPTIONS = {
    "cond_score": {"hidden": [256, 256, 256], "max_epochs": 300, "patience": 30},  # t_min 1e-5 (the default)
    "flow_matching": {"hidden": [256, 256, 256], "max_epochs": 300, "patience": 30},  # as cond_score
    "flow": {"flow": "nsf", "num_transforms": 5, "hidden": [50, 50], "bins": 10, "max_epochs": 300, "patience": 20,
             "batch_size": 200, "lr": 5e-4},
}


def two_moons_model(y=None):
    r"""sbibm's two_moons as a Pyro model: θ ~ U(−1, 1)², x = p(a, r) + (−|θ₁+θ₂|/√2, (−θ₁+θ₂)/√2)."""
    theta = pyro.sample("theta", dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1))
    a = pyro.sample("a", dist.Uniform(-math.pi / 2, math.pi / 2))
    r = pyro.sample("r", dist.Normal(0.1, 0.01))
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)
    shift = torch.stack([-(theta[..., 0] + theta[..., 1]).abs(), -theta[..., 0] + theta[..., 1]], -1) / math.sqrt(2)
    return pyro.sample("y", dist.Delta(p + shift, event_dim=1), obs=y)


def fit_bayesinv(method, theta, x, args):
    r"""Fits a bayesinv amortized method; cond_score gets one sampler per ``--cond-score-samplers``."""
    options = json.loads(args.fit_options).get(method, {})
    if method == "cond_score":
        from bayesinv.methods.cond_score import CondScoreConfig

        options = {"config": CondScoreConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})}
    t0, c0 = time.perf_counter(), time.process_time()
    post = bayesinv.fit(two_moons_model, method=method, target="theta", data={"theta": theta, "y": x},
                        seed=args.seed, progress=False, **options)  # fmt: skip
    fit_time, fit_cpu = time.perf_counter() - t0, time.process_time() - c0

    def sample(x_o, n, **kw):
        idata = post.infer(x_o.reshape(2), n, seed=args.seed, **kw)
        stats = {k: idata.sample_stats[k].item() for k in ("nfe",) if k in idata.sample_stats}
        return idata.posterior["theta"].values[0], stats

    info = {**post.info, "fit_cpu_s": fit_cpu}
    if method != "cond_score":
        return fit_time, {method: sample}, info
    fns = {}
    for spec in args.cond_score_samplers:
        sampler, options = parse_sampler(spec)
        name = "cond_score_" + spec.replace(",", "_").replace("=", "")
        fns[name] = lambda x_o, n, sampler=sampler, options=options: sample(x_o, n, sampler=sampler, **options)
    return fit_time, fns, info


def parse_sampler(spec: str) -> tuple[str, dict]:
    r"""``"ode"``, ``"ode,rtol=1e-3,atol=1e-3,power=1"`` or ``"sde,steps=100"`` → (sampler, options)."""
    sampler, *pairs = spec.split(",")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--cond-score-samplers: {pair!r} in {spec!r} is not key=value")
        options[key] = int(value) if key == "steps" else float(value)
    return sampler, options


def fit_sbi(kind, theta, x, args):
    from sbi.inference import FMPE, NPE, NPSE
    from sbi.utils import BoxUniform

    torch.manual_seed(args.seed)
    prior = BoxUniform(-torch.ones(2), torch.ones(2))
    inference = {"npe": lambda: NPE(prior=prior), "npse": lambda: NPSE(prior=prior, sde_type="ve"),
                 "fmpe": lambda: FMPE(prior=prior)}[kind]()  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    inference.append_simulations(theta, x).train(show_train_summary=False)
    posterior = inference.build_posterior()
    fit_time, fit_cpu = time.perf_counter() - t0, time.process_time() - c0

    def sample(x_o, n):
        torch.manual_seed(args.seed)
        return posterior.sample((n,), x=x_o.reshape(1, 2), show_progress_bars=False), {}

    return fit_time, {kind: sample}, {"fit_cpu_s": fit_cpu, "epochs": int(getattr(inference, "epoch", -1))}


def fit_ratios(fits: dict) -> dict:
    r"""Each bayesinv method's fit time over sbi NPE's and NPSE's of the same run (those fitted so far), wall clock
    and process CPU time (single torch thread: the figure that does not depend on other jobs' load)."""
    return {m: {f"{kind}/{peer}": f[key] / fits[peer][key] for peer in ("npe", "npse", "fmpe") if peer in fits
                for kind, key in (("wall", "fit_time_s"), ("cpu", "fit_cpu_s"))}
            for m, f in fits.items() if m in BAYESINV}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["cond_score", "flow", "npe", "npse"])
    p.add_argument("--observations", nargs="+", type=int, default=list(range(1, 11)))
    p.add_argument("--num-simulations", type=int, default=10_000)
    p.add_argument("--num-draws", type=int, default=10_000)
    p.add_argument("--max-samples", type=int, default=None, help="C2ST: at most this many draws per set (default all)")
    p.add_argument("--fit-options", default=json.dumps(DEFAULT_FIT_OPTIONS), help="JSON: method -> bayesinv.fit options")
    p.add_argument("--cond-score-samplers", nargs="+", default=["ode", "sde"],
                   help='sampler[,option=value...], e.g. ode  "ode,rtol=1e-3,atol=1e-3"  "ode,power=1"  "sde,steps=100"')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="default")
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = p.parse_args()
    set_threads(args.threads)
    import sbibm

    task = sbibm.get_task("two_moons")
    torch.manual_seed(args.seed)
    theta = task.get_prior()(num_samples=args.num_simulations)
    x = task.get_simulator()(theta)
    out = {"meta": metadata(args.machine), "num_simulations": args.num_simulations, "num_draws": args.num_draws,
           "c2st": "bayesinv.diagnostics.c2st (sbibm MLP, 5 folds)", "max_samples": args.max_samples,
           "fit_options": json.loads(args.fit_options),
           "fits": {}, "results": []}  # fmt: skip
    samplers = {}
    for method in args.methods:
        fit = fit_bayesinv(method, theta, x, args) if method in BAYESINV else fit_sbi(method, theta, x, args)
        fit_time, fns, info = fit
        out["fits"][method] = {"fit_time_s": fit_time, "fit_cpu_s": info["fit_cpu_s"], "info": info}
        samplers.update(fns)
        print(f"{method}: fit {fit_time:.0f}s ({info['fit_cpu_s']:.0f} CPU s)", flush=True)
        out["fit_time_ratios"] = fit_ratios(out["fits"])
        write_results(f"two_moons_{args.label}", out)
    for obs in args.observations:
        x_o = task.get_observation(obs)
        ref = task.get_reference_posterior_samples(obs).numpy()
        for name, sample in samplers.items():
            t0 = time.perf_counter()
            draws, stats = sample(x_o, args.num_draws)
            sample_time = time.perf_counter() - t0
            t0 = time.perf_counter()
            acc = c2st(np.asarray(draws), ref, seed=args.seed, max_samples=args.max_samples)
            row = {"observation": obs, "method": name, "c2st": acc, "sample_time_s": sample_time, "c2st_time_s": time.perf_counter() - t0, **stats}
            out["results"].append(row)
            print(json.dumps(row), flush=True)
            write_results(f"two_moons_{args.label}", out)


if __name__ == "__main__":
    main()
