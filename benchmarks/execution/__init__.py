"""What runs: table files, profiles and grids of runs, the runner and its launchers, the results store."""
