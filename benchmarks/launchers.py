"""Where a table's runs execute: here, one after another ("local"), or as a Slurm job array.

Parallelism: ``--jobs N`` (local) starts N worker processes on this machine that share one grid
(each takes the next run nobody holds; ``runner.reproduce``'s run locks arbitrate), and
``--shard i/n`` or ``--launcher slurm`` (one array task per shard) split it. Shard i of n holds
the runs whose id hashes to i (see ``benchmarks.grid.shard``), so n workers never train the
same run and their run files never collide. Data-parallel seeds are therefore shards too: one GPU per shard, one run at a time.

A single large backbone is placed on the devices of its node by accelerate (``device_map`` in
the backbone loader, ``egmf_core.backbones``), not here; ask Slurm for as many GPUs per task as
one run needs (``gpus_per_task``).

``slurm`` needs submitit (``pip install 'egmf-repro[slurm]'``). Every task of the array runs
``reproduce(..., shard=(i, n), render=False)`` against the shared results directory (each run
file is written atomically, so tasks need no coordination); when all tasks have ended the
launcher merges, i.e. rebuilds the table CSV from every run file, and renders the report.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from benchmarks import runner
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


def run_local_jobs(worker_argv: list[str], jobs: int, *, total: int | None = None,
                   command: list[str] | None = None) -> int:
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
    """
    import os
    import subprocess
    import sys
    import threading

    env = {**os.environ, "EGMF_NO_PROGRESS": "1", "EGMF_LOG_RUNS": "1"}
    command = command or [sys.executable, "-m", "benchmarks"]
    procs = [subprocess.Popen([*command, *worker_argv],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
             for i in range(jobs)]

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


def run_shard_task(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What one array task runs (module level, so submitit can pickle it)."""
    summary = runner.reproduce(**kwargs)
    return {"line": summary.line(), "trained": summary.trained, "cached": summary.cached,
            "failed": summary.failed, "failures": summary.failures}


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
    """Submit ``table`` as one job array (one task per shard), wait for it, then merge and render.

    ``shards`` defaults to the number of distinct runs (one run per task). ``slurm`` holds
    submitit executor parameters (partition, timeout_min, gpus_per_node, ...).
    """
    submitit = _submitit()
    t0 = time.monotonic()
    results_root, reports_root = Path(results_root).resolve(), Path(reports_root).resolve()
    spec = load_table(table, ablations_dir)
    grid = expand(spec, profile, seeds=reproduce_kwargs.get("seeds"), rows=reproduce_kwargs.get("rows"),
                  datasets=reproduce_kwargs.get("datasets"), data_root=reproduce_kwargs.get("data_root"),
                  model_root=reproduce_kwargs.get("model_root"),
                  trust_remote_code=reproduce_kwargs.get("trust_remote_code", False))
    n_runs = len(unique_runs(grid))
    n = max(1, int(shards) if shards else n_runs)
    folder = results_root / profile / "slurm" / spec.name
    executor = submitit.AutoExecutor(folder=str(folder))
    executor.update_parameters(**{**SLURM_DEFAULTS, **(slurm or {}), "slurm_array_parallelism": n,
                                  "name": f"egmf-{spec.name}-{profile}"})
    tasks = [dict(table_name=spec.name, profile=profile, shard=(i, n), results_root=results_root,
                  reports_root=reports_root, ablations_dir=Path(ablations_dir), render=False, **reproduce_kwargs)
             for i in range(n)]
    jobs = executor.map_array(run_shard_task, tasks)
    runner.log(f"{spec.name} [{profile}]: submitted {len(jobs)} array tasks for {n_runs} runs ({folder})")
    summary = runner.Summary(spec.name, profile, runs=n_runs)
    for job in jobs:
        try:
            result = job.result()  # blocks until the task ends; submitit polls the scheduler
        except Exception as e:  # a task that died (preempted, out of memory): its finished runs are kept
            job_id = getattr(job, "job_id", "?")
            summary.failures.append(f"slurm task {job_id} failed: {runner.store._one_line(str(e))}")
            runner.log(summary.failures[-1])
            continue
        summary.trained += result["trained"]
        summary.cached += result["cached"]
        summary.failed += result["failed"]
        summary.failures.extend(result["failures"])
    merged = runner.merge([], profile, results_root, ablations_dir=ablations_dir)
    summary.csv = next((p for p in merged.tables if p.stem == spec.name), None)
    if render:
        paths, summary.report_error = runner.render_reports(profile, [spec.name], results_root=results_root,
                                                            reports_root=reports_root, ablations_dir=ablations_dir)
        summary.report = paths[-1] if paths else None
    if len(summary.failures) > summary.failed:  # dead tasks count as failures in the summary line
        summary.failed = len(summary.failures)
    summary.seconds = time.monotonic() - t0
    return summary
