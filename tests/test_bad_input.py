"""Bad input at every boundary: one line on stderr naming the culprit, exit code 2, results/ untouched.

Each case builds its input (command line, table file, data or model directory, a full disk), runs
the real CLI, and checks: exit code 2; one line ``error: ...`` with no traceback; every culprit
string in it (the file, field or argument to fix); and the results tree byte-identical before and
after. Paper-profile cases run the real ``run_experiment`` up to the point where the input is
refused (no training happens).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from benchmarks import recipes
from benchmarks.cli import main
from benchmarks.execution import profiles, runner
from tests import fakes
from tests.conftest import isolate_harness
from tests.fakes import hashed_run
from tests.test_kill_resume import write_tiny_ablations

LLAMA_DIR = profiles.MODEL_DIRS["llama3"]


@pytest.fixture(scope="module")
def paper_inputs(tmp_path_factory):
    """Valid paper-profile inputs to break: synthetic MOSEI (16 samples) and tiny-twin weights in
    Llama-3's and GLM-4's release layouts."""
    from egmf_core.data.synth import write_synthetic
    from egmf_core.twins import save_twin_real_layout

    root = tmp_path_factory.mktemp("paper_inputs")
    write_synthetic("mosei", root / "data", seed=0, size=16)
    save_twin_real_layout("llama3-tiny", root / "models" / LLAMA_DIR)
    save_twin_real_layout("glm4-tiny", root / "glm4")
    return root


@dataclass
class Env:
    tmp: Path
    results: Path
    smoke_table: Path  # ablations dir with table "tiny" (smoke, meld)
    paper_inputs: Path | None

    def table(self, **kwargs) -> Path:
        """A fresh ablations dir with table "tiny" (kwargs as write_tiny_ablations)."""
        folder = self.tmp / f"ablations{len(list(self.tmp.glob('ablations*')))}"
        return write_tiny_ablations(folder, **kwargs)

    def reproduce(self, ablations: Path, *extra: str) -> list[str]:
        return ["reproduce", "tiny", "--ablations-dir", str(ablations), "--results-root", str(self.results),
                "--reports-root", str(self.tmp / "reports"), "--no-report", *extra]

    def paper(self, data: Path | None = None, models: Path | None = None, *extra: str) -> list[str]:
        """A paper-profile reproduce of a 1 x 1 x 1 mosei table; data/models default to good copies."""
        ablations = self.table(dataset="mosei", rows='[[rows]]\nname = "full"\n',
                               base={"train.eval_mode": '"generate"'})
        data = data if data is not None else self.copy("data")
        models = models if models is not None else self.copy("models")
        return self.reproduce(ablations, "--profile", "paper", "--data-root", str(data),
                              "--model-root", str(models), *extra)

    def copy(self, name: str) -> Path:
        dest = self.tmp / f"{name}-copy"
        if not dest.exists():
            shutil.copytree(self.paper_inputs / name, dest)
        return dest


# ---- the cases: (id, build(env, monkeypatch) -> (argv, culprits)) ---------------------------------

def _table_case(base=None, rows=None, culprit=""):
    def build(env, mp):
        kwargs = {"base": base} if base else {}
        if rows:
            kwargs["rows"] = rows
        ablations = env.table(**kwargs)
        return env.reproduce(ablations), [str(ablations / "tiny.toml"), culprit]
    return build


def _write_table(text: str, culprit: str):
    def build(env, mp):
        ablations = env.table()
        (ablations / "tiny.toml").write_text(text)
        return env.reproduce(ablations), [str(ablations / "tiny.toml"), culprit]
    return build


def _mosei(env) -> Path:
    return env.copy("data") / "mosei"


def _data_case(mutate: Callable[[Path], None], culprit: str, file: str = "unaligned_50.pkl"):
    def build(env, mp):
        mutate(_mosei(env))
        return env.paper(), [str(_mosei(env) / file) if file else str(_mosei(env)), culprit]
    return build


def _model_case(mutate: Callable[[Path, Env], None], culprit: str, file: str = ""):
    def build(env, mp):
        model_dir = env.copy("models") / LLAMA_DIR
        mutate(model_dir, env)
        return env.paper(), [str(model_dir / file) if file else str(model_dir), culprit]
    return build


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class _Marker:
    """A pickle that would create a file if it were ever executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _malicious_pickle(folder: Path) -> None:
    with open(folder / "unaligned_50.pkl", "wb") as f:
        pickle.dump({"train": _Marker(str(folder / "PWNED"))}, f)


def _drop_test_split(folder: Path) -> None:
    from egmf_core.data.safe_pickle import load_pickle

    data = load_pickle(folder / "unaligned_50.pkl")
    del data["test"]
    with open(folder / "unaligned_50.pkl", "wb") as f:
        pickle.dump(data, f)


def _edit_json(name: str, **changes):
    def mutate(folder: Path, env: Env) -> None:
        d = json.loads((folder / name).read_text())
        d.update(changes)
        (folder / name).write_text(json.dumps(d))
    return mutate


def _glm4_weights(folder: Path, env: Env) -> None:
    shutil.rmtree(folder)
    shutil.copytree(env.paper_inputs / "glm4", folder)


def _table_file_missing(env, mp):
    ablations = env.table()
    (ablations / "tiny.toml").unlink()
    return env.reproduce(ablations), [str(ablations / "tiny.toml"), "not found"]


def _data_root_not_given(env, mp):
    argv = env.paper()
    i = argv.index("--data-root")
    return argv[:i] + argv[i + 2:], ["--data-root", "EGMF_DATA_ROOT"]


def _model_folder_missing(env, mp):
    (env.tmp / "empty-models").mkdir()
    return env.paper(models=env.tmp / "empty-models"), [str(env.tmp / "empty-models" / LLAMA_DIR), "llama3"]


def _disk_full(mp, under: Path | None = None) -> None:
    """Every write to a file (under ``under``, when given) fails with ENOSPC."""
    real = os.write

    def write(fd, data):
        if fd > 2 and (under is None or os.readlink(f"/proc/self/fd/{fd}").startswith(str(under))):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    mp.setattr(os, "write", write)


def _disk_full_on_run_file(env, mp):
    mp.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    _disk_full(mp, under=env.results)  # the results disk is full (the smoke data cache is elsewhere)
    return env.reproduce(env.smoke_table), [str(env.results / "smoke" / "runs"), ".json",
                                            "No space left on device (ENOSPC)"]


def _disk_full_on_checkpoint(env, mp):
    from egmf_core.atomic import atomic_write_bytes

    def run(cfg, *, progress=None, checkpoint_dir=None):
        _disk_full(mp)
        atomic_write_bytes(Path(checkpoint_dir) / "step-000002.pt", b"state")
        raise AssertionError("not reached")

    mp.setattr(runner, "_default_run_fn", lambda cell: run)
    return env.reproduce(env.smoke_table), [str(env.results / "smoke" / "checkpoints"), "step-000002.pt",
                                            "No space left on device (ENOSPC)"]


def _results_root_is_a_file(env, mp):
    mp.setattr(runner, "_default_run_fn", lambda cell: hashed_run)
    target = env.results / "not-a-folder.txt"
    target.write_text("keep me\n")
    argv = env.reproduce(env.smoke_table)
    argv[argv.index("--results-root") + 1] = str(target)
    return argv, [str(target), "Not a directory"]


CASES: list[tuple[str, Callable]] = [
    # command line
    ("cli-unknown-table", lambda env, mp: (["reproduce", "nope"], ["unknown table 'nope'"])),
    ("cli-unknown-row", lambda env, mp: (env.reproduce(env.smoke_table, "--rows", "-X"), ["'-X'", "--rows"])),
    ("cli-unknown-dataset-of-table", lambda env, mp: (env.reproduce(env.smoke_table, "--datasets", "cherma"),
                                                      ["'cherma'", "--datasets", "meld"])),
    ("cli-unknown-dataset", lambda env, mp: (["reproduce", "all", "--datasets", "imdb"], ["'imdb'", "--datasets"])),
    ("cli-unknown-profile", lambda env, mp: (env.reproduce(env.smoke_table, "--profile", "huge"),
                                             ["unknown profile 'huge'"])),
    ("cli-bad-shard", lambda env, mp: (env.reproduce(env.smoke_table, "--shard", "2/2"), ["--shard '2/2'"])),
    ("cli-bad-seeds", lambda env, mp: (env.reproduce(env.smoke_table, "--seeds", "1111,abc"), ["--seeds '1111,abc'"])),
    ("cli-negative-seed", lambda env, mp: (env.reproduce(env.smoke_table, "--seeds", "-5"), ["seed -5", "--seeds"])),
    ("cli-duplicate-seed", lambda env, mp: (env.reproduce(env.smoke_table, "--seeds", "7,7"), ["seed 7", "--seeds"])),
    ("cli-unknown-flag", lambda env, mp: (env.reproduce(env.smoke_table, "--frobnicate"), ["--frobnicate"])),
    ("cli-missing-ablations-dir", lambda env, mp: (env.reproduce(env.tmp / "nowhere"),
                                                   ["--ablations-dir", str(env.tmp / "nowhere")])),
    ("cli-merge-missing-source", lambda env, mp: (["merge", str(env.tmp / "no-shard"), "--results-root",
                                                   str(env.results)], [str(env.tmp / "no-shard")])),
    ("cli-report-unknown-table", lambda env, mp: (["report", "nope", "--results-root", str(env.results)],
                                                  ["unknown table 'nope'"])),
    ("cli-unknown-launcher", lambda env, mp: (env.reproduce(env.smoke_table, "--launcher", "cloud"),
                                              ["unknown launcher 'cloud'"])),
    ("cli-results-root-is-a-file", _results_root_is_a_file),
    # configs, through a table file's base or row overrides
    ("config-n-tokens-zero", _table_case({"model.n_tokens": "0"}, culprit="model.n_tokens=0")),
    ("config-n-tokens-negative", _table_case({"model.n_tokens": "-2"}, culprit="model.n_tokens=-2")),
    ("config-empty-experts", _table_case({"model.experts": "[]"}, culprit="model.experts=[]")),
    ("config-empty-modalities", _table_case({"model.modalities": "[]"}, culprit="model.modalities=[]")),
    ("config-unknown-expert", _table_case({"model.experts": '["E1", "E9"]'}, culprit="model.experts=['E1', 'E9']")),
    ("config-unknown-modality", _table_case({"model.modalities": '["smell"]'}, culprit="model.modalities=['smell']")),
    ("config-unknown-backbone", _table_case({"model.backbone": '"gpt5"'}, culprit="model.backbone='gpt5'")),
    ("config-unknown-field", _table_case({"model.n_tokenz": "4"}, culprit="model.n_tokenz")),
    ("config-negative-lr", _table_case({"train.lr": "-1.0"}, culprit="train.lr=-1.0")),
    ("config-dropout-out-of-range", _table_case({"model.dropout": "1.5"}, culprit="model.dropout=1.5")),
    ("config-row-override-wrong-type", _table_case(rows='[[rows]]\nname = "odd"\noverrides = { "model.n_tokens" = "four" }\n',
                                                   culprit="row 'odd': config field model.n_tokens='four'")),
    ("config-checkpoint-every-zero", lambda env, mp: (env.reproduce(env.table(base={"train.checkpoint_every": "0"})),
                                                      ["train.checkpoint_every=0"])),
    # table files
    ("table-invalid-toml", _write_table('name = "tiny"\ndatasets = [meld\n', "not valid TOML")),
    ("table-missing-field", _write_table('name = "tiny"\ncaption = "x"\n', "missing field 'datasets'")),
    ("table-unknown-dataset", _write_table('name = "tiny"\ncaption = "x"\ndatasets = ["imdb"]\n'
                                           'metrics = { imdb = ["acc"] }\n[seeds]\nsmoke = [1]\n[[rows]]\nname = "a"\n',
                                           "field 'datasets' names unknown dataset 'imdb'")),
    ("table-file-missing", _table_file_missing),
    # data directories (paper profile)
    ("data-root-missing", lambda env, mp: (env.paper(data=env.tmp / "no-data"), [str(env.tmp / "no-data"),
                                                                                  "--data-root"])),
    ("data-root-not-given", _data_root_not_given),
    ("data-dataset-folder-missing", lambda env, mp: (env.paper(data=env.tmp), [str(env.tmp / "mosei"), "--data-root"])),
    ("data-folder-empty", _data_case(lambda f: (f / "unaligned_50.pkl").unlink(), "no mosei files found", file="")),
    ("data-truncated-pickle", _data_case(lambda f: _truncate(f / "unaligned_50.pkl"), "truncated pickle")),
    ("data-malicious-pickle", _data_case(_malicious_pickle, "system refused")),
    ("data-split-missing", _data_case(_drop_test_split, "test")),
    # model directories (paper profile)
    ("model-root-missing", lambda env, mp: (env.paper(models=env.tmp / "no-models"), [str(env.tmp / "no-models"),
                                                                                       "--model-root"])),
    ("model-folder-missing", _model_folder_missing),
    ("model-config-missing", _model_case(lambda f, env: (f / "config.json").unlink(), "missing", file="config.json")),
    ("model-config-not-json", _model_case(lambda f, env: _truncate(f / "config.json"), "not valid JSON",
                                          file="config.json")),
    ("model-wrong-architecture", _model_case(_glm4_weights, "model_type='glm' is not a llama3 checkpoint",
                                             file="config.json")),
    ("model-tokenizer-without-eos", _model_case(_edit_json("tokenizer_config.json", eos_token=None),
                                                "tokenizer has no eos_token")),
    ("model-tokenizer-without-specials", _model_case(_edit_json("tokenizer_config.json", eos_token=None,
                                                                pad_token=None),
                                                     "tokenizer has neither pad_token nor eos_token")),
    # writing
    ("disk-full-run-file", _disk_full_on_run_file),
    ("disk-full-checkpoint", _disk_full_on_checkpoint),
]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def env(tmp_path, monkeypatch, request):
    isolate_harness(tmp_path, monkeypatch)
    results = tmp_path / "results"
    # A results tree with finished runs in it, so that "nothing added or changed" means something.
    fakes.reproduce("main_msa", "smoke", seeds=[1111], results_root=results, reports_root=tmp_path / "reports",
                     render=False, run_fn=hashed_run)
    case = getattr(getattr(request.node, "callspec", None), "id", "")
    inputs = request.getfixturevalue("paper_inputs") if case.startswith(("data-", "model-")) else None
    if inputs is not None:  # in a fresh CLI process main() turns these bars off before transformers loads
        from transformers.utils import logging as hf_logging

        monkeypatch.setattr(hf_logging, "_tqdm_active", False)
    return Env(tmp_path, results, write_tiny_ablations(tmp_path / "ablations"), inputs)


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_the_culprit_and_leaves_results_alone(env, build, monkeypatch,
                                                                                   capsys):
    argv, culprits = build(env, monkeypatch)
    before = _tree(env.results)
    code = main(argv)
    monkeypatch.undo()  # the disk is no longer full
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for culprit in culprits:
        assert culprit in err, f"{culprit!r} not named in: {err}"
    assert _tree(env.results) == before
    assert not list(env.tmp.rglob("PWNED"))  # the malicious pickle never ran


def test_the_suite_has_at_least_30_cases_across_every_boundary():
    kinds = {case_id.split("-")[0] for case_id, _ in CASES}
    assert len(CASES) >= 30 and kinds == {"cli", "config", "table", "data", "model", "disk"}


def test_debug_shows_the_traceback_instead(env):
    with pytest.raises(ValueError, match="model.n_tokens=0"):
        main(env.reproduce(env.table(base={"model.n_tokens": "0"}), "--debug"))


@pytest.mark.slow
def test_in_a_fresh_process_the_error_is_the_only_line_on_stderr(tmp_path, paper_inputs):
    """A model refused after loading its weights: nothing else (no loading bars) on stderr."""
    import subprocess
    import sys

    from tests.test_kill_resume import cli_env

    models = tmp_path / "models"
    shutil.copytree(paper_inputs / "models", models)
    _edit_json("tokenizer_config.json", eos_token=None)(models / LLAMA_DIR, None)
    ablations = write_tiny_ablations(tmp_path / "ablations", dataset="mosei", rows='[[rows]]\nname = "full"\n',
                                     base={"train.eval_mode": '"generate"'})
    argv = ["reproduce", "tiny", "--profile", "paper", "--ablations-dir", str(ablations), "--data-root",
            str(paper_inputs / "data"), "--model-root", str(models), "--results-root", str(tmp_path / "results")]
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *argv], cwd=tmp_path, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {models / LLAMA_DIR}: tokenizer has no eos_token (set it in tokenizer_config.json)\n"
    # stdout holds only the planner's estimate, printed before the grid started
    assert all(line.startswith("estimate (") for line in proc.stdout.splitlines())
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_nan_loss_fails_that_run_with_its_step_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    """lr 1e30 blows the weights up: the loss is NaN at step 2. Exit code 1, the summary line, and
    the next run of the grid still trains."""
    import pandas as pd
    import torch

    monkeypatch.setattr(profiles, "REPO_ROOT", tmp_path / "repo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = ('[[rows]]\nname = "explode"\noverrides = { "train.lr" = 1e30, "train.fusion_lr" = 1e30 }\n\n'
            '[[rows]]\nname = "full"\n')
    ablations = write_tiny_ablations(tmp_path / "ablations", seeds="[1111]", rows=rows)
    try:
        code = main(["reproduce", "tiny", "--ablations-dir", str(ablations), "--results-root", str(tmp_path / "r"),
                     "--no-report"])
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code == 1
    assert out.startswith("tiny [smoke]: 2 runs (2 trained, 0 cached, 1 failed) in ")
    assert "(tiny/explode/meld/1111) failed: non-finite loss (nan) at step 2" in err
    df = pd.read_csv(tmp_path / "r" / "smoke" / "tiny.csv")
    status = df.groupby("row")["status"].agg(set)
    assert status["explode"] == {"failed"} and status["full"] == {"ok"}
    assert set(df[df["row"] == "explode"]["error"]) == {"non-finite loss (nan) at step 2"}
    assert not (tmp_path / "r" / "smoke" / "checkpoints").exists()


# ---- corrupt results files: detected, named by file and line, redone or rebuilt ------------------

def _fake_grid(tmp_path, monkeypatch, table="main_msa", **kwargs):
    isolate_harness(tmp_path, monkeypatch)
    if table in ("main_msa", "main_erc"):  # "some table": its EGMF row (MOSEI x 2 seeds), not the baselines
        kwargs.setdefault("rows", ["EGMF"])
    calls = []

    def counting(cfg, *, progress=None, checkpoint_dir=None):
        calls.append(cfg.seed)
        return hashed_run(cfg)

    summary = fakes.reproduce(table, "smoke", seeds=[1111, 1112], datasets=["mosei"], run_fn=counting,
                               results_root=tmp_path / "r", reports_root=tmp_path / "rep", **{"render": False, **kwargs})
    return summary, calls


def test_an_edited_run_file_is_named_by_file_and_line_and_redone(tmp_path, monkeypatch):
    from benchmarks.results import store

    first, _ = _fake_grid(tmp_path, monkeypatch)
    victim = sorted(store.runs_dir(tmp_path / "r", "smoke").glob("*.json"))[0]
    lines = victim.read_text().splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if line.startswith('    "mae": '))  # outcome.metrics.<split>.mae
    lines[n] = '    "mae": 0.001' + ("," if lines[n].rstrip().endswith(",") else "") + "\n"
    victim.write_text("".join(lines))
    metrics_line = next(i for i, line in enumerate(lines) if line.startswith('  "metrics": ')) + 1
    with pytest.raises(store.CorruptResult) as info:
        store.read_run(victim)
    assert str(info.value) == (f"{victim}: checksum mismatch at line {metrics_line}, in outcome.metrics "
                               "(edited or partly written)")
    again, calls = _fake_grid(tmp_path, monkeypatch)
    assert (again.trained, again.cached, len(calls)) == (1, 1, 1)
    assert again.corrupt == [str(info.value)] and "1 corrupt files replaced" in again.line()
    assert store.read_run(victim)["outcome"]["metrics"]["test"]["mae"] != 0.001


def _edit_value(lines: list[str], n: int) -> list[str]:
    row = lines[n].split(",")
    row[7] = "0.999"  # the value column
    return lines[:n] + [",".join(row)] + lines[n + 1:]


@pytest.mark.parametrize("damage, why", [
    (lambda lines, n: _edit_value(lines, n), "line {n1}: differs from run file "),
    (lambda lines, n: lines[:n] + [lines[n][:40]], "line {n1}: "),  # cut inside a line
    (lambda lines, n: lines[:n] + [""], "are missing (truncated)"),  # cut at the end of a line
    (lambda lines, n: [lines[0].replace("table,row,", "table,rowz,")] + lines[1:], "line 1: header is not"),
], ids=["edited-value", "cut-mid-line", "cut-at-line-end", "edited-header"])
def test_an_edited_or_truncated_table_csv_is_named_by_line_and_rebuilt(tmp_path, monkeypatch, damage, why):
    first, _ = _fake_grid(tmp_path, monkeypatch)
    good = first.csv.read_text()
    n = 3  # the fourth line of the file: a data row
    first.csv.write_text("\n".join(damage(good.split("\n"), n)))
    again, calls = _fake_grid(tmp_path, monkeypatch)
    assert calls == [] and len(again.corrupt) == 1, again.corrupt
    assert again.corrupt[0].startswith(f"{first.csv}: ") and why.format(n1=n + 1) in again.corrupt[0]
    assert again.corrupt[0].endswith("rebuilt from the run files")
    assert first.csv.read_text() == good  # rebuilt from the run files


def test_reproduce_leaves_other_tables_csvs_to_report_all(tmp_path, monkeypatch):
    import sys
    import types

    import benchmarks.reporting

    first, _ = _fake_grid(tmp_path, monkeypatch, table="main_msa")
    good = first.csv.read_text()
    first.csv.write_text(good.replace(",0.", ",0.9", 1))
    seen = {}
    fake = types.ModuleType("benchmarks.reporting.report")
    fake.render_table = lambda profile, table, *, results_root, reports_root: reports_root / f"{table}.md"

    def render_index(profile, *, results_root, reports_root):  # reads every table's CSV
        seen["main_msa"] = (results_root / profile / "main_msa.csv").read_text()

    fake.render_index = render_index
    monkeypatch.setitem(sys.modules, "benchmarks.reporting.report", fake)
    monkeypatch.setattr(benchmarks.reporting, "report", fake, raising=False)
    _fake_grid(tmp_path, monkeypatch, table="lora", render=True)
    assert seen["main_msa"] != good  # reproduce tabulates the tables it touched, no other
    recipes.report_tables("all", "smoke", results_root=tmp_path / "r", reports_root=tmp_path / "rep")
    assert seen["main_msa"] == good  # report all rebuilds every CSV from the run files before the index
