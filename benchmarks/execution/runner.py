"""Train a paper table's grid: expand it once, train what is not stored, store each run file.

``run_table`` is resumable by construction: every run is written to its own file as soon as it
finishes, and a run whose file is valid and "ok" is never trained again (unless ``force``); a
failed or corrupt one is run again. Tabulating and rendering are ``benchmarks.recipes``' steps.

Crash safety. A run in progress holds a lock (``store.RunLock``: a second process skips it) and,
when ``train.checkpoint_every`` is set, checkpoints into ``results/<profile>/checkpoints/<run_id>/``;
a killed run (SIGKILL included) resumes there mid-run on the next invocation and ends with the
metrics an uninterrupted run gives (``egmf_core.checkpoint``). The checkpoint is deleted once the
run file is written; ``force`` discards it and starts over. Every file is written atomically,
so a kill leaves no partial row: only finished runs have run files, and CSVs and reports are
rebuilt from run files. Corrupt run files are named (file and line) and redone; edited CSVs are
named and rebuilt.

Determinism. On CPU the same seed and profile give identical metrics across invocations, across
``shard`` splits (each run seeds itself from its config alone) and across kill/resume, and across
x86-64 machines under the pinned kernel settings (``benchmarks.execution.numerics``, recorded
per run). What GPU runs do and do not repeat, and the flags that help, is in
``egmf_core.checkpoint``'s docstring.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from benchmarks.commandline import one_line
from benchmarks.execution import numerics, provenance
from benchmarks.execution.grid import Cell, Grid, expand, narrow, unique_runs
from benchmarks.execution.grid import shard as shard_cells
from benchmarks.execution.preflight import preflight
from benchmarks.execution.profiles import check_paper_roots, model_source, resolve_run_config
from benchmarks.execution.tables import TableSpec
from benchmarks.results import store
from egmf_core.checkpoint import remove_checkpoint
from egmf_core.outcome import RunOutcome

# run_fn(cfg, *, progress, checkpoint_dir) -> RunOutcome: progress(step, total, message) draws the
# run's bar; checkpoint_dir (None: none) is where the run checkpoints and resumes.
RunFn = Callable[..., RunOutcome]


def log(message: str) -> None:
    """One line on stderr that does not break the progress bars."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def progress_enabled(options: RunOptions) -> bool:
    """Whether to draw progress bars: ``options.progress_bars``, else when stderr is a terminal."""
    return sys.stderr.isatty() if options.progress_bars is None else options.progress_bars


@dataclass(frozen=True)
class RunEvent:
    """One run of a grid dealt with: trained ("ok" or "failed"), or "busy" (another process holds it)."""

    table: str
    label: str
    status: str
    index: int  # 1-based, in grid order
    total: int
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.table}: {self.index}/{self.total} {self.label}: {self.status} in {format_duration(self.seconds)}"


def _log_busy(event: RunEvent) -> None:
    """What a lone process says of a run another process is training (--jobs workers say nothing)."""
    if event.status == "busy":
        log(f"run {event.label} is being trained by another process: skipped")


@dataclass(frozen=True)
class RunOptions:
    """How ``reproduce`` treats the runs of its grid, and where it writes."""

    results_root: Path = Path("results")
    reports_root: Path = Path("reports")
    force: bool = False  # retrain runs that already have a result
    redo_before: str | None = None  # retrain runs stored before this ISO 8601 UTC time, keep newer ones
    shard: tuple[int, int] | None = None  # shard i of n only (grid.shard: by run id)
    only_runs: frozenset[str] | None = None  # these run ids only: a Slurm task's share
    strict_data: bool = False  # NaN / inf features are errors (data.strict; the run id does not change)
    render: bool = True  # recipes.reproduce: render the touched tables' reports and the index afterwards
    raise_render_errors: bool = False  # recipes.reproduce: a rendering error raises instead of one line
    run_fn: RunFn | None = None  # default: egmf_core.run.run_experiment (dataset_statistics for Table 1)
    group: int | str = 1  # >1 or "auto": runs trained at once over one backbone (execution.grouped); 1: each alone
    group_fn: Callable[..., list] | None = None  # default: egmf_core.group.run_group (used when group > 1)
    train: bool = True  # False: collect only, a run without an ok result counts as failed (--jobs, after its workers)
    progress_bars: bool | None = None  # None: when stderr is a terminal (the CLIs: off with $EGMF_NO_PROGRESS=1)
    on_run: Callable[[RunEvent], None] | None = None  # each run trained or skipped as busy (default: _log_busy)
    log: Callable[[str], None] | None = None  # warnings and failures, one line each (default: runner.log)

    def say(self, line: str) -> None:
        (self.log or log)(line)

    def report_run(self, event: RunEvent) -> None:
        (self.on_run or _log_busy)(event)


@dataclass
class Summary:
    """What one ``reproduce`` call did, and its one-line account."""

    table: str
    profile: str
    runs: int = 0  # distinct runs in this (possibly sharded) grid
    trained: int = 0  # ran now (failed ones included)
    cached: int = 0  # valid run file already there
    failed: int = 0  # ran now and failed
    seconds: float = 0.0
    shard: tuple[int, int] | None = None
    csv: Path | None = None
    report: Path | None = None
    report_error: str | None = None
    busy: int = 0  # held by another process's lock (being trained there): skipped
    failures: list[str] = field(default_factory=list)  # one line per failed run
    corrupt: list[str] = field(default_factory=list)  # corrupt run files (redone) and CSVs (rebuilt)

    def line(self) -> str:
        where = f"{self.profile}, shard {self.shard[0]}/{self.shard[1]}" if self.shard else self.profile
        target = self.report if self.report is not None else self.csv
        tail = f" -> {target}" if target is not None else ""
        if self.report_error:
            tail += f" ({self.report_error})"
        extra = f", {self.busy} busy in another process" if self.busy else ""
        if self.corrupt:
            extra += f", {len(self.corrupt)} corrupt files replaced"
        return (f"{self.table} [{where}]: {self.runs} runs ({self.trained} trained, {self.cached} cached, "
                f"{self.failed} failed{extra}) in {format_duration(self.seconds)}{tail}")

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.report_error is None


def format_duration(seconds: float) -> str:
    """3m12s, 1h02m03s."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# ---- one table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TableGrid:
    """One table's grid, expanded once: ``cells``, every row and dataset under the command's seeds
    and ``--set`` (what the table's CSV is made of), and ``chosen``, those of ``--rows`` /
    ``--datasets`` (what is trained, before ``shard`` / ``only_runs``)."""

    grid: Grid
    spec: TableSpec
    cells: list[Cell]
    chosen: list[Cell]


def expand_table(grid: Grid) -> TableGrid:
    """One table's ``TableGrid``."""
    spec = grid.spec()
    cells = expand(spec, grid.profile, replace(grid.args, rows=None, datasets=None), check_roots=False)
    chosen = narrow(cells, spec, grid.args)
    if grid.profile == "paper":  # the roots of what is trained only: a dataset not asked for may be absent
        for dataset, backbone in dict.fromkeys((c.dataset, c.config.model.backbone) for c in chosen):
            check_paper_roots(grid.args.data_root, grid.args.model_root if spec.trains else None,
                              datasets=[dataset], backbones=[backbone] if spec.trains else [])
    return TableGrid(grid, spec, cells, chosen)


def expand_tables(grid: Grid) -> list[TableGrid]:
    """Each table of ``grid`` (one, or every table of "all"), expanded."""
    return [expand_table(table) for table in grid.tables()]


def select_runs(cells: list[Cell], options: RunOptions) -> dict[str, Cell]:
    """The distinct runs (id -> first cell) left after the ``shard`` and ``only_runs`` filters."""
    if options.shard is not None:
        cells = shard_cells(cells, *options.shard)
    if options.only_runs is not None:
        cells = [c for c in cells if c.run_id in options.only_runs]
    return unique_runs(cells)


def preflight_tables(tables: list[TableGrid], options: RunOptions) -> None:
    """The paper profile's data and model roots, checked before anything is trained or written."""
    for t in tables:
        if t.grid.profile == "paper":
            preflight(select_runs(t.chosen, options).values(), data_root=t.grid.args.data_root,
                      model_root=t.grid.args.model_root)


def run_table(table: TableGrid, options: RunOptions = RunOptions()) -> Summary:
    """Train the runs of one expanded table that have no valid "ok" run file (see the module
    docstring); tabulating and rendering are the caller's (``benchmarks.recipes``).

    ``options.redo_before`` retrains the runs stored before it and keeps those stored since:
    ``--force`` for processes that share one grid (``--jobs`` workers), so a run one of them
    retrained is not retrained by the next. An unexpected exception inside a run becomes a
    failed run with a one-line error; a ValueError (bad config, data or model input) propagates.
    """
    t0 = time.monotonic()
    runs = select_runs(table.chosen, options)
    summary = Summary(table.spec.name, table.grid.profile, runs=len(runs), shard=options.shard)
    train_runs(table.spec, runs, table.grid, options, summary)
    summary.seconds = time.monotonic() - t0
    return summary


def run_tables(grid: Grid, options: RunOptions = RunOptions(), tables: list[TableGrid] | None = None) -> list[Summary]:
    """``run_table`` for each table of ``grid`` (expanded and preflighted here unless ``tables`` is given)."""
    if tables is None:
        tables = expand_tables(grid)
        preflight_tables(tables, options)
    return [run_table(t, options) for t in tables]


def train_runs(spec: TableSpec, runs: dict[str, Cell], grid: Grid, options: RunOptions, summary: Summary) -> None:
    """Train each run that has no valid "ok" file (all with ``force``), one at a time, and store it."""
    from tqdm import tqdm

    root = Path(options.results_root)
    store.sweep_temp_files(root / grid.profile)
    bars = progress_enabled(options)
    worker = _RunTask(grid, options, summary, bars)
    size = group_size(options.group)
    grouped = size != 1 and spec.trains and options.train and (options.run_fn is None or options.group_fn)
    with tqdm(total=len(runs), desc=f"{spec.name} [{grid.profile}]", unit="run", position=0, disable=not bars,
              dynamic_ncols=True) as grid_bar:
        if grouped:
            from benchmarks.execution.grouped import train_in_groups

            group_fn = options.group_fn or _default_group_fn(grid.profile)
            train_in_groups(worker, list(runs.items()), size, group_fn, advance=lambda: grid_bar.update(1))
            return
        for index, (run_id, cell) in enumerate(runs.items(), 1):
            worker.handle(run_id, cell, index, len(runs))
            grid_bar.update(1)


def group_size(requested: int | str) -> int | str:
    """``--group``: a number as given; "auto" stays "auto" on a GPU (sized from its memory by
    egmf_core.group) and is ``egmf_core.group.CPU_GROUP`` (1: each run alone) without one."""
    if requested != "auto":
        return requested
    import torch

    from egmf_core.group import auto_group_size

    return "auto" if torch.cuda.is_available() else auto_group_size("cpu")


class _RunTask:
    """One run of a grid: reuse its stored result, skip it when another process holds it, or
    train and store it (under its lock, with its checkpoint directory)."""

    def __init__(self, grid: Grid, options: RunOptions, summary: Summary, bars: bool):
        self.grid, self.options, self.summary, self.bars = grid, options, summary, bars
        self.fn: RunFn | None = options.run_fn
        self.context = _RunContext(grid.args.data_root, grid.args.model_root, options.strict_data)

    def handle(self, run_id: str, cell: Cell, index: int, total: int) -> None:
        lock = self.claim(run_id, cell, index, total)
        if lock is None:
            return
        try:
            self._train(run_id, cell)
            self.report_trained(cell, index, total)
        finally:
            lock.release()

    def report_trained(self, cell: Cell, index: int, total: int) -> None:
        self.options.report_run(RunEvent(cell.table, cell.label, self.last_status, index, total, self.last_seconds))

    def claim(self, run_id: str, cell: Cell, index: int, total: int) -> store.RunLock | None:
        """The run's lock, held, when it is to be trained now (the caller releases it); None when
        it is stored (cached), held by another process (busy) or this pass only collects."""
        opts, profile, root = self.options, self.grid.profile, Path(self.options.results_root)
        path = store.run_path(root, profile, run_id)
        ckpt, lock_file = store.checkpoint_dir(root, profile, run_id), store.lock_path(root, profile, run_id)
        if not opts.force and self._stored_ok(path, cell, report=True):
            self.summary.cached += 1
            if ckpt.exists() or lock_file.exists():  # left by a kill after the run file was written
                with store.RunLock(lock_file) as lock:
                    if lock.acquired:  # (a --force elsewhere holds it while retraining)
                        remove_checkpoint(ckpt)
            return None
        if not opts.train:
            self._count_untrained(run_id, cell, path)
            return None
        lock = store.RunLock(lock_file)
        if not lock.acquire():
            self.summary.busy += 1
            opts.report_run(RunEvent(cell.table, f"{run_id} ({cell.label})", "busy", index, total))
            return None
        if not opts.force and self._stored_ok(path, cell, report=False):  # finished elsewhere meanwhile
            self.summary.cached += 1
            lock.release()
            return None
        return lock

    def _train(self, run_id: str, cell: Cell) -> None:
        ckpt, prior = self.prepare(run_id)
        t_run = time.monotonic()
        if self.fn is None:
            self.fn = _default_run_fn(cell)
        outcome, resolved = _execute(cell, self.fn, self.context, self.bars, ckpt)
        self.store(run_id, cell, outcome, resolved, prior, time.monotonic() - t_run)

    def prepare(self, run_id: str) -> tuple[Path, str | None]:
        """Before a claimed run trains: its checkpoint folder (emptied for a redo; a requeued task
        resumes what it checkpointed since) and the checksum of its stored ok record, if any."""
        opts, root = self.options, Path(self.options.results_root)
        ckpt = store.checkpoint_dir(root, self.grid.profile, run_id)
        if opts.force or (opts.redo_before is not None and _checkpointed_before(ckpt, opts.redo_before)):
            remove_checkpoint(ckpt)
        return ckpt, _ok_checksum(store.run_path(root, self.grid.profile, run_id))

    def store(self, run_id: str, cell: Cell, outcome: RunOutcome, resolved, prior: str | None, seconds: float,
              **extra_provenance) -> None:
        """Write a trained run's file (unless another process stored an ok one meanwhile) and drop
        its checkpoint."""
        opts, summary, root = self.options, self.summary, Path(self.options.results_root)
        path = store.run_path(root, self.grid.profile, run_id)
        self.last_status, self.last_seconds = outcome.status, seconds
        if outcome.status != "ok" and _ok_checksum(path) not in (None, prior):
            summary.cached += 1  # another process stored an ok result meanwhile: keep it
        else:
            prov = self.context.provenance(outcome, resolved, cell.trains, cell.config.data.root, **extra_provenance)
            store.write_run(opts.results_root, self.grid.profile,
                            store.make_record(run_id, cell.identity(), outcome.to_dict(), prov))
            summary.trained += 1
            if outcome.status != "ok":
                summary.failed += 1
                summary.failures.append(f"run {run_id} ({cell.label}) failed: {outcome.error}")
                opts.say(summary.failures[-1])
        remove_checkpoint(store.checkpoint_dir(root, self.grid.profile, run_id))

    def _count_untrained(self, run_id: str, cell: Cell, path: Path) -> None:
        """Collect-only: a run with no ok result is a failure, with its stored error if any."""
        try:
            error = store.read_run(path)["outcome"].get("error") if path.exists() else None
        except store.CorruptResult:  # already reported by _stored_ok
            error = None
        self.summary.failed += 1
        self.summary.failures.append(f"run {run_id} ({cell.label}) failed: {error or 'not trained (no run file)'}")

    def _stored_ok(self, path: Path, cell: Cell, *, report: bool) -> bool:
        """Whether a valid "ok" run file is there (stored at ``redo_before`` or later, when given);
        a corrupt one is reported (when ``report``: once per run) and will be redone."""
        try:
            return stored_ok(path, self.options.redo_before)
        except store.CorruptResult as e:
            if report:
                self.summary.corrupt.append(str(e))
                self.options.say(f"warning: {e}; redoing run {cell.label}")
            return False


def pending_runs(grid: Grid, options: RunOptions = RunOptions()) -> int:
    """How many distinct runs ``reproduce`` (or ``reproduce_all`` for "all") would train now:
    every run with ``force``, else those without a valid "ok" run file (stored at
    ``redo_before`` or later, when given). A run that two tables share counts once. For the
    progress bar of ``--jobs``."""
    runs: dict[str, Cell] = {}
    for table in grid.tables():
        runs.update(unique_runs(table.cells()))
    root = Path(options.results_root)
    stored = (_quiet_stored_ok(store.run_path(root, grid.profile, run_id), options.redo_before) for run_id in runs)
    return sum(1 for ok in stored if options.force or not ok)


def stored_ok(path: Path, not_before: str | None = None) -> bool:
    """Whether a valid "ok" run file is at ``path`` (stored at ``not_before`` or later, when
    given); raises ``store.CorruptResult`` for a corrupt one."""
    if not path.exists():
        return False
    record = store.read_run(path)
    return record["outcome"]["status"] == "ok" and (
        not_before is None or str(record["provenance"].get("timestamp", "")) >= not_before)


def _quiet_stored_ok(path: Path, not_before: str | None) -> bool:
    try:
        return stored_ok(path, not_before)
    except store.CorruptResult:
        return False


def _checkpointed_before(ckpt: Path, when: str) -> bool:
    """Whether the run's last checkpoint was written before ``when`` (ISO 8601 UTC)."""
    from datetime import datetime, timezone

    from egmf_core.checkpoint import POINTER

    pointer = ckpt / POINTER
    if not pointer.is_file():
        return ckpt.exists()  # a folder without a complete checkpoint: nothing worth keeping
    return datetime.fromtimestamp(pointer.stat().st_mtime, tz=timezone.utc) < datetime.fromisoformat(when)


def _ok_checksum(path: Path) -> str | None:
    """The checksum of the valid "ok" record at ``path``, else None."""
    try:
        record = store.read_run(path) if path.exists() else None
    except store.CorruptResult:
        return None
    return record["checksum"] if record is not None and record["outcome"]["status"] == "ok" else None


def _default_run_fn(cell: Cell) -> RunFn:
    if not cell.trains:
        from benchmarks.execution.dataset_stats import dataset_statistics

        return dataset_statistics

    def run(cfg, *, progress=None, checkpoint_dir=None):  # imported on first use: torch loads only to train
        from benchmarks.execution.profiles import CHECKPOINT_MINUTES, run_threads
        from egmf_core.run import run_experiment

        numerics.pin_kernels()  # exact CPU sqrt (pinned mode), in whichever process trains
        return run_experiment(cfg, progress=progress, checkpoint_dir=checkpoint_dir,
                              checkpoint_minutes=CHECKPOINT_MINUTES.get(cfg.profile), threads=run_threads(cfg.profile))

    return run


def _default_group_fn(profile: str):
    def run(items, *, group_size: int, on_done):  # imported on first use, as _default_run_fn
        from benchmarks.execution.profiles import CHECKPOINT_MINUTES, run_threads
        from egmf_core.group import run_group

        numerics.pin_kernels()
        return run_group(items, group_size=group_size, on_done=on_done,
                         checkpoint_minutes=CHECKPOINT_MINUTES.get(profile), threads=run_threads(profile))

    return run


class _RunContext:
    """What every run of one grid shares: roots, and the provenance computed once."""

    def __init__(self, data_root, model_root, strict_data: bool = False):
        self.data_root, self.model_root, self.strict_data = data_root, model_root, strict_data
        self._git_rev: str | None = None
        self._versions: dict[str, str] | None = None

    def provenance(self, outcome: RunOutcome, resolved, trains: bool = True, data_marker: str | None = None,
                   **extra) -> dict:
        """Where a number came from. ``data_marker``: the data root as the grid wrote it (``<repo>/...``,
        ``<data-root>``), never this machine's path; the data files' own identity is in the outcome."""
        if self._git_rev is None:
            self._git_rev, self._versions = provenance.process_git_revision(), provenance.package_versions()
        source = getattr(outcome, "model_source", None) or (model_source(resolved) if trains else "none (no model)")
        return provenance.collect(
            git_rev=self._git_rev,
            versions=self._versions,
            model_source=source,
            trust_remote_code=resolved.model.trust_remote_code,
            device=outcome.device,
            data_root=data_marker if data_marker is not None else resolved.data.root,
            numerics=numerics.settings(),
            **extra,
        )


def _execute(cell: Cell, fn: RunFn, context: _RunContext, bars: bool, checkpoint_dir: Path | None = None):
    """Run one cell; (outcome, resolved config). Unexpected errors become a failed outcome; bad
    input and write errors (ValueError, e.g. a full disk) end the grid with a one-line message."""
    resolved = resolve_run_config(cell.config, data_root=context.data_root, model_root=context.model_root,
                                  strict_data=context.strict_data)
    from tqdm import tqdm

    with tqdm(total=1, desc=cell.label, unit="step", position=1, leave=False, disable=not bars,
              dynamic_ncols=True) as bar:

        def progress(step: int, total: int, message: str = "") -> None:
            if bar.total != max(int(total), 1):  # first call (or a new phase): restart the clock
                bar.reset(total=max(int(total), 1))
            bar.n = min(int(step), bar.total)
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        try:
            outcome = fn(resolved, progress=progress, checkpoint_dir=checkpoint_dir)
        except ValueError:
            raise  # bad config, data or model input: the CLI reports it in one line
        except Exception as e:  # a crash inside one run must not end the grid
            outcome = RunOutcome(status="failed", error=one_line(f"{type(e).__name__}: {e}"))
    if not isinstance(outcome, RunOutcome):
        raise TypeError(f"run function returned {type(outcome).__name__}, expected RunOutcome")
    return outcome, resolved
