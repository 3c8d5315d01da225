"""The harness's commands as recipes: short functions that read as the steps they take.

``reproduce``: expand each table's grid (once), print the planner's estimate (paper), check
the paper profile's data and weights (preflight), train what is not stored (``execution.launchers``: here, ``--jobs`` workers
or a Slurm array), read the runs folder once, tabulate each table it touched from the cells it
expanded (``results.tabulate``), render those tables and the index (``reporting.report``). Each
step is one call a test can make alone. ``report`` and ``merge`` expanded no grid: they find a
table's cells among the run files (``grid.cells_on_disk``), then tabulate and render the same way.

This module sits above the three layers (execution -> run files, results -> CSVs, reporting ->
markdown) and is the only place that calls all three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks.commandline import one_line
from benchmarks.execution import launchers, runner
from benchmarks.execution.grid import Grid, cells_on_disk
from benchmarks.execution.profiles import check_profile
from benchmarks.execution.runner import RunOptions, Summary, TableGrid
from benchmarks.execution.tables import ABLATIONS_DIR, list_tables, load_table
from benchmarks.results import store, tabulate

# ---- reproduce ----------------------------------------------------------------------------------

def reproduce(grid: Grid, options: RunOptions = RunOptions(), how: launchers.Launch = launchers.Launch(), *,
              estimate: bool = False) -> list[Summary]:
    """``python -m benchmarks reproduce``: a summary per table (one for a Slurm submission)."""
    t0 = time.monotonic()
    tables = runner.expand_tables(grid)
    if estimate:
        print_estimate(grid, how)  # first: a paper user sees the cost even when the preflight refuses the roots
    runner.preflight_tables(tables, options)
    summaries = launchers.launch(grid, options, how, tables)
    runs = tabulate.load_runs(options.results_root, grid.profile)
    csvs = tabulate_tables(tables, runs, options, summaries)
    if options.render and csvs:
        render_summaries(grid, [p.stem for p in csvs], options, summaries)
    if len(summaries) == 1:
        summaries[0].seconds = time.monotonic() - t0
    return summaries


def print_estimate(grid: Grid, how: launchers.Launch) -> None:
    """The planner's one-line estimate before a paper grid starts (never stops it). On stdout:
    stderr stays one ``error:`` line when the grid then fails on bad input."""
    from benchmarks.execution import planner

    pricing = planner.Pricing(gpu=planner.detect_gpu(), gpus=how.shards or max(1, len(how.gpus or ())))
    try:
        plan = planner.make_plan(grid, pricing, check_roots=True)
    except ValueError:  # a bad filter or a missing root: reproduce itself says so in one line
        return
    print(planner.summary_block(plan), flush=True)


def tabulate_tables(tables: list[TableGrid], runs: dict[str, dict], options: RunOptions,
                    summaries: list[Summary]) -> list[Path]:
    """Each table's CSV, once: the cells its grid expanded, plus the seeds and settings other
    commands stored for it (a run another table shares at its own seeds), expanded for those
    only. A corrupt CSV is named in the table's summary and logged; the summaries get their CSVs."""
    csvs = []
    for t in tables:
        summary = _summary_of(summaries, t.spec.name)

        def corrupt(line: str, summary: Summary = summary) -> None:
            summary.corrupt.append(line)
            options.say(f"warning: {line}")

        cells = cells_on_disk(t.spec, t.grid.profile, runs, expanded=t.cells)  # + runs other tables share
        path = tabulate.write_table_csv(t.spec, cells, runs, store.table_csv_path(
            options.results_root, t.grid.profile, t.spec.name), on_corrupt=corrupt)
        if summary.table == t.spec.name or summary.csv is None:
            summary.csv = path
        csvs.append(path)
    return csvs


def render_summaries(grid: Grid, names: list[str], options: RunOptions, summaries: list[Summary]) -> None:
    """Render ``names`` and the index; each summary gets its report path or the rendering error."""
    paths, error = render_reports(grid.profile, names, results_root=options.results_root,
                                  reports_root=options.reports_root, strict=options.raise_render_errors,
                                  ablations_dir=grid.ablations_dir)
    by_table = {p.stem: p for p in paths}
    for s in summaries:
        s.report = by_table.get(s.table, paths[-1] if paths else None)
        s.report_error = error


def _summary_of(summaries: list[Summary], table: str) -> Summary:
    return next((s for s in summaries if s.table == table), summaries[0])


# ---- report, merge ------------------------------------------------------------------------------

def report_tables(table: str, profile: str, *, results_root: Path = Path("results"),
                  reports_root: Path = Path("reports"), ablations_dir: Path = ABLATIONS_DIR,
                  strict: bool = False) -> tuple[list[Path], str | None]:
    """``python -m benchmarks report``: rebuild the CSVs of ``table`` (or "all") from the run files
    and render their reports and the index."""
    check_profile(profile)
    names = list_tables(ablations_dir) if table == "all" else [load_table(table, ablations_dir).name]
    runs = tabulate.load_runs(results_root, profile, on_corrupt=lambda e: runner.log(f"warning: {e}"))
    csvs = tabulate_on_disk(names, profile, Path(results_root), runs, ablations_dir=ablations_dir,
                            write_empty=(table != "all"))
    if not csvs:
        return [], None
    return render_reports(profile, [p.stem for p in csvs], results_root=Path(results_root),
                          reports_root=Path(reports_root), strict=strict, ablations_dir=ablations_dir)


def tabulate_on_disk(names: list[str], profile: str, results_root: Path, runs: dict[str, dict], *,
                     ablations_dir: Path = ABLATIONS_DIR, write_empty: bool = False) -> list[Path]:
    """The CSVs of tables ``names`` from every run file of theirs in ``runs`` (for commands that
    expanded no grid); a table without runs gets a CSV only with ``write_empty`` or if it has one."""
    written = []
    for name in names:
        spec = load_table(name, ablations_dir)
        path = tabulate.write_table_csv(spec, cells_on_disk(spec, profile, runs), runs,
                                        store.table_csv_path(results_root, profile, name), write_empty=write_empty,
                                        on_corrupt=lambda line: runner.log(f"warning: {line}"))
        if path is not None:
            written.append(path)
    return written


@dataclass
class MergeSummary:
    stats: store.MergeStats
    tables: list[Path]

    def line(self, profile: str) -> str:
        s = self.stats
        return (f"merge [{profile}]: {s.copied} run files copied, {s.identical} already present, "
                f"{len(s.conflicts)} conflicts, {len(s.corrupt)} corrupt skipped; "
                f"{len(self.tables)} table CSVs rebuilt")


def merge(sources: list[Path], profile: str, results_root: Path = Path("results"), *,
          ablations_dir: Path = ABLATIONS_DIR, log: Callable[[str], None] = runner.log) -> MergeSummary:
    """``python -m benchmarks merge``: copy shard run files into results/<profile>/runs (checksums
    checked, newest wins on a conflict, each conflict logged), then rebuild every table CSV that
    has runs."""
    check_profile(profile)
    stats = store.merge_run_files([Path(s) for s in sources], profile, Path(results_root), log=log)
    runs = tabulate.load_runs(results_root, profile)
    return MergeSummary(stats, tabulate_on_disk(list_tables(ablations_dir), profile, Path(results_root), runs,
                                                ablations_dir=ablations_dir))


# ---- render -------------------------------------------------------------------------------------

def render_reports(profile: str, tables: list[str], *, results_root: Path, reports_root: Path,
                   strict: bool = False, ablations_dir: Path = ABLATIONS_DIR) -> tuple[list[Path], str | None]:
    """Render each table's report from its CSV, then the index; (report paths, error line or None).

    benchmarks.reporting.report (matplotlib and all) is imported here, on use; a rendering error is
    returned as one line (results are safe on disk) unless ``strict``.
    """
    from benchmarks.reporting import report

    # The contract is (profile, table, *, results_root, reports_root); a test's own ablations dir
    # is passed only when it is not the default.
    extra = {} if Path(ablations_dir) == ABLATIONS_DIR else {"ablations_dir": Path(ablations_dir)}
    paths: list[Path] = []
    try:
        for table in tables:
            paths.append(Path(report.render_table(profile, table, results_root=results_root,
                                                  reports_root=reports_root, **extra)))
        report.render_index(profile, results_root=results_root, reports_root=reports_root, **extra)
    except Exception as e:
        if strict:
            raise
        return paths, f"report failed: {type(e).__name__}: {one_line(str(e))}"
    return paths, None
