"""bayesinv.diagnostics."""
