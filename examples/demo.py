r"""
bayesinv in two minutes: a 10-dimensional linear-Gaussian inverse problem
=========================================================================

The posterior is known exactly, so the two reference methods — importance sampling and
NUTS — can be checked against it. Writes ``out/demo/`` (InferenceData as netCDF and an
ArviZ plot) and prints the comparison.

Run:  make demo     (or: python examples/demo.py)
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv._arviz import az  # noqa: E402
from bayesinv.models.toy import LinearGaussian  # noqa: E402

OUT = Path("out/demo")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    problem = LinearGaussian(dim=10, noise=1.0)
    theta_true, y = problem.draw(seed=1)
    mean, cov = problem.posterior(y)
    sd = np.sqrt(np.diag(cov))
    print(bayesinv.trace_problem(problem.model))

    runs = {}
    for method, options in [
        ("importance", dict(num_samples=4000, num_proposals=300_000)),
        ("nuts", dict(num_samples=500, warmup_steps=300, num_chains=2)),
    ]:
        t0 = time.perf_counter()
        idata = bayesinv.infer(
            problem.model, y, method=method, target="theta", dims={"theta": ["param"]}, seed=0, **options
        )
        runs[method] = (idata, time.perf_counter() - t0)
        idata.to_netcdf(str(OUT / f"{method}.nc"))

    print("\nposterior vs the analytic answer (errors in units of the true posterior sd)")
    print(f"{'method':<12}{'time [s]':>10}{'max |mean err|/sd':>20}{'sd ratio range':>20}{'diagnostic':>28}")
    for method, (idata, seconds) in runs.items():
        draws = idata.posterior["theta"].values.reshape(-1, problem.dim)
        err = np.abs(draws.mean(0) - mean) / sd
        ratio = draws.std(0) / sd
        if method == "importance":
            diag = f"ESS {float(idata.sample_stats['ess']):.0f}"
        else:
            diag = f"R-hat {idata.posterior.attrs['max_rhat']:.3f}, div {int(idata.sample_stats['diverging'].sum())}"
        print(f"{method:<12}{seconds:>10.1f}{err.max():>20.3f}{f'{ratio.min():.2f}-{ratio.max():.2f}':>20}{diag:>28}")

    back = az.from_netcdf(str(OUT / "nuts.nc"))
    assert np.array_equal(back.posterior["theta"].values, runs["nuts"][0].posterior["theta"].values)

    axes = az.plot_forest(
        [runs["importance"][0], runs["nuts"][0]], model_names=["importance", "nuts"], var_names=["theta"], combined=True, figsize=(7, 6)
    )
    ax = axes[0]
    ax.set_title("Posterior of θ: importance vs NUTS (black x: exact mean)")
    ticks = ax.get_yticks()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    for tick, label in zip(ticks, labels):
        if "[" in label:
            index = int(label.split("[")[1].split("]")[0])
            ax.plot(mean[index], tick, "kx")
    ax.set_xlabel("θ")
    plt.tight_layout()
    plt.savefig(OUT / "posterior_forest.png", dpi=110)
    print(f"\nwrote {OUT}/importance.nc, {OUT}/nuts.nc and {OUT}/posterior_forest.png")


if __name__ == "__main__":
    main()
