"""--group in the harness: grouped runs keep their ids, locks, run files and cache; a busy run is
skipped; a crash fails only the runs its group held; --group auto sizes a group from memory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks.cli import parse_group
from benchmarks.execution.grid import GridError
from benchmarks.results import store
from egmf_core import group as G
from tests import fakes, test_kill_resume
from tests.test_kill_resume import PROFILE, stable_values, write_tiny_ablations

tiny_repo = test_kill_resume.tiny_repo  # the fixture: smoke data under a temporary repo root, one thread


def _go(tmp_path, ablations, name, **options):
    return fakes.reproduce("tiny", PROFILE, results_root=tmp_path / name, reports_root=tmp_path / f"{name}-rep",
                           render=False, ablations_dir=ablations, **options)


def _run_files(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / PROFILE / "runs").glob("*.json")}


def test_parse_group_takes_a_positive_number_or_auto():
    assert parse_group("4") == 4 and parse_group("auto") == "auto"
    for bad in ("0", "-1", "four"):
        with pytest.raises(GridError, match="--group"):
            parse_group(bad)


def test_grouped_runs_keep_their_ids_and_metrics_and_record_the_group_size(tmp_path, tiny_repo):
    ablations = write_tiny_ablations(tmp_path / "ablations")  # 2 rows x 2 seeds: one backbone, one dataset
    alone = _go(tmp_path, ablations, "alone")
    grouped = _go(tmp_path, ablations, "grouped", group=2)
    assert (grouped.trained, grouped.failed) == (4, 0)
    files_alone, files_grouped = _run_files(tmp_path / "alone"), _run_files(tmp_path / "grouped")
    assert set(files_grouped) == set(files_alone)  # the same run ids
    assert {f["provenance"]["group_size"] for f in files_grouped.values()} == {2}
    assert all("group_size" not in f["provenance"] for f in files_alone.values())
    a, g = stable_values(alone.csv), stable_values(grouped.csv)
    keys = ["row", "dataset", "seed", "split", "metric"]
    merged = a.merge(g, on=keys, suffixes=("_alone", "_grouped"))
    assert len(merged) == len(a) == len(g)
    assert (merged.value_alone - merged.value_grouped).abs().max() <= 1e-3
    again = _go(tmp_path, ablations, "grouped", group=2)  # cached: nothing trains twice
    assert (again.trained, again.cached) == (0, 4)


class Crash(RuntimeError):
    pass


def test_a_crash_fails_the_runs_its_group_held_and_the_rest_train(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations")
    calls = []

    def group_fn(items, *, group_size, on_done):
        items = iter(items)
        taken = [next(items) for _ in range(group_size)]
        calls.append([i.tag for i in taken])
        if len(calls) == 1:
            raise Crash("device lost")
        for item in [*taken, *items]:
            on_done(item.tag, fakes.hashed_run(item.cfg))

    s = _go(tmp_path, ablations, "r", group=2, group_fn=group_fn)
    assert (s.trained, s.failed) == (4, 2) and len(calls) == 2
    assert all("Crash: device lost" in line for line in s.failures)
    files = _run_files(tmp_path / "r")
    assert {f["outcome"]["status"] for rid, f in files.items() if rid in calls[0]} == {"failed"}
    assert {f["outcome"]["status"] for rid, f in files.items() if rid in calls[1]} == {"ok"}
    assert not list((tmp_path / "r" / PROFILE).glob("checkpoints/*.lock"))  # every lock released
    retried = _go(tmp_path, ablations, "r", group=2, group_fn=group_fn)  # the failed runs train next time
    assert (retried.trained, retried.cached, retried.failed) == (2, 2, 0)


def test_a_run_another_process_holds_is_skipped_and_the_group_takes_the_next(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations")
    taken = []

    def group_fn(items, *, group_size, on_done):
        for item in items:
            taken.append(item.tag)
            on_done(item.tag, fakes.hashed_run(item.cfg))

    first = fakes.grid_and_options("tiny", PROFILE, ablations_dir=ablations)[0]
    from benchmarks.execution.runner import expand_table

    held_id = expand_table(first).chosen[0].run_id
    with store.RunLock(store.lock_path(tmp_path / "r", PROFILE, held_id)) as lock:
        assert lock.acquired
        s = _go(tmp_path, ablations, "r", group=4, group_fn=group_fn)
    assert (s.trained, s.busy) == (3, 1) and held_id not in taken


def test_a_group_that_returns_without_a_runs_outcome_fails_that_run_and_ends(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations")

    def group_fn(items, *, group_size, on_done):  # takes two runs, reports one
        items = iter(items)
        first, _ = next(items), next(items)
        on_done(first.tag, fakes.hashed_run(first.cfg))

    s = _go(tmp_path, ablations, "r", group=2, group_fn=group_fn)
    assert (s.trained, s.failed) == (4, 2)
    assert all("without this run's outcome" in line for line in s.failures)
    assert not list((tmp_path / "r" / PROFILE).glob("checkpoints/*.lock"))


def test_bad_input_inside_a_group_ends_the_grid_and_leaves_no_lock(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations")

    def group_fn(items, *, group_size, on_done):
        next(iter(items))
        raise ValueError("config field model.lora_targets: 'q' is not a Linear layer")

    with pytest.raises(ValueError, match="lora_targets"):
        _go(tmp_path, ablations, "r", group=2, group_fn=group_fn)
    assert not list((tmp_path / "r" / PROFILE).glob("checkpoints/*.lock"))
    assert not list((tmp_path / "r" / PROFILE).glob("runs/*.json"))


def test_auto_group_size_fits_the_free_memory():
    gib = 2**30
    assert G.auto_group_size("cpu") == G.CPU_GROUP
    # 80 GiB free with the weights and one run loaded, 6 GiB per run: 1 + floor(0.85 * 80 / 6) = 12
    assert G.auto_group_size("cuda", free_bytes=80 * gib, per_run_bytes=6 * gib) == 12
    assert G.auto_group_size("cuda", free_bytes=gib, per_run_bytes=6 * gib) == 1  # nothing more fits
    assert G.auto_group_size("cuda", free_bytes=1000 * gib, per_run_bytes=gib) == G.MAX_GROUP
    with pytest.raises(ValueError, match="measured peak"):
        G.auto_group_size("cuda", free_bytes=80 * gib, per_run_bytes=0)


def test_auto_on_cuda_measures_the_first_runs_step(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(G.torch.cuda, "mem_get_info", lambda device=None: (40 * gib, 141 * gib))
    monkeypatch.setattr(G.torch.cuda, "max_memory_allocated", lambda device=None: 20 * gib + 3 * gib)
    # weights at 20 GiB, the first run's step peaks 3 GiB above them: 1 + floor(0.85 * 40 / 3) = 12
    assert G._measured_size(G.torch.device("cuda"), 20 * gib) == 12


def test_auto_trains_each_run_alone_on_cpu_and_hands_auto_to_the_group_on_a_gpu(tmp_path, monkeypatch):
    from benchmarks.execution import runner

    assert G.CPU_GROUP == 1 and runner.group_size("auto") == 1 and runner.group_size(3) == 3
    ablations = write_tiny_ablations(tmp_path / "ablations")
    s = _go(tmp_path, ablations, "cpu", group="auto", run_fn=fakes.hashed_run,
            group_fn=lambda *a, **k: pytest.fail("a group on CPU under auto"))
    assert s.trained == 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runner.group_size("auto") == "auto"


def test_the_runner_passes_the_group_size_and_each_runs_outcome_is_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto is sized on a GPU
    ablations = write_tiny_ablations(tmp_path / "ablations")
    sizes = []

    def group_fn(items, *, group_size, on_done):
        sizes.append(group_size)
        for item in items:
            out = fakes.hashed_run(item.cfg)
            out.cost["group_size"] = 3.0
            on_done(item.tag, out)

    s = _go(tmp_path, ablations, "r", group="auto", group_fn=group_fn)
    assert sizes == ["auto"] and s.trained == 4
    rows = pd.read_csv(s.csv)
    assert rows["value"].notna().all()
    assert {f["provenance"]["group_size"] for f in _run_files(tmp_path / "r").values()} == {3}


def test_run_group_refuses_runs_that_cannot_share_a_backbone(tmp_path):
    from egmf_core.config import DataConfig, RunConfig
    from tests.conftest import tiny_model_config, tiny_train_config

    a = RunConfig(seed=1, model=tiny_model_config(), train=tiny_train_config(), data=DataConfig(name="meld"))
    b = RunConfig(seed=1, model=tiny_model_config(backbone="glm4-tiny"), train=tiny_train_config(),
                  data=DataConfig(name="meld"))
    assert G.group_key(a) != G.group_key(b)
    queue = G._GroupQueue([a, b])
    assert queue.take().cfg.model.backbone == "llama3-tiny"
    with pytest.raises(ValueError, match="GROUP_KEY_FIELDS"):
        queue.take()


def test_the_report_header_says_how_runs_were_grouped():
    from benchmarks.reporting.report import group_note

    df = pd.DataFrame({"run_id": ["a", "a", "b", "c", "d"], "group_size": [4, 4, 4, 1, ""]})
    assert group_note(df).startswith("2 run(s) in groups of 4, 2 alone")  # "" (an older file): alone
    assert group_note(df.assign(group_size=1)) == "none: all 4 runs trained alone"


def test_slurm_shards_keep_the_runs_of_a_group_in_one_task():
    from dataclasses import replace

    from benchmarks.execution import launchers
    from benchmarks.execution.runner import expand_table

    grid, options = fakes.grid_and_options("main_msa", PROFILE, rows=["EGMF"])
    cells = expand_table(grid).chosen  # 2 datasets x 5 seeds
    by_id = {c.run_id: c for c in cells}
    assert launchers.group_units(cells, 1) == {rid: [rid] for rid in by_id}
    units = launchers.group_units(cells, 2)
    assert sorted(r for ids in units.values() for r in ids) == sorted(by_id)
    for ids in units.values():
        assert len(ids) <= 2 and len({by_id[r].dataset for r in ids}) == 1  # one backbone and dataset each
    assert len(units) == 6  # 5 runs per dataset: 2 + 2 + 1
    tasks = launchers.shard_tasks({"main_msa": (grid, cells)}, 3, replace(options, group=2))
    owner = {r: i for i, t in enumerate(tasks) for _, opts in t["tables"] for r in opts.only_runs}
    assert sorted(owner) == sorted(by_id)
    for ids in units.values():
        assert len({owner[r] for r in ids}) == 1  # a unit is never split between tasks


def test_a_baseline_row_trains_alone_and_egmf_rows_in_groups(tmp_path):
    rows = ('[[rows]]\nname = "full"\n\n[[rows]]\nname = "tfn"\n'
            'overrides = { "model.method" = "tfn", "model.lora" = false }\n')
    ablations = write_tiny_ablations(tmp_path / "ablations", rows=rows)
    grouped, alone = [], []

    def group_fn(items, *, group_size, on_done):
        for item in items:
            grouped.append(item.cfg.model.method)
            on_done(item.tag, fakes.hashed_run(item.cfg))

    def run_fn(cfg, *, progress=None, checkpoint_dir=None):
        alone.append(cfg.model.method)
        return fakes.hashed_run(cfg)

    s = _go(tmp_path, ablations, "r", group=2, group_fn=group_fn, run_fn=run_fn)
    assert (s.trained, s.failed) == (4, 0)
    assert grouped == ["egmf", "egmf"] and alone == ["tfn", "tfn"]
    with pytest.raises(ValueError, match="trains alone"):
        G._GroupQueue([G.GroupItem(_config_with_method("tfn"))]).take()


def _config_with_method(method: str):
    from egmf_core.config import DataConfig, RunConfig, apply_overrides
    from tests.conftest import tiny_model_config, tiny_train_config

    cfg = RunConfig(seed=1, model=tiny_model_config(), train=tiny_train_config(), data=DataConfig(name="meld"))
    return apply_overrides(cfg, {"model.method": method, "model.lora": False})
