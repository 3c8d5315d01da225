"""The results store: atomic, checksummed run files; tidy rows; deterministic CSVs; merging."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from benchmarks.execution.grid import GridArgs, expand
from benchmarks.execution.tables import load_table
from benchmarks.results import store
from benchmarks.results.schema import RESULT_COLUMNS
from egmf_core.outcome import RunOutcome


def _outcome(value: float = 0.5, status: str = "ok") -> RunOutcome:
    if status != "ok":
        return RunOutcome(status="failed", error="NaN loss\nat step 37", steps=37)
    return RunOutcome(
        status="ok",
        metrics={"valid": {"wf1": value, "acc": value + 0.1, "macro_f1": float("nan")},
                 "test": {"wf1": value - 0.1, "acc": value, "macro_f1": 0.25}},
        invalid_rate={"valid": 0.0, "test": 0.125},
        gating={"test": {"alpha_mean": [0.5, 0.3, 0.2]}},
        cost={"wall_s": 12.5, "trainable_params": 1000.0, "total_params": 5000.0},
        steps=150, best_step=100, device="cpu", data_source="synthetic meld",
    )


def _record(cell, outcome: RunOutcome, timestamp: str = "2026-01-01T00:00:00.000000+00:00") -> dict:
    prov = {"git_rev": "abc", "versions": {"torch": "2.13.0"}, "timestamp": timestamp, "model_source": "random",
            "trust_remote_code": False, "device": "cpu", "host": "h"}
    return store.make_record(cell.run_id, cell.identity(), outcome.to_dict(), prov)


@pytest.fixture
def cells():
    return expand(load_table("main_erc"), "smoke", GridArgs(rows=["EGMF"], seeds=[1111, 1112]))  # EGMF: 2 x 2 cells


def test_run_file_round_trips_with_its_checksum(tmp_path, cells):
    rec = _record(cells[0], _outcome())
    path = store.write_run(tmp_path, "smoke", rec)
    assert path == tmp_path / "smoke" / "runs" / f"{cells[0].run_id}.json"
    back = store.read_run(path)
    assert back == json.loads(path.read_text()) and back["checksum"] == rec["checksum"]
    assert math.isnan(back["outcome"]["metrics"]["valid"]["macro_f1"])  # NaN survives
    assert set(back) == {"run_id", "config", "outcome", "provenance", "checksum", "part_checksums"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_writing_the_same_run_twice_is_idempotent(tmp_path, cells):
    rec = _record(cells[0], _outcome())
    first = store.write_run(tmp_path, "smoke", rec).read_bytes()
    assert store.write_run(tmp_path, "smoke", rec).read_bytes() == first


def test_truncated_file_is_named_with_the_json_error_line(tmp_path, cells):
    path = store.write_run(tmp_path, "smoke", _record(cells[0], _outcome()))
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(store.CorruptResult, match=rf"{path.name}: not valid JSON \(line \d+: "):
        store.read_run(path)


def test_edited_value_fails_the_checksum(tmp_path, cells):
    path = store.write_run(tmp_path, "smoke", _record(cells[0], _outcome()))
    path.write_text(path.read_text().replace('"wf1": 0.5', '"wf1": 0.9'))
    with pytest.raises(store.CorruptResult, match="checksum mismatch"):
        store.read_run(path)


def test_a_run_file_under_another_name_is_rejected(tmp_path, cells):
    path = store.write_run(tmp_path, "smoke", _record(cells[0], _outcome()))
    moved = path.with_name(f"{cells[1].run_id}.json")
    path.rename(moved)
    with pytest.raises(store.CorruptResult, match="does not match the file name"):
        store.read_run(moved)


def test_load_runs_reports_corrupt_files_and_keeps_the_rest(tmp_path, cells):
    good = store.write_run(tmp_path, "smoke", _record(cells[0], _outcome()))
    bad = store.write_run(tmp_path, "smoke", _record(cells[1], _outcome()))
    bad.write_text("{")
    seen = []
    runs = store.load_runs(good.parent, on_corrupt=seen.append)
    assert list(runs) == [cells[0].run_id]
    assert len(seen) == 1 and seen[0].path == bad


def test_tidy_rows_one_row_per_cell_split_metric(cells):
    spec = load_table("main_erc")
    runs = {cells[0].run_id: _record(cells[0], _outcome()),
            cells[1].run_id: _record(cells[1], _outcome(status="failed"))}
    df = store.tidy_rows(spec, cells, runs)
    assert tuple(df.columns) == RESULT_COLUMNS
    ok = df[df["run_id"] == cells[0].run_id]
    assert len(ok) == 2 * 4  # (acc, macro_f1, wf1, invalid_rate) x (valid, test)
    test_rows = ok[ok["split"] == "test"].set_index("metric")["value"]
    assert test_rows["wf1"] == pytest.approx(0.4) and test_rows["invalid_rate"] == 0.125
    assert set(ok["status"]) == {"ok"} and set(ok["error"]) == {""}
    gating = ok.groupby("split")["gating_json"].first()
    assert (gating["test"], gating["valid"]) == ('{"alpha_mean":[0.5,0.3,0.2]}', "{}")
    failed = df[df["run_id"] == cells[1].run_id]
    assert len(failed) == 2 * (3 + 1)  # the table's meld metrics + invalid_rate, per split
    assert failed["value"].isna().all() and set(failed["status"]) == {"failed"}
    assert set(failed["error"]) == {"NaN loss at step 37"}  # one line
    assert len(df) == 16  # cells without a run file give no rows


def test_csv_is_byte_identical_whatever_the_order_of_cells(tmp_path, cells):
    spec = load_table("main_erc")
    runs = {c.run_id: _record(c, _outcome(0.1 * (i + 1))) for i, c in enumerate(cells)}
    a = store.write_table_csv(store.tidy_rows(spec, cells, runs), tmp_path / "a.csv").read_bytes()
    b = store.write_table_csv(store.tidy_rows(spec, list(reversed(cells)), runs), tmp_path / "b.csv").read_bytes()
    assert a == b
    df = pd.read_csv(tmp_path / "a.csv")
    assert tuple(df.columns) == RESULT_COLUMNS
    assert list(df["row"].unique()) == ["EGMF"] and list(df["dataset"].unique()) == ["meld", "cherma"]
    assert "0.30000000000000004" in a.decode()  # repr precision: 0.1 * 3 is not rounded away


def test_merge_keeps_the_newer_record_and_logs_the_conflict(tmp_path, cells):
    dest, src = tmp_path / "results", tmp_path / "shard"
    store.write_run(dest, "smoke", _record(cells[0], _outcome(0.5), "2026-01-01T00:00:00.000000+00:00"))
    store.write_run(src, "smoke", _record(cells[0], _outcome(0.7), "2026-02-01T00:00:00.000000+00:00"))
    store.write_run(src, "smoke", _record(cells[1], _outcome(0.6)))
    lines = []
    stats = store.merge_run_files([src], "smoke", dest, log=lines.append)
    assert (stats.copied, stats.identical, len(stats.conflicts)) == (2, 0, 1)
    assert lines and cells[0].run_id in lines[0]
    kept = store.read_run(store.run_path(dest, "smoke", cells[0].run_id))
    assert kept["outcome"]["metrics"]["valid"]["wf1"] == 0.7
    again = store.merge_run_files([src], "smoke", dest)
    assert (again.copied, again.identical, again.conflicts) == (0, 2, [])


def test_the_git_revision_is_dirty_for_code_changes_but_not_for_results(tmp_path):
    import subprocess

    from benchmarks.execution.provenance import git_revision

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for path in ("egmf_core/model.py", "results/smoke/main_msa.csv", "reports/smoke/main_msa.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    rev = git_revision(tmp_path)
    assert len(rev) == 40
    (tmp_path / "results/smoke/main_msa.csv").write_text("v2\n")  # what a grid writes
    (tmp_path / "reports/smoke/main_msa.md").unlink()
    assert git_revision(tmp_path) == rev
    (tmp_path / "egmf_core/model.py").write_text("v2\n")  # what a grid runs
    assert git_revision(tmp_path) == rev + "-dirty"


def test_a_process_credits_its_runs_to_the_revision_it_started_with(monkeypatch):
    from benchmarks.execution import provenance

    provenance.process_git_revision.cache_clear()
    revisions = iter(["aaa", "bbb"])
    monkeypatch.setattr(provenance, "git_revision", lambda repo=provenance.REPO_ROOT: next(revisions))
    assert provenance.process_git_revision() == "aaa"
    assert provenance.process_git_revision() == "aaa"  # a commit made meanwhile does not move it
    provenance.process_git_revision.cache_clear()


def test_tidy_rows_carry_history_sampling_ci_and_eval_mode(cells):
    spec = load_table("main_erc")
    out = _outcome()
    out.valid_history = [{"step": 50, "loss": 1.5, "wf1": 0.4, "invalid_rate": 0.0}]
    out.sampling_ci = {"test": {"wf1": [0.3, 0.5]}}
    out.eval_modes = {"valid": "generate", "test": "generate"}
    df = store.tidy_rows(spec, cells, {cells[0].run_id: _record(cells[0], out)})
    test = df[df["split"] == "test"].iloc[0]
    assert json.loads(test["valid_history_json"])[0]["step"] == 50
    assert json.loads(test["sampling_ci_json"]) == {"wf1": [0.3, 0.5]}
    assert set(df["eval_mode"]) == {"generate"}
    old = store.tidy_rows(spec, cells, {cells[0].run_id: _record(cells[0], _outcome())})  # an older run file
    assert set(old["valid_history_json"]) == {"[]"} and set(old["eval_mode"]) == {""}
