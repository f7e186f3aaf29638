r"""Steps per second of the shared training loop (``bayesinv.amortized.training.train``).

Three fits, each run with the current loop and, with ``--compare-with REV``, with the loop of
git revision ``REV`` (its ``bayesinv/amortized/training.py`` loaded as a module and put in
place of the current one for the fit) in the same process, alternating, so the two see the
same machine load:

- ``flow_mlp``: ``method="flow"`` with its defaults on two_moons-sized pairs (10,000 pairs,
  2-D target, 2-D y);
- ``cond_score_mlp``: ``method="cond_score"`` with its defaults (MLP) on the same pairs;
- ``cond_score_unet``: ``method="cond_score"`` on a 56 × 56 field target (U-Net, the
  default network of a field) with ``batch_size=64``;
- ``unet<w>_<precision>``, w = 8, 16, 32: the same with ``base_channels=w``, ``channel_mults=(1, 2, 2)``
  and ``precision="float32"`` or ``"bfloat16"`` (the loss under a bfloat16 autocast).

Each fit runs ``max_steps`` optimiser steps (per case: ``--steps``); steps per second is
``train_steps / train_time_s`` of ``post.info`` (the loop's wall time, validation included),
and steps per CPU second divides by the process CPU time spent inside ``train`` instead
(single torch thread: on a machine shared with other jobs this is the load-independent figure).
With the same seed both loops must give the same final validation loss; the script
records both and whether they are equal.

Example:
    python benchmarks/train_throughput.py --compare-with 8485908 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

import bayesinv
import bayesinv.amortized.fit as fit_module

from _common import metadata, set_threads, write_results

ROOT = Path(__file__).resolve().parent.parent


def moons_pairs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    r"""``n`` (θ, y) pairs of sbibm's two_moons simulator (written out, no sbibm needed)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(n, 2, generator=g) * 2 - 1
    a = (torch.rand(n, generator=g) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(n, generator=g)
    p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)
    shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), -theta[:, 0] + theta[:, 1]], -1) / math.sqrt(2)
    return {"theta": theta, "y": p + shift}


def moons_model(y=None):
    theta = pyro.sample("theta", dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1))
    return pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)  # only the sites' shapes matter: data= is given


def field_model(y=None):
    r"""A 56 × 56 field ``E`` observed with Gaussian noise (only used for its site shapes: data= is given)."""
    E = pyro.sample("E", dist.Normal(torch.zeros(56, 56), 1.0).to_event(2))
    return pyro.sample("y", dist.Normal(E, 0.1).to_event(2), obs=y)


def field_pairs(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, 7, 7, generator=g)
    E = torch.nn.functional.interpolate(coarse, size=(56, 56), mode="bilinear", align_corners=False)[:, 0]
    return {"E": E, "y": E + 0.1 * torch.randn(n, 56, 56, generator=g)}


CASES = {
    "flow_mlp": dict(model=moons_model, target="theta", data=lambda: moons_pairs(10_000), method="flow", options={}),
    "cond_score_mlp": dict(model=moons_model, target="theta", data=lambda: moons_pairs(10_000), method="cond_score", options={}),
    "cond_score_unet": dict(model=field_model, target="E", data=lambda: field_pairs(1_000), method="cond_score",
                            options={"batch_size": 64}),
}  # fmt: skip
# the 56 × 56 U-Net at three widths, float32 and under a bfloat16 autocast (issue 20, item 2)
for _width in (8, 16, 32):
    for _precision in ("float32", "bfloat16"):
        CASES[f"unet{_width}_{_precision}"] = dict(
            model=field_model, target="E", data=lambda: field_pairs(1_000), method="cond_score",
            options={"batch_size": 64, "base_channels": _width, "channel_mults": (1, 2, 2), "precision": _precision},
        )  # fmt: skip


def load_training(rev: str):
    r"""``bayesinv/amortized/training.py`` of git revision ``rev`` as a module."""
    src = subprocess.run(["git", "show", f"{rev}:bayesinv/amortized/training.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / f"training_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"training_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_case(name: str, steps: int, train_fn) -> dict:
    case = CASES[name]
    data = case["data"]()
    saved = fit_module.train
    cpu = []

    def timed(*a, **k):
        c0 = time.process_time()
        try:
            return train_fn(*a, **k)
        finally:
            cpu.append(time.process_time() - c0)

    fit_module.train = timed
    try:
        t0 = time.perf_counter()
        post = bayesinv.fit(case["model"], method=case["method"], target=case["target"], data=data, seed=0, progress=False,
                            max_steps=steps, **case["options"])  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        fit_module.train = saved
    info = post.info
    return {"steps": info["train_steps"], "train_time_s": info["train_time_s"], "fit_time_s": wall,
            "steps_per_s": info["train_steps"] / info["train_time_s"], "train_cpu_s": sum(cpu),
            "steps_per_cpu_s": info["train_steps"] / sum(cpu), "best_val_loss": info["best_val_loss"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES))
    p.add_argument("--steps", nargs="+", type=int, default=[1000, 1000, 30], help="max_steps per case (in --cases order)")
    p.add_argument("--compare-with", default=None, help="git revision whose training loop is measured beside the current one")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="default")
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = p.parse_args()
    set_threads(args.threads)
    from bayesinv.amortized.training import train as current

    loops = {"current": current}
    if args.compare_with:
        loops[args.compare_with] = load_training(args.compare_with).train
    out = {"meta": metadata(args.machine), "compare_with": args.compare_with, "results": []}
    for name, steps in zip(args.cases, args.steps):
        for rep in range(args.repeats):
            for loop, fn in loops.items():
                row = {"case": name, "loop": loop, "repeat": rep, **run_case(name, steps, fn)}
                out["results"].append(row)
                print(row, flush=True)
                write_results(f"train_throughput_{args.label}", out)
    summary = {}
    for name in args.cases:
        rows = {loop: [r for r in out["results"] if r["case"] == name and r["loop"] == loop] for loop in loops}
        med = lambda rs, key: float(np.median([r[key] for r in rs]))  # noqa: E731
        summary[name] = {f"{loop} {unit}": med(rs, key) for loop, rs in rows.items()
                         for unit, key in (("steps/s", "steps_per_s"), ("steps/cpu-s", "steps_per_cpu_s"))}  # fmt: skip
        if args.compare_with:
            for unit in ("steps/s", "steps/cpu-s"):
                summary[name][f"speedup {unit}"] = summary[name][f"current {unit}"] / summary[name][f"{args.compare_with} {unit}"]
            summary[name]["same_val_loss"] = all(
                a["best_val_loss"] == b["best_val_loss"] for a, b in zip(rows["current"], rows[args.compare_with]))  # fmt: skip
    out["summary"] = summary
    print(summary, flush=True)
    write_results(f"train_throughput_{args.label}", out)


if __name__ == "__main__":
    sys.exit(main())
