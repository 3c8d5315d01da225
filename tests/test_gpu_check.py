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


def test_the_group_phase_measures_each_size_and_checks_a_grouped_step_against_single_steps(tmp_path, monkeypatch):
    from benchmarks.perf.gpu_check_groups import FP32_TOLERANCE, measure_groups
    from benchmarks.perf.gpu_check_report import _groups_section

    monkeypatch.setenv("EGMF_CACHE", str(tmp_path / "cache"))
    opts = gpu_check.CheckOptions(size="tiny", device="cpu", backbones=("glm4",), steps=2, warmup=1,
                                  samples=16, groups=(1, 2))
    out = measure_groups("glm4", opts, peak_tflops=None)
    assert set(out["groups"]) == {"1", "2"}
    one, two = out["groups"]["1"], out["groups"]["2"]
    assert two["runs"] == 2 and two["tokens_per_step"] > one["tokens_per_step"]  # both runs' rows in one step
    assert two["flops_per_step"] > 1.8 * one["flops_per_step"]
    assert "aggregate_mfu" in two and two["aggregate_mfu"] is None  # no measured peak on CPU
    assert out["best_group"] in (1, 2) and out["equivalence_k"] == 2
    assert out["equivalence_tolerance"] == FP32_TOLERANCE
    assert out["grouped_equals_single"] and 0 <= out["equivalence_max_rel_diff"] <= FP32_TOLERANCE
    text = "\n".join(_groups_section({"glm4": out}))
    assert "## Run groups" in text and "| glm4 | 2 |" in text and ": equal." in text


def test_a_grouped_step_that_differs_from_single_steps_fails_the_check():
    result = {"size": "full", "backbones": {"glm4": {"losses": [2.0, 1.9], "grouped_equals_single": False}}}
    assert gpu_check.failed_backbones(result) == ["glm4"]
    result["backbones"]["glm4"]["grouped_equals_single"] = True
    assert gpu_check.failed_backbones(result) == []
