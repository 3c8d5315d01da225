"""The tidy results schema: one row per (run, split, metric). Reports read only this."""

from __future__ import annotations

# Identity of a cell in a paper table, then the measured value, then provenance.
RESULT_COLUMNS: tuple[str, ...] = (
    "table",  # table name, e.g. "modality_ablation"
    "row",  # row name inside the table, e.g. "-T"
    "dataset",  # mosei | sims_v2 | meld | cherma
    "seed",  # int
    "profile",  # smoke | paper
    "split",  # valid | test
    "metric",  # e.g. "wf1", "mae", "invalid_rate"
    "value",  # float
    "status",  # ok | failed
    "error",  # one line when failed, else ""
    "run_id",  # config_hash (the run is shared by every table that asks for the same config)
    "config_json",  # the full RunConfig as sorted-key JSON
    "backbone",  # the configured backbone name
    "data_source",  # what load_dataset read
    "data_cleaning_json",  # what the loader changed: {"padding_zeroed": n, "vision_nan": n, ...}
    "model_source",  # where the backbone weights came from
    "git_rev",  # git revision (with "-dirty" when the tree had changes)
    "versions_json",  # {"torch": ..., "transformers": ..., ...}
    "device",
    "numerics",  # CPU numerical settings in force (benchmarks.execution.numerics.label), e.g. "pinned: aten AVX2, ..."
    "group_size",  # runs trained at once over one backbone (reproduce --group; 1: alone, and in older run files)
    "wall_s",
    "peak_mem_mb",
    "trainable_params",
    "total_params",
    "step_time_s",
    "samples_per_s",
    "egmf_share",  # EGMF's own modules' share of the training step time
    "steps",
    "best_step",
    "invalid_rate",  # of this split
    "gating_json",  # GatingStats of this split as JSON
    "trust_remote_code",  # bool
    "eval_mode",  # how this split's answers were read: generate | score ("" in older run files)
    "sampling_ci_json",  # this split's test-set sampling 95% CI per key metric, {"wf1": [low, high]}
    "valid_history_json",  # the run's validation passes [{"step", "loss", <key metric>, "invalid_rate"}]
    "timestamp",  # ISO 8601, UTC
)

# The run-level measurements among RESULT_COLUMNS (numbers; the same on every row of a run).
COST_COLUMNS: tuple[str, ...] = ("wall_s", "peak_mem_mb", "trainable_params", "total_params", "step_time_s",
                                 "samples_per_s", "egmf_share")
