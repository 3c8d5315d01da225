"""Crash safety: concurrent writers, interrupted and SIGKILLed grids resume to the same results.

The helpers here (a tiny table in a temporary ablations dir, a CLI subprocess driver, result
comparison) are shared with test_determinism.py and test_no_network.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.execution import profiles
from benchmarks.execution.grid import GridArgs, expand
from benchmarks.execution.tables import load_table
from benchmarks.results import store
from egmf_core.outcome import RunOutcome
from egmf_core.paths import REPO_ROOT
from tests import fakes
from tests.conftest import isolate_harness
from tests.fakes import hashed_run

REPO = REPO_ROOT
PROFILE = "smoke"
# Columns that measure time or where/when a run happened: everything else must match exactly.
VOLATILE = ["timestamp", "wall_s", "peak_mem_mb", "step_time_s", "samples_per_s", "egmf_share", "git_rev"]

TINY_BASE = {  # a run of a few seconds on a laptop CPU; the same code path as the paper profile
    # Every key the smoke profile would fill in is set here, so its tuning never changes these runs.
    "model.backbone": '"llama3"',
    "model.d_h": "32",
    "model.fusion_heads": "4",
    "model.n_tokens": "2",
    "model.dropout": "0.1",  # dropout draws from the global RNG: resuming must restore it
    "model.lora_dropout": "0.05",
    "train.lr": "5e-3",
    "train.fusion_lr": "5e-3",
    "train.patience": "2",
    "train.max_steps": "6",
    "train.eval_every": "6",  # one validation pass, at the end: the final weights are the last step's
    "train.batch_size": "8",
    "train.eval_batch_size": "16",
    "train.eval_mode": '"score"',
    "train.checkpoint_every": "2",
    "data.synth_size": "16",  # 16 train, 8 valid, 8 test samples
}


def write_tiny_ablations(folder: Path, *, base: dict[str, str] | None = None,
                         rows: str = '[[rows]]\nname = "full"\n\n[[rows]]\nname = "no_audio"\n'
                                     'overrides = { "model.modalities" = ["text", "visual"] }\n',
                         seeds: str = "[1111, 1112]", dataset: str = "meld", name: str = "tiny") -> Path:
    """An ablations dir holding one table: 2 rows x 1 dataset x 2 seeds by default; ``base``
    adds or replaces TOML values of TINY_BASE (None removes one)."""
    folder.mkdir(parents=True, exist_ok=True)
    merged = {**TINY_BASE, **(base or {})}  # a value of None drops the key
    base_lines = "\n".join(f'"{k}" = {v}' for k, v in merged.items() if v is not None)
    metrics = {"meld": '["acc", "wf1"]', "mosei": '["mae", "acc2_non0"]'}[dataset]
    (folder / "table_numbers.toml").write_text(f'[tables]\n"1" = "{name}"\n')
    (folder / f"{name}.toml").write_text(textwrap.dedent(f"""\
        name = "{name}"
        caption = "A tiny grid for crash, determinism and network tests"
        datasets = ["{dataset}"]
        metrics = {{ {dataset} = {metrics} }}
        [seeds]
        smoke = {seeds}
        paper = [1111]
        [base]
        """) + base_lines + "\n\n" + rows)
    return folder


# Runs benchmarks.cli.main (what `python -m benchmarks` runs) with the smoke data under a
# temporary repo root and every non-loopback connection refused.
DRIVER = textwrap.dedent("""\
    import socket, sys
    from pathlib import Path

    def refuse(self, address, *rest):
        host = address[0] if isinstance(address, tuple) else str(address)
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise SystemExit(f"NETWORK ACCESS to {address!r}")
        return real_connect(self, address, *rest)

    real_connect = socket.socket.connect
    socket.socket.connect = refuse
    import benchmarks.execution.profiles as profiles
    profiles.REPO_ROOT = Path(sys.argv[1])
    from benchmarks.cli import main
    sys.exit(main(sys.argv[2:]))
    """)


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    # One torch thread: on a busy 2-core machine two threads spin against other processes (6x slower).
    env.update(PYTHONPATH=str(REPO), EGMF_NO_PROGRESS="1", EGMF_CACHE=str(tmp_path / "cache"), EGMF_TORCH_THREADS="1")
    return env  # no HF_HUB_OFFLINE: the CLI must set it itself


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "repo"), *args], cwd=tmp_path,
                            env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reproduce_args(ablations: Path, results: Path, *extra: str) -> list[str]:
    return ["reproduce", "tiny", "--ablations-dir", str(ablations), "--results-root", str(results),
            "--reports-root", str(results.parent / f"{results.name}-reports"), "--no-report", *extra]


def stable_values(csv_path: Path) -> pd.DataFrame:
    """A tidy CSV without the columns that measure time: what must be equal row for row."""
    return pd.read_csv(csv_path).drop(columns=VOLATILE)


def rows_lost(result_csv: Path, reference: pd.DataFrame) -> int:
    """Reference rows that are missing from, or differ in, a result CSV."""
    if not result_csv.is_file():
        return len(reference)
    got = stable_values(result_csv)
    merged = reference.merge(got, how="left", indicator=True, on=list(reference.columns))
    return int((merged["_merge"] != "both").sum()) + max(0, len(got) - len(reference))


def check_store(results: Path) -> tuple[int, int]:
    """Every run file validates and every checkpoint pointer names complete files;
    (run files, leftover temp files). Raises on anything corrupt."""
    runs = sorted(store.runs_dir(results, PROFILE).glob("*.json"))
    for path in runs:
        store.read_run(path)
    for pointer in (results / PROFILE / "checkpoints").glob("*/latest.json"):
        import hashlib
        import json

        for name, digest in json.loads(pointer.read_text())["files"].items():
            assert hashlib.sha256((pointer.parent / name).read_bytes()).hexdigest() == digest, pointer
    temps = list(results.rglob(".*.tmp")) if results.exists() else []
    return len(runs), len(temps)


# ---- concurrent writers (fast) --------------------------------------------------------------------

WRITER = textwrap.dedent("""\
    import sys
    from benchmarks.results import store
    from benchmarks.execution.grid import GridArgs, expand
    from benchmarks.execution.tables import load_table

    root, who, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cells = expand(load_table("main_erc"), "smoke", GridArgs(seeds=[1, 2, 3, 4]))
    mine = cells[:2] if who == "a" else cells[2:4]  # different runs ...
    shared = cells[4:6]                              # ... and the same runs
    for i in range(rounds):
        for c in mine + shared:
            out = {"status": "ok", "metrics": {"test": {"acc": i / rounds}}, "writer": who}
            prov = {"timestamp": f"{i:04d}-{who}", "host": who}
            store.write_run(root, "smoke", store.make_record(c.run_id, c.identity(), out, prov))
    """)


def test_two_processes_writing_different_and_the_same_runs_never_corrupt_a_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who, "40"], env=env,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    reads = 0
    runs = store.runs_dir(tmp_path, PROFILE)
    while any(p.poll() is None for p in procs):  # a reader during the writes never sees a partial file
        for path in runs.glob("*.json") if runs.is_dir() else ():
            store.read_run(path)
            reads += 1
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    cells = expand(load_table("main_erc"), PROFILE, GridArgs(seeds=[1, 2, 3, 4]))
    final = {c.run_id: store.read_run(store.run_path(tmp_path, PROFILE, c.run_id))["outcome"] for c in cells[:6]}
    assert len(list(runs.glob("*.json"))) == 6
    assert [final[c.run_id]["writer"] for c in cells[:4]] == ["a", "a", "b", "b"]
    assert {o["metrics"]["test"]["acc"] for o in final.values()} == {39 / 40}  # each file: one whole write
    assert list(runs.glob(".*.tmp")) == []
    print(f"{reads} reads during the writes, all valid")


FAKE_GRID = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    import benchmarks.execution.profiles as profiles
    from benchmarks.execution import runner
    from egmf_core.outcome import RunOutcome

    profiles.REPO_ROOT = Path(sys.argv[1])
    profiles.write_synthetic_dataset = lambda name, out, *, seed, size: (out / name).mkdir(parents=True)

    def slow_run(cfg, *, progress=None, checkpoint_dir=None):
        time.sleep(0.4)
        return RunOutcome(status="ok", metrics={"valid": {"wf1": 0.5}, "test": {"wf1": cfg.seed / 1e4}})

    runner._default_run_fn = lambda cell: slow_run
    from benchmarks.cli import main
    sys.exit(main(sys.argv[2:]))
    """)


def test_two_workers_on_the_same_grid_train_each_run_once(tmp_path):
    """Two processes on the same results root: the run lock makes each run train exactly once."""
    args = ["reproduce", "main_msa", "--rows", "EGMF", "--seeds", "1,2,3,4", "--no-report",
            "--results-root", str(tmp_path / "r")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EGMF_NO_PROGRESS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", FAKE_GRID, str(tmp_path / "repo"), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    lines = [o[0].strip() for o in outs]
    trained = [int(line.split("(")[1].split(" trained")[0]) for line in lines]
    assert sum(trained) == 8, lines  # 2 datasets x 4 seeds, none trained twice
    assert check_store(tmp_path / "r") == (8, 0)
    assert not (tmp_path / "r" / PROFILE / "checkpoints").exists()  # locks removed with their folder


def test_a_stale_temp_file_is_ignored_and_swept(tmp_path):
    cells = expand(load_table("main_erc"), PROFILE, GridArgs(seeds=[1111]))
    rec = store.make_record(cells[0].run_id, cells[0].identity(), RunOutcome(status="ok").to_dict(), {"timestamp": "t"})
    path = store.write_run(tmp_path, PROFILE, rec)
    fresh = path.parent / f".{path.name}.abc123.tmp"
    old = path.parent / f".{path.name}.def456.tmp"
    for p in (fresh, old):
        p.write_text('{"half": ')
    os.utime(old, (time.time() - 2 * store.TEMP_MAX_AGE_S,) * 2)
    assert list(store.load_runs(path.parent)) == [cells[0].run_id]  # temp files are never read
    assert store.sweep_temp_files(tmp_path) == [old]
    assert fresh.exists()  # may belong to a live writer


def test_the_run_lock_is_exclusive_and_cleans_up(tmp_path):
    lock_file = store.lock_path(tmp_path, PROFILE, "abc")
    with store.RunLock(lock_file) as first:
        assert first.acquired
        with store.RunLock(lock_file) as second:  # flock locks are per open file: a second open conflicts
            assert not second.acquired
    assert not lock_file.exists() and not lock_file.parent.exists()


# ---- an interrupted real grid resumes to the same numbers -----------------------------------------

@pytest.fixture
def tiny_repo(tmp_path, monkeypatch):
    """The smoke data of in-process runs go under a temporary repo root; torch uses one thread
    (same numbers in every run of a test, and no spinning threads on a busy machine)."""
    import torch

    monkeypatch.setattr(profiles, "REPO_ROOT", tmp_path / "repo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "repo"
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_grid_interrupted_mid_run_resumes_from_its_checkpoint_to_the_same_results(tmp_path, tiny_repo, capsys):
    ablations = write_tiny_ablations(tmp_path / "ablations", seeds="[1111]")

    def go(results, run_fn=None):
        return fakes.reproduce("tiny", PROFILE, results_root=results, reports_root=tmp_path / "rep",
                                render=False, ablations_dir=ablations, run_fn=run_fn)

    plain = go(tmp_path / "plain")
    assert (plain.trained, plain.failed) == (2, 0)

    from egmf_core.run import run_experiment

    calls = []

    def interrupted(cfg, *, progress=None, checkpoint_dir=None):
        def stop_at_5(step, total, message=""):
            progress(step, total, message)
            if step == 5:
                calls.append(sorted(p.name for p in Path(checkpoint_dir).iterdir()))
                raise KeyboardInterrupt  # Ctrl-C: propagates out of the grid like a kill
        return run_experiment(cfg, progress=stop_at_5, checkpoint_dir=checkpoint_dir)

    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "resumed", interrupted)
    # the best weights so far (none selected yet: step 0) have their own file, not a copy in the .pt
    assert calls == [["best-000000.safetensors", "latest.json", "step-000004.pt", "step-000004.safetensors"]]
    assert check_store(tmp_path / "resumed") == (0, 0)  # nothing stored for the unfinished run
    capsys.readouterr()
    resumed = go(tmp_path / "resumed")
    assert "at step 4" in capsys.readouterr().err  # the first run went on from its checkpoint
    assert (resumed.trained, resumed.cached, resumed.failed) == (2, 0, 0)
    assert not (tmp_path / "resumed" / PROFILE / "checkpoints").exists()  # deleted once stored
    pd.testing.assert_frame_equal(stable_values(resumed.csv), stable_values(plain.csv))


# ---- the kill test --------------------------------------------------------------------------------

KILLS = 20
KILL_SEED = 20250105


def wait_for_a_kill_moment(proc: subprocess.Popen, root: Path, rng: random.Random, t_ref: float) -> None:
    """Return at a random moment of ``proc``'s life (or when it ends): half the time any moment
    (imports, data generation, training, writing), half the time one while a run holds its lock
    (loading, training, checkpointing, evaluating, writing its file), whatever the machine's speed."""
    start = time.monotonic()
    if rng.random() < 0.5:
        deadline = start + rng.uniform(0.3, t_ref)
    else:
        locks = root / PROFILE / "checkpoints"
        while proc.poll() is None and not any(locks.glob("*.lock")) and time.monotonic() - start < 3 * t_ref:
            time.sleep(0.02)
        deadline = time.monotonic() + rng.uniform(0.0, t_ref / 4)
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_at_20_random_moments_loses_nothing_and_corrupts_nothing(tmp_path):
    """A tiny smoke grid (2 rows x 1 dataset x 2 seeds, 6 steps, checkpoints every 2 steps) is
    SIGKILLed at 20 seeded random moments and restarted after each; whenever a restarted grid
    completes, its CSV is compared with an uninterrupted run's, row for row, and a new episode
    starts in a fresh results root."""
    ablations = write_tiny_ablations(tmp_path / "ablations")
    t0 = time.monotonic()
    ref = start_cli(tmp_path, *reproduce_args(ablations, tmp_path / "reference"))
    out, err = ref.communicate(timeout=600)
    t_ref = time.monotonic() - t0
    assert ref.returncode == 0, err
    assert "4 runs (4 trained, 0 cached, 0 failed)" in out
    reference = stable_values(tmp_path / "reference" / PROFILE / "tiny.csv")
    assert len(reference) == 4 * 2 * 4  # runs x splits x (acc, macro_f1, wf1, invalid_rate)

    rng = random.Random(KILL_SEED)
    kills = episodes = lost = resumes = mid_run_kills = temps_seen = 0
    episode_root = tmp_path / "episode0"
    while True:
        proc = start_cli(tmp_path, *reproduce_args(ablations, episode_root))
        if kills < KILLS:
            wait_for_a_kill_moment(proc, episode_root, rng, t_ref)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
        resumes += err.count("resuming from")
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            _, temps = check_store(episode_root)  # no corrupt file after any kill
            temps_seen += temps
            mid_run_kills += any((episode_root / PROFILE / "checkpoints").glob("*/latest.json"))
            continue
        assert proc.returncode == 0, err
        assert "NETWORK" not in err
        lost += rows_lost(episode_root / PROFILE / "tiny.csv", reference)
        n_runs, _ = check_store(episode_root)
        assert n_runs == 4 and not (episode_root / PROFILE / "checkpoints").exists()
        episodes += 1
        if kills >= KILLS:
            break
        episode_root = tmp_path / f"episode{episodes}"
    print(f"\nkill test: {kills} SIGKILLs survived ({mid_run_kills} left a mid-run checkpoint), {episodes} grids "
          f"completed, {resumes} resumes from a checkpoint, {lost} rows lost, {temps_seen} stray temp files seen "
          f"(never read); uninterrupted grid {t_ref:.1f}s")
    assert kills == KILLS and lost == 0


def test_a_checkpoint_and_lock_left_by_a_kill_after_the_run_file_are_cleaned_up(tmp_path, monkeypatch):
    isolate_harness(tmp_path, monkeypatch)

    def go():
        return fakes.reproduce("main_erc", PROFILE, rows=["EGMF"], seeds=[1111], results_root=tmp_path / "r",
                                reports_root=tmp_path / "rep", render=False, run_fn=hashed_run)

    first = go()
    run_id = next(store.runs_dir(tmp_path / "r", PROFILE).glob("*.json")).stem
    (store.checkpoint_dir(tmp_path / "r", PROFILE, run_id) / "latest.json").parent.mkdir(parents=True)
    (store.checkpoint_dir(tmp_path / "r", PROFILE, run_id) / "latest.json").write_text("{}")
    store.lock_path(tmp_path / "r", PROFILE, run_id).write_text("")
    again = go()
    assert (first.trained, again.trained, again.cached) == (2, 0, 2)
    assert not (tmp_path / "r" / PROFILE / "checkpoints").exists()
