"""bayesinv.nets."""
