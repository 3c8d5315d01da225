"""Paper scale without a GPU: worker pinning, model placement, host syncs per step, checkpoint
timing, the ChatGLM3 conversion cache and the scale profile."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

import pytest
import torch

from benchmarks.cli import resolve_jobs
from benchmarks.execution import launchers
from tests import fakes

# ---- --jobs on GPUs -----------------------------------------------------------------------------

def test_workers_are_pinned_round_robin_so_each_gpu_gets_k_runs():
    gpus = ["0", "1", "2", "3"]
    pinned = launchers.worker_gpus(8, gpus)  # --jobs-per-gpu 2 on 4 GPUs
    assert pinned == ["0", "1", "2", "3", "0", "1", "2", "3"]
    assert all(pinned.count(g) == 2 for g in gpus)
    assert launchers.worker_gpus(3, []) == [None, None, None]


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert launchers.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launchers.visible_gpus() == []


@pytest.mark.parametrize("profile, jobs, per_gpu, gpus, want", [
    ("paper", "auto", 1, ["0", "1", "2", "3", "4", "5", "6", "7"], 8),
    ("paper", "auto", 3, ["0", "1"], 6),
    ("scale", "auto", 2, [], 1),  # no GPU: one run at a time
    ("paper", "4", 1, ["0"], 4),
])
def test_jobs_auto_is_jobs_per_gpu_times_visible_gpus(monkeypatch, profile, jobs, per_gpu, gpus, want):
    monkeypatch.setattr(launchers, "visible_gpus", lambda: gpus)
    args = argparse.Namespace(profile=profile, jobs=jobs, jobs_per_gpu=per_gpu)
    assert resolve_jobs(args) == want


def test_each_worker_process_sees_only_its_gpu(tmp_path):
    """Real (spawned) worker processes on a grid of fake runs, with a fake list of four GPUs."""
    grid, options = fakes.grid_and_options("3", seeds=[1111, 1112], results_root=tmp_path / "results",
                                           run_fn=fakes.hashed_run)
    how = launchers.Launch(jobs=4, gpus=("0", "1", "2", "3"),
                           worker_init=partial(fakes.isolated_worker, tmp_path / "repo", tmp_path / "seen"))
    lines = []
    orig = launchers.runner.log
    launchers.runner.log = lines.append
    try:
        rc = launchers.run_local_jobs(grid, options, how)
    finally:
        launchers.runner.log = orig
    seen = sorted(p.read_text() for p in (tmp_path / "seen").iterdir())
    runs = len(list((tmp_path / "results" / "smoke" / "runs").glob("*.json")))
    assert rc == 0 and seen == ["0", "1", "2", "3"] and runs >= 4
    assert fakes.pending_runs("3", seeds=[1111, 1112], results_root=tmp_path / "results") == 0
    finished = [line for line in lines if ": ok in " in line]  # one tagged line per run, from the events
    assert len(finished) == runs and all(line.startswith("[job ") for line in finished)
    assert lines[-1].startswith(f"4 jobs: {runs} runs trained in ")


def test_a_worker_that_rejects_its_input_raises_its_line_here(tmp_path):
    grid, options = fakes.grid_and_options("3", seeds=[1111], results_root=tmp_path / "results", run_fn=fakes.hashed_run)
    how = launchers.Launch(jobs=2, worker_init=fakes.raise_bad_input)
    with pytest.raises(launchers.LauncherError, match=r"^x.csv: missing column 'label'$"):
        launchers.run_local_jobs(grid, options, how)


# ---- placement ----------------------------------------------------------------------------------

def test_a_model_that_fits_one_gpu_goes_whole_on_one_gpu(monkeypatch):
    from egmf_core import backbones

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (140 * 2**30, 141 * 2**30))
    assert backbones._device_map(torch.device("cuda"), 19 * 2**30) == {"": 0}  # GLM-4-9B in bf16
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (20 * 2**30, 80 * 2**30))
    assert backbones._device_map(torch.device("cuda"), 19 * 2**30) == "auto"  # only then split
    assert backbones._device_map(torch.device("cuda:3"), 19 * 2**30) == {"": 3}  # a device asked for
    assert backbones._device_map(torch.device("cpu"), 19 * 2**30) is None


def test_checkpoint_bytes_reads_safetensors_headers_in_the_load_dtype(tmp_path):
    from safetensors.torch import save_file

    from egmf_core.backbones import checkpoint_bytes

    save_file({"a": torch.zeros(10, 4), "b": torch.zeros(6)}, str(tmp_path / "model.safetensors"))
    assert checkpoint_bytes(tmp_path, torch.bfloat16) == 2 * 46
    assert checkpoint_bytes(tmp_path, torch.float32) == 4 * 46


# ---- host syncs in the training step ------------------------------------------------------------

def test_fit_reads_the_loss_back_every_log_every_steps_not_every_step(monkeypatch):
    """Every .item() / bool() that egmf_core's step code asks for during fit is counted (none), and
    the losses are read back once per log_every steps: with 12 steps and log_every 4, 3-5 times,
    not 12."""
    import traceback

    from egmf_core.batching import PromptEncoder
    from egmf_core.config import RunConfig
    from egmf_core.data.dataset import SPECS
    from egmf_core.run import build_model
    from egmf_core.train import fit
    from tests.conftest import make_split, tiny_model_config, tiny_train_config

    spec, split = SPECS["mosei"], make_split(24, "mosei", seed=1)
    cfg = RunConfig(model=tiny_model_config(), train=tiny_train_config(
        max_steps=12, eval_every=12, batch_size=4, log_every=4, eval_mode="generate"))
    model, tok, _ = build_model(cfg, 6, 5, device=torch.device("cpu"))
    enc_train = PromptEncoder(tok, spec, cfg.model)
    enc = enc_train.encode(split)
    reads: list[str] = []
    real_item, real_bool = torch.Tensor.item, torch.Tensor.__bool__

    def where() -> str:  # the code that asked for the value: ours, or a library's
        caller = traceback.extract_stack()[-3]
        return f"{caller.filename.rsplit('/', 1)[-1]}:{caller.name}" if "egmf_core" in caller.filename else "library"

    def item(self):
        reads.append(where())
        return real_item(self)

    def as_bool(self):
        reads.append(where())
        return real_bool(self)

    from egmf_core import train

    flushes: list[int] = []
    real_flush = train.LossLog.flush
    monkeypatch.setattr(train.LossLog, "flush", lambda self: flushes.append(1) or real_flush(self))
    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "__bool__", as_bool)
    fit(model, enc, enc, enc_train, cfg.train, seed=1)
    loop = ("train.py:step", "train.py:fit", "train.py:run", "train.py:_train_step", "train.py:_maybe_checkpoint")
    in_step = [r for r in reads if r.startswith((*loop, "model.py", "pseudo_tokens.py", "fusion.py",
                                                 "experts.py", "gating.py", "encoders.py"))]
    assert in_step == []  # the step itself never reads a value back (transformers' mask checks aside)
    assert 3 <= len(flushes) <= 12 // 4 + 2  # the loss is read back every log_every steps, and at the end


# ---- checkpoints --------------------------------------------------------------------------------

def _toy():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched, torch.Generator().manual_seed(0)


def test_checkpoints_follow_minutes_and_validation_passes(tmp_path, monkeypatch):
    from egmf_core import checkpoint

    clock = [1000.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    chk = checkpoint.Checkpointer(tmp_path, every=None, minutes=30, tag="t", log=lambda line: None)
    assert not chk.due(5)
    clock[0] += 29 * 60
    assert not chk.due(6) and chk.due(6, evaluated=True)  # a validation pass saves
    clock[0] += 2 * 60
    assert chk.due(7)  # 31 minutes since the start
    off = checkpoint.Checkpointer(tmp_path, every=None, tag="t")
    assert not off.due(7, evaluated=True)  # neither set: no checkpoints at all (the smoke profile)


def test_best_weights_are_written_once_per_best_step_not_in_every_state_file(tmp_path):
    from egmf_core.checkpoint import Checkpointer, FitState

    model, opt, sched, gen = _toy()
    best = {n: p.detach().clone() for n, p in model.named_parameters()}
    chk = Checkpointer(tmp_path, every=1, tag="t", log=lambda line: None)
    chk.save(model, opt, sched, gen, FitState(step=1, best_step=1, best_state=best))
    first = (tmp_path / "best-000001.safetensors").stat().st_mtime_ns
    chk.save(model, opt, sched, gen, FitState(step=2, best_step=1, best_state=best))
    assert (tmp_path / "best-000001.safetensors").stat().st_mtime_ns == first  # not rewritten
    state = torch.load(tmp_path / "step-000002.pt", weights_only=True)
    assert "best_state" not in state["loop"]  # no second copy inside the state file
    with torch.no_grad():
        model.weight.add_(1.0)
    loop = Checkpointer(tmp_path, every=1, tag="t", log=lambda line: None).resume(model, opt, sched, gen)
    assert torch.equal(loop.best_state["weight"], best["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-000001.safetensors", "latest.json", "step-000002.pt", "step-000002.safetensors"]


# ---- ChatGLM3 conversion cache ------------------------------------------------------------------

@pytest.mark.slow
def test_chatglm3_is_converted_once_into_a_cache_keyed_by_its_checksum(tmp_path, monkeypatch):
    from egmf_core import convert_chatglm3
    from egmf_core.twins import save_twin_real_layout

    src = save_twin_real_layout("glm3-tiny", tmp_path / "chatglm3-6b")
    calls = []
    real = convert_chatglm3.convert_checkpoint
    monkeypatch.setattr(convert_chatglm3, "convert_checkpoint", lambda s, d: calls.append(s) or real(s, d))
    first = convert_chatglm3.cached_conversion(src, tmp_path / "cache")
    again = convert_chatglm3.cached_conversion(src, tmp_path / "cache")
    assert first == again and len(calls) == 1
    assert json.loads((first / "config.json").read_text())["model_type"] == "glm"
    with open(src / "config.json", "a") as f:  # a changed release is converted anew
        f.write("\n")
    assert convert_chatglm3.cached_conversion(src, tmp_path / "cache") != first and len(calls) == 2


# ---- the scale profile --------------------------------------------------------------------------

def test_the_scale_profile_is_the_paper_setting_on_full_size_twins_and_full_shape_data():
    from benchmarks.execution.grid import expand
    from benchmarks.execution.profiles import SCALE_DATA_MARKER
    from benchmarks.execution.tables import load_table

    cells = expand(load_table("main_msa"), "scale", check_roots=False)
    cfg = cells[0].config
    assert cfg.model.backbone == "glm3-full" and cfg.data.root == SCALE_DATA_MARKER
    assert (cfg.train.lr, cfg.train.batch_size, cfg.model.d_h) == (5e-5, 8, 256)  # the paper profile's
    assert cfg.model.model_path is None


SIGTERM_DRIVER = """
import sys
from functools import partial
from pathlib import Path
from benchmarks.execution import launchers
from tests import fakes
tmp = Path(sys.argv[1])
grid, options = fakes.grid_and_options("3", seeds=[1111], results_root=tmp / "results", run_fn=fakes.sleepy_run)
how = launchers.Launch(jobs=2, worker_init=partial(fakes.isolated_worker, tmp / "repo", tmp / "seen"))
launchers.run_local_jobs(grid, options, how)
"""


def test_workers_end_with_their_parent_on_sigterm(tmp_path):
    """A scheduler's SIGTERM to the launching process ends its --jobs workers too (no orphans)."""
    import os
    import signal
    import subprocess
    import time

    from egmf_core.paths import REPO_ROOT as REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", SIGTERM_DRIVER, str(tmp_path)], env=env, cwd=tmp_path)
    seen = tmp_path / "seen"
    deadline = time.monotonic() + 60
    while (not seen.is_dir() or len(list(seen.iterdir())) < 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.name) for p in seen.iterdir()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)
