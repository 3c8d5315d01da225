"""Honest intervals: t-intervals on matched seeds, none below 3 pairs, bootstrap only from 10, Holm."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.reporting.stats import MIN_PAIRS_BOOTSTRAP, holm, paired_comparison, t_interval


def test_two_pairs_give_no_interval_and_no_p_value():
    # the old report showed "CI [-2.08, -1.95], p = 0.02" for two pairs: the two deltas themselves
    r = paired_comparison({1: 0.50, 2: 0.60}, {1: 0.5208, 2: 0.6195}, higher_is_better=True)
    assert r.n == 2 and r.too_few
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high) and math.isnan(r.p_value)
    assert r.mean_delta == pytest.approx(-0.02015)


def test_five_pairs_get_the_t_interval_not_the_narrow_bootstrap():
    deltas = np.array([-0.30, -0.02, -0.05, 0.01, -0.18])
    ref = {s: 0.6 for s in range(5)}
    row = {s: 0.6 + d for s, d in enumerate(deltas)}
    r = paired_comparison(row, ref, higher_is_better=True)
    lo, hi = scipy_stats.t.interval(0.95, 4, loc=deltas.mean(), scale=scipy_stats.sem(deltas))
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
    assert r.ci_low < 0 < r.ci_high  # the t-interval includes 0 although every bootstrap mean would be < 0.02
    assert math.isnan(r.boot_low)  # no bootstrap below MIN_PAIRS_BOOTSTRAP pairs
    assert r.p_value == pytest.approx(scipy_stats.ttest_1samp(deltas, 0.0).pvalue)


def test_bootstrap_appears_from_ten_pairs():
    rng = np.random.default_rng(3)
    ref = {s: 0.5 for s in range(MIN_PAIRS_BOOTSTRAP)}
    row = {s: 0.5 + float(d) for s, d in enumerate(rng.normal(0.01, 0.02, MIN_PAIRS_BOOTSTRAP))}
    r = paired_comparison(row, ref, higher_is_better=True)
    assert not math.isnan(r.boot_low) and r.boot_low < r.mean_delta < r.boot_high


def test_means_are_matched_means():
    # the reference has 5 seeds, the row 2: only the 2 shared seeds enter either mean
    ref = {1: 0.60, 2: 0.62, 3: 0.90, 4: 0.90, 5: 0.90}
    r = paired_comparison({1: 0.61, 2: 0.63}, ref, higher_is_better=True)
    assert (r.n, r.mean_ref, r.mean_row) == (2, pytest.approx(0.61), pytest.approx(0.62))


def test_t_interval_by_hand_and_holm():
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)
    # Holm: sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_report_shows_no_interval_for_two_seeds():
    import pandas as pd

    from benchmarks.execution.tables import Row, TableSpec
    from benchmarks.reporting.report import build_table_report

    spec = TableSpec(name="toy", number="9", caption="toy", datasets=("meld",), metrics={"meld": ("wf1",)},
                     seeds={"smoke": (1, 2)}, base={}, rows=(Row("full"), Row("-E3")), reference_row="full",
                     paper_values=(), claims=())
    recs = [dict(table="toy", profile="smoke", row=r, dataset="meld", seed=s, split="test", metric="wf1",
                 value=v, status="ok", run_id=f"{r}{s}")
            for r, vals in (("full", (0.600, 0.620)), ("-E3", (0.5792, 0.6005))) for s, v in zip((1, 2), vals)]
    md = build_table_report(spec, pd.DataFrame(recs), "smoke")
    assert "| -E3 | 2 | -2.01 | too few seeds | n/a | n/a | n/a |" in md
