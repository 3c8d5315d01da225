"""The nightly grid declared as data (ablations/nightly.toml) and a missing baseline: results are
stored, the report says how to create the baseline, and the exit code is 3 (not a crash)."""

from __future__ import annotations

import json

import pytest

from benchmarks.execution import runner
from benchmarks.execution.profiles import MODEL_DIRS
from benchmarks.regression import nightly
from benchmarks.regression.baselines import read_baseline
from tests import fakes
from tests.conftest import isolate_harness
from tests.test_nightly import FakeRun


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    isolate_harness(tmp_path, monkeypatch)


def paper_roots(tmp_path) -> dict:
    for name in ("mosei", "sims_v2", "meld", "cherma"):
        (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "models" / MODEL_DIRS["glm3"]).mkdir(parents=True)
    return {"data_root": tmp_path / "data", "model_root": tmp_path / "models"}


def go(tmp_path, profile="smoke", **kwargs):
    return fakes.run_nightly(profile, results_root=tmp_path / "results", reports_root=tmp_path / "reports",
                               render=False, **kwargs)


def test_the_paper_nightly_is_the_main_tables_with_a_fixed_budget_and_two_seeds():
    grid = nightly.nightly_grid("paper")
    assert grid.tables == ["main_erc", "main_msa"] and grid.seeds == [1111, 1112]
    assert grid.overrides["train.max_steps"] == 4000
    smoke = nightly.nightly_grid("smoke")
    assert smoke.tables == ["main_erc", "main_msa"] and smoke.seeds is None and smoke.overrides == {}


def test_a_missing_baseline_stores_results_and_says_how_to_create_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: FakeRun())
    code = nightly.main(["--tables", "main_msa", "--results-root", str(tmp_path / "results"),
                         "--reports-root", str(tmp_path / "reports")])
    out = capsys.readouterr().out
    assert code == nightly.NO_BASELINE_EXIT == 3
    assert len(list((tmp_path / "results" / "smoke" / "runs").glob("*.json"))) == 10  # stored, not lost
    report = (tmp_path / "reports" / "smoke" / "regression.md").read_text()
    assert "no baseline yet" in report and "nox -s nightly -- --profile smoke --update-baseline" in report
    assert "nox -s nightly -- --profile smoke --update-baseline" in out
    # then the baseline is created from the stored runs, and the next check passes without retraining
    again = FakeRun()
    assert go(tmp_path, tables=["main_msa"], update_baseline=True, run_fn=again).exit_code == 0 and again.calls == 0
    assert go(tmp_path, tables=["main_msa"], run_fn=again).exit_code == 0


def test_the_paper_nightly_trains_its_grid_and_never_mixes_with_full_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "preflight", lambda *a, **k: [])  # empty roots: the runs are fakes
    roots = paper_roots(tmp_path)
    full = FakeRun(shift=0.5)  # full-length runs of the same table, stored in the same results root
    fakes.reproduce("main_msa", "paper", seeds=[1111], results_root=tmp_path / "results", render=False,
                     run_fn=full, **roots)
    fake = FakeRun()
    first = go(tmp_path, "paper", run_fn=fake, **roots)
    assert first.exit_code == 3 and fake.calls == 8  # 2 tables x 2 datasets x 2 seeds
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "results" / "paper" / "runs").glob("*.json")]
    nightly_runs = [c for c in configs if c.get("overrides")]
    assert len(nightly_runs) == 8 and all(c["train"]["max_steps"] == 4000 for c in nightly_runs)
    assert go(tmp_path, "paper", update_baseline=True, run_fn=fake, **roots).exit_code == 0
    base = read_baseline(tmp_path / "results" / "baselines" / "paper.csv")
    mae = base[base["metric"] == "mae"]
    assert len(mae) == 4 and list(mae["mean"]) == pytest.approx([0.71] * 4)  # seeds 1111-1112, not the +0.5 run
    res = go(tmp_path, "paper", run_fn=fake, **roots)
    assert res.exit_code == 0 and set(res.comparison["verdict"]) == {"ok"}  # the shifted full runs are not compared


def test_a_bad_nightly_file_is_one_line(tmp_path):
    path = tmp_path / "nightly.toml"
    path.write_text('[paper]\ntables = ["main_msa"]\n[paper.set]\n"train.max_steps" = "many"\n')
    with pytest.raises(nightly.NightlyInputError, match=r"nightly.toml: \[paper\]: config field train.max_steps"):
        nightly.nightly_grid("paper", path)
    with pytest.raises(nightly.NightlyInputError, match=r"\[smoke\] needs a non-empty list 'tables'"):
        nightly.nightly_grid("smoke", path)
