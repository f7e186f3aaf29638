r"""The one learned-method layer: training pairs → layouts and normalisers, the seeded fit with the
shared training loop and its info record, the posterior object, save/load.

A learned method (``bayesinv/methods/cond_score.py``, ``flow.py``, ``flow_matching.py``, ``vae.py``,
``csd_star.py``) supplies an :class:`AmortizedMethod` record: a frozen config, a network builder, its
loss and its sampler with a frozen sampler config. Configs are composed of the option groups of
:mod:`bayesinv.amortized.method` — the training fields (:class:`TrainOptions`, with the method's
``TRAIN_DEFAULTS`` through :func:`train_options`), the score networks' (``ScoreNetOptions``,
``UNetOptions``), the diffusion processes' (``ProcessOptions``, ``NCSNOptions``) and the samplers'
(``ODEOptions``, ``PCOptions``, ``ReverseOptions``) — each validated by one shared check.
"""

from bayesinv.amortized.fit import INFO_KEYS, fit_posterior
from bayesinv.amortized.layout import Layout, Normalizer, apply_transforms, resolve_device
from bayesinv.amortized.method import AmortizedMethod, TrainOptions, get_amortized, register_amortized, train_options
from bayesinv.amortized.pairs import Pairs, prepare_pairs, training_data
from bayesinv.amortized.posterior import AmortizedPosterior

__all__ = [
    "AmortizedMethod",
    "AmortizedPosterior",
    "INFO_KEYS",
    "Layout",
    "Normalizer",
    "Pairs",
    "TrainOptions",
    "apply_transforms",
    "fit_posterior",
    "get_amortized",
    "prepare_pairs",
    "register_amortized",
    "resolve_device",
    "train_options",
    "training_data",
]
