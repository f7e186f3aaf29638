r"""Diffusion building blocks as small pure functions: processes, schedules, losses, samplers."""

from bayesinv.diffusion.loss import dsm_loss, ncsn_loss
from bayesinv.diffusion.samplers import (
    SampleResult,
    annealed_langevin,
    predictor_corrector,
    probability_flow_ode,
    reverse_sde,
    tweedie_denoise,
)
from bayesinv.diffusion.schedules import choose_num_levels, choose_sigma_1, choose_step_size, geometric_sigmas
from bayesinv.diffusion.sde import VE, VP, Process, expand_like

__all__ = [
    "VE",
    "VP",
    "Process",
    "expand_like",
    "geometric_sigmas",
    "choose_sigma_1",
    "choose_num_levels",
    "choose_step_size",
    "dsm_loss",
    "ncsn_loss",
    "SampleResult",
    "annealed_langevin",
    "reverse_sde",
    "probability_flow_ode",
    "predictor_corrector",
    "tweedie_denoise",
]
