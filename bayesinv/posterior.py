r"""The amortized posterior and its parts, now in :mod:`bayesinv.amortized` (re-exported here)."""

from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms, resolve_device
from bayesinv.amortized.pairs import training_data
from bayesinv.amortized.posterior import AmortizedPosterior

__all__ = ["Layout", "Normalizer", "AmortizedPosterior", "training_data", "resolve_device", "apply_transforms"]
