r"""Diffusion building blocks as small pure functions: processes, schedules, losses, samplers."""

from bayesinv.diffusion.from_start import insert_time, sample_from_start
from bayesinv.diffusion.loss import dsm_loss, ncsn_loss, score_loss, score_objective
from bayesinv.diffusion.samplers import (
    SampleResult,
    annealed_langevin,
    initial_draws,
    predictor_corrector,
    probability_flow_ode,
    reverse_from,
    reverse_sample,
    reverse_sde,
    step_time,
    thresholded_score,
    tweedie_denoise,
)
from bayesinv.diffusion.schedules import choose_num_levels, choose_sigma_1, choose_step_size, geometric_sigmas, ncsn_levels
from bayesinv.diffusion.sde import VE, VP, Process, expand_like, process_from_spec

__all__ = [
    "VE",
    "VP",
    "Process",
    "expand_like",
    "process_from_spec",
    "geometric_sigmas",
    "choose_sigma_1",
    "choose_num_levels",
    "choose_step_size",
    "ncsn_levels",
    "dsm_loss",
    "ncsn_loss",
    "score_loss",
    "score_objective",
    "SampleResult",
    "annealed_langevin",
    "initial_draws",
    "reverse_sde",
    "probability_flow_ode",
    "predictor_corrector",
    "reverse_sample",
    "reverse_from",
    "insert_time",
    "sample_from_start",
    "step_time",
    "thresholded_score",
    "tweedie_denoise",
]
