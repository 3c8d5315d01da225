"""EGMF minus each baseline on matched seeds (benchmarks/reporting/baseline_comparison.py), on synthetic tidy frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from benchmarks.execution.tables import Claim, Row, TableSpec
from benchmarks.reporting.baseline_comparison import baseline_rows, baseline_section, compare_baselines
from benchmarks.reporting.claims import NOT_APPLICABLE, evaluate_claim, reading
from benchmarks.reporting.report import build_table_report
from benchmarks.reporting.stats import holm
from benchmarks.results.schema import RESULT_COLUMNS


def spec(claims: tuple[Claim, ...] = ()) -> TableSpec:
    return TableSpec(
        name="toy_main", number="9", caption="toy", datasets=("meld", "mosei"),
        metrics={"meld": ("wf1",), "mosei": ("mae",)}, seeds={"smoke": (1, 2, 3, 4), "paper": (1, 2, 3, 4)},
        base={}, reference_row=None, paper_values=(), claims=claims,
        rows=(Row("EGMF"), Row("MSE-Adapter", {"model.method": "mse_adapter", "model.lora": False}),
              Row("TFN", {"model.method": "tfn"})),
    )


def frame(values: dict[tuple[str, str], dict[int, float]], invalid: dict[tuple[str, str], float] | None = None,
          profile: str = "paper") -> pd.DataFrame:
    """(row, dataset) -> {seed: key metric}; invalid: (row, dataset) -> share of unparseable answers."""
    key = {"meld": "wf1", "mosei": "mae"}
    recs = []
    for (row, ds), by_seed in values.items():
        for seed, v in by_seed.items():
            base = dict(table="toy_main", profile=profile, row=row, dataset=ds, seed=seed, split="test", status="ok",
                        run_id=f"{row}-{ds}-{seed}", config_json="{}", timestamp="2026-12-01T00:00:00Z")
            recs.append(dict(base, metric=key[ds], value=v))
            recs.append(dict(base, metric="invalid_rate", value=(invalid or {}).get((row, ds), 0.0)))
    return pd.DataFrame(recs).reindex(columns=list(RESULT_COLUMNS), fill_value="")


EGMF_MELD = {1: 0.60, 2: 0.62, 3: 0.64, 4: 0.61}
TFN_MELD = {1: 0.55, 2: 0.58, 3: 0.57, 4: 0.50}
EGMF_MOSEI = {1: 0.50, 2: 0.55, 3: 0.60, 4: 0.52}
TFN_MOSEI = {1: 0.58, 2: 0.54, 3: 0.70, 5: 0.10}  # seed 5: EGMF has none, so it is not paired


def test_the_rows_come_from_model_method():
    assert baseline_rows(spec()) == ("EGMF", ["MSE-Adapter", "TFN"])
    plain = TableSpec(**{**spec().__dict__, "rows": (Row("EGMF"), Row("-T", {"model.modalities": ["audio"]}))})
    assert baseline_rows(plain) == (None, []) and baseline_section(plain, frame({}), "paper") == []


def test_egmf_minus_baseline_on_matched_seeds_with_holm():
    df = frame({("EGMF", "meld"): EGMF_MELD, ("TFN", "meld"): TFN_MELD, ("EGMF", "mosei"): EGMF_MOSEI,
                ("TFN", "mosei"): TFN_MOSEI, ("MSE-Adapter", "meld"): {1: 0.5, 2: 0.6},
                ("MSE-Adapter", "mosei"): EGMF_MOSEI})
    got = {(c.dataset, c.baseline): c for c in compare_baselines(spec(), df)}
    meld = got[("meld", "TFN")].result
    deltas = np.array([EGMF_MELD[s] - TFN_MELD[s] for s in (1, 2, 3, 4)])
    assert meld.n == 4 and math.isclose(meld.mean_delta, deltas.mean())
    assert math.isclose(meld.p_value, scipy_stats.ttest_rel([EGMF_MELD[s] for s in (1, 2, 3, 4)],
                                                            [TFN_MELD[s] for s in (1, 2, 3, 4)]).pvalue)
    half = scipy_stats.t.ppf(0.975, 3) * deltas.std(ddof=1) / 2
    assert math.isclose(meld.ci_low, deltas.mean() - half) and math.isclose(meld.ci_high, deltas.mean() + half)
    mosei = got[("mosei", "TFN")].result
    assert mosei.n == 3 and mosei.mean_delta > 0  # MAE: EGMF lower, so EGMF better (positive)
    assert math.isclose(mosei.mean_delta, np.mean([0.58 - 0.50, 0.54 - 0.55, 0.70 - 0.60]))
    two = got[("meld", "MSE-Adapter")].result
    assert two.n == 2 and two.too_few and math.isnan(two.ci_low) and math.isnan(got[("meld", "MSE-Adapter")].p_holm)
    family = [c for c in got.values() if not math.isnan(c.result.p_value)]
    expected = holm([c.result.p_value for c in family])
    assert [c.p_holm for c in family] == expected


def test_unparseable_baseline_is_not_comparable_and_left_out_of_the_family():
    df = frame({("EGMF", "meld"): EGMF_MELD, ("MSE-Adapter", "meld"): TFN_MELD},
               invalid={("MSE-Adapter", "meld"): 0.9})
    got = {(c.dataset, c.baseline): c for c in compare_baselines(spec(), df)}
    assert got[("meld", "MSE-Adapter")].result is None and "90% unparseable" in got[("meld", "MSE-Adapter")].note
    assert got[("meld", "TFN")].result.n == 0  # no results: shown as such


def test_the_report_shows_the_section_with_n_and_the_claims():
    claims = (Claim("egmf_beats_tfn_meld", "greater", "EGMF beats TFN on meld", "issue 20",
                    {"row": "EGMF", "reference": "TFN", "datasets": ["meld"], "margin": 0.0}),)
    df = frame({("EGMF", "meld"): EGMF_MELD, ("TFN", "meld"): TFN_MELD})
    text = build_table_report(spec(claims), df, "paper")
    section = text.split("## EGMF vs baselines (test split)")[1].split("\n## ")[0]
    assert "| meld | TFN | WF1 ↑ | 4 | 61.75 | 55.00 | +6.75 |" in section
    assert "| meld | MSE-Adapter | WF1 ↑ | 0 |" in section
    assert "**held** `egmf_beats_tfn_meld`" in text
    smoke = frame({("EGMF", "meld"): EGMF_MELD, ("TFN", "meld"): TFN_MELD}, profile="smoke")
    verdict = evaluate_claim(claims[0], smoke, spec(claims))
    assert verdict.verdict == "held" and reading(verdict, claims[0], "smoke") == NOT_APPLICABLE
    assert "nothing about EGMF against a baseline" in build_table_report(spec(claims), smoke, "smoke")
