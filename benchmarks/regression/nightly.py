"""The nightly regression check: reproduce the nightly tables, compare with the committed baseline.

    python -m benchmarks.regression.nightly [--profile smoke|paper] [--tables main_erc,main_msa]
        [--data-root DIR] [--model-root DIR] [--results-root results] [--reports-root reports]
        [--baseline FILE] [--tolerance-k 3] [--force] [--skip-reproduce] [--update-baseline]

Reproduces each table with ``benchmarks.recipes.reproduce`` (cached runs are reused; ``--force``
retrains them), then compares the test split of ``results/<profile>/<table>.csv`` with
``results/baselines/<profile>.csv`` (rule and verdicts: ``benchmarks.regression.baselines``) and writes
``reports/<profile>/regression.md`` atomically, appending it to ``$GITHUB_STEP_SUMMARY`` when set.

``--update-baseline`` rewrites the selected tables' rows of the baseline from the latest results
(other tables' rows are kept); it refuses when a run failed or a table has no results. It is the
only way the baseline changes.

The grid per profile (tables, seeds, config overrides for every run) is data:
``ablations/nightly.toml``. The paper profile's is the main tables on the real data with a fixed
step budget and 2 seeds (``python -m benchmarks plan nightly --profile paper`` prices it); its
runs carry their overrides in their config, so they never mix with full runs of the same table.

Exit codes: 0 no regression (or baseline written); 1 a regression, a missing cell or a failed run;
2 bad input (one line on stderr: unknown table or profile, missing roots, malformed baseline,
refusing to update); 3 no baseline file yet: the results are stored and the report says how to
create it (``nox -s nightly -- --profile PROFILE --update-baseline``, then commit it); 130
interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from benchmarks.commandline import OneLineParser, error_line
from benchmarks.execution import numerics
from benchmarks.execution.nightly_grid import NightlyGrid, NightlyInputError, nightly_grid
from benchmarks.regression import baselines

COMPARED_SPLIT = "test"
NO_BASELINE_EXIT = 3  # results stored, no baseline to compare with yet
DEFAULT_SPREAD_ROOT = Path(".cache") / "numerics-spread"
REQUIRED_RESULT_COLUMNS = ("table", "row", "dataset", "seed", "split", "metric", "value", "status")


@dataclass
class NightlyResult:
    """What one nightly call did: its exit code, the comparison and where the report went."""

    exit_code: int
    comparison: pd.DataFrame | None = None
    report: Path | None = None
    baseline: Path | None = None
    lines: list[str] = field(default_factory=list)  # what the CLI prints


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.regression.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="smoke", help="smoke (default) or paper")
    p.add_argument("--tables", help="comma-separated table names or numbers (default: the profile's in "
                                    "ablations/nightly.toml)")
    p.add_argument("--data-root", help="paper profile: datasets under DIR/<name>/ (or $EGMF_DATA_ROOT)")
    p.add_argument("--model-root", help="paper profile: backbone weights under DIR (or $EGMF_MODEL_ROOT)")
    p.add_argument("--results-root", type=Path, default=Path("results"), help="default: results")
    p.add_argument("--reports-root", type=Path, default=Path("reports"), help="default: reports")
    p.add_argument("--baseline", type=Path, help="default: <results-root>/baselines/<profile>.csv")
    p.add_argument("--tolerance-k", type=float, default=baselines.DEFAULT_K,
                   help="k in max(floor, k*std*sqrt(2/n)), used when writing the baseline (default 3)")
    p.add_argument("--force", action="store_true", help="retrain the tables' runs even when results exist")
    p.add_argument("--skip-reproduce", action="store_true", help="compare the stored results only (no training)")
    p.add_argument("--update-baseline", action="store_true",
                   help="rewrite these tables' baseline rows from the latest results (on purpose only)")
    p.add_argument("--settings", default="",
                   help="with --update-baseline: also train the tables under these numerical settings "
                        f"({', '.join(numerics.SETTINGS)}), each into its own results root under --spread-root, "
                        "and record each cell's spread across them (smoke: e.g. native,aten-default)")
    p.add_argument("--repeats", type=int, default=1,
                   help="with --update-baseline: train the tables N-1 more times and record the run-to-run "
                        "spread (paper profile on GPUs: non-deterministic kernels; default 1)")
    p.add_argument("--spread-root", type=Path, default=DEFAULT_SPREAD_ROOT,
                   help=f"results roots of --settings / --repeats trainings, kept to resume (default: {DEFAULT_SPREAD_ROOT})")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_tables(text: str) -> list[str]:
    """Table names (numbers resolved) in the order given, without duplicates."""
    from benchmarks.execution.tables import load_table

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise NightlyInputError("--tables: name at least one table")
    out: list[str] = []
    for name in names:
        spec = load_table(name)
        if not spec.trains:
            raise NightlyInputError(f"--tables: {spec.name!r} trains nothing (its numbers are data statistics)")
        if spec.name not in out:
            out.append(spec.name)
    return out


def load_table_results(profile: str, table: str, results_root: Path) -> pd.DataFrame:
    """The tidy rows of ``results/<profile>/<table>.csv`` (empty when the file does not exist)."""
    path = Path(results_root) / profile / f"{table}.csv"
    if not path.is_file():
        return pd.DataFrame(columns=list(REQUIRED_RESULT_COLUMNS))
    df = pd.read_csv(path, dtype={"table": str, "row": str, "dataset": str, "split": str, "metric": str,
                                  "status": str}, keep_default_na=False)
    missing = [c for c in REQUIRED_RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise NightlyInputError(f"{path}: missing column {missing[0]!r}")
    df["value"] = pd.to_numeric(df["value"].replace("", float("nan")), errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce")
    return df


def compared_results(profile: str, tables: list[str], results_root: Path) -> pd.DataFrame:
    """The selected tables' rows of the compared split, all tables in one frame."""
    frames = [load_table_results(profile, t, results_root) for t in tables]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED_RESULT_COLUMNS))
    return df[df["split"].astype(str) == COMPARED_SPLIT].reset_index(drop=True)


def write_report(markdown: str, path: Path) -> Path:
    """Replace the report atomically, and append it to the GitHub job summary when there is one."""
    from egmf_core.atomic import atomic_write_bytes

    atomic_write_bytes(Path(path), markdown.encode("utf-8"))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n\n")
    return Path(path)


def reproduce_tables(opts: NightlyOptions, tables: list[str], grid: NightlyGrid,
                     run_fn: Callable | None = None) -> list:
    """recipes.reproduce for each table on the nightly grid's seeds and overrides; their Summary objects."""
    from benchmarks import recipes
    from benchmarks.commandline import progress_bars_setting
    from benchmarks.execution import runner
    from benchmarks.execution.grid import Grid, GridArgs

    args = GridArgs(seeds=grid.seeds, rows=grid.rows, overrides=grid.overrides, data_root=opts.data_root, model_root=opts.model_root)
    options = runner.RunOptions(results_root=Path(opts.results_root), reports_root=Path(opts.reports_root),
                                force=opts.force, render=opts.render, run_fn=run_fn,
                                progress_bars=progress_bars_setting())
    return [s for t in tables for s in recipes.reproduce(Grid(t, opts.profile, args), options)]


def of_grid(results: pd.DataFrame, grid: NightlyGrid) -> pd.DataFrame:
    """The result rows of the grid's rows, of runs made with exactly its overrides (full runs of a table
    are not nightly runs)."""
    if grid.rows is not None and "row" in results.columns:
        results = results[results["row"].isin(grid.rows)].reset_index(drop=True)
    if "config_json" not in results.columns or results.empty:
        return results
    import json

    def overrides(raw) -> dict:
        try:
            return json.loads(raw).get("overrides") or {}
        except (TypeError, ValueError, AttributeError):
            return {}

    want = json.loads(json.dumps(grid.overrides, sort_keys=True))
    return results[results["config_json"].map(lambda raw: overrides(raw) == want)].reset_index(drop=True)


def no_baseline_report(profile: str, baseline_file: Path, notes: list[str]) -> str:
    """The regression report when there is no baseline yet: what ran and how to create one."""
    lines = [f"# Nightly regression check ({profile}): **no baseline yet**", "",
             f"`{baseline_file}` does not exist, so nothing was compared. The results of this run are stored.",
             "Create the baseline from them, review it and commit it:", "",
             "```", f"nox -s nightly -- --profile {profile} --update-baseline",
             f"git add {baseline_file}", "```", "",
             f"Exit code {NO_BASELINE_EXIT} (documented in `benchmarks/regression/nightly.py`)."]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class NightlyOptions:
    """One nightly call, as its command line gives it (see the module docstring)."""

    profile: str = "smoke"
    tables: tuple[str, ...] | None = None  # default: the profile's in ablations/nightly.toml
    data_root: str | Path | None = None
    model_root: str | Path | None = None
    results_root: Path = Path("results")
    reports_root: Path = Path("reports")
    baseline: Path | None = None  # default: <results_root>/baselines/<profile>.csv
    k: float = baselines.DEFAULT_K
    update_baseline: bool = False
    reproduce: bool = True  # False: compare the stored results only
    force: bool = False
    render: bool = True
    settings: tuple[str, ...] = ()  # with update_baseline: numerical settings to measure the spread under
    repeats: int = 1  # with update_baseline: trainings under this process's own setting
    spread_root: Path = DEFAULT_SPREAD_ROOT


def run_nightly(opts: NightlyOptions, *, run_fn: Callable | None = None,
                train_variant: Callable | None = None) -> NightlyResult:
    """Reproduce (unless ``opts.reproduce`` is off), then compare or, with ``update_baseline``,
    rewrite. ``run_fn`` and ``train_variant`` replace the training (tests).

    Raises ValueError (exit 2 in the CLI) on bad input; returns exit code 1 on a regression.
    """
    from benchmarks.execution.profiles import check_profile

    profile = check_profile(opts.profile)
    grid = nightly_grid(profile)
    tables = list(opts.tables or grid.tables)
    if not opts.k > 0:
        raise NightlyInputError(f"--tolerance-k must be positive, got {opts.k}")
    variants = spread_variants(list(opts.settings), opts.repeats, opts.update_baseline)
    results_root, reports_root = Path(opts.results_root), Path(opts.reports_root)
    baseline_file = Path(opts.baseline) if opts.baseline is not None else baselines.baseline_path(profile, results_root)
    missing_baseline = not opts.update_baseline and not baseline_file.is_file()
    if not opts.update_baseline and not missing_baseline:
        base = _baseline_of(baseline_file, tables)  # before training: a malformed baseline is bad input
    summaries = reproduce_tables(opts, tables, grid, run_fn) if opts.reproduce else []
    lines = [s.line() for s in summaries]
    failures = [f for s in summaries for f in s.failures]
    results = of_grid(compared_results(profile, tables, results_root), grid)
    if missing_baseline:
        return _without_baseline(profile, baseline_file, reports_root, lines, failures)
    if opts.update_baseline:
        others = spread_results(opts, tables, variants, grid, train_variant or train_under_setting)
        if variants:
            lines.append(f"numerics spread over {len(variants) + 1} trainings: {numerics.mode()} (these results), "
                         + ", ".join(name for name, _ in variants) + f" (under {opts.spread_root})")
        return _update(profile, tables, results, baseline_file, opts.k, failures, lines, others)
    return _compare(profile, results, base, baseline_file, opts.k, reports_root, lines, failures)


def _baseline_of(baseline_file: Path, tables: list[str]) -> pd.DataFrame:
    """The baseline's rows of ``tables``; a one-line error when a table has none."""
    base = baselines.read_baseline(baseline_file)
    base = base[base["table"].isin(tables)]
    lacking = [t for t in tables if t not in set(base["table"])]
    if lacking:
        raise baselines.BaselineError(f"{baseline_file}: no rows for table {lacking[0]!r} (add them with "
                                      f"--update-baseline --tables {lacking[0]})")
    return base


def _without_baseline(profile: str, baseline_file: Path, reports_root: Path, lines: list[str],
                      failures: list[str]) -> NightlyResult:
    """No baseline yet: the results stay stored, and the report says how to create one."""
    report = write_report(no_baseline_report(profile, baseline_file, lines + failures),
                          reports_root / profile / "regression.md")
    lines = [*lines, f"no baseline at {baseline_file}: results stored; create it with "
             f"`nox -s nightly -- --profile {profile} --update-baseline` and commit it", f"report: {report}"]
    return NightlyResult(NO_BASELINE_EXIT, None, report, baseline_file, lines)


def _compare(profile: str, results: pd.DataFrame, base: pd.DataFrame, baseline_file: Path, k: float,
             reports_root: Path, lines: list[str], failures: list[str]) -> NightlyResult:
    """Compare the results with the baseline, write the regression report; exit code 1 on a regression."""
    comparison = baselines.compare(results, base, k=k)
    notes = lines + failures
    if (reports_root / profile / "cost.md").is_file():
        notes.append("measured cost ratios (EGMF's share of a step, scoring vs generation): [cost.md](cost.md)")
    markdown = baselines.render_markdown(comparison, profile, baseline_file=str(baseline_file), k=k, notes=notes)
    report = write_report(markdown, reports_root / profile / "regression.md")
    lines.append(baselines.summary_line(comparison, profile).replace("**", ""))
    for _, r in comparison[comparison["verdict"].isin(baselines.FAILING)].iterrows():
        lines.append(f"  {r['verdict']}: {baselines.cell_label(r)} {r['metric']}: "
                     f"{baselines.change_text(r)} against tolerance {baselines.tolerance_text(r['metric'], r['tolerance'])}")
    lines.append(f"report: {report}")
    code = 1 if baselines.failed(comparison) or failures else 0
    return NightlyResult(code, comparison, report, baseline_file, lines)


def _update(profile: str, tables: list[str], results: pd.DataFrame, baseline_file: Path, k: float,
            failures: list[str], lines: list[str], others: list[pd.DataFrame] = ()) -> NightlyResult:
    """Rewrite the selected tables' baseline rows; refuse on failed or absent results."""
    if failures:
        raise NightlyInputError(f"refusing to update the baseline: {len(failures)} run(s) failed ({failures[0]})")
    for frame, where in [(results, baseline_file.parent.parent), *((o, "a --settings / --repeats root") for o in others)]:
        _check_results_complete(frame, tables, profile, where)
    new = baselines.make_baseline(results, k=k, others=list(others))
    old = baselines.read_baseline(baseline_file) if baseline_file.is_file() else None
    if old is not None:
        counts = baselines.verdict_counts(baselines.compare(results, old[old["table"].isin(tables)], k=k))
        lines.append("against the previous baseline: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    baselines.write_baseline(baselines.replace_tables(old, new), baseline_file)
    lines.append(f"baseline updated: {len(new)} cells of {', '.join(tables)} written to {baseline_file} "
                 f"(k = {k:g}); review and commit it")
    return NightlyResult(0, None, None, baseline_file, lines)


def _check_results_complete(results: pd.DataFrame, tables: list[str], profile: str, where) -> None:
    """Refuse a baseline from a table with no results, or with a failed or empty one."""
    for table in tables:
        rows = results[results["table"].astype(str) == table]
        if rows.empty:
            raise NightlyInputError(f"refusing to update the baseline: no {COMPARED_SPLIT} results for table "
                                    f"{table!r} under {where}/{profile}/ (reproduce it first)")
        bad = rows[(rows["status"].astype(str) != "ok") | rows["value"].isna()]
        if not bad.empty:
            r = bad.iloc[0]
            raise NightlyInputError(f"refusing to update the baseline: table {table!r} has a failed or empty result "
                                    f"({r['row']} / {r['dataset']} / seed {r['seed']} / {r['metric']})")


# ---- the spread across numerical settings (and GPU repeats) ---------------------------------------------

def spread_variants(settings: list[str], repeats: int, update_baseline: bool) -> list[tuple[str, str]]:
    """(results folder, numerical setting) of every extra training of the tables: the settings,
    then ``repeats - 1`` repeats under this process's own setting."""
    settings = [s for s in settings if s]
    if (settings or repeats != 1) and not update_baseline:
        raise NightlyInputError("--settings and --repeats go with --update-baseline (they measure a baseline's spread)")
    if repeats < 1:
        raise NightlyInputError(f"--repeats must be at least 1, got {repeats}")
    for name in settings:
        if name not in numerics.SETTINGS:
            raise NightlyInputError(f"--settings: unknown setting {name!r} (known: {', '.join(numerics.SETTINGS)})")
    own = numerics.mode()
    return [(name, name) for name in settings if name != own] + [(f"repeat-{i}", own) for i in range(2, repeats + 1)]


def train_under_setting(profile: str, table: str, setting: str, results_root: Path, *, data_root, model_root,
                        grid: NightlyGrid | None = None) -> None:
    """Train one table on the nightly grid (its seeds and overrides) in a fresh process under a
    numerical setting (resumable: stored runs are kept)."""
    import json
    import subprocess

    from benchmarks.execution.profiles import REPO_ROOT

    cmd = [sys.executable, "-m", "benchmarks", "reproduce", table, "--profile", profile,
           "--results-root", str(Path(results_root).resolve()), "--no-report"]
    if profile == "smoke":
        cmd += ["--jobs", str(os.cpu_count() or 1)]
    if grid is not None and grid.seeds:
        cmd.append("--seeds=" + ",".join(str(s) for s in grid.seeds))
    if grid is not None and grid.rows:
        cmd.append("--rows=" + ",".join(grid.rows))
    for key, value in (grid.overrides if grid is not None else {}).items():
        cmd.append(f"--set={key}={json.dumps(value)}")  # JSON scalars and lists read back as TOML literals
    for flag, value in (("--data-root", data_root), ("--model-root", model_root)):
        if value:
            cmd += [flag, str(value)]
    code = subprocess.run(cmd, env=numerics.setting_environment(setting), cwd=REPO_ROOT).returncode
    if code != 0:
        raise NightlyInputError(f"refusing to update the baseline: training {table!r} under setting {setting!r} "
                                f"into {results_root} failed (exit {code}); rerun to resume")


def spread_results(opts: NightlyOptions, tables: list[str], variants: list[tuple[str, str]], grid: NightlyGrid,
                   train: Callable) -> list[pd.DataFrame]:
    """The nightly grid's compared results under each variant, trained into ``spread_root/<folder>``."""
    frames = []
    for folder, setting in variants:
        root = Path(opts.spread_root) / folder
        for table in tables:
            train(opts.profile, table, setting, root, data_root=opts.data_root, model_root=opts.model_root, grid=grid)
        frames.append(of_grid(compared_results(opts.profile, tables, root), grid))
    return frames


def main(argv: list[str] | None = None) -> int:
    from benchmarks.cli import pin_numerics

    pin_numerics()  # first: before torch's first op
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        numerics.mode()  # a bad $EGMF_NUMERICS is bad input
        args = build_parser().parse_args(argv)
        result = run_nightly(NightlyOptions(
            profile=args.profile, tables=tuple(parse_tables(args.tables)) if args.tables else None,
            data_root=args.data_root, model_root=args.model_root, results_root=args.results_root,
            reports_root=args.reports_root, baseline=args.baseline, k=args.tolerance_k,
            update_baseline=args.update_baseline, reproduce=not args.skip_reproduce, force=args.force,
            settings=tuple(args.settings.split(",")), repeats=args.repeats, spread_root=args.spread_root))
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
