"""Fake run functions shared by the harness tests: instant stand-ins for egmf_core.run.run_experiment."""

from __future__ import annotations

from pathlib import Path

from egmf_core.config import config_hash
from egmf_core.outcome import RunOutcome

FAKE_METRICS = ("wf1", "acc", "mae")


def hashed_value(cfg) -> float:
    """A number in [0, 1) fixed by the run's config hash: the same run always gets it, two runs rarely share it."""
    return (int(config_hash(cfg), 16) % 1000) / 1000


def hashed_run(cfg, *, progress=None, checkpoint_dir=None) -> RunOutcome:
    """Every metric of FAKE_METRICS on valid and test is ``hashed_value(cfg)``; records trust_remote_code."""
    v = hashed_value(cfg)
    return RunOutcome(status="ok", metrics={split: dict.fromkeys(FAKE_METRICS, v) for split in ("valid", "test")},
                      invalid_rate={"valid": 0.0, "test": 0.0}, trust_remote_code=cfg.model.trust_remote_code)


def grid_and_options(table: str, profile: str = "smoke", **kwargs):
    """(Grid, RunOptions) from the flat keyword arguments tests like to write: GridArgs fields
    (seeds, rows, datasets, overrides, roots, trust_remote_code), ``ablations_dir``, and
    RunOptions fields for the rest."""
    from dataclasses import fields

    from benchmarks.execution.grid import Grid, GridArgs
    from benchmarks.execution.runner import RunOptions
    from benchmarks.execution.tables import ABLATIONS_DIR

    grid_keys = {f.name for f in fields(GridArgs)}
    args = GridArgs(**{k: kwargs.pop(k) for k in list(kwargs) if k in grid_keys})
    grid = Grid(table, profile, args, kwargs.pop("ablations_dir", ABLATIONS_DIR))
    for key in ("results_root", "reports_root"):
        if key in kwargs:
            kwargs[key] = Path(kwargs[key])
    if kwargs.get("only_runs") is not None:
        kwargs["only_runs"] = frozenset(kwargs["only_runs"])
    return grid, RunOptions(**kwargs)


def reproduce(table: str, profile: str = "smoke", **kwargs):
    """``recipes.reproduce`` of one table with flat keyword arguments (see ``grid_and_options``): its Summary."""
    from benchmarks import recipes

    summary, = recipes.reproduce(*grid_and_options(table, profile, **kwargs))
    return summary


def reproduce_all(profile: str = "smoke", **kwargs):
    from benchmarks import recipes

    return recipes.reproduce(*grid_and_options("all", profile, **kwargs))


def pending_runs(table: str, profile: str = "smoke", **kwargs) -> int:
    from benchmarks.execution import runner

    return runner.pending_runs(*grid_and_options(table, profile, **kwargs))


def fake_dataset_writer(name, out_dir, *, seed, size):
    """Stands in for the synthetic data writer: one small file per dataset."""
    (out_dir / name).mkdir(parents=True)
    (out_dir / name / "data.txt").write_text(f"{name} seed={seed}")
    return out_dir / name


def isolated_worker(repo_root: Path, seen: Path | None = None, *, fake_data: bool = True) -> None:
    """A --jobs worker's ``worker_init`` in tests: the smoke repo root under tmp and (unless it
    trains for real) the fake data writer, as ``conftest.isolate_harness``; and a file in
    ``seen`` naming the GPU it sees."""
    import os

    from benchmarks.execution import profiles

    profiles.REPO_ROOT = repo_root
    if fake_data:
        profiles.write_synthetic_dataset = fake_dataset_writer
    if seen is not None:
        seen.mkdir(parents=True, exist_ok=True)
        (seen / str(os.getpid())).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "none"))


def raise_bad_input() -> None:
    """A --jobs worker's ``worker_init`` that fails as bad input does."""
    raise ValueError("x.csv: missing column 'label'")


def run_nightly(profile: str = "smoke", tables=None, *, run_fn=None, train_variant=None, **kwargs):
    """``nightly.run_nightly`` with flat keyword arguments (NightlyOptions fields)."""
    from benchmarks.regression import nightly

    for key in ("tables", "settings"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    opts = nightly.NightlyOptions(profile=profile, tables=tuple(tables) if tables else None, **kwargs)
    return nightly.run_nightly(opts, run_fn=run_fn, train_variant=train_variant)


def sleepy_run(cfg, *, progress=None, checkpoint_dir=None) -> RunOutcome:
    """A run that takes a minute: for killing its process mid-run."""
    import time

    time.sleep(60)
    return hashed_run(cfg)
