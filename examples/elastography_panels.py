r"""
Field panels of an elastography posterior: truth, measurement, draws, mean, std, error
======================================================================================

Draws a test inclusion (the first test inclusion of ``benchmarks/elastography.py``:
``draw(seed=100)``), computes the importance-sampling reference posterior of the shear
modulus (the prior set of ``examples/elastography.py``, stored in ``out/elastography/``
and reused, then zoom-in stages), and renders the issue-6 panel figure with
:func:`bayesinv.diagnostics.plot_field_panels`: truth / measured displacement / three
posterior draws / posterior mean / posterior standard deviation / \|mean − truth\|, with
shared colour scales for the modulus fields and a colour bar per panel. When a trained
cond_score posterior saved by ``benchmarks/elastography.py`` exists
(``out/elastography/cond_score_<σ_η>.bayesinv``), the same figure is drawn for it.

Writes ``out/elastography/panels_reference.png`` (and ``panels_cond_score.png``).

Run:  python examples/elastography_panels.py [--noise 0.10] [--num-simulations 1500] [--refine 2] [--num-local 800]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesinv  # noqa: E402
from bayesinv.diagnostics import plot_field_panels  # noqa: E402
from bayesinv.models import elastography as el  # noqa: E402

OUT = Path("out/elastography")


def panels(truth, y, mu_draws, label: str, noise: float, path: Path) -> None:
    r"""Saves the panel figure of posterior draws ``mu_draws`` (n, 56, 56) in kPa."""
    fig = plot_field_panels(
        truth=truth, measurement=y * 1e4, draws=mu_draws[:3], mean=mu_draws.mean(0), std=mu_draws.std(0),
        titles={"truth": "true μ (kPa)", "measurement": f"measured u_y (µm), σ_η = {noise:.1%}",
                "draw": "posterior draw {i} (kPa)", "mean": "posterior mean (kPa)", "std": "posterior std (kPa)",
                "error": "|mean − truth| (kPa)"},
        ncols=4, suptitle=f"Elastography, shear modulus: {label} ({len(mu_draws)} draws); axes in pixels, row 0 at the bottom",
    )  # fmt: skip
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.10, help="sigma_eta, a fraction of U_MAX")
    parser.add_argument("--num-simulations", type=int, default=1500, help="prior draws of the reference")
    parser.add_argument("--refine", type=int, default=2)
    parser.add_argument("--num-local", type=int, default=800)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--posterior", default=None, help="a saved cond_score posterior (default: the benchmark's, if any)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    problem = el.make_problem(noise=args.noise, workers=1)
    center, y = problem.draw(seed=args.seed)
    truth = el.inclusion_field(torch.as_tensor(center)).numpy()
    ds = problem.simulate_reference_set(args.num_simulations, path=OUT / f"prior_set_{args.num_simulations}.zarr")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = problem.reference(y, data=ds, num_samples=2000, refine=args.refine, num_local=args.num_local)
    print(f"reference: {time.perf_counter() - t0:.0f} s, ESS {float(ref.sample_stats['ess']):.0f}")
    mu_ref = ref.posterior["mu"].values.reshape(-1, el.GRID, el.GRID)
    panels(truth, y, mu_ref, "importance-sampling reference", args.noise, OUT / "panels_reference.png")

    saved = Path(args.posterior or OUT / f"cond_score_{args.noise:g}.bayesinv")
    if saved.exists():
        post = bayesinv.load(saved)
        t0 = time.perf_counter()
        mu = post.sample(torch.as_tensor(y), 32, seed=0, sampler="ode", rtol=1e-3, atol=1e-3)["mu"].numpy()
        print(f"cond_score: 32 draws in {time.perf_counter() - t0:.0f} s")
        panels(truth, y, mu, f"cond_score ({saved.name})", args.noise, OUT / "panels_cond_score.png")
    else:
        print(f"no saved cond_score posterior at {saved}: run benchmarks/elastography.py first for its panels")


if __name__ == "__main__":
    main()
