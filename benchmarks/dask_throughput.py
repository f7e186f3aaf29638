r"""Simulation throughput: the simulator's process pool against a 2-worker Dask LocalCluster.

For the elastography (scikit-fem, 56x56 field per draw) and EIT (pyEIT, 208 voltages and a
128x128 image per draw) problems, ``bayesinv.simulate(model, n, chunk_size=c)`` runs

- ``pool``: in this process, the model's simulator with ``workers=2`` (each chunk's
  simulator call split over two persistent worker processes);
- ``dask``: on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  with ``client=``, the simulator with ``workers=1`` (whole chunks run by the workers);
- ``serial``: in this process, one process (the reference).

Each mode runs once to warm up (worker start-up, imports, the problem sent to the cluster;
reported as ``cold_s``) and then again for the measured draws/s. The three datasets must
be identical (checked). The overhead of Dask per chunk is measured on a model with no
simulator (two Gaussians): many small chunks, serial vs ``dask``:
``(t_dask - t_serial / 2) / chunks`` counts what Dask adds beyond ideal 2-way parallelism.

Run (needs 2 cores; on a shared machine the numbers move with the load):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dask_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from _common import metadata, write_results  # noqa: E402

MACHINE = "2-core CPU, no GPU, shared with other jobs"


def tiny_model(y=None):
    r"""No simulator: what a chunk costs beyond the model's own work."""
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(theta, 1.0).to_event(1), obs=y)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_modes(name: str, models: dict, n: int, chunk_size: int, client, warm_n: int) -> dict:
    r"""Times serial, pool and dask on one problem; checks that the datasets are identical."""
    row: dict = {"problem": name, "n": n, "chunk_size": chunk_size, "chunks": -(-n // chunk_size)}
    datasets = {}
    for mode in ("serial", "pool", "dask"):
        model = models[mode]
        kw = dict(chunk_size=chunk_size, seed=0, progress=False, client=client if mode == "dask" else None)
        _, cold = timed(lambda: bayesinv.simulate(model, warm_n, **{**kw, "chunk_size": max(1, warm_n // 2)}))
        ds, wall = timed(lambda: bayesinv.simulate(model, n, **kw))
        datasets[mode] = ds
        row[mode] = {"cold_s": cold, "wall_s": wall, "draws_per_s": n / wall}
        print(f"{name:12s} {mode:6s} {n / wall:8.2f} draws/s  ({wall:.1f} s for {n}; warm-up {cold:.1f} s)", flush=True)
    ref = datasets["serial"]
    row["identical"] = all(
        np.array_equal(ref[v].values, datasets[m][v].values) for m in ("pool", "dask") for v in ref.data_vars
    )
    row["dask_vs_pool"] = row["dask"]["draws_per_s"] / row["pool"]["draws_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small runs (a smoke test, minutes).")
    parser.add_argument("--only", choices=["elastography", "eit", "overhead"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["elastography", "eit", "overhead"])
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    rows = []
    try:
        if "elastography" in only:
            from bayesinv.models import elastography

            serial = elastography.Elastography()
            pool = elastography.Elastography(workers=2)
            n, c = (16, 4) if args.quick else (400, 25)
            rows.append(run_modes("elastography", {"serial": serial.model, "pool": pool.model, "dask": serial.model},
                                  n, c, client, warm_n=4))  # fmt: skip
        if "eit" in only:
            from bayesinv.models import eit

            serial = eit.EIT(2, 40.0)
            pool = copy.copy(serial)  # the same mesh (building one takes ~20 s), another simulator
            pool.simulator = bayesinv.simulator(eit.solve_voltages, name="eit_voltages", workers=2)
            n, c = (200, 25) if args.quick else (1600, 100)
            rows.append(run_modes("eit", {"serial": serial.model, "pool": pool.model, "dask": serial.model},
                                  n, c, client, warm_n=20))  # fmt: skip
        overhead = None
        if "overhead" in only:
            n, c = (400, 10) if args.quick else (2000, 10)
            bayesinv.simulate(tiny_model, 20, chunk_size=10, client=client, progress=False)  # warm
            _, t_serial = timed(lambda: bayesinv.simulate(tiny_model, n, chunk_size=c, progress=False))
            _, t_dask = timed(lambda: bayesinv.simulate(tiny_model, n, chunk_size=c, client=client, progress=False))
            chunks = n // c
            overhead = {"n": n, "chunk_size": c, "chunks": chunks, "serial_s": t_serial, "dask_s": t_dask,
                        "serial_ms_per_chunk": 1e3 * t_serial / chunks, "dask_ms_per_chunk": 1e3 * t_dask / chunks,
                        "dask_overhead_ms_per_chunk": 1e3 * (t_dask - t_serial / 2) / chunks}  # fmt: skip
            print(f"overhead: {overhead['serial_ms_per_chunk']:.1f} ms/chunk serial, {overhead['dask_ms_per_chunk']:.1f}"
                  f" ms/chunk on dask ({overhead['dask_overhead_ms_per_chunk']:.1f} ms added per chunk)", flush=True)
    finally:
        client.close()
        cluster.close()
    payload = {"meta": metadata(MACHINE), "quick": args.quick, "rows": rows, "overhead": overhead}
    path = write_results("dask_throughput" + ("_quick" if args.quick else ""), payload)
    print(f"wrote {path}")
    print("| problem | n (chunk) | serial draws/s | pool (workers=2) draws/s | dask 2 workers draws/s | dask/pool | identical |")
    for r in rows:
        print(f"| {r['problem']} | {r['n']} ({r['chunk_size']}) | {r['serial']['draws_per_s']:.2f} | "
              f"{r['pool']['draws_per_s']:.2f} | {r['dask']['draws_per_s']:.2f} | {r['dask_vs_pool']:.2f} | {r['identical']} |")


if __name__ == "__main__":
    main()
