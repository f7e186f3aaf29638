r"""What a few failing simulator rows cost: bisection against one row per call.

A batched NumPy simulator (an exponential decay on 50 time points, one call costing a
fixed ``--call-overhead-ms`` plus the vectorised work) raises for a fraction of the rows,
chosen by a hash of each row's parameters. For 20,000 rows in chunks of 10,000 (the
chunk size of ``importance``) it reports, per failure rate and isolation strategy:

- ``isolate="rows"``: a failed call is rerun one row at a time (the strategy before
  bisection, reproduced exactly: 1 + 10,000 calls for every chunk with a failure);
- ``isolate="bisect"``: a failed call is split in halves recursively;

the wall time and the number of simulator calls of (a) the simulator called directly on
the 20,000 rows and (b) ``bayesinv.infer(model, y, method="importance",
num_proposals=20000)``, whose model calls the simulator on each chunk of 10,000
proposals. The failed rows must be the same for both strategies (checked).

Run:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/simulator_failures.py [--call-overhead-ms 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.simulators import Simulator  # noqa: E402

try:
    from benchmarks._common import metadata, write_results  # noqa: E402
except ImportError:  # run as a script from the benchmarks folder
    from _common import metadata, write_results  # type: ignore  # noqa: E402

NUM_ROWS = 20_000
CHUNK = 10_000
TIMES = np.linspace(0.0, 1.0, 50)


def failing(theta: np.ndarray, rate: float) -> np.ndarray:
    r"""Rows that fail: a hash of the parameters' float32 bits below ``rate`` (a fraction ``rate`` of rows)."""
    bits = np.ascontiguousarray(theta, dtype=np.float32).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (bits[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ (bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F))
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < rate


class Decay:
    r"""``theta (N, 2) -> (N, 50)``; raises when any row is a failing row; one call costs ``overhead`` s."""

    def __init__(self, rate: float, overhead: float):
        self.rate, self.overhead = rate, overhead

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        if self.overhead:
            time.sleep(self.overhead)  # the fixed cost of one call of a solver (set-up, a process, I/O)
        bad = failing(theta, self.rate)
        if bad.any():
            raise RuntimeError(f"solver diverged for {int(bad.sum())} of {len(theta)} rows")
        return theta[:, :1] * np.exp(-np.abs(theta[:, 1:2]) * TIMES)


def direct(rate: float, isolate: str, overhead: float) -> dict:
    theta = np.random.default_rng(0).normal(size=(NUM_ROWS, 2))
    sim = Simulator(Decay(rate, overhead), name="decay", batch_size=CHUNK, isolate=isolate)
    begin = time.perf_counter()
    out = sim(theta)
    seconds = time.perf_counter() - begin
    failed = np.isnan(out).any(axis=1)
    assert np.array_equal(failed, failing(theta, rate)), "the failed rows are exactly the failing rows"
    return {"seconds": seconds, "calls": sim.num_calls, "failed_rows": int(failed.sum()), "out": out}


def end_to_end(rate: float, isolate: str, overhead: float, num_samples: int) -> dict:
    sim = Simulator(Decay(rate, overhead), name="decay", isolate=isolate)

    def model(y=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("y", dist.Normal(sim(theta), 0.3).to_event(1), obs=y)

    y = Decay(0.0, 0.0)(np.array([[0.8, 1.5]]))[0]
    begin = time.perf_counter()
    idata = bayesinv.infer(model, y, method="importance", num_samples=num_samples, num_proposals=NUM_ROWS,
                           chunk_size=CHUNK, seed=0, progress=False)
    seconds = time.perf_counter() - begin
    return {"seconds": seconds, "calls": sim.num_calls, "failed_rows": sim.num_failures,
            "ess": float(np.asarray(idata.sample_stats["ess"]).ravel()[0]) if "ess" in idata.sample_stats else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--call-overhead-ms", type=float, default=1.0, help="fixed cost of one simulator call")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.001, 0.01])
    parser.add_argument("--quick", action="store_true", help="only the direct calls, not importance")
    parser.add_argument("--machine", default="2-core CPU (shared)")
    args = parser.parse_args()
    overhead = args.call_overhead_ms / 1000

    rows = []
    for rate in args.rates:
        outputs = {}
        for isolate in ("rows", "bisect"):
            row = {"rate": rate, "isolate": isolate}
            d = direct(rate, isolate, overhead)
            outputs[isolate] = d.pop("out")
            row["direct"] = d
            if not args.quick:
                row["importance"] = end_to_end(rate, isolate, overhead, num_samples=1000)
            rows.append(row)
            text = f"rate {100 * rate:5.1f} %  {isolate:6s}  direct: {d['seconds']:7.2f} s {d['calls']:6d} calls {d['failed_rows']:4d} failed"
            if "importance" in row:
                e = row["importance"]
                text += f"   importance: {e['seconds']:7.2f} s {e['calls']:6d} calls {e['failed_rows']:4d} failed"
            print(text, flush=True)
        assert np.array_equal(outputs["rows"], outputs["bisect"], equal_nan=True), "both strategies give the same output"

    path = write_results(
        f"simulator_failures_{args.call_overhead_ms:g}ms" + ("_quick" if args.quick else ""),
        {"meta": metadata(args.machine), "num_rows": NUM_ROWS, "chunk": CHUNK,
         "call_overhead_ms": args.call_overhead_ms, "results": rows},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
