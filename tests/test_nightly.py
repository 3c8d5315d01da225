"""The nightly regression check: tolerance rule, direction-aware verdicts, baseline files, the CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.regression import baselines, nightly
from benchmarks.regression.baselines import (
    BaselineError,
    compare,
    make_baseline,
    read_baseline,
    tolerance_for,
    write_baseline,
)
from egmf_core.outcome import RunOutcome
from tests import fakes
from tests.conftest import isolate_harness

SEEDS = (1111, 1112, 1113)
# Per-seed test values of a small fake main_msa table (MOSEI only): mean, then spread by seed.
FAKE_VALUES = {"mae": [0.70, 0.72, 0.74], "acc2_non0": [0.80, 0.81, 0.82], "corr": [0.60, 0.60, 0.60]}


def tidy(values: dict[str, list[float]], *, table="main_msa", row="EGMF", dataset="mosei", split="test",
         status="ok") -> pd.DataFrame:
    """Tidy result rows: one per (metric, seed) with the given values."""
    return pd.DataFrame([
        {"table": table, "row": row, "dataset": dataset, "seed": s, "profile": "smoke", "split": split,
         "metric": m, "value": v, "status": status}
        for m, vs in values.items() for s, v in zip(SEEDS, vs)
    ])


def shifted(values: dict[str, list[float]], metric: str, by: float) -> dict[str, list[float]]:
    return {m: [v + by for v in vs] if m == metric else list(vs) for m, vs in values.items()}


# ---- the tolerance rule ------------------------------------------------------------------------------

def test_tolerance_is_k_standard_errors_of_a_difference_of_means_with_a_floor_per_scale():
    assert tolerance_for("acc", 0.02, 3) == pytest.approx(3 * 0.02 * math.sqrt(2 / 3))  # 0.0490
    assert tolerance_for("acc", 0.002, 3) == 0.01  # floor: 1 point for fractions
    assert tolerance_for("mae", 0.001, 5) == 0.02  # floor: 0.02 for raw metrics
    assert tolerance_for("mae", 0.05, 2, k=2) == pytest.approx(2 * 0.05 * 1.0)
    assert tolerance_for("wf1", float("nan"), 1) == 0.01  # one seed: std unknown, floor only
    assert tolerance_for("invalid_rate", 0.0, 3) == 0.01  # a fraction, although not in METRIC_INFO


def test_make_baseline_holds_mean_std_seeds_and_tolerance_per_cell():
    base = make_baseline(tidy(FAKE_VALUES))
    assert list(base.columns) == list(baselines.BASELINE_COLUMNS)
    mae = base[base["metric"] == "mae"].iloc[0]
    assert mae["mean"] == pytest.approx(0.72) and mae["std"] == pytest.approx(0.02) and mae["n_seeds"] == 3
    assert mae["tolerance"] == pytest.approx(3 * 0.02 * math.sqrt(2 / 3))
    corr = base[base["metric"] == "corr"].iloc[0]
    assert corr["std"] == 0.0 and corr["tolerance"] == 0.02


def test_failed_runs_do_not_count_as_seeds():
    df = tidy(FAKE_VALUES)
    df.loc[df["seed"] == 1113, ["status", "value"]] = ["failed", float("nan")]
    assert set(make_baseline(df)["n_seeds"]) == {2}


# ---- verdicts ---------------------------------------------------------------------------------------

def verdicts(new_values, base_values=FAKE_VALUES) -> dict[str, str]:
    cmp = compare(tidy(new_values), make_baseline(tidy(base_values)))
    return dict(zip(cmp["metric"], cmp["verdict"]))


def test_identical_results_are_all_ok():
    assert set(verdicts(FAKE_VALUES).values()) == {"ok"}


def test_mae_going_up_beyond_tolerance_is_a_regression_and_going_down_an_improvement():
    assert verdicts(shifted(FAKE_VALUES, "mae", +0.06))["mae"] == "regressed"  # tol 0.049
    assert verdicts(shifted(FAKE_VALUES, "mae", -0.06))["mae"] == "improved"
    assert verdicts(shifted(FAKE_VALUES, "mae", +0.04))["mae"] == "ok"


def test_accuracy_going_down_beyond_tolerance_is_a_regression():
    assert verdicts(shifted(FAKE_VALUES, "acc2_non0", -0.03))["acc2_non0"] == "regressed"  # tol 0.0245
    assert verdicts(shifted(FAKE_VALUES, "acc2_non0", +0.03))["acc2_non0"] == "improved"
    assert verdicts(shifted(FAKE_VALUES, "acc2_non0", -0.02))["acc2_non0"] == "ok"


def test_delta_is_new_minus_baseline_in_stored_units():
    cmp = compare(tidy(shifted(FAKE_VALUES, "mae", +0.06)), make_baseline(tidy(FAKE_VALUES)))
    mae = cmp[cmp["metric"] == "mae"].iloc[0]
    assert mae["delta"] == pytest.approx(0.06) and mae["base_mean"] == pytest.approx(0.72)
    assert cmp.iloc[0]["verdict"] == "regressed"  # failing cells sort first


def test_a_metric_missing_from_the_results_fails_and_an_extra_one_is_new():
    new = {"mae": FAKE_VALUES["mae"], "acc2_non0": FAKE_VALUES["acc2_non0"], "acc7": [0.4, 0.4, 0.4]}
    v = verdicts(new)
    assert v["corr"] == "missing" and v["acc7"] == "new" and v["mae"] == "ok"
    cmp = compare(tidy(new), make_baseline(tidy(FAKE_VALUES)))
    assert baselines.failed(cmp)


def test_fewer_seeds_than_the_baseline_is_missing():
    df = tidy(FAKE_VALUES)
    df = df[~((df["seed"] == 1113) & (df["metric"] == "mae"))]
    cmp = compare(df, make_baseline(tidy(FAKE_VALUES)))
    assert dict(zip(cmp["metric"], cmp["verdict"]))["mae"] == "missing"


def test_a_metric_of_unknown_direction_that_moves_is_changed_and_fails():
    base = make_baseline(tidy({"mystery": [1.0, 1.0, 1.0]}))
    cmp = compare(tidy({"mystery": [1.5, 1.5, 1.5]}), base)
    assert list(cmp["verdict"]) == ["changed"] and baselines.failed(cmp)


def test_a_blank_tolerance_in_the_baseline_falls_back_to_the_rule():
    base = make_baseline(tidy(FAKE_VALUES)).assign(tolerance=float("nan"))
    cmp = compare(tidy(shifted(FAKE_VALUES, "mae", +0.06)), base, k=3.0)
    assert cmp.iloc[0]["tolerance"] == pytest.approx(0.049, abs=1e-3)


# ---- baseline files ---------------------------------------------------------------------------------

def test_baseline_round_trips_byte_for_byte(tmp_path):
    path = write_baseline(make_baseline(tidy(FAKE_VALUES)), tmp_path / "b.csv")
    first = path.read_bytes()
    write_baseline(read_baseline(path), path)
    assert path.read_bytes() == first
    assert first.decode().splitlines()[0] == "table,row,dataset,split,metric,mean,std,n_seeds,numerics_std,numerics_n,tolerance"


def test_malformed_baselines_are_named_in_one_line(tmp_path):
    path = tmp_path / "b.csv"
    with pytest.raises(BaselineError, match="not found"):
        read_baseline(path)
    path.write_text("table,row,dataset,split,metric,mean,std,n_seeds\nt,r,mosei,test,mae,0.7,0.1,3\n")
    with pytest.raises(BaselineError, match=r"b\.csv: missing column 'tolerance'"):
        read_baseline(path)
    path.write_text("table,row,dataset,split,metric,mean,std,n_seeds,tolerance\nt,r,mosei,test,mae,x,0.1,3,0.1\n")
    with pytest.raises(BaselineError, match=r"line 2: field 'mean'"):
        read_baseline(path)
    path.write_text("table,row,dataset,split,metric,mean,std,n_seeds,tolerance\n"
                    "t,r,mosei,test,mae,0.7,0.1,3,0.1\nt,r,mosei,test,mae,0.7,0.1,3,0.1\n")
    with pytest.raises(BaselineError, match="appears twice"):
        read_baseline(path)


def test_markdown_starts_with_the_verdict_and_names_the_regressed_cell():
    cmp = compare(tidy(shifted(FAKE_VALUES, "mae", +0.06)), make_baseline(tidy(FAKE_VALUES)))
    md = baselines.render_markdown(cmp, "smoke", baseline_file="results/baselines/smoke.csv")
    first = md.splitlines()[0]
    assert first.startswith("**Nightly regression check (smoke): FAILED**") and "1 regressed" in first
    line = next(ln for ln in md.splitlines() if "**regressed**" in ln)
    assert "main_msa / EGMF / mosei / test" in line and "MAE ↓" in line
    assert "+0.060 (worse)" in line and "0.049" in line and "0.720 ± 0.020 (n=3)" in line


# ---- the command line, on stored results (no training) -------------------------------------------------

def write_results(root, df: pd.DataFrame, table="main_msa"):
    path = root / "smoke" / f"{table}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def cli(tmp_path, *extra):
    return nightly.main(["--tables", "main_msa", "--skip-reproduce", "--results-root", str(tmp_path / "results"),
                         "--reports-root", str(tmp_path / "reports"), *extra])


def test_update_then_check_passes_then_a_perturbed_metric_fails_with_a_readable_report(tmp_path, capsys,
                                                                                       monkeypatch):
    results = tmp_path / "results"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_results(results, tidy(FAKE_VALUES))
    assert cli(tmp_path, "--update-baseline") == 0
    assert (results / "baselines" / "smoke.csv").is_file()
    assert "baseline updated: 3 cells" in capsys.readouterr().out

    assert cli(tmp_path) == 0
    report = tmp_path / "reports" / "smoke" / "regression.md"
    assert report.read_text().startswith("**Nightly regression check (smoke): PASSED**")

    write_results(results, tidy(shifted(FAKE_VALUES, "mae", +0.03)))  # within 0.049
    assert cli(tmp_path) == 0

    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_results(results, tidy(shifted(FAKE_VALUES, "mae", +0.06)))  # beyond 0.049
    assert cli(tmp_path) == 1
    out = capsys.readouterr().out
    assert "regressed: main_msa / EGMF / mosei / test mae: +0.060 (worse)" in out
    text = report.read_text()
    assert "FAILED" in text.splitlines()[0] and "main_msa / EGMF / mosei / test | MAE ↓" in text
    assert summary.read_text() == text.rstrip("\n") + "\n\n"  # the job summary gets the same markdown


def test_a_failed_run_in_the_results_fails_the_check(tmp_path):
    write_results(tmp_path / "results", tidy(FAKE_VALUES))
    assert cli(tmp_path, "--update-baseline") == 0
    df = tidy(FAKE_VALUES)
    df.loc[df["seed"] == 1112, ["status", "value"]] = ["failed", float("nan")]
    write_results(tmp_path / "results", df)
    assert cli(tmp_path) == 1
    assert "**missing**" in (tmp_path / "reports" / "smoke" / "regression.md").read_text()


def test_update_baseline_refuses_failed_or_absent_results_and_keeps_the_old_file(tmp_path, capsys):
    assert cli(tmp_path, "--update-baseline") == 2  # no results at all
    assert "refusing to update the baseline: no test results for table 'main_msa'" in capsys.readouterr().err
    write_results(tmp_path / "results", tidy(FAKE_VALUES))
    assert cli(tmp_path, "--update-baseline") == 0
    before = (tmp_path / "results" / "baselines" / "smoke.csv").read_bytes()
    df = tidy(FAKE_VALUES)
    df.loc[0, ["status", "value"]] = ["failed", float("nan")]
    write_results(tmp_path / "results", df)
    assert cli(tmp_path, "--update-baseline") == 2
    assert "failed or empty result" in capsys.readouterr().err
    assert (tmp_path / "results" / "baselines" / "smoke.csv").read_bytes() == before


def test_update_keeps_the_rows_of_tables_not_selected(tmp_path):
    results = tmp_path / "results"
    write_results(results, tidy(FAKE_VALUES))
    write_results(results, tidy({"wf1": [0.5, 0.6, 0.7]}, table="main_erc", dataset="meld"), table="main_erc")
    assert nightly.main(["--tables", "main_erc,main_msa", "--skip-reproduce", "--update-baseline",
                         "--results-root", str(results)]) == 0
    write_results(results, tidy(shifted(FAKE_VALUES, "mae", 0.01)))
    assert cli(tmp_path, "--update-baseline") == 0
    base = read_baseline(results / "baselines" / "smoke.csv")
    assert set(base["table"]) == {"main_erc", "main_msa"}
    assert base[base["metric"] == "mae"]["mean"].iloc[0] == pytest.approx(0.73)


@pytest.mark.parametrize("args, message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--tables", "no_such_table"], "unknown table 'no_such_table'"),
    (["--tables", "datasets"], "trains nothing"),
    (["--tolerance-k", "0"], "--tolerance-k must be positive"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    code = nightly.main(["--skip-reproduce", "--results-root", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_selected_table_without_baseline_rows_is_bad_input(tmp_path, capsys):
    write_results(tmp_path / "results", tidy(FAKE_VALUES))
    assert cli(tmp_path, "--update-baseline") == 0
    code = nightly.main(["--tables", "main_erc", "--skip-reproduce", "--results-root", str(tmp_path / "results")])
    assert code == 2 and "no rows for table 'main_erc'" in capsys.readouterr().err


# ---- the spread across numerical settings ---------------------------------------------------------------

class OtherSettings:
    """Stands in for nightly.train_under_setting: each setting's results are FAKE_VALUES moved by
    a fixed offset (what another kernel path does to a cell's seed mean), written to its root."""

    def __init__(self, offsets: dict[str, float]):
        self.offsets, self.calls = offsets, []

    def __call__(self, profile, table, setting, root, *, data_root, model_root, grid=None):
        self.calls.append((setting, root.name))
        write_results(root, tidy(shifted(FAKE_VALUES, "mae", self.offsets[setting])))


def test_a_baseline_written_under_several_settings_records_their_spread(tmp_path):
    results = tmp_path / "results"
    write_results(results, tidy(FAKE_VALUES))
    fake = OtherSettings({"native": 0.04, "aten-default": -0.02})
    res = fakes.run_nightly("smoke", ["main_msa"], results_root=results, reproduce=False, update_baseline=True,
                              settings=["pinned", "native", "aten-default"], spread_root=tmp_path / "spread",
                              train_variant=fake)
    assert res.exit_code == 0 and fake.calls == [("native", "native"), ("aten-default", "aten-default")]
    base = read_baseline(results / "baselines" / "smoke.csv").set_index("metric")
    spread = pd.Series([0.72, 0.76, 0.70]).std()  # the cell means under pinned, native, aten-default
    assert base.loc["mae", "numerics_std"] == pytest.approx(spread) and base.loc["mae", "numerics_n"] == 3
    assert base.loc["mae", "tolerance"] == pytest.approx(3 * math.sqrt(2 * 0.02**2 / 3 + 2 * spread**2))
    assert base.loc["acc2_non0", "numerics_std"] == 0.0  # the settings agreed on this metric
    assert base.loc["acc2_non0", "tolerance"] == pytest.approx(tolerance_for("acc2_non0", 0.01, 3))


def test_results_made_under_another_kernel_setting_pass_and_a_planted_regression_still_fails(tmp_path):
    results = tmp_path / "results"
    write_results(results, tidy(FAKE_VALUES))
    fakes.run_nightly("smoke", ["main_msa"], results_root=results, reproduce=False, update_baseline=True,
                        settings=["native"], spread_root=tmp_path / "spread", train_variant=OtherSettings({"native": 0.04}))
    other_setting = shifted(FAKE_VALUES, "mae", +0.06)  # beyond the seed-only tolerance (0.049), within the spread
    write_results(results, tidy(other_setting))
    assert cli(tmp_path) == 0

    seeds_only = make_baseline(tidy(FAKE_VALUES))  # the same check without the recorded spread fails
    assert set(compare(tidy(other_setting), seeds_only)["verdict"]) == {"ok", "regressed"}

    write_results(results, tidy(shifted(FAKE_VALUES, "mae", +0.15)))  # beyond 3 * sqrt(2s^2/n + 2*0.028^2) = 0.13
    assert cli(tmp_path) == 1


def test_a_baseline_without_spread_columns_reads_as_one_setting(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("table,row,dataset,split,metric,mean,std,n_seeds,tolerance\nt,r,mosei,test,mae,0.7,0.1,3,0.2\n")
    base = read_baseline(path)
    assert base.loc[0, "numerics_std"] == 0.0 and base.loc[0, "numerics_n"] == 1 and base.loc[0, "tolerance"] == 0.2


@pytest.mark.parametrize("args, message", [
    (["--settings", "native"], "--settings and --repeats go with --update-baseline"),
    (["--update-baseline", "--settings", "turbo"], "--settings: unknown setting 'turbo'"),
    (["--update-baseline", "--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_spread_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    code = nightly.main(["--skip-reproduce", "--results-root", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_gpu_repeats_train_the_tables_again_under_the_same_setting(tmp_path):
    results = tmp_path / "results"
    write_results(results, tidy(FAKE_VALUES))
    fake = OtherSettings({"pinned": 0.01})
    fakes.run_nightly("smoke", ["main_msa"], results_root=results, reproduce=False, update_baseline=True,
                        repeats=3, spread_root=tmp_path / "spread", train_variant=fake)
    assert fake.calls == [("pinned", "repeat-2"), ("pinned", "repeat-3")]
    base = read_baseline(results / "baselines" / "smoke.csv").set_index("metric")
    assert base.loc["mae", "numerics_n"] == 3 and base.loc["mae", "numerics_std"] > 0


def test_a_setting_is_trained_by_the_cli_in_a_fresh_process_without_the_pins(tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, cwd: calls.append((cmd, env)) or SimpleNamespace(returncode=0))
    nightly.train_under_setting("smoke", "main_msa", "aten-default", tmp_path / "r", data_root=None, model_root=None)
    (cmd, env), = calls
    assert cmd[1:5] == ["-m", "benchmarks", "reproduce", "main_msa"] and "--no-report" in cmd and "--jobs" in cmd
    assert cmd[cmd.index("--results-root") + 1] == str((tmp_path / "r").resolve())
    assert env["EGMF_NUMERICS"] == "native" and env["ATEN_CPU_CAPABILITY"] == "default" and "MKL_CBWR" not in env
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, cwd: SimpleNamespace(returncode=1))
    with pytest.raises(nightly.NightlyInputError, match="training 'main_msa' under setting 'aten-default'"):
        nightly.train_under_setting("smoke", "main_msa", "aten-default", tmp_path / "r", data_root=None,
                                    model_root=None)


def test_the_paper_spread_trains_the_nightly_grid_not_the_full_tables(tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, cwd: calls.append(cmd) or SimpleNamespace(returncode=0))
    grid = nightly.NightlyGrid(["main_msa"], [1111, 1112], {"train.max_steps": 4000, "model.modalities": ["text"]})
    nightly.train_under_setting("paper", "main_msa", "pinned", tmp_path / "r", data_root="d", model_root="m", grid=grid)
    (cmd,) = calls
    assert "--seeds=1111,1112" in cmd and "--set=train.max_steps=4000" in cmd
    assert '--set=model.modalities=["text"]' in cmd
    from benchmarks.execution.grid import parse_sets

    assert parse_sets([a[len("--set="):] for a in cmd if a.startswith("--set=")]) == grid.overrides  # read back alike


# ---- through the runner (fake runs, no training) ------------------------------------------------------

class FakeRun:
    """Stands in for run_experiment: fixed metrics per dataset and seed, plus a shift to perturb them."""

    def __init__(self, shift: float = 0.0, fail: bool = False):
        self.shift, self.fail, self.calls = shift, fail, 0

    def __call__(self, cfg, *, progress=None, checkpoint_dir=None):
        self.calls += 1
        if self.fail:
            return RunOutcome(status="failed", error="non-finite loss (nan) at step 3")
        i = cfg.seed - 1111
        metrics = {"mae": 0.70 + 0.02 * i + self.shift, "corr": 0.6 + 0.01 * i, "wf1": 0.5 + 0.05 * i}
        return RunOutcome(status="ok", metrics={"valid": metrics, "test": metrics},
                          invalid_rate={"valid": 0.0, "test": 0.0}, device="cpu")


@pytest.fixture
def fake_smoke_data(tmp_path, monkeypatch):
    isolate_harness(tmp_path, monkeypatch)


def go(tmp_path, **kwargs):
    return fakes.run_nightly("smoke", ["main_msa"], results_root=tmp_path / "results",
                               reports_root=tmp_path / "reports", render=False, **kwargs)


def test_nightly_reproduces_through_the_runner_and_catches_a_shift(tmp_path, fake_smoke_data):
    assert go(tmp_path, update_baseline=True, run_fn=FakeRun()).exit_code == 0
    same = FakeRun()
    assert go(tmp_path, run_fn=same).exit_code == 0 and same.calls == 0  # cached runs are not retrained
    worse = FakeRun(shift=0.06)
    res = go(tmp_path, run_fn=worse, force=True)
    assert worse.calls == 10 and res.exit_code == 1  # 2 datasets x 5 seeds, retrained
    bad = res.comparison[res.comparison["verdict"] == "regressed"]
    assert list(bad["metric"]) == ["mae", "mae"] and set(bad["dataset"]) == {"mosei", "sims_v2"}


def test_failed_runs_fail_the_nightly_and_block_a_baseline_update(tmp_path, fake_smoke_data):
    assert go(tmp_path, update_baseline=True, run_fn=FakeRun()).exit_code == 0
    res = go(tmp_path, run_fn=FakeRun(fail=True), force=True)
    assert res.exit_code == 1 and set(res.comparison["verdict"]) == {"missing"}
    with pytest.raises(ValueError, match="refusing to update the baseline: 10 run"):
        go(tmp_path, update_baseline=True, run_fn=FakeRun(fail=True), force=True)
