"""Committed baselines and the nightly regression verdict: pure functions of tidy result tables.

A baseline (``results/baselines/<profile>.csv``) holds one row per (table, row, dataset, split,
metric) with the seed mean, the seed standard deviation (ddof=1), the number of seeds and the
tolerance the nightly check applies to that cell. Nothing here trains or imports torch.

Tolerance rule (``tolerance_for``), in stored units (fractions 0-1, MAE and Corr raw)::

    tolerance = max(floor(metric), k * std * sqrt(2 / n))

``std`` and ``n`` are the baseline's seed std and seed count. The nightly run trains the same
seeds, so the difference of two n-seed means with per-seed std ``std`` has standard error
``std * sqrt(1/n + 1/n)``: with ``k = 3`` (default) noise alone crosses the tolerance in the bad
direction about once in 740 cells (one-sided normal tail). The floor keeps a cell whose seeds
happen to agree (or a one-seed baseline, whose std is unknown) from failing on the smallest
possible move: 1 percentage point (0.01) for fraction metrics (accuracies, F1, invalid rate),
0.02 for raw metrics (MAE, Corr). The tolerance is computed once, when the baseline is written,
and committed with it, so a reviewer sees it and can widen one noisy cell by hand.

Verdicts (``compare``), direction-aware (MAE and invalid rate: lower is better):

- ``ok``: within tolerance;
- ``regressed``: moved in the bad direction by more than the tolerance -> the check fails;
- ``improved``: moved in the good direction by more than the tolerance -> reported, passes
  (update the baseline on purpose to lock it in);
- ``missing``: the baseline has the cell but the results have no value, or fewer seeds (a run
  failed or did not run) -> the check fails;
- ``changed``: a metric of unknown direction moved by more than the tolerance -> fails;
- ``new``: the results have a cell the baseline lacks -> reported, passes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.reporting.markdown import md_table
from benchmarks.reporting.stats import (
    display_name,
    format_delta,
    format_value,
    higher_is_better,
    metric_scale,
    summarise,
)
from egmf_core.atomic import atomic_write_bytes

CELL_KEYS = ("table", "row", "dataset", "split", "metric")
BASELINE_COLUMNS = (*CELL_KEYS, "mean", "std", "n_seeds", "numerics_std", "numerics_n", "tolerance")
SPREAD_DEFAULTS = {"numerics_std": 0.0, "numerics_n": 1}  # baselines written before they existed: one setting
COMPARISON_COLUMNS = (*CELL_KEYS, "direction", "base_mean", "base_std", "base_n", "new_mean", "new_std", "new_n",
                      "delta", "tolerance", "verdict")
DEFAULT_K = 3.0
TOLERANCE_FLOOR = {"fraction": 0.01, "raw": 0.02}  # 1 point; 0.02 in label units (MAE, Corr)
# Metrics the tidy results carry that egmf_core.metrics.METRIC_INFO does not describe.
EXTRA_METRICS = {"invalid_rate": (False, "fraction")}  # share of unparseable answers: lower is better
FAILING = ("regressed", "missing", "changed")
VERDICT_ORDER = ("regressed", "missing", "changed", "improved", "new", "ok")


class BaselineError(ValueError):
    """A baseline file or a results table cannot be used; the message names the file and field."""


# ---- reading a metric ----------------------------------------------------------------------------

def metric_direction(metric: str) -> bool | None:
    """True when higher is better, False when lower is better, None when unknown."""
    if metric in EXTRA_METRICS:
        return EXTRA_METRICS[metric][0]
    return higher_is_better(metric)


def metric_kind(metric: str) -> str:
    """"fraction" or "raw" (the scale its tolerance floor and its printing follow)."""
    if metric in EXTRA_METRICS:
        return EXTRA_METRICS[metric][1]
    return metric_scale(metric)


def tolerance_for(metric: str, std: float, n: int, k: float = DEFAULT_K, numerics_std: float = 0.0) -> float:
    """The tolerance of one cell: max(floor, k * sqrt(2 std^2 / n + 2 numerics_std^2)).

    The seed term counts only when n >= 2 and std is finite (else the floor stands in for it).

    >>> tolerance_for("acc", 0.02, 3)  # 3 * 0.02 * sqrt(2/3)
    0.04898979485566357
    >>> tolerance_for("mae", 0.001, 5)  # below the raw floor
    0.02
    >>> round(tolerance_for("mae", 0.02, 5, numerics_std=0.01), 4)  # 3 * sqrt(2*0.0004/5 + 2*0.0001)
    0.0569
    """
    floor = TOLERANCE_FLOOR[metric_kind(metric)]
    seed_var = 0.0
    if n is not None and n >= 2 and std is not None and math.isfinite(std):
        seed_var = 2.0 * float(std) ** 2 / n
    numerics_var = 2.0 * float(numerics_std) ** 2 if numerics_std is not None and math.isfinite(numerics_std) else 0.0
    return max(floor, k * math.sqrt(seed_var + numerics_var))


# ---- building and storing a baseline --------------------------------------------------------------

def summarise_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, n over seeds per (table, row, dataset, split, metric), ok finite values only."""
    parts = []
    for table, rows in results.groupby(results["table"].astype(str), sort=True):
        s = summarise(rows)
        if not s.empty:
            parts.append(s.assign(table=table))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*CELL_KEYS, "mean", "std", "n")})
    out = pd.concat(parts, ignore_index=True)
    return out[[*CELL_KEYS, "mean", "std", "n"]].sort_values(list(CELL_KEYS), kind="mergesort").reset_index(drop=True)


def make_baseline(results: pd.DataFrame, *, k: float = DEFAULT_K, others: list[pd.DataFrame] = ()) -> pd.DataFrame:
    """A baseline (BASELINE_COLUMNS) from tidy results: one row per cell with its tolerance.

    ``others``: the same tables' results under other numerical settings (or GPU repeats); the
    std of each cell's seed mean over ``results`` and ``others`` becomes ``numerics_std``.
    """
    cells = summarise_cells(results)
    spread = numerics_spread([results, *others])
    cells = cells.merge(spread, on=list(CELL_KEYS), how="left").fillna(SPREAD_DEFAULTS)
    tol = [tolerance_for(m, s, int(n), k, ns) for m, s, n, ns in
           zip(cells["metric"], cells["std"], cells["n"], cells["numerics_std"])]
    out = cells.rename(columns={"n": "n_seeds"}).assign(tolerance=tol)
    out["n_seeds"] = out["n_seeds"].astype(int)
    out["numerics_n"] = out["numerics_n"].astype(int)
    return out[list(BASELINE_COLUMNS)].reset_index(drop=True)


def numerics_spread(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per cell: std (ddof=1) of its seed mean over the frames that have it, and how many do.

    >>> a = pd.DataFrame({"table": "t", "row": "r", "dataset": "d", "split": "test", "metric": "mae",
    ...                   "seed": [1, 2], "value": [0.2, 0.4], "status": "ok"})
    >>> b = a.assign(value=[0.3, 0.5])
    >>> numerics_spread([a, b])[["numerics_std", "numerics_n"]].round(4).values.tolist()
    [[0.0707, 2.0]]
    """
    means = [summarise_cells(f)[[*CELL_KEYS, "mean"]] for f in frames if not f.empty]
    if not means:
        return pd.DataFrame(columns=[*CELL_KEYS, "numerics_std", "numerics_n"])
    stacked = pd.concat(means, ignore_index=True)
    g = stacked.groupby(list(CELL_KEYS), sort=True)["mean"]
    out = pd.DataFrame({"numerics_std": g.std(ddof=1).fillna(0.0), "numerics_n": g.count()}).reset_index()
    return out


def with_spread(baseline: pd.DataFrame) -> pd.DataFrame:
    """``baseline`` with the numerics spread columns, filled as one setting (no spread) where absent."""
    return baseline.assign(**{c: baseline[c] if c in baseline.columns else v for c, v in SPREAD_DEFAULTS.items()})


def baseline_path(profile: str, results_root: Path = Path("results")) -> Path:
    return Path(results_root) / "baselines" / f"{profile}.csv"


def read_baseline(path: Path) -> pd.DataFrame:
    """Read and check a baseline CSV; BaselineError names the file and the bad field."""
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"{path}: baseline not found (write it with `python -m benchmarks.regression.nightly "
                            "--update-baseline` once the results are right)")
    try:
        df = pd.read_csv(path, dtype={c: str for c in CELL_KEYS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BaselineError(f"{path}: not a readable CSV ({' '.join(str(e).split())})") from None
    for col, value in SPREAD_DEFAULTS.items():  # a baseline written before these columns: one setting
        if col not in df.columns:
            df[col] = value
    missing = [c for c in BASELINE_COLUMNS if c not in df.columns]
    if missing:
        raise BaselineError(f"{path}: missing column {missing[0]!r} (expected {', '.join(BASELINE_COLUMNS)})")
    for col in ("mean", "std", "n_seeds", "numerics_std", "numerics_n", "tolerance"):
        df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
    df = df.fillna(SPREAD_DEFAULTS)
    for i, r in df.iterrows():
        where = f"{path}: line {i + 2}"
        if not math.isfinite(r["mean"]):
            raise BaselineError(f"{where}: field 'mean' is not a number")
        if not (math.isfinite(r["n_seeds"]) and r["n_seeds"] >= 1):
            raise BaselineError(f"{where}: field 'n_seeds' must be a positive integer")
        if math.isfinite(r["tolerance"]) and r["tolerance"] < 0:
            raise BaselineError(f"{where}: field 'tolerance' is negative")
    if df.duplicated(list(CELL_KEYS)).any():
        first = df[df.duplicated(list(CELL_KEYS))].iloc[0]
        raise BaselineError(f"{path}: cell {' / '.join(str(first[c]) for c in CELL_KEYS)} appears twice")
    df["n_seeds"] = df["n_seeds"].astype(int)
    df["numerics_n"] = df["numerics_n"].astype(int)
    return df[list(BASELINE_COLUMNS)].reset_index(drop=True)


def write_baseline(baseline: pd.DataFrame, path: Path) -> Path:
    """Write a baseline atomically, rows in cell order, floats as repr (byte-stable)."""
    df = with_spread(baseline)[list(BASELINE_COLUMNS)].sort_values(list(CELL_KEYS), kind="mergesort")
    text = df.to_csv(index=False, lineterminator="\n")
    return atomic_write_bytes(Path(path), text.encode("utf-8"))


def replace_tables(old: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with the rows of every table present in ``new`` replaced by ``new``'s rows."""
    if old is None or old.empty:
        return new.reset_index(drop=True)
    keep = old[~old["table"].isin(set(new["table"]))]
    return pd.concat([with_spread(keep), with_spread(new)], ignore_index=True)[list(BASELINE_COLUMNS)]


# ---- the comparison -----------------------------------------------------------------------------------

def compare(results: pd.DataFrame, baseline: pd.DataFrame, *, k: float = DEFAULT_K) -> pd.DataFrame:
    """One row per cell of ``baseline`` or ``results`` with its verdict (COMPARISON_COLUMNS).

    ``results`` are tidy rows (at least table, row, dataset, seed, split, metric, value, status);
    failed runs and non-finite values do not count as seeds. ``delta`` = new mean - baseline
    mean, in stored units; the baseline's ``tolerance`` is used, or ``tolerance_for(.., k)``
    where it is blank. Rows are sorted by verdict severity, then by cell.

    >>> res = pd.DataFrame({"table": "t", "row": "r", "dataset": "mosei", "split": "test", "metric": "mae",
    ...                     "seed": [1, 2], "value": [0.80, 0.82], "status": "ok"})
    >>> base = pd.DataFrame([{"table": "t", "row": "r", "dataset": "mosei", "split": "test", "metric": "mae",
    ...                       "mean": 0.70, "std": 0.01, "n_seeds": 2, "tolerance": 0.05}])
    >>> compare(res, base)[["delta", "verdict"]].round(3).values.tolist()
    [[0.11, 'regressed']]
    """
    new = summarise_cells(results).rename(columns={"mean": "new_mean", "std": "new_std", "n": "new_n"})
    base = with_spread(baseline)[list(BASELINE_COLUMNS)].rename(
        columns={"mean": "base_mean", "std": "base_std", "n_seeds": "base_n", "tolerance": "base_tol"})
    for df in (new, base):
        for c in CELL_KEYS:
            df[c] = df[c].astype(str)
    merged = base.merge(new, on=list(CELL_KEYS), how="outer", indicator="where")
    records = []
    for r in merged.itertuples(index=False):
        rec = {c: getattr(r, c) for c in CELL_KEYS}
        hib = metric_direction(rec["metric"])
        in_base, in_new = r.where in ("both", "left_only"), r.where in ("both", "right_only")
        base_n = int(r.base_n) if in_base else 0
        new_n = int(r.new_n) if in_new and math.isfinite(r.new_n) else 0
        tol = float(r.base_tol) if in_base and math.isfinite(r.base_tol) else (
            tolerance_for(rec["metric"], r.base_std, base_n, k, r.numerics_std) if in_base else float("nan"))
        delta = float(r.new_mean - r.base_mean) if in_base and in_new else float("nan")
        rec.update(direction={True: "higher", False: "lower", None: "unknown"}[hib],
                   base_mean=float(r.base_mean) if in_base else float("nan"),
                   base_std=float(r.base_std) if in_base else float("nan"), base_n=base_n,
                   new_mean=float(r.new_mean) if in_new else float("nan"),
                   new_std=float(r.new_std) if in_new else float("nan"), new_n=new_n,
                   delta=delta, tolerance=tol, verdict=_verdict(in_base, new_n, base_n, delta, tol, hib))
        records.append(rec)
    out = pd.DataFrame(records, columns=list(COMPARISON_COLUMNS))
    if out.empty:
        return out
    severity = out["verdict"].map({v: i for i, v in enumerate(VERDICT_ORDER)})
    out = out.assign(_s=severity).sort_values(["_s", *CELL_KEYS], kind="mergesort").drop(columns="_s")
    return out.reset_index(drop=True)


def _verdict(in_base: bool, new_n: int, base_n: int, delta: float, tol: float, hib: bool | None) -> str:
    if not in_base:
        return "new"
    if new_n == 0 or new_n < base_n:
        return "missing"
    if abs(delta) <= tol:
        return "ok"
    if hib is None:
        return "changed"
    better = delta > 0 if hib else delta < 0
    return "improved" if better else "regressed"


def failed(comparison: pd.DataFrame) -> bool:
    """True when any cell's verdict fails the check (regressed, missing, changed)."""
    return bool(comparison["verdict"].isin(FAILING).any()) if not comparison.empty else False


def verdict_counts(comparison: pd.DataFrame) -> dict[str, int]:
    counts = comparison["verdict"].value_counts().to_dict() if not comparison.empty else {}
    return {v: int(counts.get(v, 0)) for v in VERDICT_ORDER}


# ---- the markdown report --------------------------------------------------------------------------------

def summary_line(comparison: pd.DataFrame, profile: str) -> str:
    """The report's first line: PASSED/FAILED and the count of every verdict."""
    counts = verdict_counts(comparison)
    word = "FAILED" if failed(comparison) else "PASSED"
    parts = [f"{counts['regressed']} regressed", f"{counts['missing']} missing"]
    if counts["changed"]:
        parts.append(f"{counts['changed']} changed")
    parts += [f"{counts['improved']} improved", f"{counts['ok']} within tolerance"]
    if counts["new"]:
        parts.append(f"{counts['new']} new (not in the baseline)")
    return f"**Nightly regression check ({profile}): {word}** — {', '.join(parts)}."


def cell_label(r) -> str:
    return f"{r['table']} / {r['row']} / {r['dataset']} / {r['split']}"


def _value_text(metric: str, value: float) -> str:
    """Fractions as points with 2 decimals (invalid_rate included), raw metrics with 3."""
    return f"{100 * value:.2f}" if metric_kind(metric) == "fraction" else format_value(metric, value)


def _seeds_text(metric: str, mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "–"
    spread = f" ± {_value_text(metric, std)}" if math.isfinite(std) else ""
    return f"{_value_text(metric, mean)}{spread} (n={n})"


def change_text(r) -> str:
    """new - baseline in printed units (points for fractions), and whether that is better or worse."""
    m, delta = r["metric"], r["delta"]
    if not math.isfinite(delta):
        return "–"
    fraction = metric_kind(m) == "fraction"
    points = 0.0 if round(delta * 100.0, 2) == 0 else delta * 100.0  # never "-0.00"
    shown = f"{points:+.2f} pt" if fraction else format_delta(m, delta)
    hib = metric_direction(m)
    if delta == 0 or hib is None:
        return shown
    better = delta > 0 if hib else delta < 0
    return f"{shown} ({'better' if better else 'worse'})"


def tolerance_text(metric: str, tol: float) -> str:
    """A tolerance in printed units: "1.00 pt" for fractions, "0.020" for raw metrics."""
    if not math.isfinite(tol):
        return "–"
    if metric_kind(metric) == "fraction":
        return f"{100 * tol:.2f} pt"
    return f"{tol:.3f}"


def _metric_text(metric: str) -> str:
    if metric in EXTRA_METRICS:
        return f"{metric} {'↑' if EXTRA_METRICS[metric][0] else '↓'}"
    return display_name(metric)


def _comparison_rows(df: pd.DataFrame) -> list[list[str]]:
    out = []
    for _, r in df.iterrows():
        verdict = f"**{r['verdict']}**" if r["verdict"] in FAILING else r["verdict"]
        out.append([cell_label(r), _metric_text(r["metric"]),
                    _seeds_text(r["metric"], r["base_mean"], r["base_std"], int(r["base_n"])),
                    _seeds_text(r["metric"], r["new_mean"], r["new_std"], int(r["new_n"])),
                    change_text(r), tolerance_text(r["metric"], r["tolerance"]), verdict])
    return out


COMPARISON_HEADERS = ("cell (table / row / dataset / split)", "metric", "baseline", "now", "change", "tolerance",
                      "verdict")


def render_markdown(comparison: pd.DataFrame, profile: str, *, baseline_file: str, k: float = DEFAULT_K,
                    notes: list[str] | None = None) -> str:
    """The regression report: summary line first, then what failed, what improved, every cell."""
    lines = [summary_line(comparison, profile), "", f"# Nightly regression report: {profile} profile", "",
             f"Baseline: `{baseline_file}`. Values are seed means ± seed std (n seeds); fractions in "
             "percentage points, MAE and Corr in raw units. ↑ higher is better, ↓ lower is better.", ""]
    if notes:
        lines += ["Runs:", ""] + [f"- {n}" for n in notes] + [""]
    sections = [("Regressions and missing cells (these fail the check)", comparison["verdict"].isin(FAILING)),
                ("Improvements beyond tolerance (pass; update the baseline on purpose to keep them)",
                 comparison["verdict"] == "improved"),
                ("Cells not in the baseline (pass)", comparison["verdict"] == "new")]
    for title, mask in sections:
        if mask.any():
            lines += [f"## {title}", ""] + md_table(COMPARISON_HEADERS, _comparison_rows(comparison[mask])) + [""]
    if not comparison["verdict"].isin([*FAILING, "improved", "new"]).any():
        lines += ["Every cell is within its tolerance.", ""]
    lines += [f"<details><summary>All {len(comparison)} cells</summary>", ""]
    lines += md_table(COMPARISON_HEADERS, _comparison_rows(comparison)) + ["", "</details>", ""]
    floor_f, floor_r = TOLERANCE_FLOOR["fraction"], TOLERANCE_FLOOR["raw"]
    lines += ["## How the tolerance is set", "",
              "tolerance = max(floor, k · √(2·std²/n + 2·numerics_std²)) with the baseline's seed std and n seeds "
              "and the std of the cell's seed mean across the numerical settings (kernel paths; GPU: repeated runs) "
              "it was written under (0 for one setting), computed when "
              f"the baseline was written (k = {k:g} unless `--tolerance-k` said otherwise) and stored in it; floor = {100 * floor_f:g} point for fractions, {floor_r:g} for MAE "
              "and Corr. A move in the bad direction beyond it is a regression; a cell with fewer seeds than "
              "the baseline (a failed or skipped run) is missing. Both fail. See `benchmarks/regression/baselines.py`.", ""]
    return "\n".join(lines)
