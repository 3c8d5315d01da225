"""EGMF minus each baseline (MSE-Adapter, TFN) on matched seeds: a pure function of the tidy results.

A table's baseline rows are the rows whose config sets ``model.method`` to something other than
"egmf" (in the table file: the row's overrides or the base); the EGMF row is the first row that
does not. Per dataset and baseline, on the dataset's key metric: the seeds both rows have
(n), the mean of EGMF minus the baseline (direction-aware: positive = EGMF better, MAE lower is
better), the 95% Student-t interval and paired t-test (none below ``stats.MIN_PAIRS`` seeds), and
p corrected by Holm over every EGMF-vs-baseline comparison of the table. A side with more than
``report.invalid_threshold`` unparseable answers is not comparable and stays out of the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from benchmarks.execution.tables import TableSpec
from benchmarks.reporting.claims import invalid_share, not_comparable_note
from benchmarks.reporting.markdown import MISSING, md_table
from benchmarks.reporting.stats import (
    MIN_PAIRS,
    TOO_FEW,
    PairedResult,
    dataset_key_metric,
    display_name,
    format_value,
    higher_is_better,
    holm,
    ok_metric_rows,
    paired_cells,
    paired_comparison,
    seed_values,
)
from egmf_core.data.dataset import SPECS

METHOD_KEY = "model.method"


@dataclass(frozen=True)
class BaselineComparison:
    """EGMF against one baseline on one dataset's key metric (stored units)."""

    dataset: str
    baseline: str
    metric: str
    result: PairedResult | None  # None: not comparable (see note)
    p_holm: float = float("nan")
    note: str = ""


def _method(spec: TableSpec, overrides: dict) -> str:
    return str(overrides.get(METHOD_KEY, spec.base.get(METHOD_KEY, "egmf")))


def baseline_rows(spec: TableSpec) -> tuple[str | None, list[str]]:
    """(the EGMF row, the baseline rows in table order); (None, []) when the table has no baseline."""
    egmf = [r.name for r in spec.rows if _method(spec, r.overrides) == "egmf"]
    baselines = [r.name for r in spec.rows if _method(spec, r.overrides) != "egmf"]
    if not egmf or not baselines:
        return None, []
    return egmf[0], baselines


def compare_baselines(spec: TableSpec, df: pd.DataFrame) -> list[BaselineComparison]:
    """Every (dataset, baseline) of the table, in table order, with Holm over the comparable ones."""
    egmf, baselines = baseline_rows(spec)
    if egmf is None:
        return []
    test = ok_metric_rows(df)
    test = test[test["split"] == "test"]
    out: list[BaselineComparison] = []
    for ds in spec.datasets:
        if ds not in SPECS:
            continue
        key = dataset_key_metric(ds)
        for row in baselines:
            row_spec = spec.row(row)
            if row_spec.datasets is not None and ds not in row_spec.datasets:
                continue
            worst = max(invalid_share(test, egmf, ds), invalid_share(test, row, ds))
            if worst > spec.report.invalid_threshold:
                out.append(BaselineComparison(ds, row, key, None, note=not_comparable_note(worst)))
                continue
            res = paired_comparison(seed_values(df, egmf, ds, key), seed_values(df, row, ds, key),
                                    higher_is_better=bool(higher_is_better(key)))
            out.append(BaselineComparison(ds, row, key, res, note="no results" if res.n == 0 else ""))
    adjusted = iter(holm([c.result.p_value for c in out if c.result is not None]))
    return [c if c.result is None else BaselineComparison(c.dataset, c.baseline, c.metric, c.result,
                                                          next(adjusted), c.note) for c in out]


def baseline_section(spec: TableSpec, df: pd.DataFrame, profile: str) -> list[str]:
    """The report's "EGMF vs baselines" section (markdown lines); none for a table without baselines."""
    from benchmarks.execution.profiles import SYNTHETIC_PROFILES

    egmf, _ = baseline_rows(spec)
    comparisons = compare_baselines(spec, df)
    if egmf is None:
        return []
    lines = ["", "## EGMF vs baselines (test split)", "",
             f"`{egmf}` minus each baseline on the dataset's key metric, paired by seed on the seeds both have "
             f"(n = matched seeds; delta > 0: {egmf} is better, MAE reads lower-is-better): mean delta, 95% "
             f"t-interval and paired t-test, p (Holm) corrected over the {len(comparisons)} comparisons below; "
             f"under {MIN_PAIRS} matched seeds: {TOO_FEW}. A side with more than "
             f"{100 * spec.report.invalid_threshold:.0f}% unparseable answers is not comparable. The means are "
             "over the matched seeds."]
    if profile in SYNTHETIC_PROFILES:
        lines += ["", "Synthetic data: they plant text > audio > visual, nothing about EGMF against a baseline, so "
                      "these deltas test the machinery; the claims below read \"not applicable to synthetic data\"."]
    rows = []
    for c in comparisons:
        head = [c.dataset, c.baseline, display_name(c.metric)]
        if c.result is None or c.result.n == 0:
            rows.append([*head, "0" if c.result is not None else MISSING, MISSING, MISSING, c.note, MISSING,
                         "n/a", "n/a"])
            continue
        res = c.result
        means = [format_value(c.metric, res.mean_row), format_value(c.metric, res.mean_ref)]
        rows.append([*head, str(res.n), *means, *paired_cells(c.metric, res, c.p_holm)[:4]])
    return lines + [""] + md_table(["dataset", "baseline", "metric", "n", egmf, "baseline", "EGMF - baseline",
                                     "95% CI (t)", "p", "p (Holm)"], rows)
