"""Metrics against numbers worked out by hand (the arithmetic is in the comments)."""

import warnings

import numpy as np
import pytest

from egmf_core.data.dataset import SPECS
from egmf_core.metrics import (
    METRIC_INFO,
    METRIC_KEYS,
    MetricInputError,
    acc2_positive,
    compute_metrics,
    key_metric,
    metric_keys,
    pearson_corr,
    per_class_f1,
    sims_v2_classes,
)

approx = pytest.approx


# ---- MOSEI -------------------------------------------------------------------------------

def test_mosei_hand_example():
    y_true = [-2.6, -0.4, 0.0, 0.5, 1.5, 2.0]
    y_pred = [-2.2, 0.2, -0.1, 0.5, 2.5, 1.4]
    m = compute_metrics("mosei", y_true, y_pred)
    assert list(m) == ["acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc5", "acc7", "mae", "corr"]
    # has-0 (>=0): true [- - + + + +], pred [- + - + + +] -> 4/6.
    assert m["acc2_has0"] == approx(4 / 6)
    # neg: P=1/2 R=1/2 F=1/2 (support 2); pos: P=3/4 R=3/4 F=3/4 (support 4).
    assert m["f1_has0"] == approx((2 * 0.5 + 4 * 0.75) / 6)
    # drop y_true==0 (index 2): true [- - + + +], pred [- + + + +] -> 4/5.
    assert m["acc2_non0"] == approx(4 / 5)
    # neg: P=1 R=1/2 F=2/3 (support 2); pos: P=3/4 R=1 F=6/7 (support 3).
    assert m["f1_non0"] == approx((2 * (2 / 3) + 3 * (6 / 7)) / 5)
    # acc7: true round -> [-3,0,0,0,2,2], pred [-2,0,0,0,2,1] -> 4/6 (2.5 rounds to 2).
    assert m["acc7"] == approx(4 / 6)
    # acc5: clip to +-2 first: true [-2,0,0,0,2,2], pred [-2,0,0,0,2,1] -> 5/6.
    assert m["acc5"] == approx(5 / 6)
    assert m["mae"] == approx((0.4 + 0.6 + 0.1 + 0.0 + 1.0 + 0.6) / 6)
    assert m["corr"] == approx(np.corrcoef(y_true, y_pred)[0, 1])


def test_mosei_zero_ties():
    # y_true = 0 is non-negative in has-0 and dropped in non-0; a kept prediction of 0 is negative.
    m = compute_metrics("mosei", [0.0, 0.0, 1.0, -1.0], [0.0, -0.1, 0.0, -1.0])
    assert m["acc2_has0"] == approx(3 / 4)  # true [+ + + -], pred [+ - + -]: only index 1 wrong
    assert m["acc2_non0"] == approx(1 / 2)  # kept [1.0, -1.0]: pred 0.0 is not > 0 -> wrong; -1 right


def test_mosei_non0_undefined_when_all_true_zero():
    m = compute_metrics("mosei", [0.0, 0.0], [0.5, -0.5])
    assert np.isnan(m["acc2_non0"]) and np.isnan(m["f1_non0"])
    assert m["acc2_has0"] == approx(0.5)


def test_mosei_rounding_is_half_to_even():
    y_true = [0.5, 1.5, 2.5, -0.5, -2.5]  # np.round -> 0, 2, 2, -0, -2
    assert compute_metrics("mosei", y_true, [0.0, 2.0, 2.0, 0.0, -2.0])["acc7"] == 1.0
    assert compute_metrics("mosei", y_true, [1.0, 1.0, 3.0, -1.0, -3.0])["acc7"] == 0.0


def test_mosei_clip_boundaries_and_raw_mae():
    # acc7 clips to +-3: 5.0 -> 3 matches 3.0; 2.4 rounds to 2, a miss. acc5 clips to +-2: all 2.
    m = compute_metrics("mosei", [3.0, 3.0, -3.0], [5.0, 2.4, -4.0])
    assert m["acc7"] == approx(2 / 3)
    assert m["acc5"] == 1.0
    assert m["mae"] == approx((2.0 + 0.6 + 1.0) / 3)  # MAE on the raw, unclipped values


def test_mosei_perfect_and_worst():
    y = np.array([-2.0, -1.0, 1.0, 2.0])
    best = compute_metrics("mosei", y, y)
    assert best == approx({"acc2_has0": 1, "f1_has0": 1, "acc2_non0": 1, "f1_non0": 1,
                           "acc5": 1, "acc7": 1, "mae": 0, "corr": 1})
    worst = compute_metrics("mosei", y, -y)
    assert worst == approx({"acc2_has0": 0, "f1_has0": 0, "acc2_non0": 0, "f1_non0": 0,
                            "acc5": 0, "acc7": 0, "mae": 3.0, "corr": -1})


# ---- SIMS-V2 ------------------------------------------------------------------------------

EDGE_VALUES = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, expected", [
    (2, [0, 0, 0, 0, 1, 1, 1]),  # [-1,0] | (0,1]
    (3, [0, 0, 0, 1, 1, 2, 2]),  # [-1,-.1] | (-.1,.1] | (.1,1]
    (5, [0, 0, 1, 2, 2, 3, 4]),  # [-1,-.7] | (-.7,-.1] | (-.1,.1] | (.1,.7] | (.7,1]
])
def test_sims_bins_on_exact_edges(n, expected, dtype):
    assert sims_v2_classes(np.array(EDGE_VALUES, dtype=dtype), n).tolist() == expected


def test_sims_bins_just_past_edges_and_clipping():
    values = [-1.5, -0.69, -0.09, 0.01, 0.11, 0.71, 1.5]
    assert sims_v2_classes(values, 5).tolist() == [0, 1, 2, 2, 3, 4, 4]
    assert sims_v2_classes(values, 3).tolist() == [0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(MetricInputError, match="n_classes"):
        sims_v2_classes(values, 7)


def test_sims_hand_example():
    m = compute_metrics("sims_v2", [-0.8, -0.1, 0.0, 0.4, 1.0], [-1.2, 0.1, 0.05, 0.7, 0.6])
    assert list(m) == ["acc2", "acc3", "acc5", "f1", "mae", "corr"]
    assert m["acc2"] == approx(3 / 5)  # [0,0,0,1,1] vs [0,1,1,1,1]
    assert m["acc3"] == approx(4 / 5)  # [0,0,1,2,2] vs [0,1,1,2,2]
    assert m["acc5"] == approx(3 / 5)  # [0,1,2,3,4] vs [0,2,2,3,3]
    # class 0: P=1 R=1/3 F=1/2 (support 3); class 1: P=1/2 R=1 F=2/3 (support 2).
    assert m["f1"] == approx((3 * 0.5 + 2 * (2 / 3)) / 5)
    assert m["mae"] == approx((0.2 + 0.2 + 0.05 + 0.3 + 0.4) / 5)  # -1.2 clipped to -1 first
    assert m["corr"] == approx(np.corrcoef([-0.8, -0.1, 0.0, 0.4, 1.0], [-1.0, 0.1, 0.05, 0.7, 0.6])[0, 1])


def test_sims_zero_is_negative_and_edges_through_metrics():
    # Each truth sits on an Acc-5 edge and its prediction 0.01 above it: all in the next bin.
    m = compute_metrics("sims_v2", np.float32([-0.7, -0.1, 0.1, 0.7]),
                        np.float32([-0.69, -0.09, 0.11, 0.71]))
    assert m["acc5"] == 0.0
    assert m["acc3"] == approx(2 / 4)  # -0.7/-0.69 and 0.7/0.71 share an Acc-3 bin
    m = compute_metrics("sims_v2", np.float32([0.0]), np.float32([0.01]))
    assert m["acc2"] == 0.0 and m["acc3"] == 1.0


def test_sims_perfect_and_worst():
    y = np.array([-0.8, -0.4, 0.4, 0.8])
    assert compute_metrics("sims_v2", y, y) == approx(
        {"acc2": 1, "acc3": 1, "acc5": 1, "f1": 1, "mae": 0, "corr": 1})
    worst = compute_metrics("sims_v2", y, -y)
    assert worst["acc2"] == worst["acc5"] == worst["f1"] == 0.0 and worst["corr"] == approx(-1)


# ---- classification -----------------------------------------------------------------------

def test_classification_hand_example():
    # per-class F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=1/2 R=1 -> 2/3; class 2 P=1 R=2/3 -> 4/5.
    m = compute_metrics("meld", [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])
    assert list(m) == ["acc", "wf1", "macro_f1"]
    assert m["acc"] == approx(4 / 6)
    assert m["wf1"] == approx((2 * 0.5 + 1 * (2 / 3) + 3 * 0.8) / 6)
    assert m["macro_f1"] == approx((0.5 + 2 / 3 + 0.8) / 3)  # classes 3..6 occur nowhere: not averaged


def test_class_absent_from_predictions():
    # Class 2 is never predicted: F1 = 0 and it still counts in macro and weighted F1.
    y_true, y_pred = [0, 1, 2, 2], [0, 1, 1, 1]
    m = compute_metrics("cherma", y_true, y_pred)
    assert m["acc"] == approx(0.5)
    assert m["macro_f1"] == approx((1.0 + 0.5 + 0.0) / 3)  # class 1: P=1/3 R=1 -> 1/2
    assert m["wf1"] == approx((1.0 + 0.5 + 2 * 0.0) / 4)
    f1 = per_class_f1(y_true, y_pred, SPECS["cherma"].labels)
    assert list(f1) == list(SPECS["cherma"].labels)
    assert f1 == approx({"anger": 1.0, "disgust": 0.5, "fear": 0.0, "happiness": 0.0,
                         "calm": 0.0, "sadness": 0.0, "surprise": 0.0})


def test_classification_perfect_and_worst():
    y = np.arange(7)
    assert compute_metrics("meld", y, y) == {"acc": 1.0, "wf1": 1.0, "macro_f1": 1.0}
    assert compute_metrics("meld", y, (y + 1) % 7) == {"acc": 0.0, "wf1": 0.0, "macro_f1": 0.0}


def test_classification_accepts_integral_floats():
    assert compute_metrics("meld", np.array([1.0, 2.0]), [1, 2])["acc"] == 1.0


# ---- correlation, validation, metadata ----------------------------------------------------

def test_corr_constant_is_zero_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pearson_corr([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == 0.0
        assert pearson_corr([0.5, 0.5], [1.0, 2.0]) == 0.0
        assert compute_metrics("mosei", [1.0], [2.0])["corr"] == 0.0
    assert pearson_corr([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == approx(0.5)


@pytest.mark.parametrize("name, y_true, y_pred, match", [
    ("mosei", [0.1, 0.2], [0.1], r"y_pred: length 1 does not match y_true's 2"),
    ("mosei", [0.1, float("nan")], [0.1, 0.2], r"y_true: 1 non-finite .* index 1"),
    ("sims_v2", [0.1, 0.2], [0.1, float("inf")], r"y_pred: 1 non-finite"),
    ("mosei", [], [], r"y_true: empty"),
    ("meld", [[0, 1]], [[0, 1]], r"y_true: expected a 1-D array"),
    ("meld", [0, 7], [0, 1], r"y_true: class index 7 at index 1 is outside \[0, 7\)"),
    ("meld", [0, 1], [0, -1], r"y_pred: class index -1"),
    ("meld", [0, 1], [0, 1.5], r"y_pred: class indices must be integers"),
    ("cherma", ["a"], ["a"], r"y_true: expected numbers"),
    ("imdb", [0], [0], r"name: unknown dataset 'imdb'"),
])
def test_input_validation(name, y_true, y_pred, match):
    with pytest.raises(MetricInputError, match=match):
        compute_metrics(name, y_true, y_pred)
    assert issubclass(MetricInputError, ValueError)


def test_per_class_f1_validation():
    with pytest.raises(MetricInputError, match="y_pred: class index 3"):
        per_class_f1([0, 1], [0, 3], ["a", "b", "c"])
    with pytest.raises(MetricInputError, match="labels: empty"):
        per_class_f1([0], [0], [])


def test_metric_info_covers_every_key():
    for name, keys in METRIC_KEYS.items():
        assert metric_keys(name) == keys
        for key in keys:
            assert METRIC_INFO[key].key == key
    assert set(METRIC_INFO) == {k for keys in METRIC_KEYS.values() for k in keys}
    assert [k for k, info in METRIC_INFO.items() if not info.higher_is_better] == ["mae"]
    assert {k for k, info in METRIC_INFO.items() if info.scale == "raw"} == {"mae", "corr"}


def test_key_metric_matches_specs():
    assert {n: key_metric(n) for n in METRIC_KEYS} == {
        "mosei": "mae", "sims_v2": "mae", "meld": "wf1", "cherma": "wf1"}
    for name, spec in SPECS.items():
        assert METRIC_INFO[key_metric(name)].higher_is_better == spec.key_metric_higher_is_better
    with pytest.raises(MetricInputError, match="name"):
        key_metric("mosi")


def test_fractions_stay_in_unit_interval():
    rng = np.random.default_rng(0)
    for name in ("mosei", "sims_v2"):
        lo, hi = SPECS[name].label_range
        m = compute_metrics(name, rng.uniform(lo, hi, 50), rng.uniform(lo - 1, hi + 1, 50))
        assert all(0.0 <= m[k] <= 1.0 for k in m if METRIC_INFO[k].scale == "fraction")
        assert -1.0 <= m["corr"] <= 1.0 and m["mae"] >= 0.0


def test_acc2_positive_puts_zero_on_the_dataset_side():
    assert acc2_positive("mosei", [-0.1, 0.0, 0.1]).tolist() == [False, True, True]
    assert acc2_positive("sims_v2", [-0.1, 0.0, 0.1]).tolist() == [False, False, True]
    with pytest.raises(MetricInputError, match="not a regression dataset"):
        acc2_positive("meld", [0.0])
