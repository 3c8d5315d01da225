"""pytest-benchmark suites for EGMF-Repro (run by `nox -s bench`) and the paper-scale overhead script."""
