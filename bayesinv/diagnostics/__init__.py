r"""bayesinv.diagnostics: compare posteriors, check calibration, plot fields.

Everything here works on ArviZ InferenceData or NumPy arrays; no Pyro.

- :mod:`~bayesinv.diagnostics.metrics`: C2ST, entropic OT, Wasserstein-2, MMD between
  sample sets; MSE, PSNR, SSIM, relative/absolute L1 and dynamic range of a field estimate.
- :func:`compare`: a tidy table of metrics between a posterior and a reference, per
  variable and jointly over several sites (:class:`Comparison`, printed compactly).
- :mod:`~bayesinv.diagnostics.calibration`: SBC ranks and TARP coverage over many
  simulated test pairs.
- :mod:`~bayesinv.diagnostics.plots`: field panels (from arrays or an InferenceData),
  coverage and rank plots.
- :mod:`~bayesinv.diagnostics.posterior_summary`: what an amortized posterior was trained
  on and how well (``post.summary()``).

Note that ``bayesinv.diagnostics.compare`` is the function; its module is reached by
``from bayesinv.diagnostics.compare import ...`` or ``sys.modules``.
"""

from .calibration import (
    SBCUniformity,
    calibrate_posterior,
    sbc_bins,
    sbc_ranks,
    sbc_uniformity,
    tarp_coverage,
)
from .compare import (
    IMAGE_METRICS,
    JOINT_METRICS,
    SAMPLE_METRICS,
    TRUTH_METRICS,
    TWO_SAMPLE_METRICS,
    Comparison,
    compare,
    posterior_samples,
)
from .metrics import (
    absolute_l1,
    c2st,
    dynamic_range,
    mmd,
    mse,
    psnr,
    relative_l1,
    sinkhorn_distance,
    ssim,
    wasserstein2,
)
from .plots import plot_coverage, plot_field_panels, plot_sbc_ranks
from .posterior_summary import PosteriorSummary, summarize_posterior

__all__ = [
    "compare",
    "Comparison",
    "posterior_samples",
    "SAMPLE_METRICS",
    "TWO_SAMPLE_METRICS",
    "JOINT_METRICS",
    "TRUTH_METRICS",
    "IMAGE_METRICS",
    "c2st",
    "sinkhorn_distance",
    "wasserstein2",
    "mmd",
    "mse",
    "psnr",
    "ssim",
    "relative_l1",
    "absolute_l1",
    "dynamic_range",
    "SBCUniformity",
    "sbc_ranks",
    "sbc_uniformity",
    "sbc_bins",
    "tarp_coverage",
    "calibrate_posterior",
    "plot_field_panels",
    "plot_coverage",
    "plot_sbc_ranks",
    "PosteriorSummary",
    "summarize_posterior",
]
