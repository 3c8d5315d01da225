"""Reports from a hand-made results table: numbers, verdicts, determinism, index links."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from benchmarks.execution.tables import Claim, PaperValue, Row, TableSpec
from benchmarks.reporting.report import SMOKE_BANNER, build_table_report, render_index, render_table
from benchmarks.results.schema import RESULT_COLUMNS

SEEDS = (1111, 1112, 1113)
# (row, dataset, metric) -> values for seeds 1111, 1112, 1113, stored units
VALUES = {
    ("full", "meld", "wf1"): (0.60, 0.62, 0.64),  # 62.00 +- 2.00 points
    ("full", "meld", "acc"): (0.70, 0.71, 0.72),  # 71.00 +- 1.00
    ("-T", "meld", "wf1"): (0.40, 0.41, 0.45),  # 42.00 +- 2.65 (std sqrt(7))
    ("-T", "meld", "acc"): (0.50, 0.52, 0.54),
    ("full", "mosei", "mae"): (0.50, 0.55, 0.60),  # 0.550 +- 0.050
    ("full", "mosei", "f1_non0"): (0.80, 0.81, 0.82),
    ("-T", "mosei", "mae"): (0.80, 0.82, 0.90),  # 0.840 +- 0.053
    ("-T", "mosei", "f1_non0"): (0.60, 0.62, 0.64),
}
TOY_TOML = """
name = "toy"
caption = "Toy table"
datasets = ["meld", "mosei"]
reference_row = "full"
[metrics]
meld = ["wf1", "acc"]
mosei = ["mae", "f1_non0"]
[seeds]
smoke = [1111, 1112, 1113]
paper = [1111, 1112, 1113]
[[rows]]
name = "full"
[[rows]]
name = "-T"
overrides = { "model.modalities" = ["audio", "visual"] }
[[paper_values]]
row = "full"
dataset = "meld"
metric = "wf1"
value = 62.5
source = "seed"
[[claims]]
id = "text_matters"
kind = "relative_drop"
text = "removing text costs over 20%"
row = "-T"
reference = "full"
datasets = ["meld"]
threshold = 0.2
"""


def toy_spec() -> TableSpec:
    return TableSpec(
        name="toy", number="9", caption="Toy table", datasets=("meld", "mosei"),
        metrics={"meld": ("wf1", "acc"), "mosei": ("mae", "f1_non0")},
        seeds={"smoke": SEEDS, "paper": SEEDS}, base={},
        rows=(Row("full"), Row("-T", {"model.modalities": ["audio", "visual"]})), reference_row="full",
        paper_values=(PaperValue("full", "meld", "wf1", 62.5, "seed"),
                      PaperValue("full", "meld", "acc", 72.5, "leaderboard"),
                      PaperValue("full", "mosei", "mae", 0.70, "seed")),
        claims=(Claim("text_matters", "relative_drop", "removing text costs over 20%", "seed",
                      {"row": "-T", "reference": "full", "threshold": 0.2, "datasets": ["meld"]}),),
    )


def gating_json(collapse: bool) -> str:
    return json.dumps({
        "alpha_mean": {"E1": 0.5, "E2": 0.2, "E3": 0.3}, "beta_mean": 0.5, "entropy_normalised_mean": 0.9,
        "top_expert_share": {"E1": 0.6, "E2": 0.1, "E3": 0.3}, "gating_collapse": collapse,
        "gating_collapse_reason": ("expert E1 dominates: alpha > 0.95 on 99.0% of samples" if collapse
                                   else "no collapse"),
        "gating_static": False,
        "alpha_mean_by_label": {"joy": {"E1": 0.6, "E2": 0.1, "E3": 0.3}, "anger": {"E1": 0.3, "E2": 0.3, "E3": 0.4}},
    })


def toy_results(profile: str = "smoke") -> pd.DataFrame:
    common = dict(table="toy", profile=profile, error="", backbone="glm3-tiny", data_source="synth:v1",
                  model_source="random-init", git_rev="abc1234", versions_json='{"torch": "2.13.0"}',
                  device="cpu", trust_remote_code="False")
    recs = []
    for (row, ds, metric), vals in VALUES.items():
        for i, (seed, v) in enumerate(zip(SEEDS, vals)):
            for split in ("valid", "test"):
                recs.append(dict(
                    common, row=row, dataset=ds, seed=seed, split=split, metric=metric, value=v, status="ok",
                    run_id=f"{row}-{ds}-{seed}", config_json='{"train": {"invalid_fallback": "majority"}}',
                    wall_s=10.0 + i, peak_mem_mb=500.0, trainable_params=1000, total_params=100000,
                    step_time_s=0.02, samples_per_s=400.0, egmf_share=0.25, steps=100, best_step=80,
                    invalid_rate=0.01 * i, gating_json=gating_json(row == "-T" and seed == 1113),
                    sampling_ci_json=json.dumps({"wf1": [0.55, 0.65]} if ds == "meld" else {"mae": [0.5, 0.6]}),
                    timestamp=f"2026-11-2{i}T10:00:00Z"))
    recs.append(dict(common, row="-T", dataset="meld", seed=1114, split="test", metric="", value=float("nan"),
                     status="failed", error="NaN loss at step 37", run_id="-T-meld-1114", config_json="{}",
                     timestamp="2026-11-23T08:30:00Z"))
    df = pd.DataFrame(recs)
    return df.reindex(columns=list(RESULT_COLUMNS), fill_value="")


def test_smoke_report_opens_with_the_banner_and_never_compares():
    md = build_table_report(toy_spec(), toy_results("smoke"), "smoke")
    assert md.splitlines()[0] == SMOKE_BANNER
    assert "| full | WF1 ↑ | 62.00 ± 2.00 (n=3) | 62.50 (seed) | – | not comparable (synthetic data) |" in md
    assert "held, ours" not in md and "did not hold, ours" not in md
    assert "| date (latest run) | 2026-11-23 08:30:00 UTC |" in md  # the results' latest timestamp


def test_means_and_stds_over_seeds_in_points_and_raw_units():
    md = build_table_report(toy_spec(), toy_results(), "smoke")
    assert "| full | 3/3 | 62.00 ± 2.00 | 71.00 ± 1.00 | ± 5.00 | 1.00% | majority |" in md  # test-set ± beside
    assert "| -T | 3/3 (1 failed) | 42.00 ± 2.65 | 52.00 ± 2.00 | ± 5.00 | 1.00% | majority |" in md
    assert "| full | 3/3 | 0.550 ± 0.050 | 81.00 ± 1.00 |" in md
    assert "| -T | 3/3 | 0.840 ± 0.053 | 62.00 ± 2.00 |" in md
    assert "### mosei (key metric: MAE ↓)" in md


def test_paper_profile_verdicts_are_direction_aware():
    md = build_table_report(toy_spec(), toy_results("paper"), "paper")
    assert md.splitlines()[0] == "> PAPER PROFILE: data read from synth:v1, weights from random-init."
    assert "| 62.50 (seed) | -0.50 | held, ours worse |" in md
    assert "| 72.50 (leaderboard) | -1.50 | within tolerance, ours worse |" in md
    # MAE 0.550 vs the paper's 0.700: outside tolerance, and lower MAE is better
    assert "| 0.700 (seed) | -0.150 | did not hold, ours better |" in md


def test_paired_comparison_numbers_match_scipy():
    md = build_table_report(toy_spec(), toy_results(), "smoke")
    p_wf1 = scipy_stats.ttest_rel([0.40, 0.41, 0.45], [0.60, 0.62, 0.64]).pvalue
    p_mae = scipy_stats.ttest_rel([0.80, 0.82, 0.90], [0.50, 0.55, 0.60]).pvalue
    half_wf1 = scipy_stats.t.ppf(0.975, 2) * np.std([-0.20, -0.21, -0.19], ddof=1) / np.sqrt(3) * 100
    half_mae = scipy_stats.t.ppf(0.975, 2) * np.std([-0.30, -0.27, -0.30], ddof=1) / np.sqrt(3)
    holm_wf1, holm_mae = min(1.0, 2 * min(p_wf1, p_mae)), max(2 * min(p_wf1, p_mae), max(p_wf1, p_mae))
    assert p_wf1 < p_mae  # so the Holm order above is right
    assert (f"| -T | 3 | -20.00 | [{-20 - half_wf1:+.2f}, {-20 + half_wf1:+.2f}] | {p_wf1:.4f} | {holm_wf1:.4f} "
            "| n/a |") in md  # bootstrap: not shown at n = 3
    assert (f"| -T | 3 | -0.290 | [{-0.29 - half_mae:+.3f}, {-0.29 + half_mae:+.3f}] | {p_mae:.4f} | "
            f"{holm_mae:.4f} | n/a |") in md  # MAE up 0.29: worse


def test_claims_failed_runs_gating_and_cost_are_shown():
    md = build_table_report(toy_spec(), toy_results(), "smoke")
    assert "- **not applicable to synthetic data** `text_matters` (seed): removing text costs over 20%" in md
    assert "relative drop 0.323 [95% CI " in md and "n=3 (threshold > 0.2)" in md  # (62 - 42) / 62
    assert "| -T | meld | 1114 | `-T-meld-1114` | failed | NaN loss at step 37 |" in md
    assert "**WARNING: GATING COLLAPSE in 2 of 12 run(s) with a learned gate.**" in md
    assert "- -T on meld, seed 1113: expert E1 dominates" in md
    assert "**1/3 COLLAPSED**" in md
    assert "| meld | full | 3 | 1,000 | 100,000 | 1.00 | 20.0 | 400.0 | 500 | 25.0 | 11.0 |" in md
    assert "## Assumptions" in md and "| train.invalid_fallback | majority | ours |  |" in md  # as run
    assert "trust_remote_code" not in md.split("## Failed runs")[0]  # only shown when it was on
    df = toy_results()
    df.loc[df["run_id"] == "full-meld-1111", "trust_remote_code"] = "True"
    assert "| trust_remote_code | **ON** in 1 run(s)" in build_table_report(toy_spec(), df, "smoke")


def _write_world(tmp_path: Path, profile: str = "smoke", shuffle_seed: int | None = None) -> tuple[Path, Path, Path]:
    abl = tmp_path / "ablations"
    abl.mkdir(parents=True, exist_ok=True)
    (abl / "table_numbers.toml").write_text('[tables]\n"9" = "toy"\n"10" = "later"\n')
    (abl / "toy.toml").write_text(TOY_TOML)
    (abl / "later.toml").write_text(TOY_TOML.replace('name = "toy"', 'name = "later"').replace("Toy table", "Not yet"))
    df = toy_results(profile)
    if shuffle_seed is not None:
        df = df.sample(frac=1.0, random_state=shuffle_seed)
    results = tmp_path / "results"
    (results / profile).mkdir(parents=True, exist_ok=True)
    df.to_csv(results / profile / "toy.csv", index=False)
    return abl, results, tmp_path / "reports"


def test_render_twice_is_byte_identical_and_independent_of_row_order(tmp_path):
    abl, results, reports = _write_world(tmp_path / "a")
    md_path = render_table("smoke", "toy", results_root=results, reports_root=reports, ablations_dir=abl)
    first = {p.name: p.read_bytes() for p in sorted(md_path.parent.iterdir())}
    assert {"toy.md", "toy_bars.png", "toy_gating_alpha.png", "toy_gating_by_label_meld.png"} <= set(first)
    render_table("smoke", "toy", results_root=results, reports_root=reports, ablations_dir=abl)
    second = {p.name: p.read_bytes() for p in sorted(md_path.parent.iterdir())}
    assert first == second  # markdown and PNG bytes; no temp files left behind
    md = first["toy.md"].decode()
    assert "![toy_bars](toy_bars.png)" in md and "![toy_gating_alpha](toy_gating_alpha.png)" in md
    # the same results in another row order render to the same bytes
    abl2, results2, reports2 = _write_world(tmp_path / "b", shuffle_seed=3)
    md2 = render_table("smoke", "toy", results_root=results2, reports_root=reports2, ablations_dir=abl2)
    assert md2.read_bytes() == first["toy.md"]
    assert (md2.parent / "toy_bars.png").read_bytes() == first["toy_bars.png"]


def test_index_links_every_table_and_marks_the_ones_not_run(tmp_path):
    abl, results, reports = _write_world(tmp_path)
    render_table("smoke", "toy", results_root=results, reports_root=reports, ablations_dir=abl)
    index = render_index("smoke", results_root=results, reports_root=reports, ablations_dir=abl)
    text = index.read_text()
    assert text.splitlines()[0] == SMOKE_BANNER
    assert ("| 9 | [toy](toy.md) | Toy table | 12 ok, **1 failed** | 1 not applicable to synthetic data "
            "| 2026-11-23 08:30:00 UTC |") in text  # the claim is not marked planted: counted apart
    assert "| 10 | [later](later.md) | Not yet | **not run yet** |" in text
    for link in ("toy.md", "later.md"):  # no broken link
        assert (index.parent / link).is_file()
    assert "**Not run yet**" in (index.parent / "later.md").read_text()


def test_statistics_table_renders_whatever_metrics_appear():
    spec = TableSpec(name="datasets", number="1", caption="stats", datasets=("meld",),
                     metrics={"meld": ("n_samples",)}, seeds={"smoke": (0,)}, base={},
                     rows=(Row("statistics"),), reference_row=None, paper_values=(), claims=(), trains=False)
    recs = [dict(table="datasets", row="statistics", dataset="meld", seed=0, profile="smoke", split=s, metric=m,
                 value=v, status="ok", data_source="synth:meld") for s, m, v in
            [("train", "n_samples", 120), ("test", "n_samples", 40), ("train", "label_share:joy", 0.25),
             ("all", "audio_dim", 64)]]
    md = build_table_report(spec, pd.DataFrame(recs), "smoke")
    assert "| statistic | train | test | all |" in md
    assert "| n_samples | 120 | 40 | – |" in md
    assert "| label_share:joy | 0.2500 | – | – |" in md
    assert "## Gating" not in md and "## Results" not in md


def test_lora_rows_are_paired_per_backbone():
    spec = TableSpec(name="lora", number="7", caption="lora", datasets=("meld",), metrics={"meld": ("wf1",)},
                     seeds={"smoke": SEEDS}, base={"model.backbone": "glm3", "model.lora": True},
                     rows=(Row("G on", {"model.lora": True}), Row("G off", {"model.lora": False})),
                     reference_row="G on", paper_values=(), claims=())
    recs = [dict(table="lora", row=r, dataset="meld", seed=s, profile="smoke", split="test", metric="wf1",
                 value=v + 0.001 * i, status="ok", run_id=f"{r}{s}", backbone="glm3-tiny",
                 config_json=json.dumps({"model": {"backbone": "glm3-tiny", "lora": r == "G on"}}))
            for r, v in (("G on", 0.61), ("G off", 0.60)) for i, s in enumerate(SEEDS)]
    md = build_table_report(spec, pd.DataFrame(recs), "smoke")
    assert "## LoRA on minus off" in md
    assert "| glm3-tiny | meld | English | WF1 ↑ | 3 | +1.00 | [+1.00, +1.00] | n/a |" in md


def test_report_modules_do_not_import_torch():
    code = ("import sys, benchmarks.reporting.report, benchmarks.reporting.claims, benchmarks.reporting.plots, benchmarks.reporting.assumptions; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


def test_plot_functions_return_what_they_wrote(tmp_path):
    from benchmarks.reporting import plots

    df = toy_results()
    assert plots.backbone_bars(df, tmp_path, table="t", rows=["full", "-T"]) == [tmp_path / "t_backbones.png"]
    lora = plots.lora_deltas(df, tmp_path, table="t", pairs=[("glm3", "full", "-T")])
    assert lora == [tmp_path / "t_lora_deltas.png"]
    assert plots.gating_alpha_by_label(df, tmp_path, table="t", row="full", datasets=["meld"]) == [
        tmp_path / "t_gating_by_label_meld.png"]
    assert plots.ablation_bars(df, tmp_path, table="t", rows=["no such row"]) == []  # nothing to draw
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["t_backbones.png", "t_gating_by_label_meld.png", "t_lora_deltas.png"]
