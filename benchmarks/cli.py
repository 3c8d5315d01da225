"""The command line: ``python -m benchmarks {reproduce,report,merge,list,plan}`` (thin: parse, call, print).

Exit codes: 0 done; 1 some runs failed or a report could not be rendered; 2 bad input or a
file that cannot be written, e.g. a full disk (one line on stderr, ``error: ...``; ``--debug``
shows the traceback instead); 130 interrupted (finished runs are saved, a run in progress
resumes from its last checkpoint: rerun the same command).

Nothing here reaches the network: ``main`` switches the Hugging Face libraries to offline mode
before anything imports them (weights come from local directories or the tiny twins), and turns
their own progress bars off unless HF_HUB_DISABLE_PROGRESS_BARS is set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.commandline import OneLineParser, error_line, offline_and_quiet, progress_bars_setting
from benchmarks.execution import numerics
from benchmarks.execution.grid import Grid, GridArgs, GridError, parse_names, parse_seeds, parse_sets, parse_shard
from benchmarks.execution.runner import RunOptions
from benchmarks.execution.tables import ABLATIONS_DIR

VALUE_FLAGS = ("--rows", "--datasets", "--seeds", "--shard")  # values may start with "-" ("-T,-A")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m benchmarks", description="Reproduce the EGMF paper's tables.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_reproduce(sub)
    p = sub.add_parser("report", help="rebuild table CSVs from stored runs and render reports (never trains)")
    p.add_argument("table", nargs="?", default="all", help='a table name or number, or "all" (default)')
    _add_common(p)
    m = sub.add_parser("merge", help="copy run files from shard result dirs into results/<profile>/runs")
    m.add_argument("sources", nargs="+", type=Path, metavar="DIR")
    _add_common(m)
    m.add_argument("--no-report", action="store_true", help="do not render reports after merging")
    _add_gpu_check(sub)
    _add_plan(sub)
    ls = sub.add_parser("list", help="the tables: number, name, caption, grid size")
    ls.add_argument("--profile", default="smoke")
    ls.add_argument("--ablations-dir", type=Path, default=ABLATIONS_DIR)
    ls.add_argument("--debug", action="store_true")
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="smoke", help="smoke (tiny twins, synthetic data) or paper")
    p.add_argument("--results-root", type=Path, default=Path("results"), help="default: results")
    p.add_argument("--reports-root", type=Path, default=Path("reports"), help="default: reports")
    p.add_argument("--ablations-dir", type=Path, default=ABLATIONS_DIR,
                   help="where the table files live (default: the repo's ablations/)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_reproduce(sub) -> None:
    r = sub.add_parser("reproduce", help="train (or reuse) the runs of a table and render its report")
    r.add_argument("table", help='a table name (main_msa), a paper number (3, S1) or "all"')
    _add_common(r)
    r.add_argument("--data-root", help="paper profile: datasets live in DIR/<name>/ (or $EGMF_DATA_ROOT)")
    r.add_argument("--model-root", help="paper profile: backbone weights under DIR (or $EGMF_MODEL_ROOT)")
    r.add_argument("--seeds", help="comma-separated seeds, e.g. 1111,1112 (default: the table's)")
    r.add_argument("--rows", help='comma-separated row names, e.g. "-T,-A"')
    r.add_argument("--datasets", help="comma-separated datasets, e.g. mosei,meld")
    r.add_argument("--set", action="append", dest="sets", metavar="KEY=VALUE",
                   help="override a config field in every run, e.g. train.max_steps=200 (repeatable; "
                        "TOML values: 3, 1e-4, true, [\"text\"]); part of each run's id and shown in reports")
    r.add_argument("--force", action="store_true", help="retrain runs that already have a result")
    r.add_argument("--redo-before", metavar="TIME",
                   help="retrain runs stored before TIME (ISO 8601 with a UTC offset); keep newer ones")
    r.add_argument("--shard", help="run shard i of n only, e.g. 0/4 (numbered from 0)")
    r.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="GPU profiles: runs sharing one GPU (--jobs auto = this x visible GPUs; gpu-check says which is best)")
    r.add_argument("--jobs", default="1",
                   help="local: N worker processes sharing the grid, one run each at a time (smoke: one per CPU core)")
    r.add_argument("--group", default="1", metavar="K|auto",
                   help="train up to K runs that share a backbone and a dataset at once, over one copy of its "
                        "weights (auto: from free GPU memory, or the measured CPU sweet spot); 1: each run alone")
    r.add_argument("--launcher", default="local", help="local (default) or slurm (needs submitit)")
    r.add_argument("--shards", type=int, help="slurm: array tasks (default: one per run)")
    r.add_argument("--slurm-partition", help="slurm: partition to submit to")
    r.add_argument("--trust-remote-code", action="store_true",
                   help="allow the backbone's own Python code from its weights directory (recorded in reports)")
    r.add_argument("--no-report", action="store_true", help="store results but do not render reports")
    r.add_argument("--strict-data", action="store_true",
                   help="NaN / inf features are errors (default: set to 0 and counted, as MMSA and MSE-Adapter do)")
    r.add_argument("--no-estimate", action="store_true",
                   help="paper profile: do not print the planner's cost estimate before the grid starts")


def _add_gpu_check(sub) -> None:
    g = sub.add_parser("gpu-check", help="build, train, evaluate and checkpoint each backbone; measure speed and memory")
    g.add_argument("--size", choices=("full", "tiny"), default="tiny", help="full: published architectures; tiny: twins")
    g.add_argument("--device", choices=("cuda", "cpu", "meta"), default="cpu",
                   help="meta: parameter counts and weight memory only (no GPU)")
    g.add_argument("--backbones", default="glm3,glm4,llama3", help="comma-separated (default: all three)")
    g.add_argument("--steps", type=int, default=10, help="timed training steps per backbone (default 10)")
    g.add_argument("--jobs-per-gpu", default="1,2,3,4", help="K runs sharing one GPU to measure (CUDA only)")
    g.add_argument("--group", default="", metavar="K,K,...",
                   help="run-group sizes to measure (e.g. 1,2,4,8,16): K runs over one backbone copy")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="measure train.compile too (default: on CUDA only)")
    g.add_argument("--budget-s", type=float, default=330.0, help="skip optional phases past this many seconds")
    g.add_argument("--json", type=Path, help="write the measurements as JSON here")
    g.add_argument("--report", type=Path, help="write the markdown report here (e.g. reports/scale/gpu_check.md)")
    g.add_argument("--debug", action="store_true")


def _add_plan(sub) -> None:
    pl = sub.add_parser("plan", help="estimate a paper grid's GPU-hours and wall time (no GPU, data or weights)")
    pl.add_argument("table", help='a table name or number, "all", or "nightly" (ablations/nightly.toml)')
    pl.add_argument("--profile", default="paper", help="paper (the planner prices the full-size backbones)")
    pl.add_argument("--gpu", default="h100", help="h100 (default), h200 or a100-80g")
    pl.add_argument("--gpus", type=int, default=1, help="GPUs for the wall time (default 1)")
    pl.add_argument("--jobs-per-gpu", type=int, help="runs sharing one GPU (default: gpu-check's best, else 1)")
    pl.add_argument("--group", type=int, help="price run groups of K (gpu-check --group measured them; "
                                              "default: the fastest measured setting)")
    pl.add_argument("--from", dest="measured", type=Path, metavar="GPU_CHECK_JSON",
                    help="use the step and evaluation times a gpu-check measured instead of the FLOP count")
    pl.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                    help="price the grid with this override, as reproduce --set (e.g. train.compile=true)")
    pl.add_argument("--ablations-dir", type=Path, default=ABLATIONS_DIR)
    pl.add_argument("--debug", action="store_true")


def _join_dash_values(argv: list[str]) -> list[str]:
    """Turn ``--rows -T,-A`` into ``--rows=-T,-A`` (argparse would read -T as an option)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and not argv[i + 1].startswith("--"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    pin_numerics()  # first: before torch's first op, for this process and the --jobs workers it starts
    offline_and_quiet()  # before transformers / huggingface_hub are imported
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv[:1] == ["reproduce"]:
        from benchmarks.execution.provenance import process_git_revision

        process_git_revision()  # the revision of the code this process runs, before a long grid
    try:
        numerics.mode()  # a bad $EGMF_NUMERICS is bad input
        args = build_parser().parse_args(_join_dash_values(argv))
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved and a run in progress resumes from its last checkpoint; "
              "rerun the same command", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # OSError: a file or folder named on the command line
        if debug:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2


def pin_numerics() -> None:
    """Pin the CPU numerics (``benchmarks.execution.numerics``; ``EGMF_NUMERICS=native`` opts out)
    where a harness process starts, never on import. A bad $EGMF_NUMERICS is left to the command,
    which reports it as bad input (exit 2) before any run."""
    try:
        numerics.pin()
    except numerics.NumericsError:
        pass


# ---- commands -----------------------------------------------------------------------------------

def _ablations_dir(args) -> Path:
    """--ablations-dir, checked: a folder holding table_numbers.toml."""
    folder = Path(args.ablations_dir)
    if not (folder / "table_numbers.toml").is_file():
        from benchmarks.execution.tables import TableError

        raise TableError(f"--ablations-dir {folder}: no table_numbers.toml there (not a folder of table files)")
    return folder


def cmd_reproduce(args) -> int:
    from benchmarks import recipes
    from benchmarks.execution import launchers
    from benchmarks.execution.profiles import check_profile

    check_profile(args.profile)
    grid = Grid(args.table, args.profile, grid_args(args), _ablations_dir(args))
    options = RunOptions(
        results_root=args.results_root, reports_root=args.reports_root, force=args.force,
        redo_before=_parse_time(args.redo_before) if args.redo_before is not None else None,
        shard=parse_shard(args.shard) if args.shard is not None else None, strict_data=args.strict_data,
        render=not args.no_report, raise_render_errors=args.debug, progress_bars=progress_bars_setting(),
        group=parse_group(args.group))
    how = launchers.Launch(
        launcher=launchers.check_launcher(args.launcher), jobs=resolve_jobs(args),
        gpus=_worker_gpus(args) if args.launcher == "local" else None,
        shards=args.shards, slurm={"slurm_partition": args.slurm_partition} if args.slurm_partition else None)
    summaries = recipes.reproduce(grid, options, how, estimate=args.profile == "paper" and not args.no_estimate)
    for s in summaries:
        print(s.line())
    return 0 if all(s.ok for s in summaries) else 1


def grid_args(args) -> GridArgs:
    """The grid's filters, overrides and roots from the reproduce flags."""
    return GridArgs(
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
        rows=parse_names(args.rows) if args.rows is not None else None,
        datasets=parse_names(args.datasets) if args.datasets is not None else None,
        overrides=parse_sets(args.sets), data_root=args.data_root, model_root=args.model_root,
        trust_remote_code=args.trust_remote_code)


def parse_group_sizes(text: str) -> list[int]:
    """gpu-check ``--group 1,2,4``: the group sizes to measure ("" none)."""
    sizes = [parse_group(k) for k in parse_names(text)] if text else []
    if "auto" in sizes:
        raise GridError("gpu-check --group: sizes to measure, e.g. 1,2,4 (auto is reproduce's)")
    return sizes


def parse_group(text: str) -> int | str:
    """``--group``: a positive number of runs, or "auto" (resolved where the group's backbone is built)."""
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise GridError(f"--group {text!r}: a number of runs trained at once, or auto") from None
    if k < 1:
        raise GridError(f"--group {k}: must be at least 1")
    return k


def resolve_jobs(args) -> int:
    """``--jobs``: a number, or "auto": one per CPU core for the smoke profile (one thread per run),
    ``--jobs-per-gpu`` per visible GPU for the GPU profiles (1 without a GPU)."""
    from benchmarks.execution.launchers import visible_gpus
    from benchmarks.execution.profiles import GPU_PROFILES

    if args.jobs_per_gpu < 1:
        raise GridError(f"--jobs-per-gpu {args.jobs_per_gpu}: must be at least 1")
    if args.jobs == "auto":
        if args.profile in GPU_PROFILES:
            return max(1, len(visible_gpus()) * args.jobs_per_gpu)
        return os.cpu_count() or 1
    try:
        jobs = int(args.jobs)
    except ValueError:
        raise GridError(f"--jobs {args.jobs!r}: a number of worker processes, or auto") from None
    if jobs < 1:
        raise GridError(f"--jobs {jobs}: must be at least 1")
    return jobs


def _worker_gpus(args) -> tuple[str, ...] | None:
    """The GPUs --jobs workers are pinned to: the visible ones for the GPU profiles, else none."""
    from benchmarks.execution.launchers import visible_gpus
    from benchmarks.execution.profiles import GPU_PROFILES

    return tuple(visible_gpus()) if args.profile in GPU_PROFILES else None


def cmd_plan(args) -> int:
    from benchmarks.execution import planner as plan

    if args.profile != "paper":
        raise plan.PlanError(f"--profile {args.profile}: the planner prices the paper profile's GPU runs")
    ablations_dir = _ablations_dir(args)
    if args.table not in plan.TARGETS:
        from benchmarks.execution.tables import resolve_table

        args.table = resolve_table(args.table, ablations_dir)
    grid = Grid(args.table, args.profile, GridArgs(overrides=parse_sets(args.sets)), ablations_dir)
    pricing = plan.Pricing(gpu=args.gpu, gpus=args.gpus, jobs_per_gpu=args.jobs_per_gpu, measured_path=args.measured,
                           group=args.group)
    print(plan.render_plan(plan.make_plan(grid, pricing)), end="")
    return 0


def _parse_time(text: str) -> str:
    """--redo-before: an ISO 8601 time with a UTC offset, as run files store it (UTC, microseconds)."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise GridError(f"--redo-before {text!r}: not an ISO 8601 time (e.g. 2026-11-26T04:30:00+00:00)") from None
    if when.tzinfo is None:
        raise GridError(f"--redo-before {text!r}: give a UTC offset (e.g. +00:00)")
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def cmd_report(args) -> int:
    from benchmarks import recipes

    paths, error = recipes.report_tables(args.table, args.profile, results_root=args.results_root,
                                         reports_root=args.reports_root, strict=args.debug,
                                         ablations_dir=_ablations_dir(args))
    for p in paths:
        print(p)
    if not paths and error is None:
        print(f"no stored runs for {args.table} [{args.profile}] under {args.results_root}", file=sys.stderr)
    if error:
        print(f"warning: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_merge(args) -> int:
    from benchmarks import recipes

    ablations_dir = _ablations_dir(args)
    summary = recipes.merge(args.sources, args.profile, args.results_root, ablations_dir=ablations_dir)
    print(summary.line(args.profile))
    if args.no_report or not summary.tables:
        return 0
    _, error = recipes.render_reports(args.profile, [p.stem for p in summary.tables], results_root=args.results_root,
                                     reports_root=args.reports_root, strict=args.debug, ablations_dir=ablations_dir)
    if error:
        print(f"warning: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args) -> int:
    from benchmarks.execution.grid import expand, unique_runs
    from benchmarks.execution.profiles import check_profile
    from benchmarks.execution.tables import list_tables, load_table

    check_profile(args.profile)
    ablations_dir = _ablations_dir(args)
    lines = [f"{'no.':<4} {'name':<18} {'rows x datasets x seeds':<24} caption"]
    every = []
    for name in list_tables(ablations_dir):
        spec = load_table(name, ablations_dir)
        seeds = len(spec.seeds.get(args.profile, ()))
        cells = sum(len([d for d in spec.datasets if r.datasets is None or d in r.datasets]) for r in spec.rows)
        size = f"{len(spec.rows)} x {len(spec.datasets)} x {seeds} = {cells * seeds}"
        lines.append(f"{spec.number:<4} {spec.name:<18} {size:<24} {spec.caption}")
        every.extend(expand(spec, args.profile, check_roots=False))
    lines.append(f"[{args.profile}] {len(every)} cells, {len(unique_runs(every))} distinct runs "
                 "(a configuration shared by several tables runs once)")
    print("\n".join(lines))
    return 0


def cmd_gpu_check(args) -> int:
    from benchmarks.perf import gpu_check
    from benchmarks.perf.gpu_check_report import params_text

    families = parse_names(args.backbones)
    unknown = [f for f in families if f not in gpu_check.FAMILIES]
    if unknown:
        raise GridError(f"--backbones: unknown backbone {unknown[0]!r} (known: {', '.join(gpu_check.FAMILIES)})")
    if args.size == "full" and args.device == "cpu":
        raise GridError("--size full --device cpu would need ~40 GB of fp32 weights: use --device cuda or meta")
    opts = gpu_check.CheckOptions(
        size=args.size, device=args.device, backbones=tuple(families), steps=args.steps,
        jobs_per_gpu=tuple(int(k) for k in parse_names(args.jobs_per_gpu)), compile=args.compile,
        groups=tuple(parse_group_sizes(args.group)),
        budget_s=args.budget_s, json_path=args.json, report_path=args.report)
    result = gpu_check.run_gpu_check(opts)
    for family, r in result["backbones"].items():
        print(f"{family}: " + (r["error"] if "error" in r else f"{params_text(r['params'])} params"
              + (f", step {r['step_time_s'] * 1e3:.1f} ms" if "step_time_s" in r else "")))
    written = [f"{what}: {path}" for what, path in (("report", args.report), ("json", args.json)) if path]
    print("; ".join(written) or "nothing written (--report PATH, --json PATH)")
    return 1 if gpu_check.failed_backbones(result) else 0


COMMANDS = {"reproduce": cmd_reproduce, "report": cmd_report, "merge": cmd_merge, "list": cmd_list,
            "plan": cmd_plan, "gpu-check": cmd_gpu_check}
