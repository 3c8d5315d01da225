"""Where a table's runs execute: here, one after another ("local"), or as a Slurm job array.

``launch`` is the run step of ``benchmarks.recipes.reproduce`` (``python -m benchmarks reproduce``).

Parallelism: ``--jobs N`` (local) starts N worker processes on this machine that share one
grid (each takes the next run nobody holds; ``runner.run_table``'s run locks arbitrate); they
call ``runner.run_tables`` and report each finished run back as a ``runner.RunEvent``
through a queue. ``--shard i/n`` or ``--launcher slurm`` (one array task per shard) split a
grid instead. A local shard i of n holds the runs whose id hashes to i (see
``benchmarks.execution.grid.shard``); Slurm shards are balanced by the planner's cost
(``benchmarks.execution.planner.balance_shards``: longest run first onto the least-loaded shard), and
one submission can cover every table ("all"). Either way n workers never train the same run
and their run files never collide. One GPU per shard, one run at a time.

A single large backbone is placed on the devices of its node by accelerate (``device_map`` in
the backbone loader, ``egmf_core.backbones``), not here; ask Slurm for as many GPUs per task as
one run needs (``gpus_per_task``).

``slurm`` needs submitit (``pip install 'egmf-repro[slurm]'``). Every task of the array runs
``runner.run_table`` with ``RunOptions(only_runs=<its runs>)`` for each table it
has runs of, against the shared results directory (each run file is written atomically, so tasks need no
coordination); a task Slurm times out or preempts is requeued and resumes (``ShardTask``).
Launchers only produce run files: ``benchmarks.recipes.reproduce`` then tabulates the tables
and renders their reports.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

from benchmarks.commandline import error_line, offline_and_quiet, one_line
from benchmarks.execution import runner
from benchmarks.execution.grid import Cell, Grid, GridError, unique_runs
from benchmarks.execution.runner import RunEvent, RunOptions, Summary, TableGrid

LAUNCHERS = ("local", "slurm")
SLURM_INSTALL = "pip install 'egmf-repro[slurm]'"
SLURM_DEFAULTS: dict[str, Any] = {
    "timeout_min": 12 * 60,
    "gpus_per_node": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 8,
    "mem_gb": 64,
}


class LauncherError(ValueError):
    """A launcher cannot start (unknown name, submitit missing), or a worker rejected its input;
    the message says what to fix."""


@dataclass(frozen=True)
class Launch:
    """Where a grid's runs execute: ``--launcher``, ``--jobs`` and the GPUs workers are pinned
    to, or Slurm's array size and executor parameters."""

    launcher: str = "local"
    jobs: int = 1  # local worker processes sharing the grid
    gpus: tuple[str, ...] | None = None  # local: worker i sees gpus[i % n] only (GPU profiles)
    shards: int | None = None  # slurm: array tasks (default: one per run)
    slurm: dict[str, Any] | None = None  # slurm: submitit executor parameters (partition, timeout_min, ...)
    worker_init: Callable[[], None] | None = None  # local: called first in each worker (picklable)


def launch(grid: Grid, options: RunOptions, how: Launch = Launch(),
           tables: list[TableGrid] | None = None) -> list[Summary]:
    """Train ``grid`` (a table or "all"; ``tables``: its expanded tables, else expanded here) as
    ``how`` says: a summary per table, or one for a Slurm submission. With ``--jobs`` the workers
    train and this process then checks every run file, training nothing itself: a run that
    failed in a worker, or that no worker stored (one died), counts as failed; rerun to retry it."""
    if tables is None:
        tables = runner.expand_tables(grid)
        runner.preflight_tables(tables, options)
    check_launcher(how.launcher)
    if how.launcher == "slurm":
        if options.shard is not None:
            raise GridError("--shard is for one worker; with --launcher slurm use --shards N")
        return [launch_slurm(grid, options, tables, shards=how.shards, slurm=how.slurm)]
    if how.shards is not None or how.slurm:
        raise GridError("--shards and --slurm-partition need --launcher slurm (locally use --shard i/n)")
    if how.jobs > 1:
        if options.shard is not None:
            raise GridError("--jobs shares the whole grid between its workers; drop --shard")
        run_local_jobs(grid, options, how)
        options = replace(options, force=False, redo_before=None, train=False)  # the workers trained it all
    return runner.run_tables(grid, options, tables)


def check_launcher(name: str) -> str:
    if name not in LAUNCHERS:
        raise LauncherError(f"unknown launcher {name!r} (known: {', '.join(LAUNCHERS)})")
    return name


def force_as_redo_time(options: RunOptions) -> RunOptions:
    """``--force`` for processes that share a grid (or a task Slurm requeues): retrain what was
    stored before now, once, and keep what any of them stores from now on."""
    if not options.force:
        return options
    from benchmarks.execution.provenance import utc_timestamp

    return replace(options, force=False, redo_before=utc_timestamp())


# ---- local worker processes ---------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``$CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(jobs: int, gpus: list[str] | tuple[str, ...] | None) -> list[str | None]:
    """The GPU each of ``jobs`` workers is pinned to, round-robin (worker i -> gpus[i % n]); so
    ``--jobs n*K`` puts K runs on each of n GPUs. None: no pinning (no GPUs, or CPU runs)."""
    if not gpus:
        return [None] * jobs
    return [gpus[i % len(gpus)] for i in range(jobs)]


def run_local_jobs(grid: Grid, options: RunOptions, how: Launch) -> int:
    """Train the grid's pending runs in ``how.jobs`` worker processes at once (never more than
    runs); wait for all. Returns their highest exit status (0 all fine or nothing pending,
    1 some runs failed); a worker's bad-input error is raised here as one line.

    The smoke profile trains with one thread per process, so on a machine with c cores
    ``--jobs c`` trains c runs at a time. Every worker walks the whole grid in the same order and
    trains each run that is neither stored nor locked by another worker (each run file is
    written atomically and each run holds its own lock), so they stay busy until the grid is
    done, however uneven the runs. ``--force`` becomes one redo time for all of them, so a run
    is retrained once. Workers draw no bars: each finished run comes back as a ``RunEvent``
    and is logged, tagged, under one progress bar with ETA; their warnings come back tagged too.
    """
    pending = runner.pending_runs(grid, options)
    if not pending:
        return 0
    options = force_as_redo_time(options)
    t0 = time.monotonic()
    trained, errors, codes = start_workers(grid, options, worker_gpus(min(how.jobs, pending), how.gpus),
                                           how.worker_init, pending)
    for i, code in enumerate(codes):
        if code < 0:  # killed (the kernel's out-of-memory killer, a signal): its run is reported as not trained
            runner.log(f"[job {i + 1}/{len(codes)}] ended by signal {-code}")
    runner.log(f"{len(codes)} jobs: {trained} runs trained in {runner.format_duration(time.monotonic() - t0)}")
    if errors:
        raise LauncherError(errors[0])
    return max(code if code >= 0 else 1 for code in codes)  # killed by a signal: some runs not trained


def start_workers(grid: Grid, options: RunOptions, gpus: list[str | None], init: Callable[[], None] | None,
                  total: int) -> tuple[int, list[str], list[int]]:
    """One worker process per entry of ``gpus`` (pinned to it unless None), all on ``grid``;
    wait for all. (runs trained, workers' error lines, exit statuses)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold CUDA or threads
    events = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, len(gpus), grid, options, gpu, init, events), daemon=True)
             for i, gpu in enumerate(gpus)]
    with _terminate_on_sigterm():
        for proc in procs:
            proc.start()
        try:
            trained, errors = _relay(events, procs, total, runner.progress_enabled(options))
        except BaseException:  # Ctrl-C, or SIGTERM (a scheduler, kill): no worker outlives this process
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.join()
            raise
    return trained, errors, [proc.exitcode if proc.exitcode is not None else 0 for proc in procs]


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM raises SystemExit(143) here while workers run, so they are terminated with us
    (the default handler would end this process at once and leave them running)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _relay(events, procs: list, total: int, bars: bool) -> tuple[int, list[str]]:
    """Log the workers' lines and count their finished runs under one bar until all have ended;
    (runs trained, error lines)."""
    import queue

    from tqdm import tqdm

    trained, errors = 0, []
    with tqdm(total=total, desc=f"{len(procs)} jobs", unit="run", dynamic_ncols=True,
              disable=not bars) as bar:
        while True:
            running = any(p.is_alive() for p in procs)  # before the read: what a worker sent last is read
            try:
                kind, payload = events.get(timeout=0.2)
            except queue.Empty:
                if not running:
                    break
                continue
            if kind == "error":
                errors.append(payload)
                continue
            if kind == "run":
                trained += 1
                bar.update(1)
            runner.log(payload)
    for proc in procs:
        proc.join()
    return trained, errors


def _worker(i: int, n: int, grid: Grid, options: RunOptions, gpu: str | None,
            init: Callable[[], None] | None, events) -> None:
    """One --jobs worker process: ``runner.run_tables`` on the shared grid, its lines and finished
    runs sent back on ``events``; exits 0, 1 (runs failed), 2 (bad input) or 130 (interrupted)."""
    offline_and_quiet()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before anything imports torch
    from benchmarks.execution.provenance import process_git_revision

    process_git_revision()  # the code this worker runs, read now (not after its first run)
    tag = f"[job {i + 1}/{n}] "

    def say(line: str) -> None:
        events.put(("log", tag + line))

    options = replace(options, progress_bars=False, log=say, on_run=partial(_send_run, events, tag))
    try:
        if init is not None:
            init()
        summaries = runner.run_tables(grid, options)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, OSError) as e:
        events.put(("error", error_line(e)))
        sys.exit(2)
    for summary in summaries:
        say(summary.line())
    sys.exit(0 if all(s.ok for s in summaries) else 1)


def _send_run(events, tag: str, event: RunEvent) -> None:
    if event.status != "busy":  # workers skip each other's runs by design
        events.put(("run", tag + event.line()))


def _submitit():
    try:
        import submitit
    except ImportError:
        raise LauncherError(f"the slurm launcher needs submitit: {SLURM_INSTALL}") from None
    return submitit


class ShardTask:
    """What one array task runs: ``runner.run_table`` of each table on this shard's runs only.

    A callable with a ``checkpoint`` method, so submitit requeues the task when Slurm times it
    out or preempts it (submitit's checkpointing, as ``submitit.helpers.Checkpointable``): the
    requeued task runs the same arguments, skips the runs already stored, and the run that was
    interrupted resumes from its checkpoint directory (``runner.run_table`` does both).
    """

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        out = {"lines": [], "trained": 0, "cached": 0, "failed": 0, "failures": []}
        for grid, options in task["tables"]:
            summary = runner.run_table(runner.expand_table(grid), options)
            out["lines"].append(summary.line())
            for key in ("trained", "cached", "failed"):
                out[key] += getattr(summary, key)
            out["failures"] += summary.failures
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on timeout or preemption: resubmit this task with the same arguments."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_grid(grid: Grid, tables: list[TableGrid] | None = None) -> dict[str, tuple[Grid, list[Cell]]]:
    """table name -> (its grid, its chosen cells), for one table or every table of "all"."""
    tables = runner.expand_tables(grid) if tables is None else tables
    return {t.spec.name: (t.grid, t.chosen) for t in tables}


def run_costs(cells: list[Cell]) -> dict[str, float]:
    """run id -> the planner's estimated GPU seconds; 1 each where it has no price (tiny twins).
    Dataset statistics train nothing: they cost a run's start-up."""
    from benchmarks.execution import planner as plan

    trains = [c for c in cells if c.trains]
    costs = {run_id: plan.RUN_START_S for run_id in unique_runs(c for c in cells if not c.trains)}
    try:
        return {**costs, **plan.costs_of(trains)}
    except plan.PlanError:
        return {**costs, **{run_id: 1.0 for run_id in unique_runs(trains)}}


AUTO_GROUP_UNIT = 8  # --group auto on Slurm: runs of one backbone and dataset kept together, 8 at most


def group_units(cells: list[Cell], group: int | str = 1) -> dict[str, list[str]]:
    """What shards are balanced over: each run alone (``group`` 1), else chunks of ``group`` runs
    (AUTO_GROUP_UNIT for "auto") that share a backbone and a dataset (egmf_core.group.group_key),
    in grid order, so a Slurm task can train them as one group. unit id -> run ids."""
    runs = unique_runs(cells)
    if group == 1:
        return {rid: [rid] for rid in runs}
    from egmf_core.group import group_key

    size = AUTO_GROUP_UNIT if group == "auto" else int(group)
    by_key: dict[str, list[str]] = {}
    for rid, cell in runs.items():
        grouped = cell.trains and cell.config.model.method == "egmf"  # a baseline trains alone
        by_key.setdefault(group_key(cell.config) if grouped else rid, []).append(rid)
    return {ids[i]: ids[i:i + size] for ids in by_key.values() for i in range(0, len(ids), size)}


def shard_tasks(grids: dict[str, tuple[Grid, list[Cell]]], n: int, options: RunOptions) -> list[dict[str, Any]]:
    """n balanced shards (longest run first onto the least-loaded shard), empty ones dropped;
    each a task: (grid, options limited to the shard's runs) for every table with runs there."""
    from benchmarks.execution import planner as plan

    every = [c for _, cells in grids.values() for c in cells]
    costs = run_costs(every)
    units = group_units(every, options.group)  # --group: a group's runs stay in one task
    unit_costs = {u: sum(costs[r] for r in runs) for u, runs in units.items()}
    shards = [{r: costs[r] for u in s for r in units[u]} for s in plan.balance_shards(unit_costs, n) if s]
    tasks = []
    for i, shard in enumerate(shards):
        tables = [(grid, replace(options, only_runs=frozenset(c.run_id for c in cells if c.run_id in shard)))
                  for grid, cells in grids.values() if any(c.run_id in shard for c in cells)]
        tasks.append({"shard": (i, len(shards)), "tables": tables, "estimate_s": sum(shard.values())})
    return tasks


def launch_slurm(grid: Grid, options: RunOptions, tables: list[TableGrid] | None = None, *,
                 shards: int | None = None, slurm: dict[str, Any] | None = None) -> Summary:
    """Submit ``grid`` (a table, or "all": one submission across tables) as one job array and wait.

    Runs are spread over ``shards`` tasks (default: one per run) by the planner's cost, longest
    first onto the least-loaded task; a run two tables share trains once. Timed-out or
    preempted tasks are requeued (``ShardTask.checkpoint``); ``--force`` becomes a redo time so
    a requeued task keeps what its first attempt stored. ``slurm`` holds submitit executor
    parameters (partition, timeout_min, gpus_per_node, ...).
    """
    submitit = _submitit()
    t0 = time.monotonic()
    options = replace(force_as_redo_time(options), results_root=Path(options.results_root).resolve(),
                      reports_root=Path(options.reports_root).resolve())
    grids = slurm_grid(grid, tables)
    n_runs = len(unique_runs(c for _, cells in grids.values() for c in cells))
    name = grid.table if grid.table == "all" else next(iter(grids))
    tasks = shard_tasks(grids, max(1, int(shards) if shards else n_runs), options)
    folder = options.results_root / grid.profile / "slurm" / name
    executor = submitit.AutoExecutor(folder=str(folder))
    executor.update_parameters(**{**SLURM_DEFAULTS, **(slurm or {}), "slurm_array_parallelism": len(tasks),
                                  "name": f"egmf-{name}-{grid.profile}"})
    jobs = executor.map_array(ShardTask(), tasks)
    runner.log(f"{name} [{grid.profile}]: submitted {len(jobs)} array tasks for {n_runs} runs ({folder})")
    summary = Summary(name, grid.profile, runs=n_runs)
    _collect(jobs, summary)
    if len(summary.failures) > summary.failed:  # dead tasks count as failures in the summary line
        summary.failed = len(summary.failures)
    summary.seconds = time.monotonic() - t0
    return summary


def _collect(jobs: list, summary: Summary) -> None:
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
