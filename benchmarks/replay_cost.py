r"""Cost of pushing latent draws forward to the deterministic field: the full model run against the replay that stops.

On the elastography model (``center`` (2,) → ``mu`` (56 × 56) → FEM displacement → noise), ``n`` prior
draws of the centre are pushed to ``mu`` two ways, in one process: by running the whole model with the
centres fixed (``bayesinv.problem.run_batch``, what amortized posteriors did before commit 4e67cfc: one
FEM solve per draw) and by ``bayesinv.problem.replay_deterministic``, which stops once ``mu`` is recorded.
The two fields must be equal.

Run:  OMP_NUM_THREADS=1 python benchmarks/replay_cost.py --num 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import metadata, set_threads, write_results  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402
from bayesinv.problem import replay_deterministic, run_batch, trace_problem  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--machine", default="2-core CPU, no GPU (shared with other jobs)")
    args = p.parse_args()
    set_threads(args.threads)
    problem = trace_problem(el.make_problem(noise=0.05).model)
    centers = run_batch(problem, args.num, seed=1).values["center"]
    t0 = time.perf_counter()
    full = run_batch(problem, args.num, fixed={"center": centers}, seed=0).values["mu"]
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = replay_deterministic(problem, ["mu"], {"center": centers}, args.num, seed=0)["mu"]
    t_fast = time.perf_counter() - t0
    same = bool(torch.equal(full, fast))
    out = {"meta": metadata(args.machine), "num": args.num, "full_model_s": t_full, "replay_s": t_fast,
           "speedup": t_full / t_fast, "equal": same}  # fmt: skip
    print(out, flush=True)
    write_results("replay_cost", out)


if __name__ == "__main__":
    main()
