"""Reports: pure functions of the tidy results tables (statistics, claims, assumptions, plots, markdown)."""
