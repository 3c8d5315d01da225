"""The runner: caching, resuming after corruption, failures, sharding + merge, statistics, reports."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pandas as pd
import pytest

import benchmarks.reporting
from benchmarks import recipes
from benchmarks.execution import profiles, runner
from benchmarks.execution.dataset_stats import dataset_statistics, split_statistics
from benchmarks.execution.grid import GridArgs, GridError, expand
from benchmarks.execution.tables import load_table
from benchmarks.results import store
from egmf_core.config import ConfigError, config_hash
from egmf_core.data.dataset import SPECS
from egmf_core.outcome import RunOutcome
from tests import fakes
from tests.conftest import isolate_harness


def fake_metric(cfg, split: str, k: int) -> float:
    """A deterministic number in [0, 1) from the config hash, the seed and the split."""
    h = int(config_hash(cfg), 16) + cfg.seed + (7 if split == "test" else 0)
    return ((h >> k) % 1000) / 1000


class FakeRun:
    """Stands in for egmf_core.run.run_experiment: instant, deterministic, counts its calls."""

    def __init__(self, fail_on: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, cfg, *, progress=None, checkpoint_dir=None):
        self.calls.append(f"{cfg.data.name}/{cfg.seed}")
        assert not cfg.data.root.startswith("<"), "the runner must resolve location markers"
        if progress is not None:
            progress(3, 3, "done")
        if cfg.data.name in self.fail_on:
            raise RuntimeError("CUDA error: device-side assert\ntriggered")
        return RunOutcome(
            status="ok",
            metrics={s: {"wf1": fake_metric(cfg, s, 0), "acc": fake_metric(cfg, s, 3), "mae": fake_metric(cfg, s, 5)}
                     for s in ("valid", "test")},
            invalid_rate={"valid": 0.0, "test": 0.25},
            cost={"wall_s": 1.0}, steps=150, best_step=100, device="cpu", data_source=str(cfg.data.root),
        )


@pytest.fixture(autouse=True)
def smoke_repo(tmp_path, monkeypatch):
    """Synthetic data under a temporary "<repo>", written by a fake (no egmf_core.data.synth)."""
    isolate_harness(tmp_path, monkeypatch)


# The runner's machinery is exercised on main_msa / main_erc's EGMF row only (2 datasets x 5 seeds):
# the baseline rows (issue 20) add nothing to it, and their counts are the grid tests' business.
EGMF_ONLY = ("main_msa", "main_erc", "2", "3")


def _go(tmp_path, table="main_msa", results="results", **kwargs):
    kwargs.setdefault("run_fn", FakeRun())
    if table in EGMF_ONLY:
        kwargs.setdefault("rows", ["EGMF"])
    return fakes.reproduce(table, "smoke", results_root=tmp_path / results, reports_root=tmp_path / "reports",
                            render=False, **kwargs)


def test_second_reproduce_trains_nothing_and_rewrites_an_identical_csv(tmp_path):
    fake = FakeRun()
    first = _go(tmp_path, run_fn=fake)
    assert (first.runs, first.trained, first.cached, first.failed) == (10, 10, 0, 0)
    assert sorted(fake.calls) == [f"{d}/{s}" for d in ("mosei", "sims_v2") for s in range(1111, 1116)]
    csv = first.csv.read_bytes()
    df = pd.read_csv(first.csv)
    assert len(df) == 10 * 2 * 4  # cells x splits x (3 metrics + invalid_rate)
    again = FakeRun()
    second = _go(tmp_path, run_fn=again)
    assert (second.trained, second.cached) == (0, 10) and again.calls == []
    assert second.csv.read_bytes() == csv


def test_force_retrains_every_run(tmp_path):
    _go(tmp_path)
    forced = _go(tmp_path, force=True)
    assert (forced.trained, forced.cached) == (10, 0)


def test_the_full_model_is_trained_once_for_every_table_that_shows_it(tmp_path):
    _go(tmp_path, "main_erc")
    fake = FakeRun()
    s = _go(tmp_path, "modality_ablation", rows=["T+A+V", "-T"], datasets=["meld", "cherma"], seeds=[1111, 1112, 1113],
            run_fn=fake)
    assert (s.runs, s.trained, s.cached) == (12, 6, 6)  # main_erc's full model, seeds 1111-1113, is reused
    df = pd.read_csv(s.csv)
    assert sorted(df["row"].unique()) == ["-T", "T+A+V"]


def test_a_corrupt_run_file_is_reported_in_one_line_and_redone(tmp_path):
    first = _go(tmp_path)
    before = pd.read_csv(first.csv)
    victim = sorted((tmp_path / "results" / "smoke" / "runs").glob("*.json"))[2]
    victim.write_text(victim.read_text()[:50])
    fake = FakeRun()
    s = _go(tmp_path, run_fn=fake)
    assert (s.trained, s.cached, len(fake.calls)) == (1, 9, 1)
    assert len(s.corrupt) == 1 and victim.name in s.corrupt[0] and "line" in s.corrupt[0]
    assert store.read_run(victim)["run_id"] == victim.stem  # rewritten whole
    after = pd.read_csv(s.csv)  # the same numbers: only the redone run's timestamp moved
    pd.testing.assert_frame_equal(before.drop(columns=["timestamp"]), after.drop(columns=["timestamp"]))


def test_a_crashing_run_is_recorded_as_failed_and_retried_next_time(tmp_path):
    s = _go(tmp_path, run_fn=FakeRun(fail_on={"sims_v2"}))
    assert (s.trained, s.failed) == (10, 5)
    assert s.failures[0].endswith("failed: RuntimeError: CUDA error: device-side assert triggered")
    df = pd.read_csv(s.csv)
    failed = df[df["status"] == "failed"]
    assert set(failed["dataset"]) == {"sims_v2"} and failed["value"].isna().all()
    assert len(failed) == 5 * 2 * (6 + 1)  # seeds x splits x (main_msa's sims_v2 metrics + invalid_rate)
    retry = FakeRun()
    again = _go(tmp_path, run_fn=retry)
    assert (again.trained, again.cached, again.failed) == (5, 5, 0)
    assert sorted(retry.calls) == [f"sims_v2/{s}" for s in range(1111, 1116)]


def test_bad_input_raised_by_a_run_propagates(tmp_path):
    def bad(cfg, *, progress=None, checkpoint_dir=None):
        raise ConfigError("config field data.root: /x/mosei has no unaligned_50.pkl")

    with pytest.raises(ConfigError, match="unaligned_50.pkl"):
        _go(tmp_path, run_fn=bad)


def test_shards_merged_equal_the_unsharded_results_row_for_row(tmp_path):
    table = "lora"
    kwargs = dict(datasets=["meld", "mosei"], seeds=[1111, 1112])
    whole = _go(tmp_path, table, results="whole", **kwargs)
    parts = [_go(tmp_path, table, results=f"shard{i}", shard=(i, 3), **kwargs) for i in range(3)]
    assert sum(p.trained for p in parts) == whole.trained == 24
    ids = [{p.name for p in (tmp_path / f"shard{i}" / "smoke" / "runs").glob("*.json")} for i in range(3)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    merged = recipes.merge([tmp_path / f"shard{i}" for i in range(3)], "smoke", tmp_path / "merged")
    assert merged.stats.copied == 24 and merged.tables
    a = pd.read_csv(whole.csv).drop(columns=["timestamp"])
    b = pd.read_csv(tmp_path / "merged" / "smoke" / "lora.csv").drop(columns=["timestamp"])
    pd.testing.assert_frame_equal(a, b)


def test_summary_line(tmp_path):
    s = _go(tmp_path)
    assert re.fullmatch(r"main_msa \[smoke\]: 10 runs \(10 trained, 0 cached, 0 failed\) in 0m0\ds -> .*main_msa\.csv",
                        s.line())
    sharded = _go(tmp_path, shard=(0, 2))
    assert sharded.line().startswith("main_msa [smoke, shard 0/2]: ")
    assert runner.format_duration(192) == "3m12s" and runner.format_duration(3723) == "1h02m03s"


def test_reports_are_rendered_after_the_grid(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("benchmarks.reporting.report")

    def render_table(profile, table, *, results_root, reports_root):
        calls.append(("table", profile, table, (results_root / profile / f"{table}.csv").is_file()))
        return reports_root / profile / f"{table}.md"

    fake.render_table = render_table
    fake.render_index = lambda profile, *, results_root, reports_root: calls.append(("index", profile))
    monkeypatch.setitem(sys.modules, "benchmarks.reporting.report", fake)
    monkeypatch.setattr(benchmarks.reporting, "report", fake, raising=False)
    s = fakes.reproduce("main_msa", "smoke", results_root=tmp_path / "r", reports_root=tmp_path / "rep",
                         run_fn=FakeRun())
    assert calls == [("table", "smoke", "main_msa", True), ("index", "smoke")]
    assert s.report == tmp_path / "rep" / "smoke" / "main_msa.md" and s.line().endswith("main_msa.md")


def test_statistics_table_is_stored_as_runs_and_cached(tmp_path):
    def stats(cfg, *, progress=None, checkpoint_dir=None):
        n = {"mosei": 30, "sims_v2": 20, "meld": 10, "cherma": 5}[cfg.data.name]
        return RunOutcome(status="ok", metrics={"train": {"n_samples": float(n)}, "all": {"audio_dim": 74.0}})

    s = _go(tmp_path, "datasets", run_fn=stats)
    assert (s.runs, s.trained) == (4, 4)
    df = pd.read_csv(s.csv)
    assert list(df["split"].unique()) == ["train", "all"] and set(df["row"]) == {"statistics"}
    assert df.set_index(["dataset", "metric"])["value"][("meld", "n_samples")] == 10
    assert _go(tmp_path, "datasets", run_fn=stats).cached == 4


def test_split_statistics_by_hand():
    from conftest import make_split

    split = make_split(8, "meld", seed=3)
    out = split_statistics(split, SPECS["meld"])
    assert out["n_samples"] == 8 and out["n_classes"] == 7
    assert sum(v for k, v in out.items() if k.startswith("label_share:")) == pytest.approx(1.0)
    assert out["text_len_mean"] == 5  # "the speaker says <cue> now"
    assert out["audio_len_mean"] == pytest.approx(np.mean(split.audio_lengths))
    reg = split_statistics(make_split(10, "mosei", seed=1), SPECS["mosei"])
    assert -3 <= reg["label_min"] <= reg["label_mean"] <= reg["label_max"] <= 3 and "n_classes" not in reg


def test_dataset_statistics_reads_through_load_dataset(monkeypatch):
    from conftest import make_dataset

    import egmf_core.data

    ds = make_dataset("cherma", n_train=12, n_eval=4)
    seen = []
    monkeypatch.setattr(egmf_core.data, "load_dataset", lambda name, root, **kw: seen.append((name, root)) or ds,
                        raising=False)
    cfg = expand(load_table("datasets"), "smoke", GridArgs(datasets=["cherma"]))[0].config
    out = dataset_statistics(cfg)
    assert seen == [("cherma", profiles.SMOKE_DATA_MARKER)]
    assert out.metrics["train"]["n_samples"] == 12 and out.metrics["test"]["n_samples"] == 4
    assert out.metrics["all"]["n_samples"] == 20 and out.metrics["all"]["language:zh"] == 1.0
    assert out.metrics["all"]["audio_dim"] == 6 and out.metrics["all"]["visual_dim"] == 5


def test_reproduce_all_runs_every_table_that_has_the_datasets_asked_for(tmp_path):
    fake = FakeRun()
    out = fakes.reproduce_all("smoke", datasets=["meld"], seeds=[1111], run_fn=fake,
                               results_root=tmp_path / "r", reports_root=tmp_path / "rep", render=False)
    assert [s.table for s in out] == ["datasets", "main_erc", "modality_ablation", "expert_ablation",
                                      "backbone_swap", "lora", "expert_design", "pseudo_tokens"]
    # 39 cells on MELD (main_erc's 3 rows: EGMF, MSE-Adapter and TFN); the full model appears in 7
    # tables (6 repeats), and GLM4-9B / Llama3-8B with LoRA on appear in both backbone_swap and lora
    # (2 repeats); the two baselines are in main_erc only: 8 cached, 31 trained once each.
    assert [s.runs for s in out] == [1, 3, 7, 9, 3, 6, 5, 5]
    assert sum(s.cached for s in out) == 8
    assert sum(s.trained for s in out) == len(fake.calls) == 31


def test_pending_runs_counts_what_reproduce_would_train(tmp_path):
    kwargs = dict(results_root=tmp_path / "results", rows=["EGMF"])
    assert fakes.pending_runs("main_msa", "smoke", **kwargs) == 10
    _go(tmp_path, seeds=[1111])  # 2 of the 10 runs stored
    assert fakes.pending_runs("main_msa", "smoke", **kwargs) == 8
    assert fakes.pending_runs("main_msa", "smoke", force=True, **kwargs) == 10
    assert fakes.pending_runs("3", "smoke", seeds=[1111], **kwargs) == 0


def test_pending_runs_of_all_tables_counts_a_shared_run_once(tmp_path):
    pending = fakes.pending_runs("all", "smoke", datasets=["sims_v2"], results_root=tmp_path / "results")
    summaries = fakes.reproduce_all("smoke", datasets=["sims_v2"], results_root=tmp_path / "results",
                                     reports_root=tmp_path / "reports", render=False, run_fn=FakeRun())
    assert pending == sum(s.trained for s in summaries) < sum(s.runs for s in summaries)
    with pytest.raises(GridError, match="--rows cannot be combined with 'all'"):
        fakes.pending_runs("all", "smoke", rows=["EGMF"])


def test_redo_before_retrains_older_runs_once(tmp_path):
    from benchmarks.execution.provenance import utc_timestamp

    _go(tmp_path, seeds=[1111])
    t = utc_timestamp()
    first = FakeRun()
    assert fakes.pending_runs("main_msa", "smoke", rows=["EGMF"], seeds=[1111], redo_before=t,
                              results_root=tmp_path / "results") == 2
    s = _go(tmp_path, run_fn=first, seeds=[1111], redo_before=t)
    assert (s.trained, s.cached) == (2, 0)  # stored before t: retrained
    second = FakeRun()
    s = _go(tmp_path, run_fn=second, seeds=[1111], redo_before=t)  # a second worker of the same --force
    assert (s.trained, s.cached, second.calls) == (0, 2, [])


def test_run_files_record_the_data_root_as_its_marker_not_this_machines_path(tmp_path):
    import json

    _go(tmp_path)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "smoke" / "runs").glob("*.json")]
    assert records and {r["provenance"]["data_root"] for r in records} == {"<repo>/.cache/smoke-data/v5"}
    assert not any(str(tmp_path) in json.dumps(r["provenance"]) for r in records)


@pytest.mark.parametrize("age_s, kept", [(3600, False), (-60, True)])
def test_a_redo_drops_an_older_checkpoint_and_resumes_one_written_since(tmp_path, age_s, kept):
    """--force as a redo time (--jobs, Slurm): a requeued task resumes the checkpoint it wrote itself."""
    import os
    import time

    from benchmarks.execution.provenance import utc_timestamp

    t = utc_timestamp()
    grid, _ = fakes.grid_and_options("main_msa", rows=["EGMF"], seeds=[1111], datasets=["mosei"])
    ckpt = store.checkpoint_dir(tmp_path / "results", "smoke", grid.cells()[0].run_id)
    ckpt.mkdir(parents=True)
    (ckpt / "latest.json").write_text("{}")
    os.utime(ckpt / "latest.json", (time.time() - age_s,) * 2)
    seen = []

    def run(cfg, *, progress=None, checkpoint_dir=None):
        seen.append((checkpoint_dir / "latest.json").is_file())
        return fakes.hashed_run(cfg)

    _go(tmp_path, run_fn=run, seeds=[1111], datasets=["mosei"], redo_before=t)
    assert seen == [kept]
