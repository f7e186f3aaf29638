"""bayesinv.diffusion."""
