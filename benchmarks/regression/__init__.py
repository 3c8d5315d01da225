"""The nightly regression check and its committed baselines."""
