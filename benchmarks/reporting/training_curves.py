"""Validation curves from the run files: did a run converge, or was it cut short?

Each run stores ``valid_history`` (step, training loss, key metric, invalid rate at every
validation pass; the ``valid_history_json`` column). A run whose best validation step is its
last one may have stopped while the key metric was still improving: the report counts them and
warns when they are a large share of the table's runs. Pure functions of the tidy table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pandas as pd

from benchmarks.execution.tables import TableSpec
from benchmarks.reporting.stats import run_table


def history_of(raw: str) -> list[dict]:
    """A ``valid_history_json`` cell -> list of passes ([] when empty or unreadable)."""
    try:
        data = json.loads(raw) if raw else []
    except (json.JSONDecodeError, TypeError):
        return []
    return [h for h in data if isinstance(h, dict) and "step" in h] if isinstance(data, list) else []


def curve_frame(df: pd.DataFrame, metric_of: Callable[[str], str]) -> pd.DataFrame:
    """Long frame (row, dataset, seed, step, value, loss) of every ok run's validation passes;
    ``metric_of(dataset)`` names the key metric stored in the history."""
    runs = run_table(df)
    if runs.empty or "valid_history_json" not in runs.columns:
        return pd.DataFrame(columns=["row", "dataset", "seed", "step", "value", "loss"])
    recs = []
    for r in runs[runs["status"] == "ok"].itertuples(index=False):
        metric = metric_of(r.dataset)
        for h in history_of(r.valid_history_json):
            recs.append({"row": r.row, "dataset": r.dataset, "seed": int(r.seed), "step": int(h["step"]),
                         "value": float(h.get(metric, float("nan"))), "loss": float(h.get("loss", float("nan")))})
    return pd.DataFrame(recs, columns=["row", "dataset", "seed", "step", "value", "loss"])


def last_step_runs(df: pd.DataFrame) -> tuple[int, int]:
    """(runs whose selected step is their last validation step, ok runs with a step count)."""
    runs = run_table(df)
    if runs.empty:
        return 0, 0
    ok = runs[(runs["status"] == "ok") & (pd.to_numeric(runs["steps"], errors="coerce") > 0)]
    last = 0
    for r in ok.itertuples(index=False):
        history = history_of(getattr(r, "valid_history_json", ""))
        final = history[-1]["step"] if history else r.steps
        last += int(int(r.best_step) == int(final))
    return last, len(ok)


def training_section(spec: TableSpec, df: pd.DataFrame, figures: Sequence[str],
                     md_table: Callable[[Sequence[str], list], list[str]]) -> list[str]:
    """The report's "Training" section: the last-step count, a warning when it is large, curves."""
    lines = ["", "## Training", ""]
    last, total = last_step_runs(df)
    if total == 0:
        return lines + ["No ok runs."]
    share = last / total
    text = (f"{last} of {total} ok run(s) ({100 * share:.0f}%) selected their last validation step: the key "
            "metric may still have been improving when training stopped.")
    if share > spec.report.last_step_warning:
        lines += [f"> **WARNING: possibly undertrained.** {text} (warning above "
                  f"{100 * spec.report.last_step_warning:.0f}%.)", ""]
    else:
        lines += [text, ""]
    per_row = run_table(df)
    per_row = per_row[per_row["status"] == "ok"]
    rows = []
    for (ds, row), g in per_row.groupby(["dataset", "row"], sort=True):
        finals = [history_of(h)[-1]["step"] if history_of(h) else s
                  for h, s in zip(g.get("valid_history_json", [""] * len(g)), g["steps"])]
        n_last = sum(int(b) == int(f) for b, f in zip(g["best_step"], finals))
        rows.append([ds, row, str(len(g)), f"{g['steps'].mean():.0f}", f"{g['best_step'].mean():.0f}",
                     f"{n_last}/{len(g)}"])
    lines += md_table(["dataset", "row", "runs", "steps (mean)", "selected step (mean)", "selected = last"], rows)
    if not figures:
        lines += ["", "Validation curves: not recorded in these run files (older format, without valid_history)."]
    return lines + [f"\n![{name.rsplit('.', 1)[0]}]({name})" for name in figures]
