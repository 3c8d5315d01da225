"""Determinism on CPU: the same seed and profile give identical metrics across runs and shard splits.

What is and is not deterministic on GPU is written down in egmf_core.checkpoint's docstring.
"""

from __future__ import annotations

import os
from functools import partial

import pandas as pd
import pytest

from benchmarks import recipes
from benchmarks.execution import profiles
from benchmarks.execution.grid import expand, shard_of, unique_runs
from benchmarks.execution.tables import load_table
from tests import fakes
from tests.test_kill_resume import (
    PROFILE,
    stable_values,
    tiny_repo,  # noqa: F401 (a fixture used by name)
    write_tiny_ablations,
)


def _reproduce(tmp_path, ablations, results, **kwargs):
    return fakes.reproduce("tiny", PROFILE, results_root=tmp_path / results, reports_root=tmp_path / "reports",
                            render=False, ablations_dir=ablations, **kwargs)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_repo")
def test_two_runs_and_a_two_shard_split_give_identical_tidy_values(tmp_path):
    ablations = write_tiny_ablations(tmp_path / "ablations")
    ids = list(unique_runs(expand(load_table("tiny", ablations), PROFILE)))
    per_shard = [sum(shard_of(i, 2) == k for i in ids) for k in (0, 1)]
    assert sum(per_shard) == 4  # (which shard holds more depends on the run ids, i.e. the config fields)

    first = _reproduce(tmp_path, ablations, "first")
    second = _reproduce(tmp_path, ablations, "second")
    assert (first.trained, second.trained) == (4, 4)
    a, b = stable_values(first.csv), stable_values(second.csv)
    pd.testing.assert_frame_equal(a, b)  # exact: no tolerance
    assert a["value"].notna().all() and a["value"].nunique() > 3  # real, varied numbers

    for i in (1, 0):  # the other order than the unsharded grid, in one process
        part = _reproduce(tmp_path, ablations, f"shard{i}", shard=(i, 2))
        assert part.trained == per_shard[i]
    merged = recipes.merge([tmp_path / "shard0", tmp_path / "shard1"], PROFILE, tmp_path / "merged",
                          ablations_dir=ablations)
    assert merged.stats.copied == 4
    pd.testing.assert_frame_equal(stable_values(tmp_path / "merged" / PROFILE / "tiny.csv"), a)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_repo")
def test_checkpointing_does_not_change_the_numbers(tmp_path):
    """checkpoint_every is part of the run's config (so its id differs) but not of its result."""
    every_step = write_tiny_ablations(tmp_path / "a", seeds="[1111]", rows='[[rows]]\nname = "full"\n',
                                      base={"train.checkpoint_every": "1"})
    never = write_tiny_ablations(tmp_path / "b", seeds="[1111]", rows='[[rows]]\nname = "full"\n',
                                 base={"train.checkpoint_every": None})
    a = stable_values(_reproduce(tmp_path, every_step, "a").csv)
    b = stable_values(_reproduce(tmp_path, never, "b").csv)
    assert a["run_id"][0] != b["run_id"][0]
    keep = ["split", "metric", "value", "steps", "best_step", "invalid_rate", "gating_json"]
    pd.testing.assert_frame_equal(a[keep], b[keep])


@pytest.mark.slow
@pytest.mark.usefixtures("tiny_repo")
def test_two_parallel_job_workers_give_the_single_process_numbers(tmp_path, monkeypatch):
    from benchmarks.execution import launchers
    from tests.test_kill_resume import cli_env

    ablations = write_tiny_ablations(tmp_path / "ablations")
    single = _reproduce(tmp_path, ablations, "single")
    env = cli_env(tmp_path)  # the workers inherit this process's environment
    for key in os.environ.keys() - env.keys():
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    grid, options = fakes.grid_and_options("tiny", PROFILE, ablations_dir=ablations, results_root=tmp_path / "jobs")
    # each worker is a real process training the runs nobody holds, with its smoke data under tiny_repo
    how = launchers.Launch(jobs=2, worker_init=partial(fakes.isolated_worker, profiles.REPO_ROOT, fake_data=False))
    assert launchers.run_local_jobs(grid, options, how) == 0
    collected = _reproduce(tmp_path, ablations, "jobs")  # what the CLI does after its workers end
    assert (collected.trained, collected.cached) == (0, 4)
    pd.testing.assert_frame_equal(stable_values(collected.csv), stable_values(single.csv))
