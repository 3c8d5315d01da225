"""The GPU check's CPU path: the K-processes-per-device worker, and a check that writes only where told."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from benchmarks.perf import gpu_check
from tests.test_kill_resume import REPO


def test_packing_workers_run_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_CACHE", str(tmp_path / "cache"))
    opts = gpu_check.CheckOptions(size="tiny", device="cpu", backbones=("llama3",), steps=2, warmup=1,
                                  samples=16, jobs_per_gpu=(1, 2), compile=False)
    model, encoder, _, data, cfg, _, _ = gpu_check.build_check_model("llama3", opts)
    from egmf_core.batching import collate
    from egmf_core.train import Trainer

    batch = collate(encoder.encode(data.train), range(cfg.train.batch_size), with_answer=True)
    trainer = Trainer.build(model, cfg.train, total_steps=100)
    out = gpu_check.packed_throughput("llama3", dataclasses.replace(opts), trainer, batch, model, cfg, None)
    assert set(out["jobs_per_gpu"]) == {"2"} and out["jobs_per_gpu"]["2"] > 0  # two processes trained at once
    assert out["jobs_per_gpu_compiled"] == {}


def test_gpu_check_writes_nothing_it_was_not_told_to(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "EGMF_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-check", "--device", "meta"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nothing written" in done.stdout
    assert not (tmp_path / "reports").exists()
    report = tmp_path / "out" / "check.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu-check", "--device", "meta", "--report", str(report)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and report.read_text().startswith("#")
    assert not (tmp_path / "reports").exists()
