"""Fake run functions shared by the harness tests: instant stand-ins for egmf_core.run.run_experiment."""

from __future__ import annotations

from egmf_core.config import config_hash
from egmf_core.outcome import RunOutcome

FAKE_METRICS = ("wf1", "acc", "mae")


def hashed_value(cfg) -> float:
    """A number in [0, 1) fixed by the run's config hash: the same run always gets it, two runs rarely share it."""
    return (int(config_hash(cfg), 16) % 1000) / 1000


def hashed_run(cfg, *, progress=None) -> RunOutcome:
    """Every metric of FAKE_METRICS on valid and test is ``hashed_value(cfg)``; records trust_remote_code."""
    v = hashed_value(cfg)
    return RunOutcome(status="ok", metrics={split: dict.fromkeys(FAKE_METRICS, v) for split in ("valid", "test")},
                      invalid_rate={"valid": 0.0, "test": 0.0}, trust_remote_code=cfg.model.trust_remote_code)
