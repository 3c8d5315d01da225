"""Summary statistics over seeds, paired tests between rows, and how to read each metric.

Pure functions of the tidy results table (``benchmarks.results.schema.RESULT_COLUMNS``); no torch.
Values stay in stored units here (fractions for accuracies and F1); :func:`to_display`
converts to the units reports print (percentage points for fractions, raw for MAE and Corr).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from benchmarks.reporting.markdown import MISSING
from benchmarks.results.schema import COST_COLUMNS
from egmf_core.metrics import METRIC_INFO, key_metric

SUMMARY_KEYS = ("row", "dataset", "split", "metric")


# ---- how to read a metric --------------------------------------------------------------------

def metric_scale(metric: str) -> str:
    """"fraction" (printed x100 as points) or "raw"; metrics the registry does not know are raw."""
    info = METRIC_INFO.get(metric)
    return info.scale if info is not None else "raw"


def higher_is_better(metric: str) -> bool | None:
    """The metric's direction, or None when the registry does not know the metric."""
    info = METRIC_INFO.get(metric)
    return info.higher_is_better if info is not None else None


def display_name(metric: str) -> str:
    """The printed name with its direction arrow, e.g. "MAE ↓"; unknown metrics print as is."""
    info = METRIC_INFO.get(metric)
    if info is None:
        return metric
    return f"{info.display_name} {'↑' if info.higher_is_better else '↓'}"


def to_display(metric: str, value: float) -> float:
    """Stored units -> printed units: fractions become percentage points, raw stays raw."""
    return value * 100.0 if metric_scale(metric) == "fraction" else value


def format_value(metric: str, value: float) -> str:
    """A stored value in printed units: fractions x100 with 2 decimals, raw with 3 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    v = to_display(metric, float(value))
    return f"{v:.2f}" if metric_scale(metric) == "fraction" else f"{v:.3f}"


def format_delta(metric: str, value: float) -> str:
    """A signed difference, already in printed units (no x100 applied here)."""
    if value is None or math.isnan(value):
        return "n/a"
    decimals = 2 if metric_scale(metric) == "fraction" else 3
    value = 0.0 if round(value, decimals) == 0 else value  # never print "-0.00"
    return f"{value:+.{decimals}f}"


def dataset_key_metric(dataset: str) -> str:
    """The dataset's key metric (model selection and paired tests): WF1 for ERC, MAE for MSA."""
    return key_metric(dataset)


def improvement(metric: str, row_value: float, ref_value: float) -> float:
    """How much better ``row`` is than ``ref``, direction-aware (MAE: lower is better)."""
    hib = higher_is_better(metric)
    if hib is None:
        raise ValueError(f"metric {metric!r}: direction unknown (not in egmf_core.metrics.METRIC_INFO)")
    return row_value - ref_value if hib else ref_value - row_value


# ---- summaries over seeds ----------------------------------------------------------------------

def ok_metric_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows that hold a usable value: status ok (when present) and a finite value."""
    out = df
    if "status" in out.columns:
        out = out[out["status"].astype(str) == "ok"]
    values = pd.to_numeric(out["value"], errors="coerce")
    out = out.assign(value=values)
    return out[np.isfinite(out["value"].to_numpy(dtype=float))]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN when n == 1) and n over seeds per (row, dataset, split, metric).

    Only ``status == "ok"`` rows with a finite value count. The result is sorted by its keys.
    """
    columns = [*SUMMARY_KEYS, "mean", "std", "n"]
    rows = ok_metric_rows(df)
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("mean", "std") else object) for c in columns})
    # one value per seed: a duplicated (seed, cell) would otherwise be counted twice
    rows = rows.drop_duplicates(subset=[*SUMMARY_KEYS, "seed"], keep="last")
    grouped = rows.groupby(list(SUMMARY_KEYS), sort=True)["value"]
    out = grouped.agg(mean="mean", std=lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan"), n="count")
    out = out.reset_index()
    out["n"] = out["n"].astype(int)
    return out[columns].sort_values(list(SUMMARY_KEYS), kind="mergesort").reset_index(drop=True)


def seed_values(df: pd.DataFrame, row: str, dataset: str, metric: str, split: str = "test") -> dict[int, float]:
    """seed -> value for one cell, from ok rows only (the input of :func:`paired_comparison`)."""
    rows = ok_metric_rows(df)
    sel = rows[(rows["row"] == row) & (rows["dataset"] == dataset) & (rows["metric"] == metric)
               & (rows["split"] == split)]
    return {int(s): float(v) for s, v in sorted(zip(sel["seed"], sel["value"]))}


# ---- paired comparison across seeds --------------------------------------------------------------

MIN_PAIRS = 3  # fewer matched seeds: no interval and no p-value, only "too few seeds"
MIN_PAIRS_BOOTSTRAP = 10  # a percentile bootstrap of a mean is too narrow below this many pairs
CONFIDENCE = 0.95
TOO_FEW = "too few seeds"


@dataclass(frozen=True)
class PairedResult:
    """A row against the reference, paired by seed; deltas in stored units, positive = row better."""

    n: int  # seeds present in both (the matched seeds)
    mean_delta: float
    ci_low: float  # 95% t-interval of the mean delta (Student t, n - 1 df); NaN when n < MIN_PAIRS
    ci_high: float
    p_value: float  # paired t-test (scipy.stats.ttest_rel); NaN when n < MIN_PAIRS or all deltas equal
    boot_low: float = float("nan")  # 95% percentile bootstrap; NaN when n < MIN_PAIRS_BOOTSTRAP
    boot_high: float = float("nan")
    mean_row: float = float("nan")  # the row's mean over the matched seeds only
    mean_ref: float = float("nan")  # the reference's mean over the matched seeds only

    @property
    def too_few(self) -> bool:
        return self.n < MIN_PAIRS


def t_interval(deltas: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Student-t interval of the mean of ``deltas`` (n - 1 degrees of freedom).

    >>> lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    >>> round(lo, 3), round(hi, 3)
    (-0.484, 4.484)
    """
    n = len(deltas)
    mean = float(deltas.mean())
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * deltas.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def paired_comparison(
    values_row: dict[int, float],
    values_ref: dict[int, float],
    *,
    higher_is_better: bool,
    n_boot: int = 10000,
    seed: int = 0,
) -> PairedResult:
    """Compare a row with the reference on the seeds both have (matched seeds only).

    delta_s = row_s - ref_s when higher is better, ref_s - row_s otherwise, so a positive mean
    delta always means the row is better. With n >= MIN_PAIRS the 95% t-interval and the paired
    t-test are given; with n >= MIN_PAIRS_BOOTSTRAP also a percentile bootstrap (``n_boot``
    resamples, NumPy ``default_rng(seed)``). Fewer pairs give the mean delta alone.

    >>> r = paired_comparison({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.4, 3: 0.9}, higher_is_better=True)
    >>> r.n, round(r.mean_delta, 3), r.too_few, round(r.mean_ref, 3)
    (2, 0.15, True, 0.4)
    """
    seeds = sorted(set(values_row) & set(values_ref))
    n = len(seeds)
    nan = float("nan")
    if n == 0:
        return PairedResult(0, nan, nan, nan, nan)
    row = np.array([values_row[s] for s in seeds], dtype=float)
    ref = np.array([values_ref[s] for s in seeds], dtype=float)
    deltas = row - ref if higher_is_better else ref - row
    means = dict(mean_row=float(row.mean()), mean_ref=float(ref.mean()))
    mean_delta = float(deltas.mean())
    if n < MIN_PAIRS:
        return PairedResult(n, mean_delta, nan, nan, nan, **means)
    ci_low, ci_high = t_interval(deltas)
    boot_low = boot_high = nan
    if n >= MIN_PAIRS_BOOTSTRAP:
        rng = np.random.default_rng(seed)
        boot_means = deltas[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        boot_low, boot_high = (float(x) for x in np.percentile(boot_means, [2.5, 97.5]))
    if np.all(deltas == deltas[0]):
        p_value = nan  # the t statistic is undefined with zero variance of the deltas
    else:
        p_value = float(scipy_stats.ttest_rel(row, ref).pvalue)
    return PairedResult(n, mean_delta, ci_low, ci_high, p_value, boot_low, boot_high, **means)


def paired_cells(metric: str, res: PairedResult, p_holm: float = float("nan")) -> list[str]:
    """mean delta, t-interval, p, Holm p and bootstrap CI of a paired comparison (printed units)."""
    def delta(x: float) -> str:
        return MISSING if math.isnan(x) else format_delta(metric, to_display(metric, x))

    if res.n == 0:
        return [MISSING, MISSING, "n/a", "n/a", "n/a"]
    if res.too_few:
        return [delta(res.mean_delta), TOO_FEW, "n/a", "n/a", "n/a"]
    ci = f"[{delta(res.ci_low)}, {delta(res.ci_high)}]"
    p = "n/a" if math.isnan(res.p_value) else f"{res.p_value:.4f}"
    ph = "n/a" if math.isnan(p_holm) else f"{p_holm:.4f}"
    boot = "n/a" if math.isnan(res.boot_low) else f"[{delta(res.boot_low)}, {delta(res.boot_high)}]"
    return [delta(res.mean_delta), ci, p, ph, boot]


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family (NaN entries are left out and stay NaN).

    >>> [round(p, 3) for p in holm([0.01, 0.04, float("nan"), 0.03])]
    [0.03, 0.06, nan, 0.06]
    """
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [float("nan")] * len(p_values)
    running, m = 0.0, len(finite)
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


# ---- one row per run: provenance, cost, validity, gating ------------------------------------------

RUN_KEYS = ("row", "dataset", "seed", "run_id")


def run_table(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per run (row, dataset, seed, run_id), taking run-level columns from ``split``'s
    rows when the run has them (invalid_rate and gating_json are per split), else from any row.

    Failed runs are kept (their status and error come with them). Sorted by the run keys.
    """
    if df.empty:
        return df.copy()
    order = (df["split"].astype(str) != split).astype(int)  # the wanted split first
    runs = df.assign(_order=order).sort_values([*RUN_KEYS, "_order"], kind="mergesort")
    runs = runs.drop_duplicates(subset=list(RUN_KEYS), keep="first").drop(columns="_order")
    for col in (*COST_COLUMNS, "invalid_rate"):
        if col in runs.columns:
            runs[col] = pd.to_numeric(runs[col], errors="coerce")
    return runs.reset_index(drop=True)


# GatingStats.as_dict writes these keys; the brief's shorter names are accepted as aliases.
_GATING_KEYS = {
    "alpha": ("alpha_mean", "mean_alpha"),
    "alpha_std": ("alpha_std", "std_alpha"),
    "beta": ("beta_mean", "mean_beta"),
    "entropy": ("entropy_mean", "entropy"),
    "normalised_entropy": ("entropy_normalised_mean", "normalised_entropy"),
    "alpha_by_label": ("alpha_mean_by_label", "alpha_by_label"),
    "top_expert_share": ("top_expert_share",),
    "collapse": ("gating_collapse",),
    "collapse_reason": ("gating_collapse_reason", "collapse_reason"),
    "static": ("gating_static",),
}


def parse_gating(raw) -> dict:
    """A gating_json cell -> dict with the keys of ``_GATING_KEYS`` (missing ones are None).

    Empty cells, "null" and "{}" (a run without a gate) give an empty dict.
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() in ("", "null", "{}", "nan"):
        return {}
    data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    if not isinstance(data, dict) or not data:
        return {}
    out = {}
    for key, names in _GATING_KEYS.items():
        out[key] = next((data[n] for n in names if n in data), None)
    return out


def gating_runs(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Per-run gating statistics of ``split`` for ok runs that recorded a gate.

    Columns: row, dataset, seed, run_id, then the keys of ``_GATING_KEYS`` (alpha and
    alpha_by_label stay dicts).
    """
    columns = [*RUN_KEYS, *_GATING_KEYS]
    if df.empty or "gating_json" not in df.columns:
        return pd.DataFrame(columns=columns)
    sel = df[(df["split"].astype(str) == split) & (df["status"].astype(str) == "ok")]
    sel = sel.drop_duplicates(subset=list(RUN_KEYS), keep="first").sort_values(list(RUN_KEYS), kind="mergesort")
    records = []
    for rec in sel[[*RUN_KEYS, "gating_json"]].itertuples(index=False):
        g = parse_gating(rec.gating_json)
        if g.get("alpha"):
            records.append({"row": rec.row, "dataset": rec.dataset, "seed": int(rec.seed), "run_id": rec.run_id, **g})
    return pd.DataFrame(records, columns=columns)
