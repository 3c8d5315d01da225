"""Slurm at scale, with a fake submitit: shards balanced by the planner's cost, one submission
across tables, and a timed-out task requeued through its checkpoint that resumes its run."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.execution import launchers, runner
from benchmarks.execution.grid import Grid, GridArgs
from benchmarks.execution.profiles import MODEL_DIRS
from benchmarks.execution.runner import RunOptions
from egmf_core.config import DATASETS
from egmf_core.outcome import RunOutcome
from tests import fakes
from tests.conftest import isolate_harness
from tests.fakes import hashed_run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)


class Delayed:
    """submitit.helpers.DelayedSubmission: a function and the arguments to call it with again."""

    def __init__(self, function, *args, **kwargs):
        self.function, self.args, self.kwargs = function, args, kwargs


class Preempted(BaseException):
    """What Slurm's signal does to a task: it stops wherever it is (not an error of the run)."""


class FakeExecutor:
    """Runs each array task at once; a task that is preempted is checkpointed and run again."""

    submitted: list = []

    def __init__(self, folder):
        self.folder, self.params = folder, {}

    def update_parameters(self, **params):
        self.params = params

    def map_array(self, fn, tasks):
        FakeExecutor.submitted = list(tasks)
        return [FakeJob(fn, task) for task in tasks]


class FakeJob:
    def __init__(self, fn, task):
        self.job_id, self.attempts = f"7_{task['shard'][0]}", 0
        call = Delayed(fn, task)
        while True:
            self.attempts += 1
            try:
                self.value = call.function(*call.args, **call.kwargs)
                break
            except Preempted:
                call = call.function.checkpoint(*call.args, **call.kwargs)  # submitit's requeue

    def result(self):
        return self.value


@pytest.fixture
def fake_submitit(monkeypatch):
    module = types.SimpleNamespace(AutoExecutor=FakeExecutor, helpers=types.SimpleNamespace(DelayedSubmission=Delayed))
    monkeypatch.setitem(sys.modules, "submitit", module)
    return module


def paper_roots(tmp_path: Path) -> dict:
    for name in DATASETS:
        (tmp_path / "data" / name).mkdir(parents=True)
    for folder in MODEL_DIRS.values():
        (tmp_path / "models" / folder).mkdir(parents=True)
    return {"data_root": tmp_path / "data", "model_root": tmp_path / "models"}


def test_eight_shards_of_every_paper_table_are_balanced_by_cost(tmp_path):
    grids = launchers.slurm_grid(Grid("all", "paper", GridArgs(**paper_roots(tmp_path))))
    every = [c for _, cells in grids.values() for c in cells]
    costs = launchers.run_costs(every)
    tasks = launchers.shard_tasks(grids, 8, RunOptions())
    loads = [t["estimate_s"] for t in tasks]
    mean = sum(costs.values()) / 8
    assert len(tasks) == 8 and max(loads) <= 1.15 * mean
    assigned = [rid for t in tasks for rid in {r for _, options in t["tables"] for r in options.only_runs}]
    assert sorted(assigned) == sorted(costs)  # every run in exactly one task, shared runs once
    # the old hash shards, for contrast: their busiest carried well over 1.15x the mean
    by_hash = [sum(c for rid, c in costs.items() if int(rid, 16) % 8 == i) for i in range(8)]
    assert max(by_hash) > max(loads)


def test_one_submission_covers_every_table(tmp_path, fake_submitit, capsys):
    argv = ["reproduce", "all", "--launcher", "slurm", "--shards", "4", "--seeds", "1111", "--no-report",
            "--results-root", str(tmp_path / "results"), "--reports-root", str(tmp_path / "reports")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tasks = FakeExecutor.submitted
    assert len(tasks) == 4 and {t["shard"] for t in tasks} == {(0, 4), (1, 4), (2, 4), (3, 4)}
    tables = {grid.table for t in tasks for grid, _ in t["tables"]}
    assert {"datasets", "main_msa", "modality_ablation", "pseudo_tokens"} <= tables
    runs = list((tmp_path / "results" / "smoke" / "runs").glob("*.json"))
    n = int(out.split("all [smoke]: ")[1].split(" runs")[0])
    assert len(runs) == n and f"({n} trained, " in out and " 0 failed)" in out  # a shared run trained once


def test_a_preempted_task_is_requeued_and_its_run_resumes_from_its_checkpoint(tmp_path, fake_submitit, monkeypatch):
    seen = {"calls": 0, "resumed": []}

    def run(cfg, *, progress=None, checkpoint_dir=None):
        seen["calls"] += 1
        marker = Path(checkpoint_dir) / "step.txt"
        if seen["calls"] == 2:  # the second run of the task: half-way, then Slurm's time is up
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("200")
            raise Preempted()
        if marker.exists():
            seen["resumed"].append(marker.read_text())
        return hashed_run(cfg)

    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: run)
    summary = launchers.launch_slurm(*fakes.grid_and_options("3", rows=["EGMF"], seeds=[1111, 1112], datasets=["sims_v2"],
                                                             results_root=tmp_path / "results",
                                                             reports_root=tmp_path / "reports", render=False), shards=1)
    # the requeued attempt's account: run 1 stored by the first attempt, run 2 trained by this one
    assert (summary.trained, summary.cached, summary.failed) == (1, 1, 0)
    assert seen["calls"] == 3  # run 1, run 2 (preempted), run 2 again: run 1 is not retrained
    assert seen["resumed"] == ["200"]  # the requeued task found the run's checkpoint
    assert len(list((tmp_path / "results" / "smoke" / "runs").glob("*.json"))) == 2


def test_checkpoint_resubmits_the_same_task(fake_submitit):
    task = launchers.ShardTask()
    again = task.checkpoint({"shard": (0, 1), "tables": []})
    assert again.function is task and again.args == ({"shard": (0, 1), "tables": []},)


def test_results_of_tasks_that_die_for_good_count_as_failures(tmp_path, fake_submitit, monkeypatch):
    def boom(cfg, *, progress=None, checkpoint_dir=None):
        return RunOutcome(status="failed", error="CUDA error: out of memory")

    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: boom)
    summary = launchers.launch_slurm(*fakes.grid_and_options("3", rows=["EGMF"], seeds=[1111],
                                                             results_root=tmp_path / "results",
                                                             reports_root=tmp_path / "reports", render=False), shards=2)
    assert summary.failed == 2 and not summary.ok


def test_force_becomes_a_redo_time_so_a_requeued_task_keeps_what_it_stored(tmp_path, fake_submitit):
    launchers.launch_slurm(*fakes.grid_and_options("3", seeds=[1111], force=True, results_root=tmp_path / "results",
                                                   reports_root=tmp_path / "reports", render=False), shards=1)
    (task,) = FakeExecutor.submitted
    assert all(not options.force and options.redo_before for _, options in task["tables"])
