r"""
Learn a bimodal conditional density with cond_score and check it against the truth
==================================================================================

Bimodal (``bayesinv.models.toy.bimodal``): X = (Y + C)^{1/3}, Y, C ~ N(0, 1). One
conditional score model is trained on 10,000 joint draws; for y ∈ {−0.5, 0, 0.5, 1} it
draws 10,000 samples of x | y in one batched call. The reference for each y is the x of
joint draws whose y lies within ±0.05. The figure ``out/conditional_density.png`` puts
the two histograms side by side; the table compares them for y = 0.5.

Run:  python examples/conditional_density.py            (a few minutes on a laptop CPU)
      python examples/conditional_density.py --quick    (seconds; a rough model)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import bayesinv
from bayesinv.methods.cond_score import CondScoreConfig
from bayesinv.models.toy import bimodal, joint_reference

Y_VALUES = (-0.5, 0.0, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small training run")
    parser.add_argument("--out", default="out")
    args = parser.parse_args()

    config = CondScoreConfig(process="vp", hidden=(256, 256), max_epochs=10 if args.quick else 200, patience=None)
    post = bayesinv.fit(bimodal, method="cond_score", target="x", num_simulations=2000 if args.quick else 10_000,
                        seed=0, config=config)  # fmt: skip
    print(post, f"fit in {post.info['fit_time_s']:.1f} s")

    draws = post.sample(np.asarray(Y_VALUES, dtype=np.float32), 10_000, seed=1, sampler="ode")["x"].numpy()
    refs = [joint_reference(bimodal, y, num_joint=100_000, seed=2) for y in Y_VALUES]

    fig, axes = plt.subplots(1, len(Y_VALUES), figsize=(4 * len(Y_VALUES), 3.2), sharey=True)
    for ax, y, learned, ref in zip(axes, Y_VALUES, draws, refs):
        bins = np.linspace(-2.5, 2.5, 61)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label=f"reference (|Y - y| ≤ 0.05, n={len(ref)})")
        ax.hist(learned, bins=bins, density=True, histtype="step", lw=1.5, label="cond_score (VP, ODE)")
        ax.set(title=f"Bimodal, y = {y}", xlabel="x")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "conditional_density.png", dpi=120)
    print("saved", out / "conditional_density.png")

    idata = post.infer(np.float32(0.5), num_samples=10_000, seed=1, sampler="ode")
    table = bayesinv.compare(idata, {"x": refs[2]}, metrics=("rmse_mean", "rmse_std", "sinkhorn", "mmd"))
    print("y = 0.5: cond_score vs reference")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
