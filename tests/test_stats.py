"""Summaries over seeds and paired comparisons: numbers checked by hand and against scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from benchmarks.reporting.stats import (
    format_value,
    gating_runs,
    paired_comparison,
    parse_gating,
    run_table,
    summarise,
    to_display,
)


def tidy(records):
    """Tidy rows from (row, dataset, seed, split, metric, value, status) tuples."""
    cols = ["row", "dataset", "seed", "split", "metric", "value", "status"]
    return pd.DataFrame(records, columns=cols)


def test_summarise_mean_std_n_and_sorting():
    df = tidy([
        ("full", "meld", 1, "test", "wf1", 0.60, "ok"),
        ("full", "meld", 2, "test", "wf1", 0.62, "ok"),
        ("full", "meld", 3, "test", "wf1", 0.64, "ok"),
        ("-T", "meld", 1, "test", "wf1", 0.40, "ok"),
        ("-T", "meld", 4, "test", "wf1", float("nan"), "failed"),  # never counted
        ("full", "meld", 1, "valid", "wf1", 0.70, "ok"),
    ])
    s = summarise(df)
    assert list(s.columns) == ["row", "dataset", "split", "metric", "mean", "std", "n"]
    # sorted by keys: "-T" < "full"; "test" < "valid"
    assert list(zip(s["row"], s["split"])) == [("-T", "test"), ("full", "test"), ("full", "valid")]
    full = s[(s["row"] == "full") & (s["split"] == "test")].iloc[0]
    assert full["mean"] == pytest.approx(0.62)
    assert full["std"] == pytest.approx(0.02)  # ddof=1: sqrt((0.02^2 + 0 + 0.02^2) / 2)
    assert full["n"] == 3
    single = s[s["row"] == "-T"].iloc[0]
    assert single["n"] == 1 and math.isnan(single["std"])


def test_summarise_counts_a_duplicated_seed_once():
    df = tidy([("r", "meld", 1, "test", "acc", 0.5, "ok"), ("r", "meld", 1, "test", "acc", 0.7, "ok"),
               ("r", "meld", 2, "test", "acc", 0.9, "ok")])
    s = summarise(df).iloc[0]
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.8)  # the later duplicate (0.7) wins


def test_paired_comparison_matches_scipy_and_pairs_by_seed():
    row = {1: 0.40, 2: 0.41, 3: 0.45, 9: 0.99}  # seed 9 has no partner: ignored
    ref = {1: 0.60, 2: 0.62, 3: 0.64, 7: 0.10}
    r = paired_comparison(row, ref, higher_is_better=True)
    assert r.n == 3
    assert r.mean_delta == pytest.approx(-0.20)  # (-0.20 - 0.21 - 0.19) / 3
    expected_p = scipy_stats.ttest_rel([0.40, 0.41, 0.45], [0.60, 0.62, 0.64]).pvalue
    assert r.p_value == pytest.approx(expected_p)
    # the Student-t interval, by hand: mean +- t(0.975, 2) * sd / sqrt(3); no bootstrap at n = 3
    deltas = np.array([-0.20, -0.21, -0.19])
    half = scipy_stats.t.ppf(0.975, 2) * deltas.std(ddof=1) / np.sqrt(3)
    assert (r.ci_low, r.ci_high) == pytest.approx((-0.20 - half, -0.20 + half))
    assert math.isnan(r.boot_low) and math.isnan(r.boot_high)
    assert (r.mean_row, r.mean_ref) == pytest.approx((0.42, 0.62))  # matched means: seeds 9 and 7 left out


def test_paired_comparison_is_direction_aware_and_deterministic():
    mae_row, mae_ref = {1: 0.80, 2: 0.82, 3: 0.90}, {1: 0.50, 2: 0.55, 3: 0.60}
    worse = paired_comparison(mae_row, mae_ref, higher_is_better=False)
    assert worse.mean_delta == pytest.approx(-0.29)  # higher MAE = worse = negative delta
    assert repr(paired_comparison(mae_row, mae_ref, higher_is_better=False)) == repr(worse)  # deterministic
    assert paired_comparison(mae_row, mae_ref, higher_is_better=True).mean_delta == pytest.approx(0.29)


def test_paired_comparison_small_n():
    one = paired_comparison({1: 0.5}, {1: 0.4}, higher_is_better=True)
    assert one.n == 1 and one.mean_delta == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.ci_low)
    none = paired_comparison({1: 0.5}, {2: 0.4}, higher_is_better=True)
    assert none.n == 0 and math.isnan(none.mean_delta)
    flat = paired_comparison({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5}, higher_is_better=True)
    assert math.isnan(flat.p_value)  # identical deltas: the t statistic is undefined


def test_units_fractions_print_as_points_raw_stays_raw():
    assert to_display("wf1", 0.6557) == pytest.approx(65.57)
    assert format_value("wf1", 0.6557) == "65.57"
    assert format_value("mae", 0.5512) == "0.551"
    assert format_value("acc", float("nan")) == "n/a"


def test_gating_parsing_accepts_both_key_spellings():
    long = parse_gating('{"alpha_mean": {"E1": 0.7, "E2": 0.3}, "gating_collapse": true, '
                        '"gating_collapse_reason": "r", "entropy_normalised_mean": 0.8}')
    short = parse_gating('{"mean_alpha": {"E1": 0.7, "E2": 0.3}, "gating_collapse": true, '
                         '"collapse_reason": "r", "normalised_entropy": 0.8}')
    assert long == short
    assert long["alpha"] == {"E1": 0.7, "E2": 0.3} and long["collapse"] is True
    assert parse_gating("") == {} and parse_gating("{}") == {} and parse_gating(float("nan")) == {}


def test_run_table_and_gating_runs_take_the_test_split():
    base = dict(row="r", dataset="meld", seed=1, run_id="x", status="ok", error="", metric="acc", value=0.5)
    df = pd.DataFrame([
        dict(base, split="valid", invalid_rate=0.5, gating_json='{"alpha_mean": {"E1": 0.9, "E2": 0.1}}'),
        dict(base, split="test", invalid_rate=0.1, gating_json='{"alpha_mean": {"E1": 0.4, "E2": 0.6}}'),
    ])
    runs = run_table(df)
    assert len(runs) == 1 and runs.iloc[0]["invalid_rate"] == pytest.approx(0.1)
    g = gating_runs(df)
    assert len(g) == 1 and g.iloc[0]["alpha"] == {"E1": 0.4, "E2": 0.6}


def test_improvement_reads_the_metric_direction():
    from benchmarks.reporting.stats import improvement

    assert improvement("wf1", 0.62, 0.60) == pytest.approx(0.02)
    assert improvement("mae", 0.50, 0.60) == pytest.approx(0.10)  # lower MAE is better
    with pytest.raises(ValueError, match="n_samples"):
        improvement("n_samples", 1.0, 2.0)
