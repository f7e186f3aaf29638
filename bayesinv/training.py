r"""The shared training loop, now in :mod:`bayesinv.amortized.training` (re-exported here)."""

from bayesinv.amortized.training import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
