"""Verdicts: the paper's qualitative claims and its numbers, checked against our summary.

Two kinds of verdict live here, both pure functions of a :func:`benchmarks.reporting.stats.summarise`
table (stored units) and a :class:`benchmarks.execution.tables.TableSpec`:

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
``params_ratio``   row, reference, ratio, tolerance (total parameters of row / reference)

Every comparison is paired on the seeds both rows have; the verdict reads the 95% t-interval
of the paired mean delta (see :func:`evaluate_claim`). A claim's ``planted`` field says whether
the smoke profile's synthetic data plant what it is about (:func:`reading`).

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

from benchmarks.execution.tables import Claim, TableSpec
from benchmarks.reporting.stats import (
    TOO_FEW,
    PairedResult,
    dataset_key_metric,
    display_name,
    format_delta,
    format_value,
    higher_is_better,
    metric_scale,
    ok_metric_rows,
    paired_comparison,
    to_display,
)
from egmf_core.data.dataset import SPECS

HELD, WITHIN, NOT_HELD, NOT_COMPARABLE = "held", "within tolerance", "did not hold", "not comparable"
INCONCLUSIVE = "inconclusive"
# The smoke profile's readings (synthetic data): see reading().
RECOVERED, NOT_RECOVERED = "planted signal recovered", "planted signal not recovered"
NOT_APPLICABLE = "not applicable to synthetic data"

# Cell verdicts (ours vs a paper number). "held": |delta| <= max(1 std, floor); "within
# tolerance": |delta| <= max(2 std, tolerance). Floors are in printed units per metric scale:
# 0.5 / 2 percentage points for fractions, 0.005 / 0.02 for raw metrics (MAE, Corr).
HELD_STD_FACTOR = 1.0
TOLERANCE_STD_FACTOR = 2.0
HELD_FLOOR = {"fraction": 0.5, "raw": 0.005}
WITHIN_FLOOR = {"fraction": 2.0, "raw": 0.02}

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
    verdict: str  # held | did not hold | inconclusive | not comparable
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
    elif abs(delta) <= max(TOLERANCE_STD_FACTOR * std, WITHIN_FLOOR[scale]):
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


def evaluate_claim(claim: Claim, results: pd.DataFrame, spec: TableSpec) -> ClaimVerdict:
    """Check one claim on the test split of the tidy ``results`` (one value per seed).

    Every comparison uses the seeds both rows have (matched seeds) and states n; the means in
    the detail are matched means. A verdict reads the 95% t-interval of the paired mean delta:
    held when the whole interval lies where the claim wants it, did not hold when it lies wholly
    outside, inconclusive when it straddles the boundary or there are fewer than
    ``stats.MIN_PAIRS`` matched seeds. A row with too many unparseable answers
    (``spec.report.invalid_threshold``) makes the claim "not comparable".
    """
    handler = _HANDLERS.get(claim.kind)
    if handler is None:
        raise ClaimError(f"claim {claim.id!r}: unknown kind {claim.kind!r} (known: {', '.join(sorted(_HANDLERS))})")
    ctx = _Context(claim, results, spec)
    outcomes = [handler(ctx, ds) for ds in claim_datasets(claim, spec)]
    return ClaimVerdict(claim.id, claim.text, _combine([o.verdict for o in outcomes]),
                        "; ".join(o.detail for o in outcomes))


def _combine(verdicts: list[str]) -> str:
    for word in (NOT_HELD, NOT_COMPARABLE, INCONCLUSIVE):
        if word in verdicts:
            return word
    return HELD


def reading(verdict: ClaimVerdict, claim: Claim, profile: str) -> str:
    """The verdict as a report prints it: on the smoke profile's synthetic data, a claim about
    planted structure reads "planted signal recovered / not recovered", and a claim about what
    the data do not plant reads "not applicable to synthetic data"."""
    from benchmarks.execution.profiles import SYNTHETIC_PROFILES

    if profile not in SYNTHETIC_PROFILES:
        return verdict.verdict
    if not claim.planted:
        return NOT_APPLICABLE
    return {HELD: RECOVERED, NOT_HELD: NOT_RECOVERED}.get(verdict.verdict, verdict.verdict)


@dataclass(frozen=True)
class _Outcome:
    verdict: str
    detail: str


class _Missing(Exception):
    """A number the claim needs is absent or unusable (-> not comparable)."""


class _Context:
    """Lookups shared by the claim kinds: parameters, metric per dataset, paired seed values."""

    def __init__(self, claim: Claim, results: pd.DataFrame, spec: TableSpec):
        self.claim, self.spec = claim, spec
        rows = ok_metric_rows(results)
        self.test = rows[rows["split"].astype(str) == "test"] if "split" in rows.columns else rows
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

    def seeds(self, row: str, dataset: str, metric: str) -> dict[int, float]:
        t = self.test
        sel = t[(t["row"] == row) & (t["dataset"] == dataset) & (t["metric"] == metric)]
        values = {int(s): float(v) for s, v in zip(sel["seed"], sel["value"])}
        if not values:
            raise _Missing(f"{dataset}: no test {metric} for {row!r}")
        return values

    def check_parseable(self, row: str, dataset: str) -> None:
        rate = invalid_share(self.test, row, dataset)
        if rate > self.spec.report.invalid_threshold:
            raise _Missing(f"{dataset}: {row} {not_comparable_note(rate)}")

    def paired(self, row: str, ref: str, dataset: str, metric: str) -> PairedResult:
        """row against ref on their matched seeds (positive delta = row better, stored units)."""
        for r in (row, ref):
            self.check_parseable(r, dataset)
        res = paired_comparison(self.seeds(row, dataset, metric), self.seeds(ref, dataset, metric),
                                higher_is_better=bool(higher_is_better(metric)))
        if res.n == 0:
            raise _Missing(f"{dataset}: {row} and {ref} share no seed")
        return res

    def row_vs_reference(self, dataset: str) -> "_Pair":
        """The claim's row against its reference on the dataset's key metric, matched seeds."""
        row, ref, metric = self.row_param("row"), self.reference(), self.metric(dataset)
        return _Pair(dataset, row, ref, metric, self.paired(row, ref, dataset, metric))


@dataclass(frozen=True)
class _Pair:
    dataset: str
    row: str
    ref: str
    metric: str
    res: PairedResult

    @property
    def head(self) -> str:
        """"<dataset metric>: <row> <mean> vs <reference> <mean>", means on the matched seeds."""
        m = self.metric
        return (f"{_head(self.dataset, m)}: {self.row} {format_value(m, self.res.mean_row)} "
                f"vs {self.ref} {format_value(m, self.res.mean_ref)}")


def invalid_share(test_rows: pd.DataFrame, row: str, dataset: str) -> float:
    """Mean share of unparseable test answers of a row on a dataset (0 when not recorded)."""
    sel = test_rows[(test_rows["row"] == row) & (test_rows["dataset"] == dataset)
                    & (test_rows["metric"] == "invalid_rate")]
    values = sel["value"].to_numpy(dtype=float)
    return float(values.mean()) if values.size else 0.0


def not_comparable_note(rate: float) -> str:
    return f"not comparable: {100 * rate:.0f}% unparseable answers"


def _guard(kind_fn):
    """Turn a missing number into a "not comparable" outcome naming what is missing."""

    def wrapped(ctx: _Context, dataset: str) -> _Outcome:
        try:
            return kind_fn(ctx, dataset)
        except _Missing as e:
            msg = str(e)
            return _Outcome(NOT_COMPARABLE, msg if "not comparable" in msg else f"{msg} (not comparable)")

    return wrapped


def _head(dataset: str, metric: str) -> str:
    return f"{dataset} {display_name(metric)}"


def judge(res: PairedResult, metric: str, low: float, high: float, scale: float = 1.0) -> str:
    """held / did not hold / inconclusive for a claim that wants ``scale * delta`` (printed units)
    inside the open region (low, high): held when the whole 95% t-interval is inside, did not
    hold when it is wholly outside, inconclusive when it straddles a boundary or n < MIN_PAIRS."""
    if res.too_few or math.isnan(res.ci_low):
        return INCONCLUSIVE
    ends = sorted(scale * to_display(metric, x) for x in (res.ci_low, res.ci_high))
    if low < ends[0] and ends[1] < high:
        return HELD
    if ends[1] <= low or ends[0] >= high:
        return NOT_HELD
    return INCONCLUSIVE


def _interval(res: PairedResult, metric: str, scale: float = 1.0) -> str:
    """The printed mean delta with its interval and n, e.g. "+2.10 [+0.80, +3.40], n=5"."""
    point = format_delta(metric, scale * to_display(metric, res.mean_delta))
    if res.too_few:
        return f"{point}, n={res.n}: {TOO_FEW}"
    lo, hi = sorted(scale * to_display(metric, x) for x in (res.ci_low, res.ci_high))
    return f"{point} [95% CI {format_delta(metric, lo)}, {format_delta(metric, hi)}], n={res.n}"


@_guard
def _order_by_drop(ctx: _Context, dataset: str) -> _Outcome:
    rows = [ctx.check_row(str(r)) for r in ctx.param("rows", required=True)]
    ref, metric = ctx.reference(), ctx.metric(dataset)
    drops = [ctx.paired(r, ref, dataset, metric) for r in rows]
    parts = " > ".join(f"{r} {_interval(d, metric, -1.0)}" for r, d in zip(rows, drops))
    verdicts, steps = _consecutive(ctx, rows, dataset, metric)
    return _Outcome(_combine(verdicts), f"{_head(dataset, metric)} drop vs {ref} (matched seeds): {parts}; "
                                         f"pairwise: {steps}")


def _consecutive(ctx: _Context, rows: list[str], dataset: str, metric: str) -> tuple[list[str], str]:
    """Each row of a claimed order against the next, paired: the later row must be worse."""
    verdicts, texts = [], []
    for a, b in zip(rows, rows[1:]):
        res = ctx.paired(b, a, dataset, metric)  # positive: b better than a, as the order claims
        verdicts.append(judge(res, metric, 0.0, math.inf))
        texts.append(f"{b} better than {a} by {_interval(res, metric)}")
    return verdicts, "; ".join(texts)


@_guard
def _relative_drop(ctx: _Context, dataset: str) -> _Outcome:
    threshold = float(ctx.param("threshold", required=True))
    pair = ctx.row_vs_reference(dataset)
    metric, res = pair.metric, pair.res
    base = abs(to_display(metric, res.mean_ref))
    if base == 0:
        raise _Missing(f"{dataset}: reference {ctx.reference()!r} is 0, relative drop undefined")
    scale = -1.0 / base  # improvement (printed) -> relative drop
    rel = scale * to_display(metric, res.mean_delta)
    interval = "" if res.too_few else (
        " [95% CI " + ", ".join(f"{x:.3f}" for x in sorted(scale * to_display(metric, e)
                                                             for e in (res.ci_low, res.ci_high))) + "]")
    note = f", {TOO_FEW}" if res.too_few else ""
    return _Outcome(judge(res, metric, threshold, math.inf, scale),
                    f"{pair.head}, relative drop {rel:.3f}{interval}, n={res.n}{note} (threshold > {threshold:g})")


@_guard
def _delta_sign(ctx: _Context, dataset: str) -> _Outcome:
    sign, bounds = ctx.param("sign"), ctx.param("range")
    if sign is None and bounds is None:
        raise ClaimError(f"claim {ctx.claim.id!r} ({ctx.claim.kind}): needs 'sign' or 'range'")
    if sign is not None and sign not in ("+", "-"):
        raise ClaimError(f"claim {ctx.claim.id!r}: sign must be '+' or '-', got {sign!r}")
    low, high = (0.0, math.inf) if sign == "+" else (-math.inf, 0.0) if sign == "-" else (-math.inf, math.inf)
    want = [] if sign is None else [f"sign {sign}"]
    if bounds is not None:
        lo, hi = (float(b) for b in bounds)
        low, high = max(low, lo), min(high, hi)
        want.append(f"range [{lo:g}, {hi:g}]")
    pair = ctx.row_vs_reference(dataset)
    return _Outcome(judge(pair.res, pair.metric, low, high),
                    f"{pair.head}, improvement {_interval(pair.res, pair.metric)} (claimed {', '.join(want)})")


def _delta_range(ctx: _Context, dataset: str) -> _Outcome:
    ctx.param("range", required=True)
    return _delta_sign(ctx, dataset)


@_guard
def _within(ctx: _Context, dataset: str) -> _Outcome:
    tolerance = float(ctx.param("tolerance", required=True))
    pair = ctx.row_vs_reference(dataset)
    gap = abs(to_display(pair.metric, pair.res.mean_delta))
    return _Outcome(judge(pair.res, pair.metric, -tolerance, tolerance),
                    f"{pair.head}, |delta| {format_delta(pair.metric, gap).lstrip('+')}; "
                    f"delta {_interval(pair.res, pair.metric)} (tolerance {tolerance:g})")


@_guard
def _greater(ctx: _Context, dataset: str) -> _Outcome:
    margin = float(ctx.param("margin", 0.0))
    pair = ctx.row_vs_reference(dataset)
    return _Outcome(judge(pair.res, pair.metric, margin, math.inf),
                    f"{pair.head}, improvement {_interval(pair.res, pair.metric)} (margin > {margin:g})")


@_guard
def _order_by_value(ctx: _Context, dataset: str) -> _Outcome:
    rows = [ctx.check_row(str(r)) for r in ctx.param("rows", required=True)]
    metric = ctx.metric(dataset)
    verdicts, steps = _consecutive(ctx, list(reversed(rows)), dataset, metric)
    return _Outcome(_combine(verdicts), f"{_head(dataset, metric)} (claimed best first: {', '.join(rows)}): {steps}")


@_guard
def _params_ratio(ctx: _Context, dataset: str) -> _Outcome:
    """Total parameters of row / reference on a dataset within ``tolerance`` of ``ratio`` (the
    count depends on the dataset through the label set and feature sizes, not on the seed)."""
    row, ref = ctx.row_param("row"), ctx.reference()
    want, tolerance = float(ctx.param("ratio", required=True)), float(ctx.param("tolerance", 0.05))
    params = {}
    for r in (row, ref):
        sel = ctx.test[(ctx.test["row"] == r) & (ctx.test["dataset"] == dataset)]
        values = pd.to_numeric(sel.get("total_params", pd.Series(dtype=float)), errors="coerce").dropna()
        if values.empty:
            raise _Missing(f"{dataset}: no parameter count for {r!r}")
        params[r] = float(values.mean())
    ratio = params[row] / params[ref]
    return _Outcome(HELD if abs(ratio - want) <= tolerance else NOT_HELD,
                    f"{dataset}: total parameters {row} {params[row]:,.0f} / {ref} {params[ref]:,.0f} = "
                    f"{ratio:.3f} (claimed {want:g} ± {tolerance:g}; counts do not vary by seed)")


_HANDLERS: dict[str, Callable[[_Context, str], _Outcome]] = {
    "order_by_drop": _order_by_drop,
    "relative_drop": _relative_drop,
    "delta_sign": _delta_sign,
    "delta_range": _delta_range,
    "within": _within,
    "greater": _greater,
    "order_by_value": _order_by_value,
    "params_ratio": _params_ratio,
}
CLAIM_KINDS = tuple(sorted(_HANDLERS))
