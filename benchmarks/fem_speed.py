r"""Elastography forward-model throughput: solves per second per core, before and after.

Runs the 56 × 56 elastography solver (one mesh cell per pixel, 6,383 unknowns) on
``--num-draws`` prior inclusions (seed 0) with

- ``before``: the previous path, LAPACK banded Cholesky (bandwidth 117) one draw at a
  time (``ElasticitySolver(solver="banded").vertical``);
- ``after``: CHOLMOD through CVXOPT, symbolic analysis once (geometric nested
  dissection order), numeric factorisation per draw, the batch assembled by one sparse
  matrix product (``ElasticitySolver(solver="cholmod").vertical_many``, what
  ``solve_displacement`` runs);

and checks that both give the same displacements (max |Δu| / max |u|). "Per core" is
solves per **CPU second** of this process (single-threaded BLAS), which a shared,
loaded machine changes far less than wall-clock rates; both are recorded. The two
solvers alternate in ``--repeats`` rounds so that load changes hit both alike.

Run (single-threaded BLAS so "per core" means one core):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/fem_speed.py [--quick]

Writes ``benchmarks/results/fem_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import metadata, write_results  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402


def timed(fn, mu: np.ndarray) -> tuple[np.ndarray, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(mu)
    return out, mu.shape[0] / (time.process_time() - cpu), mu.shape[0] / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-draws", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40 draws, 2 rounds (about 10 s)")
    args = parser.parse_args()
    if args.quick:
        args.num_draws, args.repeats = 40, 2
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    lo, hi = el.CENTER_RANGE
    mu = el.inclusion_field(lo + (hi - lo) * torch.rand(args.num_draws, 2, generator=gen)).numpy().astype(np.float64)

    t0 = time.perf_counter()
    banded = el.ElasticitySolver(solver="banded")
    setup_banded = time.perf_counter() - t0
    t0 = time.perf_counter()
    cholmod = el.ElasticitySolver(solver="cholmod")
    setup_cholmod = time.perf_counter() - t0
    runs = {
        "before": lambda m: np.stack([banded.vertical(x) for x in m]),
        "after": cholmod.vertical_many,
    }
    for fn in runs.values():
        fn(mu[:2])  # warm up
    rates: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": []} for k in runs}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            outputs[name], cpu, wall = timed(fn, mu)
            rates[name]["cpu"].append(cpu)
            rates[name]["wall"].append(wall)
    ref, new = outputs["before"], outputs["after"]
    rel = float((np.abs(new - ref).max((1, 2)) / np.abs(ref).max((1, 2))).max())
    payload = {
        "meta": metadata("2-core CPU, no GPU, shared with other jobs"),
        "args": vars(args),
        "unknowns": int(cholmod.system.free.size),
        "bandwidth_banded": int(banded.system.bandwidth),
        "ordering_after": cholmod.system.ordering,
        "setup_s": {"before": setup_banded, "after": setup_cholmod},
        "load_average": list(os.getloadavg()),
        "rates": rates,
        "max_relative_difference": rel,
    }
    path = write_results("fem_speed", payload)
    print(f"elastography 56 x 56, {cholmod.system.free.size} unknowns, {args.num_draws} draws x {args.repeats} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| path | solves per CPU second (median, min-max) | solves per wall second (median) | setup |")
    for name, label in (("before", "banded Cholesky, one draw at a time"), ("after", "CHOLMOD, symbolic once, batched assembly")):
        c, w = rates[name]["cpu"], rates[name]["wall"]
        print(f"| {label} | {np.median(c):.0f} ({min(c):.0f}-{max(c):.0f}) | {np.median(w):.0f} | "
              f"{payload['setup_s'][name]:.2f} s |")  # fmt: skip
    print(f"max |u_after - u_before| / max |u_before| over the draws: {rel:.1e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
