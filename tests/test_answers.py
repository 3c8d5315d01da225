"""Answer parsing, fallbacks and target formatting on hand-written generated texts."""

import numpy as np
import pytest

from egmf_core.answers import (
    LABEL_ALIASES,
    AnswerError,
    answer_text,
    fill_invalid,
    format_target,
    label_strings,
    parse_answers,
    parse_label,
    parse_score,
)
from egmf_core.data.dataset import SPECS
from egmf_core.metrics import compute_metrics

MELD, CHERMA, MOSEI, SIMS = SPECS["meld"], SPECS["cherma"], SPECS["mosei"], SPECS["sims_v2"]


# ---- labels -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("joy", 4), ("Joy", 4), ("JOY", 4), ("  joy  ", 4), ("joy.", 4), ("joy!!", 4), ("joy。", 4),
    ('"joy"', 4), ("'Joy'.", 4), ('"joy."', 4), ("“joy”", 4), ("ｊｏｙ", 4), ("joy！", 4),
    ("joy\nanger", 4), ("\n joy", 4), ("joy</s>", 4), ("neutral<|eot_id|>whatever", 0),
    ("4", 4), ("0", 0), ("6.", 6), ("４", 4), ("04", 4),
    ("7", None), ("-1", None), ("4.0", None), ("", None), ("   ", None),
    ("joy anger", None), ("joy, anger", None), ("joy/anger", None), ("happy", None),
    ("The answer is joy", None), ("joyful", None), ("4: joy", None), ("\n\n", None), ("nan", None),
])
def test_parse_label_meld(text, expected):
    assert parse_label(text, MELD) == expected


@pytest.mark.parametrize("text, expected", [
    ("愤怒", 0), ("高兴", 3), (" 「高兴」。", 3), ("平静！", 4), ("惊讶\n", 6),
    ("happiness", 3), ("Calm", 4), ("3", 3),
    # aliases (LABEL_ALIASES): release words and common synonyms
    ("happy", 3), ("开心", 3), ("快乐", 3), ("sad", 5), ("伤心", 5), ("neutral", 4), ("中性", 4),
    ("生气", 0), ("害怕", 2),
    ("高兴愤怒", None), ("高兴，愤怒", None), ("很高兴", None), ("joy", None), ("7", None), ("", None),
])
def test_parse_label_cherma(text, expected):
    assert parse_label(text, CHERMA) == expected


def test_aliases_never_shadow_a_label():
    # An alias is used only where its canonical label exists, and there it is no label itself.
    for alias, canonical in LABEL_ALIASES.items():
        assert canonical in CHERMA.labels
        assert alias not in CHERMA.labels and alias not in CHERMA.label_names_zh
    assert parse_label("neutral", MELD) == 0  # MELD's own label, not CHERMA's alias for calm


def test_answer_text_cuts_and_normalises():
    assert answer_text("\n\n  Joy. \nsecond line") == "Joy."
    assert answer_text("１．５<|endoftext|>2") == "1.5"
    assert answer_text("a\r\nb") == "a"
    assert answer_text("") == ""


# ---- scores -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("+1.5", 1.5), ("-0.6", -0.6), ("2", 2.0), (".5", 0.5), ("-.5", -0.5), ("2.", 2.0),
    ("1.2分", 1.2), ("score: -1.0", -1.0), ("−1.2", -1.2), ("－１．２", -1.2), ("１.５", 1.5),
    ("负0.6", -0.6), ("正0.6", 0.6), (" \n-2.3\n1.0", -2.3), ("-0.0", 0.0),
    ("1.0 or 2.0", 1.0), ("about 2, maybe -1", 2.0), ("-1.5</s>", -1.5), ("1e-1", 0.1),
    ("+7", 3.0), ("-9.9", -3.0), ("3.0000001", 3.0),
    ("", None), ("   ", None), ("nan", None), ("inf", None), ("-inf", None), ("NaN 1", 1.0),
    ("positive", None), ("\n\n", None), ("-", None), (".", None), ("9" * 400, None),
    ("joy\n1.5", None),  # the number is past the first line
])
def test_parse_score_mosei(text, expected):
    got = parse_score(text, MOSEI)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_parse_score_clips_to_sims_range():
    assert parse_score("1.5", SIMS) == 1.0
    assert parse_score("-0.7", SIMS) == -0.7
    assert parse_score("-2", SIMS) == -1.0


def test_parsers_refuse_the_wrong_task():
    with pytest.raises(AnswerError, match="spec: dataset 'mosei' is regression"):
        parse_label("1", MOSEI)
    with pytest.raises(AnswerError, match="spec: dataset 'meld' is classification"):
        parse_score("1", MELD)


# ---- batches and fallbacks ----------------------------------------------------------------

def test_parse_answers_counts_invalid_without_mapping_them():
    parsed = parse_answers(["joy", "surprise.", "I think joy", ""], MELD)
    assert parsed.values.dtype == np.int64
    assert parsed.values.tolist() == [4, 1, -1, -1]
    assert parsed.valid.tolist() == [True, True, False, False]
    assert parsed.invalid_rate == 0.5 and parsed.n_invalid == 2
    # Invalid entries cannot reach a metric unfilled.
    with pytest.raises(ValueError, match="y_pred: class index -1"):
        compute_metrics("meld", [4, 1, 0, 0], parsed.values)


def test_parse_answers_scores():
    parsed = parse_answers(["-1.2", "x", "0.4"], SIMS)
    assert parsed.values.dtype == np.float32
    assert parsed.values[0] == np.float32(-1.0) and np.isnan(parsed.values[1])
    assert parsed.invalid_rate == pytest.approx(1 / 3)
    assert parse_answers([], SIMS).invalid_rate == 0.0


def test_fill_majority_and_mean():
    values, valid = np.array([2, -1, -1]), np.array([True, False, False])
    filled = fill_invalid(values, valid, MELD, "majority", train_labels=[0, 3, 3, 5, 5])  # tie 3/5 -> 3
    assert filled.tolist() == [2, 3, 3]
    scores, ok = np.array([0.5, np.nan], dtype=np.float32), np.array([True, False])
    train = [-1.0, 0.0, 0.5, 2.5]  # median 0.25, mean 0.5
    assert fill_invalid(scores, ok, MOSEI, "majority", train_labels=train).tolist() == [0.5, 0.25]
    assert fill_invalid(scores, ok, MOSEI, "mean", train_labels=train).tolist() == [0.5, 0.5]
    assert values.tolist() == [2, -1, -1]  # input untouched


def test_fill_wrong_classification_is_always_wrong():
    y_true = np.arange(7)
    filled = fill_invalid(np.full(7, -1), np.zeros(7, bool), MELD, "wrong", y_true=y_true)
    assert filled.tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert compute_metrics("meld", y_true, filled)["acc"] == 0.0


@pytest.mark.parametrize("spec", [MOSEI, SIMS])
def test_fill_wrong_regression_is_always_wrong(spec):
    lo, hi = spec.label_range
    y_true = np.linspace(lo, hi, 13)  # includes both ends and the midpoint 0
    filled = fill_invalid(np.full(13, np.nan), np.zeros(13, bool), spec, "wrong", y_true=y_true)
    assert set(filled.tolist()) <= {lo, hi}
    m = compute_metrics(spec.name, y_true, filled)
    for key in ("acc2_has0", "acc5", "acc7", "acc2", "acc3"):
        if key in m:
            assert m[key] == 0.0, key
    assert fill_invalid(np.array([np.nan]), np.array([False]), spec, "wrong", y_true=[0.0])[0] == (
        lo if spec.name == "mosei" else hi)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fallback="zero"), "fallback: unknown 'zero'"),
    (dict(fallback="majority"), "train_labels: required"),
    (dict(fallback="wrong"), "y_true: required"),
    (dict(fallback="mean", train_labels=[0, 1]), "fallback: 'mean' is undefined for classification"),
    (dict(fallback="majority", train_labels=[0, 9]), r"train_labels: class indices outside \[0, 7\)"),
    (dict(fallback="majority", train_labels=[]), "train_labels: expected a non-empty"),
    (dict(fallback="wrong", y_true=[0]), r"y_true: shape \(1,\) does not match"),
])
def test_fill_invalid_errors(kwargs, match):
    with pytest.raises(AnswerError, match=match):
        fill_invalid(np.array([0, -1]), np.array([True, False]), MELD, **kwargs)


# ---- targets and round trips --------------------------------------------------------------

def test_label_strings():
    assert label_strings(MELD) == list(MELD.labels)
    assert label_strings(CHERMA) == ["愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊讶"]
    assert label_strings(CHERMA, "index") == [str(i) for i in range(7)]
    with pytest.raises(AnswerError, match="class_target"):
        label_strings(MELD, "letter")
    with pytest.raises(AnswerError, match="spec"):
        label_strings(MOSEI)


@pytest.mark.parametrize("spec", [MELD, CHERMA])
@pytest.mark.parametrize("class_target", ["word", "index"])
def test_label_round_trip(spec, class_target):
    for index in range(len(spec.labels)):
        assert parse_label(format_target(index, spec, class_target), spec) == index
        assert parse_label(format_target(np.int64(index), spec, class_target) + "\n", spec) == index


@pytest.mark.parametrize("value, expected", [
    (-1.25, "-1.2"), (-1.3, "-1.3"), (0.0, "0.0"), (-0.04, "0.0"), (2, "2.0"), (2.96, "3.0"),
    (7.0, "3.0"), (-3.5, "-3.0"), (np.float32(0.7), "0.7"), (np.float32(-0.1), "-0.1"),
])
def test_format_score(value, expected):
    assert format_target(value, MOSEI) == expected


@pytest.mark.parametrize("spec", [MOSEI, SIMS])
def test_score_round_trip(spec):
    lo, hi = spec.label_range
    for value in np.arange(lo - 0.5, hi + 0.5, 0.01):
        text = format_target(value, spec)
        assert text == f"{float(text):.1f}" and len(text.split(".")[1]) == 1
        assert parse_score(text, spec) == float(text)
        assert abs(float(text) - min(max(value, lo), hi)) <= 0.05 + 1e-9


def test_format_target_errors():
    with pytest.raises(AnswerError, match=r"value: class index 7 outside \[0, 7\)"):
        format_target(7, MELD)
    with pytest.raises(AnswerError, match="value: class index must be an integer"):
        format_target("joy", MELD)
    with pytest.raises(AnswerError, match="value: score must be finite"):
        format_target(float("nan"), MOSEI)
