"""The paper profile's whole path, with only the directories differing from a real run.

The model root holds tiny twins written in each backbone's real release layout (ChatGLM3's own
keys and tokenizer.model; GLM-4-9B-hf and Llama-3 as HF checkpoints); the data root holds
synthetic files in the real on-disk formats. The harness is driven through its CLI exactly as a
user would drive it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.execution.profiles import MODEL_DIRS
from egmf_core.data.synth import write_synthetic
from egmf_core.paths import REPO_ROOT
from egmf_core.twins import save_twin_real_layout

REPO = REPO_ROOT


def make_paper_roots(tmp: Path, datasets=("sims_v2",), families=("glm3",)) -> tuple[Path, Path]:
    data_root, model_root = tmp / "data", tmp / "models"
    for name in datasets:
        write_synthetic(name, data_root, seed=0, size=48)
    for family in families:
        save_twin_real_layout(f"{family}-tiny", model_root / MODEL_DIRS[family])
    return data_root, model_root


@pytest.mark.slow
def test_model_root_holds_the_real_layouts(tmp_path):
    _, model_root = make_paper_roots(tmp_path, datasets=(), families=("glm3", "glm4", "llama3"))
    glm3 = json.loads((model_root / "chatglm3-6b" / "config.json").read_text())
    assert glm3["model_type"] == "chatglm" and (model_root / "chatglm3-6b" / "tokenizer.model").is_file()
    assert json.loads((model_root / "glm-4-9b-hf" / "config.json").read_text())["model_type"] == "glm"
    assert json.loads((model_root / "Meta-Llama-3-8B-Instruct" / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.slow
def test_reproduce_table3_paper_profile_end_to_end(tmp_path):
    data_root, model_root = make_paper_roots(tmp_path)
    results, reports = tmp_path / "results", tmp_path / "reports"
    cmd = [sys.executable, "-m", "benchmarks", "reproduce", "3", "--profile", "paper",
           "--data-root", str(data_root), "--model-root", str(model_root),
           "--datasets", "sims_v2", "--seeds", "1111",
           "--results-root", str(results), "--reports-root", str(reports)]
    env = {"EGMF_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "EGMF_TORCH_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "main_msa [paper]" in done.stdout + done.stderr
    df = pd.read_csv(results / "paper" / "main_msa.csv")
    ok = df[(df.status == "ok") & (df.split == "test")]
    assert set(ok.metric) >= {"acc2", "f1", "mae", "corr"}
    assert (ok.backbone == "glm3").all()
    report = (reports / "paper" / "main_msa.md").read_text()
    assert report.startswith("> PAPER PROFILE")
    # provenance without machine paths: format, path under the root, checksum
    assert "data read from mmsa-pickle: sims_v2/unaligned.pkl sha256:" in report
    assert str(data_root) not in report and str(model_root) not in report
