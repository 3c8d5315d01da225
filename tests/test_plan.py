"""The cost planner: numbers checkable by hand, the CLI's table, --from a gpu-check JSON, and the
estimate reproduce prints before a paper grid (no GPU, data or weights anywhere)."""

from __future__ import annotations

import json
import math
import re

import pytest

from benchmarks.cli import main
from benchmarks.execution import planner as plan
from benchmarks.execution import runner
from benchmarks.execution.grid import Grid, GridArgs, expand, parse_sets
from benchmarks.execution.tables import load_table
from tests.conftest import isolate_harness
from tests.fakes import hashed_run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)


def cell(table="main_msa", dataset="mosei", sets=None):
    return expand(load_table(table), "paper", GridArgs(seeds=[1111], datasets=[dataset], overrides=sets), check_roots=False)[0]


@pytest.mark.parametrize("family, published", [("glm3", 6.24e9), ("glm4", 9.40e9), ("llama3", 8.03e9)])
def test_architectures_count_the_published_parameters(family, published):
    arch = plan.architecture(family)
    assert abs(arch.params - published) / published < 0.01
    assert arch.weight_bytes == 2 * arch.params and arch.matmul_params < arch.params


def test_steps_follow_epochs_patience_and_the_stated_best_evaluation():
    # MOSEI: 16,326 training samples / batch 8 = 2,041 steps an epoch; one evaluation per epoch;
    # patience 10 (regression) after the best at evaluation 5 -> 15 epochs, then valid + test.
    assert plan.run_steps(cell()) == (15 * 2041, 15 + 2)
    # MELD: 9,989 / 8 = 1,249 an epoch, patience 8 -> 13 epochs.
    assert plan.run_steps(cell("main_erc", "meld")) == (13 * 1249, 13 + 2)
    # A fixed budget trains every step: 4000 steps, an evaluation every 1000.
    fixed = cell(sets=parse_sets(["train.max_steps=4000", "train.eval_every=1000"]))
    assert plan.run_steps(fixed) == (4000, 4 + 2)


def test_an_analytic_step_is_4NT_at_the_stated_mfu():
    c = cell()  # glm3 on MOSEI: 24 template + 4 pseudo + 50 utterance + 4 answer tokens
    assert plan.tokens_per_sample(c) == 82
    cost = plan.run_cost(c, "h100")
    n = plan.architecture("glm3").matmul_params
    step_s = 4 * n * 8 * 82 / (989e12 * 0.35)
    assert cost.train_s == pytest.approx(30615 * step_s)
    assert cost.setup_s == pytest.approx(30 + plan.architecture("glm3").weight_bytes / 2e9)
    assert plan.run_cost(c, "a100-80g").train_s == pytest.approx(cost.train_s * 989 / 312)


def test_tfn_runs_load_no_llm_and_are_priced_at_their_start_only(tmp_path):
    def row_cell(row):
        return expand(load_table("main_msa"), "paper", GridArgs(rows=[row], seeds=[1111], datasets=["mosei"]),
                      check_roots=False)[0]

    tfn, mse, egmf = row_cell("TFN"), row_cell("MSE-Adapter"), cell()
    assert tfn.config.model.method == "tfn" and tfn.config.model.backbone == "glm3"  # glm3's tokenizer only
    cost = plan.run_cost(tfn, "h200")
    assert (cost.train_s, cost.eval_s, cost.setup_s, cost.llm) == (0.0, 0.0, plan.RUN_START_S, False)
    assert cost.steps == plan.run_steps(tfn)[0]  # its steps are still counted, they just cost ~nothing
    # MSE-Adapter keeps the frozen LLM (backward through it to the plugin, generation to answer): as EGMF
    assert plan.run_cost(mse, "h200").seconds == pytest.approx(plan.run_cost(egmf, "h200").seconds)
    p = plan.make_plan(Grid("main_msa", "paper", GridArgs(seeds=[1111], datasets=["mosei"])), plan.Pricing(gpu="h200"))
    assert len(p.runs) == 3
    assert p.gpu_hours == pytest.approx((2 * plan.run_cost(egmf, "h200").seconds + plan.RUN_START_S) / 3600)
    assert "1 run(s) of tfn (model.method) load no LLM" in plan.render_plan(p)
    # measured step times for another backbone only: no "no measurement for glm3" note for TFN runs
    m = json.loads(gpu_check(tmp_path).read_text())
    path = tmp_path / "glm4_only.json"
    path.write_text(json.dumps({**m, "backbones": {"glm4": m["backbones"]["glm3"]}}))
    only_tfn = plan.make_plan(Grid("main_msa", "paper", GridArgs(rows=["TFN"], seeds=[1111], datasets=["mosei"])),
                              plan.Pricing(gpu="h200", measured_path=path))
    assert only_tfn.notes == [] and only_tfn.gpu_hours == pytest.approx(plan.RUN_START_S / 3600)
    assert plan.make_plan(Grid("main_msa", "paper", GridArgs(seeds=[1111], datasets=["mosei"])),
                          plan.Pricing(gpu="h200", measured_path=path)).notes == [
        f"no measurement for glm3 in {path}: analytic estimate for those"]


def test_all_prints_gpu_hours_per_table_and_a_total_that_adds_up(capsys):
    assert main(["plan", "all", "--profile", "paper", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    rows = {m[0]: (int(m[1]), float(m[2])) for m in
            re.findall(r"^\| (\w+) \| \d+ \| \d+ \| (\d+) \| [\d,\-]+ \| ([\d.]+) \|$", out, re.M)}
    assert set(rows) == {"main_erc", "main_msa", "modality_ablation", "expert_ablation", "backbone_swap", "lora",
                         "expert_design", "pseudo_tokens"}
    new_runs, hours = re.search(r"\*\*total\*\* \| \| \| \*\*(\d+)\*\* \| \| \*\*([\d.]+)\*\*", out).groups()
    # a shared run counts once: 600 = 560 before issue 20, plus main_erc's and main_msa's two baseline
    # rows (MSE-Adapter, TFN) x 2 datasets x 5 seeds each (2 x 20), none shared with another table
    assert int(new_runs) == sum(r[0] for r in rows.values()) == 600
    assert rows["main_erc"][0] == rows["main_msa"][0] == 3 * 2 * 5
    assert float(hours) == pytest.approx(sum(r[1] for r in rows.values()), abs=0.6)
    assert "NVIDIA H200" in out and "35% MFU" in out and "evaluation 5" in out  # assumptions stated


def test_nightly_fits_two_h100_hours_even_at_half_the_assumed_mfu():
    p = plan.make_plan(Grid("nightly", "paper"), plan.Pricing(gpu="h100"))
    assert len(p.runs) == 8 and {r.steps for r in p.runs} == {4000}  # 2 tables x 2 datasets x 2 seeds
    slow = sum(r.setup_s + 2 * (r.train_s + r.eval_s) for r in p.runs) / 3600
    assert p.gpu_hours <= slow <= 2.0


def test_wall_time_on_eight_gpus_is_close_to_an_eighth():
    one = plan.make_plan(Grid("all", "paper"), plan.Pricing(gpu="h200"))
    eight = plan.make_plan(Grid("all", "paper"), plan.Pricing(gpu="h200", gpus=8))
    assert one.wall_hours == pytest.approx(one.gpu_hours)
    assert one.gpu_hours / 8 <= eight.wall_hours <= 1.05 * one.gpu_hours / 8


def gpu_check(tmp_path, **glm3):
    m = {"step_time_s": 0.2, "tokens_per_step": 656, "eval_generate_s_per_batch": 0.5,
         "eval_score_s_per_batch": 0.1, "eval_batch_size": 32, "jobs_per_gpu": {"1": 3000.0, "2": 5000.0},
         "best_jobs_per_gpu": 2, "extra": "ignored", **glm3}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "backbones": {"glm3": m}, "more": 1}))
    return path


def test_measured_step_times_replace_the_flop_count(tmp_path):
    path = gpu_check(tmp_path)
    measured = plan.load_gpu_check(path)
    c = cell()  # 8 x 82 = 656 tokens a step: the measured shape
    one = plan.run_cost(c, "h200", measured, jobs_per_gpu=1)
    assert one.train_s == pytest.approx(30615 * 0.2)
    assert one.eval_s == pytest.approx((16 * 1871 + 4659) / 32 * 0.5)  # 16 valid passes + one test pass
    two = plan.run_cost(c, "h200", measured, jobs_per_gpu=2)
    assert two.train_s == pytest.approx(one.train_s * 3000 / 5000)  # GPU seconds at the shared throughput
    p = plan.make_plan(Grid("main_msa", "paper", GridArgs(seeds=[1111], datasets=["mosei"])),
                       plan.Pricing(gpu="h200", measured_path=path))
    assert p.jobs_per_gpu == 2 and p.source == str(path)  # gpu-check's best K by default


def test_a_measured_run_group_faster_than_every_ungrouped_setting_prices_the_grid(tmp_path):
    # groups of 4 reach 12,000 aggregate tokens/s, above the best ungrouped 5,000 (2 processes)
    path = gpu_check(tmp_path, groups={"1": {"aggregate_tokens_per_s": 3000.0}, "4": {"aggregate_tokens_per_s": 12000.0},
                                       "8": {"error": "OutOfMemoryError"}}, best_tokens_per_s=5000.0)
    measured = plan.load_gpu_check(path)
    c = cell()  # 656 tokens a run-step
    grouped = plan.run_cost(c, "h200", measured, group=4)
    assert grouped.train_s == pytest.approx(30615 * 656 / 12000)
    assert grouped.eval_s == plan.run_cost(c, "h200", measured).eval_s  # evaluation priced as measured alone
    grid = Grid("main_msa", "paper", GridArgs(seeds=[1111], datasets=["mosei"]))
    best = plan.make_plan(grid, plan.Pricing(gpu="h200", measured_path=path))
    assert best.groups == {"glm3": 4} and best.jobs_per_gpu == 2  # the baseline rows still pack 2 per GPU
    assert "run groups (glm3 in groups of 4" in plan.render_plan(best)
    packed = plan.make_plan(grid, plan.Pricing(gpu="h200", measured_path=path, jobs_per_gpu=2))  # asked: no groups
    assert packed.groups == {} and best.gpu_hours < packed.gpu_hours
    unmeasured = plan.make_plan(grid, plan.Pricing(gpu="h200", measured_path=path, group=8))
    assert unmeasured.groups == {} and any("groups of 8 not measured" in n for n in unmeasured.notes)


def test_an_ungrouped_measurement_keeps_the_ungrouped_price(tmp_path):
    path = gpu_check(tmp_path)  # no "groups": the planner uses what was measured
    grid = Grid("main_msa", "paper", GridArgs(seeds=[1111], datasets=["mosei"]))
    p = plan.make_plan(grid, plan.Pricing(gpu="h200", measured_path=path))
    assert p.groups == {} and "no run group measured" in plan.render_plan(p)


@pytest.mark.parametrize("bad, message", [
    ("{", "not JSON"),
    ('{"device": "x"}', "missing field 'backbones'"),
    ('{"backbones": {"glm3": {"step_time_s": 0, "tokens_per_step": 1, "eval_generate_s_per_batch": 1}}}',
     "backbones.glm3.step_time_s must be a positive number"),
])
def test_a_bad_gpu_check_json_is_one_line_exit_2(tmp_path, capsys, bad, message):
    path = tmp_path / "g.json"
    path.write_text(bad)
    assert main(["plan", "3", "--from", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["plan", "all", "--profile", "smoke"], "the planner prices the paper profile"),
    (["plan", "all", "--gpu", "v100"], "unknown --gpu 'v100' (known: h100, h200, a100-80g)"),
    (["plan", "all", "--gpus", "0"], "--gpus 0: must be at least 1"),
    (["plan", "nope"], "unknown table 'nope'"),
])
def test_bad_plan_arguments_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_reproduce_prints_the_estimate_before_a_paper_grid(tmp_path, capsys):
    data, models = tmp_path / "data", tmp_path / "models"
    (data / "sims_v2").mkdir(parents=True)
    (models / "chatglm3-6b").mkdir(parents=True)
    rc = main(["reproduce", "3", "--profile", "paper", "--data-root", str(data), "--model-root", str(models),
               "--datasets", "sims_v2", "--seeds", "1111,1112", "--no-report",
               "--results-root", str(tmp_path / "r"), "--reports-root", str(tmp_path / "p")])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 2  # the preflight then refuses the empty roots: the estimate came first
    assert captured.err.startswith("error: ")
    line = out.splitlines()[0]  # before the grid's own lines
    assert line.startswith("estimate (analytic")
    hours = float(re.search(r"([\d.]+) GPU-hours", line).group(1))
    expected = plan.make_plan(Grid("3", "paper", GridArgs(seeds=[1111, 1112], datasets=["sims_v2"]))).gpu_hours
    # table 3's 3 rows (EGMF, MSE-Adapter, TFN) x sims_v2 x 2 seeds
    assert "6 distinct runs" in line and hours == pytest.approx(expected, abs=0.05)


def test_no_estimate_for_the_smoke_profile(tmp_path, capsys):
    assert main(["reproduce", "3", "--datasets", "sims_v2", "--seeds", "1111", "--no-report",
                 "--results-root", str(tmp_path / "r")]) == 0
    assert not capsys.readouterr().out.startswith("estimate (")


def test_lpt_shards_are_deterministic_and_balanced():
    costs = {f"{i:04x}": float(c) for i, c in enumerate([7, 5, 4, 4, 3, 3, 2, 2])}
    shards = plan.balance_shards(costs, 3)
    # by hand: 7->a, 5->b, 4->c, 4->c (8), 3->b (8), 3->a (10), 2->b (10), 2->c (10)
    assert [sorted(s.values(), reverse=True) for s in shards] == [[7.0, 3.0], [5.0, 3.0, 2.0], [4.0, 4.0, 2.0]]
    assert plan.balance_shards(costs, 3) == shards
    assert math.isclose(sum(sum(s.values()) for s in shards), sum(costs.values()))


def test_a_nightly_grid_without_seeds_plans_each_tables_own():
    """ablations/nightly.toml may leave seeds out (smoke does): the tables' seeds are used."""
    grids = dict(plan.planned_grids(Grid("nightly", "smoke")))
    assert sorted(grids) == ["main_erc", "main_msa"]
    assert {c.seed for c in grids["main_msa"]} == {1111, 1112, 1113, 1114, 1115}
