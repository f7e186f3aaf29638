"""bayesinv.methods."""
