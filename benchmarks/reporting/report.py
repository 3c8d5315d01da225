"""Markdown reports and figures per paper table: pure functions of the tidy results table.

``results/<profile>/<table>.csv`` (columns ``benchmarks.results.schema.RESULT_COLUMNS``) plus the
table's :class:`~benchmarks.execution.tables.TableSpec` give ``reports/<profile>/<table>.md`` and its
PNGs; ``render_index`` writes ``reports/<profile>/README.md``. Nothing here trains or imports
torch. Rendering the same results twice gives the same bytes: the date shown is the latest run
timestamp in the results, every list is sorted or in the table file's order, floats have fixed
formats, PNGs carry no software/date metadata, and files are replaced atomically.

Every number comes from the results table or the table file (paper values); units: fractions
as percentage points (x100, 2 decimals), MAE and Corr raw (3 decimals).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.execution import numerics
from benchmarks.execution.dataset_stats import non_finite_summary
from benchmarks.execution.profiles import SYNTHETIC_PROFILES
from benchmarks.execution.tables import ABLATIONS_DIR, TableSpec, list_tables, load_table
from benchmarks.reporting import plots
from benchmarks.reporting.assumptions import HAND_WRITTEN, as_run_rows
from benchmarks.reporting.baseline_comparison import baseline_section
from benchmarks.reporting.claims import (
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_COMPARABLE,
    NOT_RECOVERED,
    RECOVERED,
    ClaimVerdict,
    cell_verdict,
    evaluate_claim,
    invalid_share,
    not_comparable_note,
    reading,
)
from benchmarks.reporting.markdown import MISSING, md_table
from benchmarks.reporting.stats import (
    MIN_PAIRS,
    MIN_PAIRS_BOOTSTRAP,
    TOO_FEW,
    PairedResult,
    dataset_key_metric,
    display_name,
    format_delta,
    format_value,
    gating_runs,
    higher_is_better,
    holm,
    metric_scale,
    ok_metric_rows,
    paired_cells,
    paired_comparison,
    run_table,
    seed_values,
    summarise,
    to_display,
)
from benchmarks.reporting.training_curves import training_section
from benchmarks.results.schema import RESULT_COLUMNS
from benchmarks.results.store import table_csv_path
from egmf_core.atomic import atomic_write_bytes
from egmf_core.data.dataset import SPECS

SMOKE_BANNER = (
    "> SMOKE PROFILE: synthetic data and tiny randomly initialised models. These numbers test the "
    "machinery and the planted signals; they are not the paper's results."
)
NUMERIC_COLUMNS = ("value", "wall_s", "peak_mem_mb", "trainable_params", "total_params", "step_time_s",
                   "samples_per_s", "egmf_share", "steps", "best_step", "invalid_rate")
SPLIT_ORDER = ("train", "valid", "test", "all")
# Claim readings counted in the index, in this order; NOT_APPLICABLE is counted apart.
CLAIM_WORDS = ("held", "did not hold", INCONCLUSIVE, RECOVERED, NOT_RECOVERED, NOT_COMPARABLE)


# ---- reading results -----------------------------------------------------------------------------

def load_results(profile: str, table: str, results_root: Path = Path("results")) -> pd.DataFrame:
    """The tidy rows of one table and profile (an empty frame when the file does not exist)."""
    path = table_csv_path(results_root, profile, table)
    if not path.is_file():
        return normalise_results(pd.DataFrame(columns=list(RESULT_COLUMNS)))
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = ("table", "row", "dataset", "seed", "split", "metric", "value", "status")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r}")
    return normalise_results(df)


def normalise_results(df: pd.DataFrame) -> pd.DataFrame:
    """Every schema column present, text columns as str ("" for missing), numbers as floats."""
    out = df.copy()
    for col in RESULT_COLUMNS:
        if col not in out.columns:
            out[col] = ""
    for col in out.columns:
        if col in NUMERIC_COLUMNS:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
        elif col == "seed":
            out[col] = pd.to_numeric(out[col], errors="coerce").fillna(-1).astype(int)
        else:
            out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return out


def _for_table(df: pd.DataFrame, spec: TableSpec, profile: str) -> pd.DataFrame:
    df = normalise_results(df)
    keep = ((df["table"] == spec.name) | (df["table"] == "")) & ((df["profile"] == profile) | (df["profile"] == ""))
    return df[keep].reset_index(drop=True)


# ---- small formatting helpers --------------------------------------------------------------------

def _uniq(values: Iterable[str]) -> list[str]:
    return sorted({str(v) for v in values if str(v) not in ("", "nan")})


def _mean_std(metric: str, mean: float, std: float) -> str:
    if mean is None or math.isnan(mean):
        return MISSING
    if std is None or math.isnan(std):
        return format_value(metric, mean)
    return f"{format_value(metric, mean)} ± {format_value(metric, std)}"


def _bool(value: str) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _fmt_num(v: float, fmt: str) -> str:
    return MISSING if v is None or not np.isfinite(v) else format(v, fmt)


def _banner(profile: str, df: pd.DataFrame) -> str:
    if profile == "smoke":
        return SMOKE_BANNER
    if profile == "scale":
        return ("> SCALE PROFILE: the published backbone architectures with RANDOM weights, on full-size "
                "SYNTHETIC data: a test of the paper profile's GPU path, speed and memory. These numbers are "
                "not the paper's and not comparable to them.")
    data = ", ".join(data_sources(df)) or "unknown (no results yet)"
    model = ", ".join(model_sources(df)) or "unknown (no results yet)"
    if profile == "paper":
        return f"> PAPER PROFILE: data read from {data}, weights from {model}."
    return f"> {profile.upper()} PROFILE: data from {data}, weights from {model}."


def _latest_timestamp(df: pd.DataFrame) -> str:
    ts = pd.to_datetime(df["timestamp"], utc=True, errors="coerce", format="ISO8601").dropna()
    return ts.max().strftime("%Y-%m-%d %H:%M:%S UTC") if len(ts) else MISSING


def _row_names(spec: TableSpec, df: pd.DataFrame, dataset: str | None = None) -> list[str]:
    """The table file's rows (those that run on ``dataset``), then any extra rows in the results."""
    names = [r.name for r in spec.rows if dataset is None or r.datasets is None or dataset in r.datasets]
    present = df if dataset is None else df[df["dataset"] == dataset]
    return names + sorted(set(present["row"]) - set(names) - {""})


def data_sources(df: pd.DataFrame) -> list[str]:
    """The run files' data sources ("<format>: <path relative to the data root> sha256:<digest>"), sorted."""
    return sorted(set(_uniq(df["data_source"])))


_LOCAL_PATH = re.compile(r"(?:^|(?<=\s))(?:[/~\\]|[A-Za-z]:\\)")  # where a local path starts in a source


def model_sources(df: pd.DataFrame) -> list[str]:
    """Where the weights came from; a local path keeps only its last two parts (no machine path),
    whether it is the whole source (a weights directory) or its tail (TFN's "no LLM: tokenizer of DIR")."""
    def portable(source: str) -> str:
        m = _LOCAL_PATH.search(source)
        return source if m is None else source[:m.start()] + ".../" + "/".join(Path(source[m.start():]).parts[-2:])

    return sorted({portable(s) for s in _uniq(df["model_source"])})


def eval_modes(df: pd.DataFrame) -> str:
    """"generate / generate": the modes of the validation passes and of the test, as recorded."""
    def modes(split: str) -> str:
        return "/".join(_uniq(df.loc[df["split"] == split, "eval_mode"])) or "not recorded (older run files)"

    return f"{modes('valid')} / {modes('test')}"


def _config(df: pd.DataFrame, row: str) -> dict:
    for raw in df.loc[df["row"] == row, "config_json"]:
        if raw:
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                continue
    return {}


# ---- the report ------------------------------------------------------------------------------------

def build_table_report(spec: TableSpec, df: pd.DataFrame, profile: str,
                       plots_by_section: dict[str, list[str]] | None = None) -> str:
    """The markdown report of one table under one profile.

    ``df`` is the tidy results (other tables and profiles are ignored); ``plots_by_section``
    maps "results", "gating" and "lora" to PNG file names to link (relative to the report).
    """
    df = _for_table(df, spec, profile)
    figures = plots_by_section or {}
    lines = [_banner(profile, df), "", f"# Table {spec.number} (best-guess number): {spec.caption}", ""]
    lines += _header(spec, df, profile)
    if df.empty:
        lines += ["", f"**Not run yet**: no results for `{spec.name}` under the `{profile}` profile "
                      f"(expected `results/{profile}/{spec.name}.csv`)."]
    lines += _failed_runs(df)
    summary = summarise(df)
    if spec.trains:
        lines += _results_section(spec, df, summary, profile, figures.get("results", []))
        lines += baseline_section(spec, df, profile)
        lines += _lora_section(spec, df, figures.get("lora", []))
    else:
        lines += _statistics_section(spec, df)
    lines += _claims_section(spec, df, profile)
    if spec.trains:
        lines += training_section(spec, df, figures.get("training", []), md_table)
        lines += _gating_section(spec, df, figures.get("gating", []))
        lines += _cost_section(spec, df)
    lines += _assumptions_section(df, profile)
    return "\n".join(lines).rstrip() + "\n"


def _assumptions_section(df: pd.DataFrame, profile: str) -> list[str]:
    """The settings the runs used (from their stored configs), then the choices in words."""
    configs = [c for c in (_safe_json(raw) for raw in _uniq(df["config_json"])) if c]
    lines = ["", "## Assumptions", "",
             "The settings these runs used, read from their stored configs (`egmf_core/config.py` documents "
             "each field). source: paper = the paper's summary, proxy = MSE-Adapter (the paper is silent), "
             "ours = neither states it, setting = not a reading of the paper. default: shown only where the "
             "runs differ from it.", ""]
    rows = as_run_rows(configs)
    lines += md_table(["field", "as run", "source", "default"], rows) if rows else ["No run configs recorded."]
    lines += ["", f"Evaluation mode (validation passes / test): {eval_modes(df)}.", ""]
    if profile == "smoke":
        lines += [f"- {smoke_data_note(configs)}"]
    return lines + [f"- {a}" for a in HAND_WRITTEN]


def smoke_data_note(configs: list[dict]) -> str:
    """The synthetic data's version (from the runs' data.root) and how it came to be."""
    versions = sorted({m[1] for c in configs
                       if (m := re.search(r"smoke-data/v(\d+)", str(c.get("data", {}).get("root", ""))))})
    which = ", ".join(f"SYNTH_VERSION {v}" for v in versions) or "version not recorded"
    return (f"Smoke data: synthetic, {which} (egmf_core/data/synth.py). The generator was adjusted, version "
            "by version, until the tiny models recovered the planted order text > audio > visual; recovering "
            "it checks the machinery, not the method.")


def _header(spec: TableSpec, df: pd.DataFrame, profile: str) -> list[str]:
    runs = run_table(df)
    n_ok = int((runs["status"] == "ok").sum()) if not runs.empty else 0
    n_failed = int((runs["status"] != "ok").sum()) if not runs.empty else 0
    seeds = sorted({int(s) for s in df["seed"] if s >= 0})
    planned = spec.seeds.get(profile, ())
    versions: dict[str, set[str]] = {}
    for raw in _uniq(df["versions_json"]):
        try:
            for k, v in json.loads(raw).items():
                versions.setdefault(str(k), set()).add(str(v))
        except (json.JSONDecodeError, AttributeError):
            continue
    items = [
        ("table", f"`{spec.name}` (paper table {spec.number}, a best guess: `ablations/table_numbers.toml`)"),
        ("profile", profile),
        ("data source(s)", ", ".join(data_sources(df)) or MISSING),
        ("NaN / inf features set to 0", non_finite_summary(df["dataset"], df["data_cleaning_json"])),
        ("eval mode (validation passes / test)", eval_modes(df)),
        ("backbone(s)", ", ".join(_uniq(df["backbone"])) or MISSING),
        ("model source(s)", ", ".join(model_sources(df)) or MISSING),
        ("date (latest run)", _latest_timestamp(df)),
        ("git revision(s)", ", ".join(_uniq(df["git_rev"])) or MISSING),
        ("seeds run", ", ".join(str(s) for s in seeds) or MISSING),
        ("seeds planned", ", ".join(str(s) for s in planned) or MISSING),
        ("runs", f"{n_ok} ok, {n_failed} failed"),
        ("device(s)", ", ".join(_uniq(df["device"])) or MISSING),
        ("numerical settings", numerics.report_note(df)),
        ("run groups", group_note(df)),
        ("versions", ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())) or MISSING),
    ]
    items += _set_overrides(df)
    trc = runs[runs["trust_remote_code"].map(_bool)] if not runs.empty else runs
    if len(trc):
        items.append(("trust_remote_code",
                      f"**ON** in {len(trc)} run(s): the model source's own Python code was executed"))
    return md_table(["", ""], items)


def group_note(df: pd.DataFrame) -> str:
    """How the runs were trained: alone, or in groups over one backbone (reproduce --group)."""
    if "group_size" not in df.columns:
        return MISSING
    sizes = pd.to_numeric(df.drop_duplicates("run_id")["group_size"], errors="coerce").fillna(1).astype(int)
    alone, grouped = int((sizes <= 1).sum()), sizes[sizes > 1]
    if grouped.empty:
        return f"none: all {alone} runs trained alone"
    kinds = ", ".join(str(k) for k in sorted(set(grouped)))
    return (f"{len(grouped)} run(s) in groups of {kinds}, {alone} alone (a grouped run equals its run alone "
            "within the README's tolerance; not always bit for bit)")


def _set_overrides(df: pd.DataFrame) -> list[tuple[str, str]]:
    """A header line per distinct ``reproduce --set`` override set found in the runs' configs."""
    found: dict[str, set[str]] = {}
    for raw, run_id in zip(df["config_json"], df["run_id"]):
        sets = _safe_json(raw).get("overrides") or {}
        if sets:
            text = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(sets.items()))
            found.setdefault(text, set()).add(run_id)
    return [("--set overrides", f"{text} ({len(ids)} run(s))") for text, ids in found.items()]


def _failed_runs(df: pd.DataFrame) -> list[str]:
    runs = run_table(df)
    failed = runs[runs["status"] != "ok"] if not runs.empty else runs
    if failed.empty:
        return []
    lines = ["", f"## Failed runs ({len(failed)})", "",
             "These runs are excluded from every mean below; each is listed with its error.", ""]
    rows = [(r.row, r.dataset, r.seed, f"`{r.run_id}`" if r.run_id else MISSING, r.status,
             r.error or "(no error recorded)") for r in failed.itertuples(index=False)]
    return lines + md_table(["row", "dataset", "seed", "run_id", "status", "error"], rows)


def _results_section(spec: TableSpec, df: pd.DataFrame, summary: pd.DataFrame, profile: str,
                     figures: list[str]) -> list[str]:
    lines = ["", "## Results (test split)", "",
             "Mean ± std over seeds (std with ddof=1; none with one seed). Fractions in percentage "
             "points (x100), MAE and Corr in label units. ↑ higher is better, ↓ lower is better. "
             "n = seeds with an ok run / seeds planned (more than planned when another table ran the same "
             "configuration with more seeds: all of them count). invalid = share of unparseable answers "
             "(mean over seeds), replaced by the fallback only for the metric; a row above "
             f"{100 * spec.report.invalid_threshold:.0f}% is not comparable (its metric mostly scores the fallback). "
             "test-set ± = the test-set sampling uncertainty of the key metric: half-width of each run's 95% "
             "bootstrap over test samples, mean over runs; compare it with the std over seeds."]
    lines += [f"\n![{Path(f).stem}]({f})" for f in figures]
    test = summary[summary["split"] == "test"]
    cells = {(r, d, m): (mu, sd, n) for r, d, m, mu, sd, n in
             zip(test["row"], test["dataset"], test["metric"], test["mean"], test["std"], test["n"])}
    runs = run_table(df)
    planned = len(spec.seeds.get(profile, ()))
    family = paired_family(spec, df)
    for ds in spec.datasets:
        key = dataset_key_metric(ds) if ds in SPECS else None
        metrics = list(spec.metrics.get(ds, ()))
        title = f"### {ds}" + (f" (key metric: {display_name(key)})" if key else "")
        lines += ["", title, ""]
        table_rows = []
        for row in _row_names(spec, df, ds):
            r_runs = runs[(runs["row"] == row) & (runs["dataset"] == ds)] if not runs.empty else runs
            ok = r_runs[r_runs["status"] == "ok"] if not r_runs.empty else r_runs
            n_ok, n_fail = ok["seed"].nunique() if len(ok) else 0, int(len(r_runs) - len(ok))
            n_cell = f"{n_ok}/{planned}" if planned else str(n_ok)
            if n_fail:
                n_cell += f" ({n_fail} failed)"
            inv = ok["invalid_rate"].to_numpy(dtype=float) if len(ok) else np.array([])
            inv = inv[np.isfinite(inv)]
            inv_cell = f"{100 * inv.mean():.2f}%" if inv.size else MISSING
            if inv.size and inv.mean() > spec.report.invalid_threshold:
                vals = [not_comparable_note(float(inv.mean()))] * len(metrics)
            else:
                vals = [_mean_std(m, *cells.get((row, ds, m), (float("nan"), float("nan"), 0))[:2]) for m in metrics]
            fallbacks = sorted({str(_safe_json(c).get("train", {}).get("invalid_fallback", ""))
                                for c in ok["config_json"]} - {""}) if len(ok) else []
            table_rows.append([row, n_cell, *vals, _sampling_cell(ok, key), inv_cell, ", ".join(fallbacks) or MISSING])
        lines += md_table(["row", "n", *[display_name(m) for m in metrics], "test-set ± (key)", "invalid",
                            "fallback"], table_rows)
        others = sorted(set(test.loc[test["dataset"] == ds, "metric"]) - set(metrics) - {"invalid_rate"})
        if others:
            lines += ["", f"Also recorded (not shown): {', '.join(others)}."]
        lines += _paper_comparison(spec, ds, cells, profile)
        if spec.reference_row and key:
            lines += _paired_section(spec, df, ds, key, family)
    return lines


def _sampling_cell(ok_runs: pd.DataFrame, key: str | None) -> str:
    """Mean half-width of the runs' test-set sampling 95% CIs of the key metric (printed units)."""
    if key is None or ok_runs.empty or "sampling_ci_json" not in ok_runs.columns:
        return "n/a"
    halves = []
    for raw in ok_runs["sampling_ci_json"]:
        ci = _safe_json(raw).get(key)
        if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
            halves.append(abs(to_display(key, float(ci[1])) - to_display(key, float(ci[0]))) / 2)
    if not halves:
        return "n/a"
    decimals = 2 if metric_scale(key) == "fraction" else 3
    return f"± {np.mean(halves):.{decimals}f}"


def _safe_json(raw: str) -> dict:
    try:
        out = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _paper_comparison(spec: TableSpec, ds: str, cells: dict, profile: str) -> list[str]:
    values = [p for p in spec.paper_values if p.dataset == ds]
    if not values:
        return []
    comparable = profile not in SYNTHETIC_PROFILES
    rows = []
    for p in values:
        mean, std, n = cells.get((p.row, ds, p.metric), (float("nan"), float("nan"), 0))
        v = cell_verdict(p.metric, mean, std, p.value, comparable=comparable)
        if not comparable:
            verdict = f"{NOT_COMPARABLE} (synthetic data)"
        elif v.verdict == NOT_COMPARABLE:
            verdict = f"{NOT_COMPARABLE} (no results)"
        else:
            side = "" if v.better is None else (", ours better" if v.better else ", ours worse")
            verdict = f"{v.verdict}{side}"
        paper = f"{p.value:.2f}" if metric_scale(p.metric) == "fraction" else f"{p.value:.3f}"
        delta = MISSING if math.isnan(v.delta) else format_delta(p.metric, v.delta)
        ours = _mean_std(p.metric, mean, std) + (f" (n={n})" if n else "")
        rows.append([p.row, display_name(p.metric), ours, f"{paper} ({p.source})", delta, verdict, p.note])
    lines = ["", f"Paper values for {ds} (delta = ours - paper; held: |delta| <= max(1 std, 0.5 points), "
                 "within tolerance: <= max(2 std, 2 points); 0.005 / 0.02 for MAE and Corr):", ""]
    return lines + md_table(["row", "metric", "ours", "paper (source)", "delta", "verdict", "note"], rows)


def paired_family(spec: TableSpec, df: pd.DataFrame) -> dict[tuple[str, str], tuple[PairedResult, float]]:
    """(dataset, row) -> (paired result against the reference on the key metric, Holm p): one
    family per table, so the correction covers every row on every dataset."""
    ref = spec.reference_row
    if not ref:
        return {}
    test = ok_metric_rows(df)
    test = test[test["split"] == "test"]
    results: dict[tuple[str, str], PairedResult] = {}
    for ds in spec.datasets:
        if ds not in SPECS:
            continue
        key = dataset_key_metric(ds)
        for row in _row_names(spec, df, ds):
            if row == ref:
                continue
            if max(invalid_share(test, row, ds), invalid_share(test, ref, ds)) > spec.report.invalid_threshold:
                continue  # not comparable: shown as such, and kept out of the family
            results[(ds, row)] = paired_comparison(seed_values(df, row, ds, key), seed_values(df, ref, ds, key),
                                                   higher_is_better=bool(higher_is_better(key)))
    keys = list(results)
    adjusted = holm([results[k].p_value for k in keys])
    return {k: (results[k], p) for k, p in zip(keys, adjusted)}


def _paired_section(spec: TableSpec, df: pd.DataFrame, ds: str, key: str,
                    family: dict[tuple[str, str], tuple[PairedResult, float]]) -> list[str]:
    ref = spec.reference_row
    rows = []
    for row in _row_names(spec, df, ds):
        if row == ref:
            continue
        if (ds, row) not in family:
            rows.append([row, MISSING, "not comparable (unparseable answers) or no results", MISSING, MISSING,
                         MISSING, MISSING])
            continue
        res, p_holm = family[(ds, row)]
        rows.append([row, str(res.n), *paired_cells(key, res, p_holm)])
    if not rows:
        return []
    lines = ["", f"Paired by seed against `{ref}` on {display_name(key)}, matched seeds only (delta > 0: the row "
                 f"is better): 95% t-interval and paired t-test; p (Holm) corrected over every comparison in this "
                 f"table; bootstrap only from {MIN_PAIRS_BOOTSTRAP} pairs; under {MIN_PAIRS} pairs: {TOO_FEW}.", ""]
    return lines + md_table(["row", "pairs", "mean delta", "95% CI (t)", "p", "p (Holm)", "95% CI (bootstrap)"],
                             rows)


def lora_pairs(spec: TableSpec, df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(backbone, LoRA-on row, LoRA-off row) for each backbone that has exactly one of each."""
    by_backbone: dict[str, dict[bool, list[str]]] = {}
    for row in _row_names(spec, df):
        cfg = _config(df, row).get("model", {})
        row_spec = next((r for r in spec.rows if r.name == row), None)
        overrides = row_spec.overrides if row_spec else {}
        if cfg.get("method", overrides.get("model.method", "egmf")) != "egmf":
            continue  # a baseline's LLM setting is not an EGMF LoRA ablation
        lora = cfg.get("lora", overrides.get("model.lora", spec.base.get("model.lora")))
        backbone = cfg.get("backbone", overrides.get("model.backbone", spec.base.get("model.backbone")))
        if lora is None or backbone is None:
            continue
        by_backbone.setdefault(str(backbone), {}).setdefault(bool(lora), []).append(row)
    pairs = []
    for backbone, sides in by_backbone.items():  # insertion order = the table file's row order
        if len(sides.get(True, [])) == 1 and len(sides.get(False, [])) == 1:
            pairs.append((backbone, sides[True][0], sides[False][0]))
    return pairs


def english_first(datasets: Sequence[str]) -> list[str]:
    """English datasets, then Chinese ones, each group in the given order."""
    return sorted(datasets, key=lambda d: (SPECS[d].language != "en" if d in SPECS else True, list(datasets).index(d)))


def _varies(spec: TableSpec, key: str) -> bool:
    values = {json.dumps(r.overrides.get(key, spec.base.get(key)), sort_keys=True) for r in spec.rows}
    return len(values) > 1


def _lora_section(spec: TableSpec, df: pd.DataFrame, figures: list[str]) -> list[str]:
    pairs = lora_pairs(spec, df) if _varies(spec, "model.lora") else []
    if not pairs:
        return []
    test = ok_metric_rows(df)
    test = test[test["split"] == "test"]
    cells: list[tuple[list[str], PairedResult | None, str]] = []
    for backbone, on, off in pairs:
        for ds in english_first(spec.datasets):
            key = dataset_key_metric(ds)
            lang = {"en": "English", "zh": "Chinese"}.get(SPECS[ds].language, SPECS[ds].language)
            head = [backbone, ds, lang, display_name(key)]
            worst = max(invalid_share(test, on, ds), invalid_share(test, off, ds))
            if worst > spec.report.invalid_threshold:
                cells.append((head, None, not_comparable_note(worst)))
                continue
            res = paired_comparison(seed_values(df, on, ds, key), seed_values(df, off, ds, key),
                                    higher_is_better=bool(higher_is_better(key)))
            cells.append((head, res, key))
    adjusted = iter(holm([res.p_value for _, res, _ in cells if res is not None]))
    rows = []
    for head, res, key_or_note in cells:
        if res is None:
            rows.append([*head, MISSING, key_or_note, MISSING, "n/a", "n/a", "n/a"])
        else:
            rows.append([*head, str(res.n), *paired_cells(key_or_note, res, next(adjusted))])
    lines = ["", "## LoRA on minus off", "",
             "Per backbone, paired on matched seeds on each dataset's key metric (delta > 0: LoRA helps); "
             "intervals and p-values as in the paired tables above (Holm over this table's LoRA comparisons). "
             f"A side with more than {100 * spec.report.invalid_threshold:.0f}% unparseable answers is not "
             "comparable.", ""]
    lines += md_table(["backbone", "dataset", "language", "metric", "pairs", "mean delta", "95% CI (t)", "p",
                        "p (Holm)", "95% CI (bootstrap)"], rows)
    return lines + [f"\n![{Path(f).stem}]({f})" for f in figures]


def _statistics_section(spec: TableSpec, df: pd.DataFrame) -> list[str]:
    lines = ["", "## Dataset statistics", "", "As computed from the loaded data (no training); "
             "split `all` holds dataset-level facts."]
    ok = df[df["status"].isin(["ok", ""])] if not df.empty else df
    for ds in spec.datasets:
        sel = ok[ok["dataset"] == ds]
        if sel.empty:
            lines += ["", f"### {ds}", "", MISSING + " not run yet"]
            continue
        splits = [s for s in SPLIT_ORDER if s in set(sel["split"])] + sorted(set(sel["split"]) - set(SPLIT_ORDER))
        shown = list(spec.metrics.get(ds, ()))
        metrics = [m for m in shown if m in set(sel["metric"])] + sorted(set(sel["metric"]) - set(shown))
        cells = {}
        for m, s, v in zip(sel["metric"], sel["split"], sel["value"]):
            cells.setdefault((m, s), v)  # first value (statistics do not depend on the seed)
        rows = [[m, *[_stat_value(cells.get((m, s))) for s in splits]] for m in metrics]
        src = ", ".join(data_sources(sel)) or MISSING
        lines += ["", f"### {ds}", "", f"Source: {src}", ""] + md_table(["statistic", *splits], rows)
    return lines


def _stat_value(v) -> str:
    if v is None or not np.isfinite(v):
        return MISSING
    return f"{int(v):,}" if float(v).is_integer() else f"{v:.4f}"


def evaluate_claims(spec: TableSpec, df: pd.DataFrame) -> list[ClaimVerdict]:
    return [evaluate_claim(c, df, spec) for c in spec.claims]


def claim_readings(spec: TableSpec, df: pd.DataFrame, profile: str) -> list[str]:
    """Each claim's verdict as the profile reads it (see benchmarks.reporting.claims.reading)."""
    return [reading(v, c, profile) for v, c in zip(evaluate_claims(spec, df), spec.claims)]


def _claims_section(spec: TableSpec, df: pd.DataFrame, profile: str) -> list[str]:
    lines = ["", "## Claims", ""]
    if not spec.claims:
        return lines + ["This table carries no claims."]
    lines += [f"Each claim is checked on the seeds both rows have (matched seeds, n shown; the means are "
              f"matched means) with the 95% t-interval of the paired delta: held = the interval lies where the "
              f"claim wants it, did not hold = wholly outside, inconclusive = it straddles the boundary, or "
              f"fewer than {MIN_PAIRS} matched seeds ({TOO_FEW}). Rows with more than "
              f"{100 * spec.report.invalid_threshold:.0f}% unparseable answers are not comparable.", ""]
    if profile == "smoke":
        lines += ["In the smoke profile a claim about structure the synthetic data plant reads "
                  f"\"{RECOVERED}\" or \"{NOT_RECOVERED}\"; a claim about what they do not plant (experts, "
                  f"LoRA, backbones, languages) reads \"{NOT_APPLICABLE}\" (its numbers are still shown).", ""]
    for v, c in zip(evaluate_claims(spec, df), spec.claims):
        lines.append(f"- **{reading(v, c, profile)}** `{v.id}` ({c.source}): {v.text}  \n  {v.detail}")
    return lines


def _gating_section(spec: TableSpec, df: pd.DataFrame, figures: list[str]) -> list[str]:
    lines = ["", "## Gating (test split)", ""]
    runs = gating_runs(df)
    if runs.empty:
        return lines + ["No gating statistics in these results (no gate, or not recorded)."]
    fixed = fixed_gating_runs(df)
    flagged = runs["collapse"].map(lambda x: bool(x) if x is not None else False)
    collapsed = runs[flagged & ~runs["run_id"].isin(fixed)]
    learned = int((~runs["run_id"].isin(fixed)).sum())
    if len(collapsed):
        lines += [f"> **WARNING: GATING COLLAPSE in {len(collapsed)} of {learned} run(s) with a learned gate.** "
                  "The gate ignores its experts' differences (uniform alpha) or always picks one expert:", ">"]
        lines += [f"> - {r.row} on {r.dataset}, seed {r.seed}: {r.collapse_reason or 'no reason recorded'}"
                  for r in collapsed.itertuples(index=False)]
        lines.append("")
    lines += ["Mean over runs of each run's mean alpha per expert; normalised entropy 1.0 = uniform alpha. "
              "collapsed / static = runs flagged by GatingStats; rows whose gate is fixed by design (uniform "
              "gating, or a single expert) raise no alarm. A top expert is named only when one expert's mean "
              "alpha is above the others'."]
    for ds in spec.datasets:
        sel = runs[runs["dataset"] == ds]
        if sel.empty:
            continue
        experts = sorted({e for a in sel["alpha"] for e in a})
        rows = []
        for row in _row_names(spec, df, ds):
            r = sel[sel["row"] == row]
            if r.empty:
                continue
            alphas = [_fmt_num(_mean_of(a.get(e) for a in r["alpha"]), ".3f") for e in experts]
            beta = _mean_of(r["beta"])
            ent = _mean_of(r["normalised_entropy"])
            by_design = bool(r["run_id"].isin(fixed).all())
            top = "none (fixed by design)" if by_design else _top_expert(r["top_expert_share"], r["alpha"])
            n_col = int(r["collapse"].map(lambda x: bool(x) if x is not None else False).sum())
            n_static = int(r["static"].map(lambda x: bool(x) if x is not None else False).sum())
            col = "fixed by design" if by_design else (f"**{n_col}/{len(r)} COLLAPSED**" if n_col else f"0/{len(r)}")
            rows.append([row, str(len(r)), *alphas, _fmt_num(beta, ".3f"), _fmt_num(ent, ".3f"), top, col,
                         f"{n_static}/{len(r)}"])
        lines += ["", f"### {ds}", ""]
        lines += md_table(["row", "runs", *[f"alpha {e}" for e in experts], "beta", "norm. entropy",
                            "top expert (share)", "collapsed", "static"], rows)
    return lines + [f"\n![{Path(f).stem}]({f})" for f in figures]


def _mean_of(values: Iterable) -> float:
    xs = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(xs)) if xs else float("nan")


TIE_TOLERANCE = 1e-6  # mean alphas closer than this are a tie: no expert is named


def fixed_gating_runs(df: pd.DataFrame) -> set[str]:
    """Run ids whose gate cannot learn by design: uniform gating, or a single expert."""
    fixed = set()
    for run_id, raw in zip(df["run_id"], df["config_json"]):
        model = _safe_json(raw).get("model", {})
        if model.get("gating") == "uniform" or len(model.get("experts", [None, None])) == 1:
            fixed.add(run_id)
    return fixed


def _top_expert(shares: Iterable, alphas: Iterable = ()) -> str:
    """The expert most often on top, with its share; "none (tie)" when the mean alphas tie."""
    def means_of(dicts: Iterable) -> dict[str, float]:
        acc: dict[str, list[float]] = {}
        for d in dicts:
            if isinstance(d, dict):
                for e, v in d.items():
                    acc.setdefault(e, []).append(float(v))
        return {e: float(np.mean(v)) for e, v in sorted(acc.items())}

    alpha = means_of(alphas)
    if len(alpha) > 1 and max(alpha.values()) - min(alpha.values()) < TIE_TOLERANCE:
        return "none (tie)"
    means = means_of(shares)
    if not means:
        return MISSING
    best = max(means, key=lambda e: means[e])
    if sum(1 for v in means.values() if abs(v - means[best]) < TIE_TOLERANCE) > 1:
        return "none (tie)"
    return f"{best} ({means[best]:.2f})"


def _cost_section(spec: TableSpec, df: pd.DataFrame) -> list[str]:
    runs = run_table(df)
    ok = runs[runs["status"] == "ok"] if not runs.empty else runs
    lines = ["", "## Cost", "", "Means over ok runs. EGMF share = EGMF's own modules' share of the training step time."]
    if ok.empty:
        return lines + ["", "No ok runs."]
    rows = []
    for ds in spec.datasets:
        for row in _row_names(spec, df, ds):
            r = ok[(ok["row"] == row) & (ok["dataset"] == ds)]
            if r.empty:
                continue
            m = {c: _mean_of(r[c]) for c in ("trainable_params", "total_params", "step_time_s", "samples_per_s",
                                            "peak_mem_mb", "egmf_share", "wall_s")}
            share = m["trainable_params"] / m["total_params"] if m["total_params"] else float("nan")
            rows.append([ds, row, str(len(r)), _fmt_num(m["trainable_params"], ",.0f"),
                         _fmt_num(m["total_params"], ",.0f"),
                         _fmt_num(100 * share, ".2f"), _fmt_num(1000 * m["step_time_s"], ".1f"),
                         _fmt_num(m["samples_per_s"], ".1f"), _fmt_num(m["peak_mem_mb"], ",.0f"),
                         _fmt_num(100 * m["egmf_share"], ".1f"), _fmt_num(m["wall_s"], ".1f")])
    return lines + [""] + md_table(["dataset", "row", "runs", "trainable params", "total params", "trainable %",
                                     "step (ms)", "samples/s", "peak mem (MB)", "EGMF share %", "wall (s)"], rows)


# ---- figures and files -------------------------------------------------------------------------------

def draw_figures(spec: TableSpec, df: pd.DataFrame, profile: str, out_dir: Path) -> dict[str, list[str]]:
    """Write the table's PNGs into ``out_dir``; section -> file names, for build_table_report.

    Which figures: bars of the key metric for every trained table with two or more rows
    (backbones side by side when rows vary the backbone); LoRA on - off when rows vary LoRA;
    gating per expert and per label for the reference row (else the first row).
    """
    df = _for_table(df, spec, profile)
    out: dict[str, list[str]] = {"results": [], "gating": [], "lora": [], "training": []}
    if df.empty or not spec.trains:
        return out
    rows = _row_names(spec, df)
    datasets = list(spec.datasets)
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    test = ok_metric_rows(df)
    test = test[test["split"] == "test"]
    invalid = {(r, d): invalid_share(test, r, d) for d in datasets for r in rows}
    invalid = {k: v for k, v in invalid.items() if v > spec.report.invalid_threshold}
    if len(rows) > 1:
        if _varies(spec, "model.backbone") and not _varies(spec, "model.lora"):
            out["results"] += names(plots.backbone_bars(df, out_dir, table=spec.name, rows=rows, datasets=datasets,
                                                        not_comparable=invalid))
        else:
            out["results"] += names(plots.ablation_bars(df, out_dir, table=spec.name, rows=rows,
                                                        reference=spec.reference_row, datasets=datasets,
                                                        not_comparable=invalid))
    if _varies(spec, "model.lora"):
        pairs = lora_pairs(spec, df)
        if pairs:
            out["lora"] += names(plots.lora_deltas(df, out_dir, table=spec.name, pairs=pairs, datasets=datasets,
                                                   not_comparable=invalid))
    out["training"] += names(plots.training_curves(df, out_dir, table=spec.name, rows=rows, datasets=datasets))
    gate_row = spec.reference_row or rows[0]
    out["gating"] += names(plots.gating_alpha_box(df, out_dir, table=spec.name, row=gate_row, datasets=datasets))
    out["gating"] += names(plots.gating_alpha_by_label(df, out_dir, table=spec.name, row=gate_row, datasets=datasets))
    return out


def render_table(profile: str, table: str, *, results_root: Path = Path("results"),
                 reports_root: Path = Path("reports"), ablations_dir: Path = ABLATIONS_DIR) -> Path:
    """Write ``reports/<profile>/<table>.md`` and its PNGs from ``results/<profile>/<table>.csv``."""
    spec = load_table(table, ablations_dir)
    df = load_results(profile, spec.name, results_root)
    out_dir = Path(reports_root) / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(spec, df, profile, out_dir)
    path = out_dir / f"{spec.name}.md"
    atomic_write_bytes(path, build_table_report(spec, df, profile, figures).encode("utf-8"))
    return path


def build_index(profile: str, entries: Sequence[tuple[TableSpec, pd.DataFrame]]) -> str:
    """The README of a profile's reports: one line per table, in paper-number order."""
    all_rows = pd.concat([_for_table(df, spec, profile) for spec, df in entries] or [normalise_results(pd.DataFrame())])
    lines = [_banner(profile, all_rows), "", f"# EGMF-Repro reports: {profile} profile", "",
             "Table numbers are a best guess (`ablations/table_numbers.toml`).", ""]
    rows = []
    for spec, df in entries:
        df = _for_table(df, spec, profile)
        link = f"[{spec.name}]({spec.name}.md)"
        if df.empty:
            rows.append([spec.number, link, spec.caption, "**not run yet**", MISSING, MISSING])
            continue
        runs = run_table(df)
        n_ok, n_failed = int((runs["status"] == "ok").sum()), int((runs["status"] != "ok").sum())
        verdicts = claim_readings(spec, df, profile)
        counts = [(verdicts.count(k), k) for k in CLAIM_WORDS]
        claims = ", ".join(f"{n} {k}" for n, k in counts if n) or MISSING
        n_apart = verdicts.count(NOT_APPLICABLE)
        if n_apart:  # counted apart: these claims test nothing on synthetic data
            apart = f"{n_apart} {NOT_APPLICABLE}"
            claims = apart if claims == MISSING else f"{claims}; apart: {apart}"
        status = f"{n_ok} ok" + (f", **{n_failed} failed**" if n_failed else "")
        rows.append([spec.number, link, spec.caption, status, claims, _latest_timestamp(df)])
    return "\n".join(lines + md_table(["no.", "table", "caption", "runs", "claims", "latest run"], rows)) + "\n"


def render_index(profile: str, *, results_root: Path = Path("results"), reports_root: Path = Path("reports"),
                 ablations_dir: Path = ABLATIONS_DIR) -> Path:
    """Write ``reports/<profile>/README.md`` linking every table.

    Tables without results get a "not run yet" report here, so that no link is broken; tables
    with results are linked to the report :func:`render_table` writes.
    """
    entries = []
    for name in list_tables(ablations_dir):
        spec = load_table(name, ablations_dir)
        df = load_results(profile, spec.name, results_root)
        if df.empty:
            render_table(profile, spec.name, results_root=results_root, reports_root=reports_root,
                         ablations_dir=ablations_dir)
        entries.append((spec, df))
    path = Path(reports_root) / profile / "README.md"
    atomic_write_bytes(path, build_index(profile, entries).encode("utf-8"))
    return path
