"""Where a table's runs execute: here, one after another ("local"), or as a Slurm job array.

Parallelism: ``--jobs N`` (local) starts N worker processes on this machine that share one grid
(each takes the next run nobody holds; ``runner.reproduce``'s run locks arbitrate), and
``--shard i/n`` or ``--launcher slurm`` (one array task per shard) split it. A local shard i of n
holds the runs whose id hashes to i (see ``benchmarks.grid.shard``); Slurm shards are balanced
by the planner's cost (``benchmarks.plan.balance_shards``: longest run first onto the
least-loaded shard), and one submission can cover every table ("all"). Either way n workers
never train the same run and their run files never collide. One GPU per shard, one run at a time.

A single large backbone is placed on the devices of its node by accelerate (``device_map`` in
the backbone loader, ``egmf_core.backbones``), not here; ask Slurm for as many GPUs per task as
one run needs (``gpus_per_task``).

``slurm`` needs submitit (``pip install 'egmf-repro[slurm]'``). Every task of the array runs
``reproduce(..., only_runs=<its runs>, render=False)`` for each table it has runs of, against
the shared results directory (each run file is written atomically, so tasks need no
coordination); a task Slurm times out or preempts is requeued and resumes (``ShardTask``). When
all tasks have ended the launcher merges, i.e. rebuilds the table CSVs from every run file, and
renders the reports.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from benchmarks import runner
from benchmarks.usage import one_line
from benchmarks.grid import expand, unique_runs
from benchmarks.tables import ABLATIONS_DIR, load_table

LAUNCHERS = ("local", "slurm")
SLURM_INSTALL = "pip install 'egmf-repro[slurm]'"
SLURM_DEFAULTS: dict[str, Any] = {
    "timeout_min": 12 * 60,
    "gpus_per_node": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 8,
    "mem_gb": 64,
}


RUN_DONE = re.compile(r": (ok|failed) in \d+h?\d*m\d+s$")  # a worker's line for a finished run


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``$CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(jobs: int, gpus: list[str] | None) -> list[str | None]:
    """The GPU each of ``jobs`` workers is pinned to, round-robin (worker i -> gpus[i % n]); so
    ``--jobs n*K`` puts K runs on each of n GPUs. None: no pinning (no GPUs, or CPU runs)."""
    if not gpus:
        return [None] * jobs
    return [gpus[i % len(gpus)] for i in range(jobs)]


def run_local_jobs(worker_argv: list[str], jobs: int, *, total: int | None = None,
                   command: list[str] | None = None, gpus: list[str] | None = None) -> int:
    """Run ``python -m benchmarks <worker_argv>`` ``jobs`` times at once, on one grid; wait for all.

    ``total`` (the runs to train, ``runner.pending_runs``) gives a progress bar over all workers,
    with ETA, on a terminal. ``command`` replaces ``python -m benchmarks`` (tests start workers
    through a driver).

    The smoke profile trains with one thread per process, so on a machine with c cores
    ``--jobs c`` trains c runs at a time. Every worker walks the whole grid in the same order and
    trains each run that is neither stored nor locked by another worker (each run file is
    written atomically and each run holds its own lock), so they stay busy until the grid is
    done, however uneven the runs; static shards left one worker idle for the last minutes.
    For ``--force`` the caller passes ``--redo-before`` instead, so a run is retrained once.
    Their progress bars are off; instead each logs a line per finished run, tagged, as are their
    warnings and summary lines. The caller then collects every run file into the table CSV and
    renders the report. Returns the highest worker exit status (0 all fine, 1 some runs failed,
    2 a bad input, 130 interrupted).

    ``gpus``: worker i sees only ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``), so each run
    has one GPU to itself, or shares it with the other workers pinned there (``--jobs-per-gpu``).
    """
    import os
    import subprocess
    import sys
    import threading

    env = {**os.environ, "EGMF_NO_PROGRESS": "1", "EGMF_LOG_RUNS": "1"}
    command = command or [sys.executable, "-m", "benchmarks"]
    pinned = worker_gpus(jobs, gpus)
    procs = [subprocess.Popen([*command, *worker_argv],
                              env={**env, **({"CUDA_VISIBLE_DEVICES": g} if g is not None else {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
             for g in pinned]

    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"{jobs} jobs", unit="run", dynamic_ncols=True,
               disable=total is None or not runner.progress_enabled())
    lock = threading.Lock()
    finished = [0]
    t0 = time.monotonic()

    def relay(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.rstrip()
            with lock:
                runner.log(f"[job {i + 1}/{jobs}] {line}")
                if RUN_DONE.search(line):
                    finished[0] += 1
                    bar.update(1)

    threads = [threading.Thread(target=relay, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    finally:
        for t in threads:
            t.join()
        bar.close()
    runner.log(f"{jobs} jobs: {finished[0]} runs trained in {runner.format_duration(time.monotonic() - t0)}")
    return max(codes)


class LauncherError(ValueError):
    """A launcher cannot start (unknown name, submitit missing); the message says how to fix it."""


def check_launcher(name: str) -> str:
    if name not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {name!r} (known: {', '.join(LAUNCHERS)})")
    return name


def _submitit():
    try:
        import submitit
    except ImportError:
        raise LauncherError(f"the slurm launcher needs submitit: {SLURM_INSTALL}") from None
    return submitit


class ShardTask:
    """What one array task runs: ``reproduce`` of each table on this shard's runs only.

    A callable with a ``checkpoint`` method, so submitit requeues the task when Slurm times it
    out or preempts it (submitit's checkpointing, as ``submitit.helpers.Checkpointable``): the
    requeued task runs the same arguments, skips the runs already stored, and the run that was
    interrupted resumes from its checkpoint directory (``runner.reproduce`` does both).
    """

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        out = {"lines": [], "trained": 0, "cached": 0, "failed": 0, "failures": []}
        for kwargs in task["tables"]:
            summary = runner.reproduce(**kwargs)
            out["lines"].append(summary.line())
            for key in ("trained", "cached", "failed"):
                out[key] += getattr(summary, key)
            out["failures"] += summary.failures
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on timeout or preemption: resubmit this task with the same arguments."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_grid(target: str, profile: str, ablations_dir: Path, reproduce_kwargs: dict[str, Any]) -> dict[str, list]:
    """table -> its cells, for one table or "all" (the tables a submission covers)."""
    from benchmarks.grid import GridError
    from benchmarks.tables import list_tables

    grids = {}
    datasets = reproduce_kwargs.get("datasets")
    if target == "all" and reproduce_kwargs.get("rows") is not None:
        raise GridError("--rows cannot be combined with 'all': row names differ between tables")
    for name in list_tables(ablations_dir) if target == "all" else [target]:
        spec = load_table(name, ablations_dir)
        ds = datasets if datasets is None or target != "all" else [d for d in spec.datasets if d in datasets]
        if ds == []:
            continue
        grids[spec.name] = expand(spec, profile, seeds=reproduce_kwargs.get("seeds"), rows=reproduce_kwargs.get("rows"),
                                  datasets=ds, data_root=reproduce_kwargs.get("data_root"),
                                  model_root=reproduce_kwargs.get("model_root"),
                                  trust_remote_code=reproduce_kwargs.get("trust_remote_code", False),
                                  overrides=reproduce_kwargs.get("overrides"))
    return grids


def run_costs(cells: list) -> dict[str, float]:
    """run id -> the planner's estimated GPU seconds; 1 each where it has no price (tiny twins).
    Dataset statistics train nothing: they cost a run's start-up."""
    from benchmarks import plan

    trains = [c for c in cells if c.trains]
    costs = {run_id: plan.RUN_START_S for run_id in unique_runs(c for c in cells if not c.trains)}
    try:
        return {**costs, **plan.costs_of(trains)}
    except plan.PlanError:
        return {**costs, **{run_id: 1.0 for run_id in unique_runs(trains)}}


def shard_tasks(grids: dict[str, list], n: int, common: dict[str, Any]) -> list[dict[str, Any]]:
    """n balanced shards (longest run first onto the least-loaded shard), empty ones dropped;
    each a task: for every table with runs there, ``reproduce`` kwargs limited to those runs."""
    from benchmarks import plan

    every = [c for cells in grids.values() for c in cells]
    shards = [s for s in plan.balance_shards(run_costs(every), n) if s]
    tasks = []
    for i, shard in enumerate(shards):
        tables = [dict(table_name=name, only_runs=sorted({c.run_id for c in cells if c.run_id in shard}), **common)
                  for name, cells in grids.items() if any(c.run_id in shard for c in cells)]
        tasks.append({"shard": (i, len(shards)), "tables": tables, "estimate_s": sum(shard.values())})
    return tasks


def launch_slurm(
    table: str,
    profile: str = "smoke",
    *,
    shards: int | None = None,
    slurm: dict[str, Any] | None = None,
    results_root: Path = Path("results"),
    reports_root: Path = Path("reports"),
    ablations_dir: Path = ABLATIONS_DIR,
    render: bool = True,
    **reproduce_kwargs,
) -> runner.Summary:
    """Submit ``table`` (or "all": one submission across tables) as one job array, wait, merge, render.

    Runs are spread over ``shards`` tasks (default: one per run) by the planner's cost, longest
    first onto the least-loaded task; a run two tables share trains once. Timed-out or
    preempted tasks are requeued (``ShardTask.checkpoint``). ``slurm`` holds submitit executor
    parameters (partition, timeout_min, gpus_per_node, ...).
    """
    submitit = _submitit()
    t0 = time.monotonic()
    results_root, reports_root = Path(results_root).resolve(), Path(reports_root).resolve()
    grids = slurm_grid(table, profile, Path(ablations_dir), reproduce_kwargs)
    n_runs = len(unique_runs(c for cells in grids.values() for c in cells))
    name = table if table == "all" else next(iter(grids))
    common = dict(profile=profile, results_root=results_root, reports_root=reports_root,
                  ablations_dir=Path(ablations_dir), render=False,
                  **{k: v for k, v in reproduce_kwargs.items() if k != "datasets"})
    if common.pop("force", False):  # a requeued task must not retrain what its first attempt stored
        from benchmarks.provenance import utc_timestamp

        common["redo_before"] = utc_timestamp()
    tasks = shard_tasks(grids, max(1, int(shards) if shards else n_runs), common)  # only_runs: no dataset filter
    folder = results_root / profile / "slurm" / name
    executor = submitit.AutoExecutor(folder=str(folder))
    executor.update_parameters(**{**SLURM_DEFAULTS, **(slurm or {}), "slurm_array_parallelism": len(tasks),
                                  "name": f"egmf-{name}-{profile}"})
    jobs = executor.map_array(ShardTask(), tasks)
    runner.log(f"{name} [{profile}]: submitted {len(jobs)} array tasks for {n_runs} runs ({folder})")
    summary = runner.Summary(name, profile, runs=n_runs)
    _collect(jobs, summary)
    merged = runner.merge([], profile, results_root, ablations_dir=ablations_dir)
    summary.csv = next((p for p in merged.tables if p.stem == name), None)
    if render:
        paths, summary.report_error = runner.render_reports(profile, list(grids), results_root=results_root,
                                                            reports_root=reports_root, ablations_dir=ablations_dir)
        summary.report = paths[-1] if paths else None
    if len(summary.failures) > summary.failed:  # dead tasks count as failures in the summary line
        summary.failed = len(summary.failures)
    summary.seconds = time.monotonic() - t0
    return summary


def _collect(jobs: list, summary: runner.Summary) -> None:
    """Wait for every task and add up what it did; a task that died counts as one failure."""
    for job in jobs:
        try:
            result = job.result()  # blocks until the task ends; submitit polls the scheduler
        except Exception as e:  # a task that died for good (out of memory): its finished runs are kept
            job_id = getattr(job, "job_id", "?")
            summary.failures.append(f"slurm task {job_id} failed: {one_line(e)}")
            runner.log(summary.failures[-1])
            continue
        summary.trained += result["trained"]
        summary.cached += result["cached"]
        summary.failed += result["failed"]
        summary.failures.extend(result["failures"])
