"""Claim verdicts on matched seeds, with their uncertainty, smoke readings and unparseable rows."""

import pandas as pd

from benchmarks.execution.tables import Claim, ReportConfig, Row, TableSpec
from benchmarks.reporting.claims import (
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_RECOVERED,
    RECOVERED,
    evaluate_claim,
    reading,
)


def spec(threshold: float = 0.20) -> TableSpec:
    return TableSpec(name="toy", number="9", caption="toy", datasets=("meld",), metrics={"meld": ("wf1",)},
                     seeds={}, base={}, rows=(Row("ref"), Row("row")), reference_row="ref", paper_values=(),
                     claims=(), report=ReportConfig(invalid_threshold=threshold))


def tidy(values: dict[str, dict[int, float]], invalid: dict[str, float] | None = None,
         params: dict[str, float] | None = None) -> pd.DataFrame:
    recs = []
    for row, by_seed in values.items():
        for seed, v in by_seed.items():
            common = dict(row=row, dataset="meld", split="test", seed=seed, status="ok",
                          total_params=(params or {}).get(row, 1000.0))
            recs.append(dict(common, metric="wf1", value=v))
            recs.append(dict(common, metric="invalid_rate", value=(invalid or {}).get(row, 0.0)))
    return pd.DataFrame(recs)


def within(tolerance: float = 1.0, planted: bool = False) -> Claim:
    return Claim("c", "within", "row is within a point of ref", "seed",
                 {"row": "row", "reference": "ref", "datasets": ["meld"], "tolerance": tolerance}, planted=planted)


def test_a_claim_uses_only_the_matched_seeds():
    # ref has 5 seeds, three of them far off; on the 2 shared seeds the rows differ by 0.35 points.
    # Pooling all of ref's seeds would give |delta| 3.47, "did not hold" (the defect in the issue).
    ref = {1: 0.7800, 2: 0.7800, 3: 0.72, 4: 0.72, 5: 0.7279}
    row = {1: 0.7765, 2: 0.7765}
    v = evaluate_claim(within(), tidy({"ref": ref, "row": row}), spec())
    assert "row 77.65 vs ref 78.00, |delta| 0.35" in v.detail  # matched means
    assert "n=2: too few seeds" in v.detail
    assert v.verdict == INCONCLUSIVE  # two seeds cannot decide a claim


def test_interval_decides_held_not_held_inconclusive():
    ref = {s: 0.60 + 0.01 * s for s in range(1, 6)}
    close = {s: v + 0.002 for s, v in ref.items()}  # +0.2 points on every seed: interval [0.2, 0.2]
    assert evaluate_claim(within(), tidy({"ref": ref, "row": close}), spec()).verdict == "held"
    far = {s: v + 0.05 for s, v in ref.items()}  # +5 points everywhere: wholly outside the tolerance
    assert evaluate_claim(within(), tidy({"ref": ref, "row": far}), spec()).verdict == "did not hold"
    noisy = {1: ref[1] + 0.03, 2: ref[2] - 0.03, 3: ref[3] + 0.02, 4: ref[4] - 0.02, 5: ref[5]}
    v = evaluate_claim(within(), tidy({"ref": ref, "row": noisy}), spec())
    assert v.verdict == INCONCLUSIVE and "[95% CI " in v.detail and "n=5" in v.detail


def test_order_with_a_tie_inside_the_noise_is_inconclusive():
    sp = TableSpec(name="toy", number="9", caption="toy", datasets=("meld",), metrics={"meld": ("wf1",)},
                   seeds={}, base={}, rows=(Row("full"), Row("-T"), Row("-A")), reference_row="full",
                   paper_values=(), claims=())
    full = {s: 0.70 for s in range(1, 6)}
    minus_t = {1: 0.60, 2: 0.62, 3: 0.58, 4: 0.61, 5: 0.59}
    minus_a = {1: 0.61, 2: 0.59, 3: 0.60, 4: 0.58, 5: 0.62}  # point means put -T first by 0.0
    c = Claim("order", "order_by_drop", "text > audio", "seed",
              {"rows": ["-T", "-A"], "datasets": ["meld"]}, planted=True)
    v = evaluate_claim(c, tidy({"full": full, "-T": minus_t, "-A": minus_a}), sp)
    assert v.verdict == INCONCLUSIVE
    assert reading(v, c, "smoke") == INCONCLUSIVE and reading(v, c, "paper") == INCONCLUSIVE


def test_smoke_readings_planted_and_not_applicable():
    ref = {s: 0.60 + 0.01 * s for s in range(1, 6)}
    close = {s: v + 0.002 for s, v in ref.items()}
    far = {s: v + 0.05 for s, v in ref.items()}
    df_held, df_not = tidy({"ref": ref, "row": close}), tidy({"ref": ref, "row": far})
    planted, unplanted = within(planted=True), within(planted=False)
    assert reading(evaluate_claim(planted, df_held, spec()), planted, "smoke") == RECOVERED
    assert reading(evaluate_claim(planted, df_not, spec()), planted, "smoke") == NOT_RECOVERED
    assert reading(evaluate_claim(unplanted, df_not, spec()), unplanted, "smoke") == NOT_APPLICABLE
    assert reading(evaluate_claim(unplanted, df_not, spec()), unplanted, "paper") == "did not hold"


def test_a_row_of_unparseable_answers_makes_the_claim_not_comparable():
    ref = {s: 0.60 + 0.01 * s for s in range(1, 6)}
    row = {s: v + 0.30 for s, v in ref.items()}
    v = evaluate_claim(within(), tidy({"ref": ref, "row": row}, invalid={"ref": 0.85}), spec())
    assert v.verdict == "not comparable"
    assert "ref not comparable: 85% unparseable answers" in v.detail
    # the threshold is a setting: at 0.9 the same rows are compared
    assert evaluate_claim(within(), tidy({"ref": ref, "row": row}, invalid={"ref": 0.85}),
                          spec(threshold=0.9)).verdict == "did not hold"


def test_params_ratio_is_checked():
    ref = {s: 0.6 for s in range(1, 4)}
    c = Claim("params_ratio", "params_ratio", "row has 33% fewer parameters", "seed",
              {"row": "row", "reference": "ref", "datasets": ["meld"], "ratio": 0.67, "tolerance": 0.05})
    held = evaluate_claim(c, tidy({"ref": ref, "row": ref}, params={"ref": 9.0e9, "row": 6.2e9}), spec())
    assert held.verdict == "held" and "= 0.689" in held.detail
    twins = evaluate_claim(c, tidy({"ref": ref, "row": ref}, params={"ref": 456770.0, "row": 461442.0}), spec())
    assert twins.verdict == "did not hold" and "= 1.010" in twins.detail


def test_report_settings_are_read_from_the_table_file_and_checked(tmp_path):
    import pytest

    from benchmarks.execution.tables import TableError, load_table
    from tests.test_report import TOY_TOML

    (tmp_path / "table_numbers.toml").write_text('[tables]\n"9" = "toy"\n')
    (tmp_path / "toy.toml").write_text(TOY_TOML + "planted = true\n[report]\ninvalid_threshold = 0.5\n")
    spec_ = load_table("toy", tmp_path)
    assert spec_.report.invalid_threshold == 0.5 and spec_.claims[0].planted
    (tmp_path / "toy.toml").write_text(TOY_TOML + "[report]\ninvalid_threshold = 1.5\n")
    with pytest.raises(TableError, match=r"toy.toml: report.invalid_threshold must be a share in \[0, 1\]"):
        load_table("toy", tmp_path)
