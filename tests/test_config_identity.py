"""Run ids survive new config fields: ADDED_FIELDS at their defaults stay out of a run's identity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.execution.grid import run_identity
from egmf_core.config import (
    ADDED_FIELDS,
    ModelConfig,
    RunConfig,
    added_field_defaults,
    apply_overrides,
    config_hash,
    identity_dict,
)
from egmf_core.paths import REPO_ROOT

RUNS = REPO_ROOT / "results" / "smoke" / "runs"


def _committed_training_runs() -> list[Path]:
    paths = sorted(RUNS.glob("*.json"))
    return [p for p in paths if "model" in json.loads(p.read_text(encoding="utf-8"))["config"]]


def _runs_before_the_added_fields() -> list[Path]:
    """The committed EGMF runs, stored before ADDED_FIELDS existed (no "method" in their config)."""
    return [p for p in _committed_training_runs()
            if "method" not in json.loads(p.read_text(encoding="utf-8"))["config"]["model"]]


def test_committed_runs_keep_their_ids():
    """Every committed training run: its stored config, and that config read back into a RunConfig
    (which fills every added field with its default), hash to the stored run id. The runs made
    before the fields were added are EGMF's; those that store a method are the baselines'."""
    paths = _committed_training_runs()
    before = set(_runs_before_the_added_fields())
    assert len(before) >= 300  # the committed smoke grid
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        cfg = RunConfig.from_dict(record["config"])
        assert cfg.model.method == "egmf" if path in before else cfg.model.method in ("mse_adapter", "tfn"), path.name
        assert config_hash(record["config"]) == record["run_id"] == path.stem
        assert config_hash(cfg) == record["run_id"], path.name
        assert config_hash(run_identity(cfg)) == record["run_id"], path.name


def test_non_default_added_field_changes_the_id():
    path = _runs_before_the_added_fields()[0]
    cfg = RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    for key, value in (("model.method", "tfn"), ("model.method", "mse_adapter"), ("model.mse_d_mix", 128),
                       ("model.tfn_dropout", [0.4, 0.4, 0.4, 0.4]), ("model.tfn_squash", True)):
        changed = apply_overrides(cfg, {key: value})
        assert config_hash(changed) != path.stem, key
        assert identity_dict(changed)["model"][key.split(".")[1]] == value


def test_identity_dict_leaves_its_input_alone_and_keeps_other_fields():
    d = RunConfig().to_dict()
    before = json.dumps(d, sort_keys=True)
    ident = identity_dict(d)
    assert json.dumps(d, sort_keys=True) == before
    assert "method" not in ident["model"] and "backbone" in ident["model"]
    assert set(ident["train"]) == set(d["train"])


def test_every_field_added_to_model_config_is_registered():
    """ModelConfig's fields = those of the committed runs + ADDED_FIELDS: a field added without
    registering it would change every run id (this test names it)."""
    stored = set(json.loads(_runs_before_the_added_fields()[0].read_text(encoding="utf-8"))["config"]["model"])
    now = {f.name for f in dataclasses.fields(ModelConfig)}
    assert now - stored == set(ADDED_FIELDS["model"])
    defaults = added_field_defaults()
    assert defaults[("model", "method")] == "egmf"
    assert defaults[("model", "mse_msf_ratios")] == [8, 32, 16]


@pytest.mark.parametrize("key,value", [("model.method", "lstm"), ("model.tfn_input_norm", "group"),
                                       ("model.mse_msf_ratios", []), ("model.tfn_dropout", [0.1])])
def test_bad_baseline_fields_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        apply_overrides(RunConfig(), {key: value})
