"""reproduce --set KEY=VALUE: parsing, one-line validation (exit 2), precedence over the profile,
run ids, report header and the --jobs worker command line."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks.cli import grid_args, main
from benchmarks.execution import runner
from benchmarks.execution.grid import GridArgs, GridError, expand, parse_sets
from benchmarks.execution.tables import load_table
from egmf_core.config import ConfigError
from tests.conftest import isolate_harness
from tests.fakes import hashed_run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)


def test_values_are_toml_literals_or_plain_strings():
    sets = parse_sets(["train.max_steps=200", "model.lora_r=16", "train.lr=1e-4", "model.lora=false",
                       'model.modalities=["text", "audio"]', "model.text_proj=mlp"])
    assert sets == {"train.max_steps": 200, "model.lora_r": 16, "train.lr": 1e-4, "model.lora": False,
                    "model.modalities": ["text", "audio"], "model.text_proj": "mlp"}
    assert parse_sets(["train.max_steps=3", "train.max_steps=5"]) == {"train.max_steps": 5}  # last wins


@pytest.mark.parametrize("item, message", [
    ("train.nope=1", "--set train.nope=1: unknown config field train.nope"),
    ("train=1", "--set train=1: unknown config field train"),
    ("train.max_steps=abc", "--set train.max_steps=abc: config field train.max_steps='abc': expected int | None"),
    ("train.max_steps=0", "--set train.max_steps=0: config field train.max_steps=0: must be positive"),
    ("train.lr=true", "--set train.lr=true: config field train.lr=True: expected float"),
    ("model.modalities=text", "expected list[str]"),
    ("model.modalities=[\"smell\"]", "must be a subset of"),
    ("seed=3", "--set seed: use --seeds for this field"),
    ("data.name=meld", "use --datasets"),
    ("max_steps", "bad --set 'max_steps': expected KEY=VALUE"),
])
def test_bad_set_is_one_line_exit_2(item, message, tmp_path, capsys):
    with pytest.raises((ConfigError, GridError)) as info:
        parse_sets([item])
    assert message in str(info.value)
    rc = main(["reproduce", "main_msa", "--set", item, "--results-root", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and message in err and "\n" not in err


def test_set_wins_over_the_smoke_profile_and_changes_the_run_id():
    spec = load_table("main_msa")
    plain = expand(spec, "smoke", GridArgs(seeds=[1111], datasets=["mosei"]), check_roots=False)[0]
    assert plain.config.train.max_steps == 400  # smoke's own budget
    cell = expand(spec, "smoke", GridArgs(seeds=[1111], datasets=["mosei"], overrides=parse_sets(["train.max_steps=3", "model.backbone=\"glm4\"", "model.d_h=32"])), check_roots=False)[0]
    assert cell.config.train.max_steps == 3
    assert cell.config.model.backbone == "glm4-tiny"  # a paper backbone still maps to its smoke twin
    assert cell.config.model.d_h == 32  # smoke's d_h 64 yields
    assert cell.run_id != plain.run_id
    assert cell.identity()["overrides"] == {"model.backbone": "glm4", "model.d_h": 32, "train.max_steps": 3}
    assert "overrides" not in plain.identity()  # runs without --set keep their ids


def test_set_wins_over_the_paper_profile():
    spec = load_table("main_erc")
    cell = expand(spec, "paper", GridArgs(seeds=[1111], datasets=["meld"], overrides=parse_sets(["train.patience=2", "train.lr=1e-3"])), check_roots=False)[0]
    assert (cell.config.train.patience, cell.config.train.lr) == (2, 1e-3)  # paper: 8 and 5e-5


def test_runs_are_stored_and_reported_with_their_overrides(tmp_path, capsys):
    roots = ["--results-root", str(tmp_path / "results"), "--reports-root", str(tmp_path / "reports")]
    rc = main(["reproduce", "main_msa", "--rows", "EGMF", "--datasets", "sims_v2", "--seeds", "1111,1112",
               "--set", "train.max_steps=3", *roots])
    assert rc == 0
    runs = [json.loads(p.read_text()) for p in (tmp_path / "results/smoke/runs").glob("*.json")]
    assert len(runs) == 2 and all(r["config"]["overrides"] == {"train.max_steps": 3} for r in runs)
    csv = (tmp_path / "results/smoke/main_msa.csv").read_text()
    assert all(r["run_id"] in csv for r in runs)  # the table CSV finds runs made with --set
    report = (tmp_path / "reports/smoke/main_msa.md").read_text()
    assert "| --set overrides | `train.max_steps=3` (2 run(s)) |" in report


def test_the_reproduce_flags_give_every_worker_the_same_sets():
    args = argparse.Namespace(seeds=None, rows=None, datasets=None, data_root=None, model_root=None,
                              trust_remote_code=False, sets=["train.max_steps=3", "model.modalities=[\"text\"]"])
    assert grid_args(args).overrides == {"train.max_steps": 3, "model.modalities": ["text"]}
