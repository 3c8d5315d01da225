"""Claim kinds and cell verdicts, held and not held, including lower-is-better MAE."""

import pandas as pd
import pytest

from benchmarks.execution.tables import Claim, Row, TableSpec
from benchmarks.reporting.claims import ClaimError, cell_verdict, evaluate_claim

ROWS = ("full", "-T", "-A", "-V", "on", "off")


def spec(datasets=("meld", "mosei", "cherma", "sims_v2")):
    return TableSpec(name="toy", number="9", caption="toy", datasets=datasets,
                     metrics={d: () for d in datasets}, seeds={}, base={},
                     rows=tuple(Row(r) for r in ROWS), reference_row="full", paper_values=(), claims=())


OFFSETS = {1: -0.001, 2: 0.0, 3: 0.001}  # the same for every cell: paired deltas are constant, intervals exact


def summary(means):
    """Tidy test rows, three seeds per cell, from {(row, dataset, metric): mean over the seeds}."""
    return pd.DataFrame([dict(row=r, dataset=d, split="test", metric=m, seed=s, value=v + o, status="ok")
                         for (r, d, m), v in means.items() for s, o in OFFSETS.items()])


def claim(kind, **params):
    return Claim(id=f"c_{kind}", kind=kind, text="a claim", source="seed", params=params)


def check(kind, means, **params):
    return evaluate_claim(claim(kind, **params), means, spec())


# meld: WF1 (higher is better); mosei: MAE (lower is better). Drops: -T > -A > -V on both.
ORDERED = summary({
    ("full", "meld", "wf1"): 0.60, ("-T", "meld", "wf1"): 0.40,
    ("-A", "meld", "wf1"): 0.55, ("-V", "meld", "wf1"): 0.58,
    ("full", "mosei", "mae"): 0.55, ("-T", "mosei", "mae"): 0.85,
    ("-A", "mosei", "mae"): 0.60, ("-V", "mosei", "mae"): 0.57,
})


def test_order_by_drop_held_on_both_directions():
    v = check("order_by_drop", ORDERED, rows=["-T", "-A", "-V"], datasets=["meld", "mosei"])
    assert v.verdict == "held", v.detail
    assert "meld WF1 ↑ drop vs full (matched seeds): -T +20.00 [95% CI +20.00, +20.00], n=3 > -A +5.00" in v.detail
    assert "mosei MAE ↓ drop vs full (matched seeds): -T +0.300 [95% CI +0.300, +0.300], n=3 > -A +0.050" in v.detail


def test_order_by_drop_not_held_when_mae_improves():
    # -A lowers MAE (an improvement, negative drop): a higher-is-better reading would call it the biggest drop
    s = ORDERED.copy()
    s.loc[(s["row"] == "-A") & (s["dataset"] == "mosei"), "value"] -= 0.10  # MAE 0.60 -> 0.50
    v = check("order_by_drop", s, rows=["-T", "-A", "-V"], datasets=["mosei"])
    assert v.verdict == "did not hold"
    assert "-A -0.050" in v.detail
    wrong_order = check("order_by_drop", ORDERED, rows=["-A", "-T", "-V"], datasets=["meld"])
    assert wrong_order.verdict == "did not hold"


def test_relative_drop():
    c = claim("relative_drop", row="-T", reference="full", datasets=["meld"], threshold=0.2)
    v = evaluate_claim(c, ORDERED, spec())
    assert v.verdict == "held" and "relative drop 0.333" in v.detail  # (60 - 40) / 60
    assert check("relative_drop", ORDERED, row="-T", datasets=["meld"], threshold=0.4).verdict == "did not hold"
    mae = check("relative_drop", ORDERED, row="-T", datasets=["mosei"], threshold=0.5)
    assert mae.verdict == "held" and "0.545" in mae.detail  # (0.85 - 0.55) / 0.55
    # -A on mosei: 0.60 vs 0.55 is a relative drop of 0.091
    assert check("relative_drop", ORDERED, row="-A", datasets=["mosei"], threshold=0.15).verdict == "did not hold"


LORA = summary({("on", "meld", "wf1"): 0.61, ("off", "meld", "wf1"): 0.60,
                ("on", "mosei", "mae"): 0.53, ("off", "mosei", "mae"): 0.55,
                ("on", "cherma", "wf1"): 0.70, ("off", "cherma", "wf1"): 0.72,
                ("on", "sims_v2", "mae"): 0.40, ("off", "sims_v2", "mae"): 0.38})


def test_delta_sign_with_range_in_points():
    c = claim("delta_sign", row="on", reference="off", datasets=["meld"], sign="+", range=[0.74, 1.40])
    v = evaluate_claim(c, LORA, spec())
    assert v.verdict == "held" and "improvement +1.00" in v.detail
    c2 = claim("delta_sign", row="on", reference="off", datasets=["meld"], sign="+", range=[1.5, 2.0])
    assert evaluate_claim(c2, LORA, spec()).verdict == "did not hold"


def test_delta_sign_lower_is_better_and_language_groups():
    # MAE 0.53 (on) vs 0.55 (off): LoRA improves MOSEI although the number went down
    assert check("delta_sign", LORA, row="on", reference="off", datasets=["mosei"], sign="+").verdict == "held"
    assert check("delta_sign", LORA, row="on", reference="off", datasets=["mosei"], sign="-").verdict == "did not hold"
    # "chinese" = cherma (WF1 down) and sims_v2 (MAE up): both degrade
    v = check("delta_sign", LORA, row="on", reference="off", datasets="chinese", sign="-")
    assert v.verdict == "held" and "cherma" in v.detail and "sims_v2" in v.detail
    assert check("delta_sign", LORA, row="on", reference="off", datasets="english", sign="+").verdict == "held"


def test_within_and_greater():
    s = summary({("on", "meld", "wf1"): 0.605, ("off", "meld", "wf1"): 0.60, ("-T", "meld", "wf1"): 0.62,
                 ("on", "mosei", "mae"): 0.50, ("off", "mosei", "mae"): 0.60, ("-T", "mosei", "mae"): 0.70})
    held = check("within", s, row="on", reference="off", datasets=["meld"], tolerance=1.0)
    assert held.verdict == "held" and "on 60.50 vs off 60.00, |delta| 0.50; delta +0.50" in held.detail
    assert check("within", s, row="-T", reference="off", datasets=["meld"], tolerance=1.0).verdict == "did not hold"
    assert check("greater", s, row="-T", reference="off", datasets=["meld"], margin=1.5).verdict == "held"
    assert check("greater", s, row="-T", reference="off", datasets=["meld"], margin=2.5).verdict == "did not hold"
    # MAE: 0.50 beats 0.60 by 0.10; 0.70 is worse than 0.60
    assert check("greater", s, row="on", reference="off", datasets=["mosei"], margin=0.05).verdict == "held"
    assert check("greater", s, row="-T", reference="off", datasets=["mosei"]).verdict == "did not hold"


def test_order_by_value_reads_direction():
    v = check("order_by_value", ORDERED, rows=["full", "-V", "-A", "-T"], datasets=["meld", "mosei"])
    assert v.verdict == "held"  # WF1 falls, MAE rises along the list
    assert "mosei MAE ↓ (claimed best first: full, -V, -A, -T)" in v.detail
    assert "full better than -V by +0.020 [95% CI +0.020, +0.020], n=3" in v.detail


def test_explicit_metric_and_missing_results_are_not_comparable():
    c = claim("delta_sign", row="on", reference="off", datasets=["meld"], sign="+", metric="acc")
    v = evaluate_claim(c, LORA, spec())
    assert v.verdict == "not comparable" and "no test acc for 'on'" in v.detail
    gone = LORA[LORA["row"] != "off"]
    v2 = check("delta_sign", gone, row="on", reference="off", datasets=["meld", "mosei"], sign="+")
    assert v2.verdict == "not comparable"


def test_a_failing_dataset_outweighs_a_missing_one():
    s = LORA[~((LORA["row"] == "off") & (LORA["dataset"] == "mosei"))]
    c = claim("delta_sign", row="on", reference="off", datasets=["meld", "mosei"], sign="-")
    assert evaluate_claim(c, s, spec()).verdict == "did not hold"  # meld already contradicts it


def test_malformed_claims_raise_naming_the_claim():
    with pytest.raises(ValueError, match="c_bogus"):
        evaluate_claim(claim("bogus"), ORDERED, spec())
    with pytest.raises(ClaimError, match="row 'nope'"):
        check("within", ORDERED, row="nope", tolerance=1.0)
    with pytest.raises(ClaimError, match="dataset 'imdb'"):
        check("within", ORDERED, row="-T", datasets=["imdb"], tolerance=1.0)
    with pytest.raises(ClaimError, match="threshold"):
        check("relative_drop", ORDERED, row="-T", datasets=["meld"])


def test_cell_verdicts():
    # WF1 62.00 +- 2.00 vs 62.50: |delta| 0.5 <= max(2, 0.5) -> held
    assert cell_verdict("wf1", 0.62, 0.02, 62.5).verdict == "held"
    # Acc 71.00 +- 1.00 vs 72.50: 1.5 > 1 but <= max(2, 2) -> within tolerance, ours worse
    v = cell_verdict("acc", 0.71, 0.01, 72.5)
    assert (v.verdict, v.better) == ("within tolerance", False) and v.delta == pytest.approx(-1.5)
    assert cell_verdict("acc", 0.60, 0.01, 72.5).verdict == "did not hold"
    # MAE 0.550 +- 0.050 vs 0.700: 0.15 > max(0.1, 0.02) -> did not hold, but ours is better (lower)
    mae = cell_verdict("mae", 0.55, 0.05, 0.70)
    assert (mae.verdict, mae.better) == ("did not hold", True)
    assert cell_verdict("mae", 0.55, 0.05, 0.70, comparable=False).verdict == "not comparable"
    assert cell_verdict("wf1", float("nan"), float("nan"), 65.57).verdict == "not comparable"
    # one seed: std NaN counts as 0, so the 0.5-point floor decides
    assert cell_verdict("wf1", 0.656, float("nan"), 65.57).verdict == "held"
