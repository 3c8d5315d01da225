"""Reports state what ran: settings from the stored configs, portable data sources, eval modes,
training curves, gating alarms only where a gate can learn, and unparseable rows set apart."""

import json

import pandas as pd

from benchmarks.execution.tables import Row, TableSpec
from benchmarks.reporting.assumptions import as_run_rows
from benchmarks.reporting.report import build_table_report
from benchmarks.results.schema import RESULT_COLUMNS

SEEDS = (1, 2, 3)


def config(lr=5e-3, gating="hierarchical", root="<repo>/.cache/smoke-data/v5"):
    return {"model": {"d_h": 64, "gating": gating, "experts": ["E1", "E2", "E3"], "fusion_direction": "text_queries"},
            "train": {"lr": lr, "batch_size": 8, "max_steps": 400, "eval_mode": "generate"},
            "data": {"root": root}}


def test_as_run_values_sources_and_defaults():
    rows = {r[0]: r[1:] for r in as_run_rows([config(lr=5e-3), config(lr=1e-3)])}
    assert rows["model.d_h"] == ("64", "ours", "256")  # the run's 64, not the default 256
    assert rows["train.lr"] == ("0.001 to 0.005 (varies by run)", "proxy", "5e-05")
    assert rows["train.batch_size"] == ("8", "proxy", "")  # equal to the default: no default shown
    assert rows["train.max_steps"] == ("400", "setting", "null")  # untagged, shown because it differs
    assert rows["model.fusion_direction"] == ("text_queries", "ours", "")
    assert "train.nan_policy" not in rows  # untagged and never changed: not listed
    hidden = {r[0]: r[1] for r in as_run_rows([config(root="/home/someone/data")])}
    assert hidden["data.root"] == ".../someone/data"  # no absolute path of the machine


def spec() -> TableSpec:
    return TableSpec(name="toy", number="9", caption="toy", datasets=("meld",), metrics={"meld": ("wf1",)},
                     seeds={"smoke": SEEDS}, base={}, rows=(Row("full"), Row("uniform"), Row("bad")),
                     reference_row="full", paper_values=(), claims=())


def gating(uniform: bool) -> str:
    alpha = {"E1": 1 / 3, "E2": 1 / 3, "E3": 1 / 3} if uniform else {"E1": 0.6, "E2": 0.3, "E3": 0.1}
    return json.dumps({"alpha_mean": alpha, "top_expert_share": {"E1": 1.0, "E2": 0.0, "E3": 0.0},
                       "gating_collapse": uniform, "gating_collapse_reason": "near-uniform alpha"})


def results() -> pd.DataFrame:
    recs = []
    history = json.dumps([{"step": 100, "loss": 1.0, "wf1": 0.5}, {"step": 200, "loss": 0.5, "wf1": 0.6}])
    for row, value, inv in (("full", 0.6, 0.0), ("uniform", 0.55, 0.0), ("bad", 0.3, 0.85)):
        cfg = config(gating="uniform" if row == "uniform" else "hierarchical")
        for seed in SEEDS:
            for split, metric, v in (("valid", "wf1", value), ("test", "wf1", value + 0.001 * seed),
                                     ("test", "invalid_rate", inv)):
                recs.append(dict(table="toy", profile="smoke", row=row, dataset="meld", seed=seed, split=split,
                                 metric=metric, value=v, status="ok", run_id=f"{row}{seed}", invalid_rate=inv,
                                 config_json=json.dumps(cfg), steps=200, best_step=200, eval_mode="generate",
                                 data_source="meld-csv: meld sha256:9cb174258168d856", valid_history_json=history,
                                 gating_json=gating(row == "uniform"), timestamp="2026-11-20T10:00:00Z"))
    return pd.DataFrame(recs).reindex(columns=list(RESULT_COLUMNS), fill_value="")


def test_report_states_what_ran():
    md = build_table_report(spec(), results(), "smoke")
    assert "| data source(s) | meld-csv: meld sha256:9cb174258168d856 |" in md
    assert "| eval mode (validation passes / test) | generate / generate |" in md
    assert "| model.d_h | 64 | ours | 256 |" in md
    assert "SYNTH_VERSION 5" in md and "until the tiny models recovered the planted order" in md


def test_unparseable_rows_are_not_comparable_in_cells():
    md = build_table_report(spec(), results(), "smoke")
    assert "| bad | 3/3 | not comparable: 85% unparseable answers |" in md
    assert "| bad | – | not comparable (unparseable answers) or no results |" in md  # kept out of the paired tests


def test_gating_alarm_skips_uniform_by_design_and_ties_name_no_expert():
    md = build_table_report(spec(), results(), "smoke")
    assert "GATING COLLAPSE" not in md  # the only collapsed runs are uniform by design
    assert "| uniform | 3 | 0.333 | 0.333 | 0.333 | – | – | none (fixed by design) | fixed by design |" in md
    assert "E1 (1.00)" not in md.split("| uniform |", 2)[-1].splitlines()[0]


def test_training_section_counts_last_step_selections():
    md = build_table_report(spec(), results(), "smoke")
    assert "**WARNING: possibly undertrained.** 9 of 9 ok run(s) (100%) selected their last validation step" in md
    assert "| meld | full | 3 | 200 | 200 | 3/3 |" in md


def test_figures_include_training_curves_and_leave_unparseable_rows_without_a_bar(tmp_path):
    from benchmarks.reporting.report import draw_figures

    figures = draw_figures(spec(), results(), "smoke", tmp_path)
    assert figures["training"] == ["toy_training.png"] and (tmp_path / "toy_training.png").is_file()
    assert figures["results"] == ["toy_bars.png"]
    md = build_table_report(spec(), results(), "smoke", figures)
    assert "![toy_training](toy_training.png)" in md


def test_model_source_paths_are_not_shown_in_full():
    df = results()
    df["model_source"], df["profile"] = "/home/someone/models/glm3-6b", "paper"
    md = build_table_report(spec(), df, "paper")
    assert "/home/someone" not in md and ".../models/glm3-6b" in md


def test_a_tokenizer_only_source_keeps_no_machine_path_either():
    # TFN loads no LLM: its source names the tokenizer's directory after a prefix (egmf_core/baselines.py)
    df = results()
    df["profile"] = "paper"
    df["model_source"] = ["/home/someone/models/glm3-6b" if i % 2 else "no LLM: tokenizer of /home/someone/models/glm3-6b"
                          for i in range(len(df))]
    md = build_table_report(spec(), df, "paper")
    assert "/home/someone" not in md
    assert "weights from .../models/glm3-6b, no LLM: tokenizer of .../models/glm3-6b." in md
