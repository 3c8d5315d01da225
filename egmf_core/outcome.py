"""What one run returns to the harness: metrics per split, validity, gating and cost.

This is the contract between ``egmf_core`` (which trains and evaluates) and ``benchmarks``
(which stores tidy rows). It holds only plain Python values so it serialises to JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunOutcome:
    status: str  # "ok" | "failed"
    error: str | None = None  # one line, e.g. "NaN loss at step 37"
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    invalid_rate: dict[str, float] = field(default_factory=dict)  # split -> share of unparseable answers
    gating: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> GatingStats.as_dict()
    cost: dict[str, float] = field(default_factory=dict)  # trainable_params, total_params, wall_s,
    #   peak_mem_mb, step_time_s, samples_per_s, egmf_share (EGMF modules' share of step time)
    steps: int = 0  # optimizer steps taken
    best_step: int = 0  # step of the selected (best validation) checkpoint
    valid_history: list[dict[str, Any]] = field(default_factory=list)  # per validation pass: step,
    #   loss (training loss of that step's batch), the key metric, invalid_rate
    sampling_ci: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # split -> key metric ->
    #   [low, high]: 95% percentile bootstrap over that split's samples (test-set sampling uncertainty)
    eval_modes: dict[str, str] = field(default_factory=dict)  # "valid"/"test" -> "generate" | "score"
    device: str = "cpu"
    data_source: str = ""  # what load_dataset read: format, path relative to the data root, fingerprint
    data_cleaning: dict[str, int] = field(default_factory=dict)
    model_source: str = ""  # where the backbone weights came from ("tiny twin (seed 0)" or a path)
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
