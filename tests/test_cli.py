"""The command line: exit codes and one-line messages for bad input; commands end to end (fake runs)."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest

from benchmarks.cli import main
from benchmarks.execution import launchers, runner
from egmf_core.config import ConfigError
from egmf_core.outcome import RunOutcome
from tests.conftest import isolate_harness
from tests.fakes import hashed_run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Fake runs and fake synthetic data; no real training, nothing written in the repo."""
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    isolate_harness(tmp_path, monkeypatch)


def _roots(tmp_path):
    return ["--results-root", str(tmp_path / "results"), "--reports-root", str(tmp_path / "reports")]


@pytest.mark.parametrize("argv, culprit", [
    (["reproduce", "nope"], "unknown table 'nope' (known: 1=datasets, 2=main_erc"),
    (["reproduce", "S9"], "unknown table 'S9'"),
    (["reproduce", "4", "--rows", "-T,-X"], "unknown name '-X' in --rows"),
    (["reproduce", "main_erc", "--datasets", "mosei"],
     "unknown name 'mosei' in --datasets (the datasets of table main_erc: meld, cherma)"),
    (["reproduce", "3", "--profile", "huge"], "unknown profile 'huge' (known: smoke, scale, paper)"),
    (["reproduce", "3", "--shard", "2/2"], "bad --shard '2/2'"),
    (["reproduce", "3", "--shard", "half"], "bad --shard 'half'"),
    (["reproduce", "3", "--seeds", "1111,abc"], "bad --seeds '1111,abc'"),
    (["reproduce", "3", "--profile", "paper"], "pass --data-root DIR or set EGMF_DATA_ROOT"),
    (["reproduce", "3", "--launcher", "cloud"], "unknown launcher 'cloud' (known: local, slurm)"),
    (["reproduce", "3", "--shards", "4"], "--shards and --slurm-partition need --launcher slurm"),
    (["reproduce", "all", "--rows", "-T"], "--rows cannot be combined with 'all'"),
    (["reproduce", "3", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["list", "--profile", "big"], "unknown profile 'big'"),
    (["report", "9"], "unknown table '9'"),
    (["merge", "no/such/dir"], "no/such/dir: no such results directory"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(argv, culprit, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert culprit in err and "Traceback" not in err
    assert out == ""


def test_missing_model_root_is_named_too(tmp_path, capsys):
    (tmp_path / "data" / "mosei").mkdir(parents=True)
    assert main(["reproduce", "3", "--profile", "paper", "--data-root", str(tmp_path / "data")]) == 2
    assert "pass --model-root DIR or set EGMF_MODEL_ROOT" in capsys.readouterr().err


def test_config_error_from_a_run_exits_2(monkeypatch, tmp_path, capsys):
    def bad(cfg, *, progress=None, checkpoint_dir=None):
        raise ConfigError("config field model.backbone='glm3-tiny': weights missing")

    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: bad)
    assert main(["reproduce", "3", "--no-report", *_roots(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: config field model.backbone='glm3-tiny': weights missing\n"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown table"):
        main(["reproduce", "nope", "--debug"])


def test_reproduce_prints_the_summary_line_and_caches(tmp_path, capsys):
    argv = ["reproduce", "3", "--rows", "EGMF", "--no-report", "--seeds", "1111,1112", *_roots(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("main_msa [smoke]: 4 runs (4 trained, 0 cached, 0 failed) in 0m0")
    assert main(argv) == 0
    assert "(0 trained, 4 cached, 0 failed)" in capsys.readouterr().out
    assert (tmp_path / "results" / "smoke" / "main_msa.csv").is_file()


def test_rows_with_leading_dashes_parse(tmp_path, capsys):
    assert main(["reproduce", "modality_ablation", "--rows", "-T,-A", "--datasets", "meld", "--seeds", "1111",
                 "--no-report", *_roots(tmp_path)]) == 0
    assert "2 runs (2 trained" in capsys.readouterr().out


def test_failed_runs_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: lambda cfg, progress=None, checkpoint_dir=None: RunOutcome(
        status="failed", error="NaN loss at step 3"))
    assert main(["reproduce", "2", "--rows", "EGMF", "--seeds", "1111", "--no-report", *_roots(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "(2 trained, 0 cached, 2 failed)" in captured.out and "NaN loss at step 3" in captured.err


def test_list_shows_every_table_with_its_grid(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 9 + 1
    assert out[4].split()[:2] == ["4", "modality_ablation"] and "7 x 4 x 5 = 140" in out[4]
    assert out[8].split()[:2] == ["S1", "expert_design"]
    from benchmarks.execution.tables import list_tables, load_table

    cells = sum(len(t.rows) * len(t.datasets) * len(t.seeds["smoke"])
                for t in map(load_table, list_tables()) if t.trains) + 4  # + the statistics table's 4
    assert out[-1].startswith(f"[smoke] {cells} cells, ")


def _fake_report(monkeypatch):
    import benchmarks.reporting

    fake = types.ModuleType("benchmarks.reporting.report")
    fake.render_table = lambda profile, table, *, results_root, reports_root: reports_root / profile / f"{table}.md"
    fake.render_index = lambda profile, *, results_root, reports_root: reports_root / profile / "README.md"
    monkeypatch.setitem(sys.modules, "benchmarks.reporting.report", fake)
    monkeypatch.setattr(benchmarks.reporting, "report", fake, raising=False)


def test_report_rebuilds_from_runs_without_training(monkeypatch, tmp_path, capsys):
    _fake_report(monkeypatch)
    assert main(["reproduce", "3", "--seeds", "1111", *_roots(tmp_path)]) == 0
    (tmp_path / "results" / "smoke" / "main_msa.csv").unlink()
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: pytest.fail("report must not train"))
    capsys.readouterr()
    assert main(["report", "main_msa", *_roots(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("main_msa.md")
    assert (tmp_path / "results" / "smoke" / "main_msa.csv").is_file()


def test_merge_command_collects_shards(monkeypatch, tmp_path, capsys):
    _fake_report(monkeypatch)
    for i in range(2):
        argv = ["reproduce", "2", "--rows", "EGMF", "--shard", f"{i}/2", "--no-report",
                "--results-root", str(tmp_path / f"s{i}")]
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), *_roots(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("merge [smoke]: 10 run files copied, 0 already present, 0 conflicts")
    assert len(list((tmp_path / "results" / "smoke" / "runs").glob("*.json"))) == 10


def test_slurm_without_submitit_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    assert main(["reproduce", "3", "--launcher", "slurm", *_roots(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: the slurm launcher needs submitit: {launchers.SLURM_INSTALL}\n"


def test_slurm_submits_one_array_task_per_shard_then_merges(monkeypatch, tmp_path, capsys):
    submitted = {}

    class Job:
        def __init__(self, fn, arg):
            self.job_id, self._value = f"42_{arg['shard'][0]}", fn(arg)  # runs "on the cluster" at once

        def result(self):
            return self._value

    class AutoExecutor:
        def __init__(self, folder):
            submitted["folder"] = folder

        def update_parameters(self, **params):
            submitted["params"] = params

        def map_array(self, fn, args):
            submitted["shards"] = [a["shard"] for a in args]
            return [Job(fn, a) for a in args]

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=AutoExecutor))
    argv = ["reproduce", "3", "--rows", "EGMF", "--launcher", "slurm", "--shards", "3", "--slurm-partition", "gpu",
            "--no-report", *_roots(tmp_path)]
    assert main(argv) == 0
    assert submitted["shards"] == [(0, 3), (1, 3), (2, 3)]
    assert submitted["params"]["slurm_array_parallelism"] == 3 and submitted["params"]["slurm_partition"] == "gpu"
    assert "main_msa [smoke]: 10 runs (10 trained, 0 cached, 0 failed)" in capsys.readouterr().out
    assert len(list((tmp_path / "results" / "smoke" / "runs").glob("*.json"))) == 10
    assert (tmp_path / "results" / "smoke" / "main_msa.csv").is_file()
    assert main(["reproduce", "3", "--launcher", "slurm", "--shard", "0/2", *_roots(tmp_path)]) == 2


def _in_process_workers(started: list):
    """launchers.start_workers, with each worker's part done here, one after another, on fake runs."""
    def start(grid, options, gpus, init, total):
        started.append((grid, options, list(gpus), total))
        for _ in gpus:
            runner.run_tables(grid, dataclasses.replace(options, run_fn=hashed_run))
        return 0, [], [0] * len(gpus)

    return start


def test_jobs_start_workers_on_the_whole_grid_then_collect_and_render(monkeypatch, tmp_path, capsys):
    started = []
    monkeypatch.setattr(launchers, "start_workers", _in_process_workers(started))
    assert main(["reproduce", "3", "--jobs", "2", "--seeds", "1111,1112", "--rows", "EGMF", "--force",
                 *_roots(tmp_path)]) == 0
    (grid, options, gpus, total), = started
    assert gpus == [None, None] and total == 4  # two workers, not pinned (smoke); 2 datasets x 2 seeds, --force
    assert grid.args.seeds == (1111, 1112) and grid.args.rows == ("EGMF",) and options.shard is None
    # --force reaches the workers as one time: a run one worker retrained is not retrained by the other
    assert not options.force and options.redo_before.startswith("20")
    out = capsys.readouterr().out  # the collecting pass finds every run stored and renders the report
    assert "(0 trained, 4 cached, 0 failed)" in out and "main_msa.md" in out


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0"], "--jobs 0: must be at least 1"),
    (["--redo-before", "yesterday"], "--redo-before 'yesterday': not an ISO 8601 time"),
    (["--redo-before", "2026-11-26T04:30:00"], "give a UTC offset"),
    (["--jobs", "2", "--shard", "0/2"], "--jobs shares the whole grid between its workers; drop --shard"),
])
def test_bad_jobs_arguments_are_one_line_errors(extra, message, tmp_path, capsys):
    assert main(["reproduce", "3", *extra, *_roots(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_run_that_failed_in_a_worker_is_not_trained_again_by_the_collecting_pass(monkeypatch, tmp_path, capsys):
    calls = []

    def flaky(cfg, *, progress=None, checkpoint_dir=None):
        calls.append(cfg.data.name)
        if cfg.data.name == "mosei":
            return RunOutcome(status="failed", error="CUDA error: out of memory")
        return hashed_run(cfg)

    def start(grid, options, gpus, init, total):  # one worker's part, done here
        runner.run_tables(grid, dataclasses.replace(options, run_fn=flaky))
        return len(calls), [], [1] * len(gpus)

    monkeypatch.setattr(launchers, "start_workers", start)
    monkeypatch.setattr(runner, "_default_run_fn", lambda cell: pytest.fail("the collecting pass trained a run"))
    assert main(["reproduce", "3", "--rows", "EGMF", "--jobs", "2", "--seeds", "1111", "--no-report",
                 *_roots(tmp_path)]) == 1
    assert sorted(calls) == ["mosei", "sims_v2"]  # each trained once, in the worker
    assert "2 runs (0 trained, 1 cached, 1 failed)" in capsys.readouterr().out


def test_a_worker_that_rejects_its_input_ends_the_command_with_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launchers, "start_workers", lambda *a: (0, ["x.csv: missing column 'label'"] * 2, [2, 2]))
    assert main(["reproduce", "3", "--jobs", "2", *_roots(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: x.csv: missing column 'label'"


def test_jobs_start_no_worker_when_every_run_is_stored_and_no_more_than_runs(monkeypatch, tmp_path, capsys):
    started = []
    monkeypatch.setattr(launchers, "start_workers", _in_process_workers(started))
    argv = ["reproduce", "3", "--rows", "EGMF", "--seeds", "1111", "--datasets", "mosei", "--no-report",
            *_roots(tmp_path)]
    assert main([*argv, "--jobs", "4"]) == 0  # one run to train: one worker
    assert [(len(gpus), total) for _, _, gpus, total in started] == [(1, 1)]
    assert main([*argv, "--jobs", "4"]) == 0
    assert len(started) == 1  # all stored: no worker started
