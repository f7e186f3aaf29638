"""Ready-made inverse problems (installed as ``bayesinv.models``)."""
