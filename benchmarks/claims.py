"""Verdicts: the paper's qualitative claims and its numbers, checked against our summary.

Two kinds of verdict live here, both pure functions of a :func:`benchmarks.stats.summarise`
table (stored units) and a :class:`benchmarks.tables.TableSpec`:

* :func:`evaluate_claim` for a ``[[claims]]`` entry of a table file;
* :func:`cell_verdict` for one of the table's ``[[paper_values]]`` cells.

Every comparison is direction-aware: a "drop" or an "improvement" reads each metric's
``higher_is_better`` (MAE is lower-is-better). Thresholds given in a claim (``range``,
``tolerance``, ``margin``) are in printed units: percentage points for fraction metrics, the
label's own units for MAE and Corr. Claim kinds and their parameters:

``order_by_drop``  rows (claimed order, largest drop first), reference, datasets, metric
``relative_drop``  row, reference, datasets, metric, threshold (drop / |reference| > threshold)
``delta_sign``     row, reference, datasets, metric, sign ("+" better, "-" worse), range [lo, hi]
``delta_range``    the same as delta_sign with a required range
``within``         row, reference, datasets, metric, tolerance (|row - reference| <= tolerance)
``greater``        row, reference, datasets, metric, margin (row better by more than margin)
``order_by_value`` rows (claimed order, best first), datasets, metric

``reference`` defaults to the table's reference_row, ``metric`` to "key" (the dataset's key
metric), ``datasets`` to "all" (the table's datasets); ``datasets`` may also be a list, one
name, or a group: "erc", "msa" (by task), "english", "chinese" (by language).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from benchmarks.stats import (
    dataset_key_metric,
    display_name,
    format_delta,
    format_value,
    higher_is_better,
    metric_scale,
    to_display,
)
from benchmarks.tables import Claim, TableSpec
from egmf_core.data.dataset import SPECS

HELD, WITHIN, NOT_HELD, NOT_COMPARABLE = "held", "within tolerance", "did not hold", "not comparable"

# Cell verdicts (ours vs a paper number). "held": |delta| <= max(1 std, floor); "within
# tolerance": |delta| <= max(2 std, tolerance). Floors are in printed units per metric scale:
# 0.5 / 2 percentage points for fractions, 0.005 / 0.02 for raw metrics (MAE, Corr).
HELD_STD_FACTOR = 1.0
TOLERANCE_STD_FACTOR = 2.0
HELD_FLOOR = {"fraction": 0.5, "raw": 0.005}
TOLERANCE_FLOOR = {"fraction": 2.0, "raw": 0.02}

DATASET_GROUPS: dict[str, Callable[[str], bool]] = {
    "erc": lambda d: SPECS[d].task == "classification",
    "msa": lambda d: SPECS[d].task == "regression",
    "english": lambda d: SPECS[d].language == "en",
    "chinese": lambda d: SPECS[d].language == "zh",
}


class ClaimError(ValueError):
    """A claim is malformed (unknown kind, row or dataset); the message names the claim id."""


@dataclass(frozen=True)
class ClaimVerdict:
    id: str
    text: str
    verdict: str  # held | did not hold | not comparable
    detail: str  # the numbers behind the verdict, in printed units


# ---- paper cells -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellVerdict:
    delta: float  # ours - paper, printed units; NaN when not comparable
    verdict: str
    better: bool | None  # direction-aware: is ours better than the paper's number


def cell_verdict(metric: str, ours_mean: float, ours_std: float, paper_value: float, *,
                 comparable: bool = True) -> CellVerdict:
    """Our mean (stored units) against a paper value (printed units) for one cell.

    ``comparable=False`` (the smoke profile's synthetic data) or a missing mean gives
    "not comparable". A std of NaN (one seed) counts as 0.

    >>> cell_verdict("wf1", 0.655, 0.004, 65.57).verdict
    'held'
    >>> cell_verdict("mae", 0.60, 0.01, 0.55).verdict   # |delta| 0.05 > max(2 std, 0.02)
    'did not hold'
    """
    nan = float("nan")
    if not comparable or ours_mean is None or math.isnan(ours_mean):
        return CellVerdict(nan, NOT_COMPARABLE, None)
    scale = metric_scale(metric)
    ours = to_display(metric, ours_mean)
    std = 0.0 if ours_std is None or math.isnan(ours_std) else to_display(metric, ours_std)
    delta = ours - paper_value
    hib = higher_is_better(metric)
    better = None if hib is None or delta == 0 else (delta > 0) == hib
    if abs(delta) <= max(HELD_STD_FACTOR * std, HELD_FLOOR[scale]):
        verdict = HELD
    elif abs(delta) <= max(TOLERANCE_STD_FACTOR * std, TOLERANCE_FLOOR[scale]):
        verdict = WITHIN
    else:
        verdict = NOT_HELD
    return CellVerdict(delta, verdict, better)


# ---- claims ------------------------------------------------------------------------------------

def claim_datasets(claim: Claim, spec: TableSpec) -> list[str]:
    """The datasets a claim covers, in the table's order."""
    raw = claim.params.get("datasets", "all")
    if isinstance(raw, str):
        if raw == "all":
            names = list(spec.datasets)
        elif raw in DATASET_GROUPS:
            names = [d for d in spec.datasets if d in SPECS and DATASET_GROUPS[raw](d)]
        else:
            names = [raw]
    elif isinstance(raw, (list, tuple)):
        names = [str(d) for d in raw]
    else:
        raise ClaimError(f"claim {claim.id!r}: datasets must be a list, a name or a group, got {raw!r}")
    unknown = [d for d in names if d not in spec.datasets]
    if unknown:
        raise ClaimError(f"claim {claim.id!r}: dataset {unknown[0]!r} is not in table {spec.name!r}")
    if not names:
        raise ClaimError(f"claim {claim.id!r}: datasets {raw!r} selects none of {list(spec.datasets)}")
    return names


def evaluate_claim(claim: Claim, summary: pd.DataFrame, spec: TableSpec) -> ClaimVerdict:
    """Check one claim on the test split of ``summary``; see the module docstring for kinds."""
    handler = _HANDLERS.get(claim.kind)
    if handler is None:
        raise ClaimError(f"claim {claim.id!r}: unknown kind {claim.kind!r} (known: {', '.join(sorted(_HANDLERS))})")
    ctx = _Context(claim, summary, spec)
    outcomes = [handler(ctx, ds) for ds in claim_datasets(claim, spec)]
    if any(o.verdict == NOT_HELD for o in outcomes):
        verdict = NOT_HELD
    elif any(o.verdict == NOT_COMPARABLE for o in outcomes):
        verdict = NOT_COMPARABLE
    else:
        verdict = HELD
    return ClaimVerdict(claim.id, claim.text, verdict, "; ".join(o.detail for o in outcomes))


@dataclass(frozen=True)
class _Outcome:
    verdict: str
    detail: str


class _Missing(Exception):
    """A number the claim needs is absent from the results (-> not comparable)."""


class _Context:
    """Lookups shared by the claim kinds: parameters, metric per dataset, means."""

    def __init__(self, claim: Claim, summary: pd.DataFrame, spec: TableSpec):
        self.claim, self.spec = claim, spec
        test = summary[summary["split"] == "test"] if "split" in summary.columns else summary
        cells = zip(test["row"], test["dataset"], test["metric"], test["mean"])
        self.means = {(r, d, m): float(v) for r, d, m, v in cells}
        self.row_names = {r.name for r in spec.rows}

    def param(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.claim.params:
            if required:
                raise ClaimError(f"claim {self.claim.id!r} ({self.claim.kind}): missing parameter {key!r}")
            return default
        return self.claim.params[key]

    def row_param(self, key: str) -> str:
        return self.check_row(str(self.param(key, required=True)))

    def reference(self) -> str:
        ref = self.param("reference", self.spec.reference_row)
        if ref is None:
            raise ClaimError(f"claim {self.claim.id!r}: no reference given and table {self.spec.name!r} "
                             "has no reference_row")
        return self.check_row(str(ref))

    def check_row(self, row: str) -> str:
        if row not in self.row_names:
            raise ClaimError(f"claim {self.claim.id!r}: row {row!r} is not in table {self.spec.name!r}")
        return row

    def metric(self, dataset: str) -> str:
        metric = str(self.param("metric", "key"))
        metric = dataset_key_metric(dataset) if metric == "key" else metric
        if higher_is_better(metric) is None:
            raise _Missing(f"{dataset}: direction of metric {metric!r} unknown")
        return metric

    def mean(self, row: str, dataset: str, metric: str) -> float:
        value = self.means.get((row, dataset, metric))
        if value is None or math.isnan(value):
            raise _Missing(f"{dataset}: no test {metric} for {row!r}")
        return value

    def improvement(self, row: str, ref: str, dataset: str, metric: str) -> tuple[float, float, float]:
        """(direction-aware improvement in printed units, row mean, ref mean in stored units)."""
        r, f = self.mean(row, dataset, metric), self.mean(ref, dataset, metric)
        diff = to_display(metric, r) - to_display(metric, f)
        return (diff if higher_is_better(metric) else -diff), r, f


def _guard(kind_fn):
    """Turn a missing number into a "not comparable" outcome naming what is missing."""

    def wrapped(ctx: _Context, dataset: str) -> _Outcome:
        try:
            return kind_fn(ctx, dataset)
        except _Missing as e:
            return _Outcome(NOT_COMPARABLE, f"{e} (not comparable)")

    return wrapped


def _head(dataset: str, metric: str) -> str:
    return f"{dataset} {display_name(metric)}"


@_guard
def _order_by_drop(ctx: _Context, dataset: str) -> _Outcome:
    rows = [ctx.check_row(str(r)) for r in ctx.param("rows", required=True)]
    ref, metric = ctx.reference(), ctx.metric(dataset)
    drops = [-ctx.improvement(r, ref, dataset, metric)[0] for r in rows]
    ok = all(a > b for a, b in zip(drops, drops[1:]))
    parts = " > ".join(f"{r} {format_delta(metric, d)}" for r, d in zip(rows, drops))
    return _Outcome(HELD if ok else NOT_HELD, f"{_head(dataset, metric)} drop vs {ref}: {parts}")


@_guard
def _relative_drop(ctx: _Context, dataset: str) -> _Outcome:
    row, ref, metric = ctx.row_param("row"), ctx.reference(), ctx.metric(dataset)
    threshold = float(ctx.param("threshold", required=True))
    gain, _, ref_mean = ctx.improvement(row, ref, dataset, metric)
    base = abs(to_display(metric, ref_mean))
    if base == 0:
        raise _Missing(f"{dataset}: reference {ref!r} is 0, relative drop undefined")
    rel = -gain / base
    return _Outcome(HELD if rel > threshold else NOT_HELD,
                    f"{_head(dataset, metric)}: {row} vs {ref} relative drop {rel:.3f} (threshold > {threshold:g})")


@_guard
def _delta_sign(ctx: _Context, dataset: str) -> _Outcome:
    row, ref, metric = ctx.row_param("row"), ctx.reference(), ctx.metric(dataset)
    sign, bounds = ctx.param("sign"), ctx.param("range")
    if sign is None and bounds is None:
        raise ClaimError(f"claim {ctx.claim.id!r} ({ctx.claim.kind}): needs 'sign' or 'range'")
    if sign is not None and sign not in ("+", "-"):
        raise ClaimError(f"claim {ctx.claim.id!r}: sign must be '+' or '-', got {sign!r}")
    gain = ctx.improvement(row, ref, dataset, metric)[0]
    ok = sign is None or (gain > 0 if sign == "+" else gain < 0)
    want = [] if sign is None else [f"sign {sign}"]
    if bounds is not None:
        lo, hi = (float(b) for b in bounds)
        ok = ok and lo <= gain <= hi
        want.append(f"range [{lo:g}, {hi:g}]")
    return _Outcome(HELD if ok else NOT_HELD,
                    f"{_head(dataset, metric)}: {row} - {ref} improvement {format_delta(metric, gain)} "
                    f"(claimed {', '.join(want)})")


def _delta_range(ctx: _Context, dataset: str) -> _Outcome:
    ctx.param("range", required=True)
    return _delta_sign(ctx, dataset)


@_guard
def _within(ctx: _Context, dataset: str) -> _Outcome:
    row, ref, metric = ctx.row_param("row"), ctx.reference(), ctx.metric(dataset)
    tolerance = float(ctx.param("tolerance", required=True))
    gain, r, f = ctx.improvement(row, ref, dataset, metric)
    return _Outcome(HELD if abs(gain) <= tolerance else NOT_HELD,
                    f"{_head(dataset, metric)}: {row} {format_value(metric, r)} vs {ref} {format_value(metric, f)}, "
                    f"|delta| {format_delta(metric, abs(gain)).lstrip('+')} (tolerance {tolerance:g})")


@_guard
def _greater(ctx: _Context, dataset: str) -> _Outcome:
    row, ref, metric = ctx.row_param("row"), ctx.reference(), ctx.metric(dataset)
    margin = float(ctx.param("margin", 0.0))
    gain, r, f = ctx.improvement(row, ref, dataset, metric)
    return _Outcome(HELD if gain > margin else NOT_HELD,
                    f"{_head(dataset, metric)}: {row} {format_value(metric, r)} vs {ref} {format_value(metric, f)}, "
                    f"improvement {format_delta(metric, gain)} (margin > {margin:g})")


@_guard
def _order_by_value(ctx: _Context, dataset: str) -> _Outcome:
    rows = [ctx.check_row(str(r)) for r in ctx.param("rows", required=True)]
    metric = ctx.metric(dataset)
    means = [ctx.mean(r, dataset, metric) for r in rows]
    hib = higher_is_better(metric)
    ok = all((a > b) if hib else (a < b) for a, b in zip(means, means[1:]))
    parts = (" > " if hib else " < ").join(f"{r} {format_value(metric, m)}" for r, m in zip(rows, means))
    return _Outcome(HELD if ok else NOT_HELD, f"{_head(dataset, metric)}: {parts}")


_HANDLERS: dict[str, Callable[[_Context, str], _Outcome]] = {
    "order_by_drop": _order_by_drop,
    "relative_drop": _relative_drop,
    "delta_sign": _delta_sign,
    "delta_range": _delta_range,
    "within": _within,
    "greater": _greater,
    "order_by_value": _order_by_value,
}
CLAIM_KINDS = tuple(sorted(_HANDLERS))
